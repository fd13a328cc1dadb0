"""What tracking and markers cost the node at robot camera sizes, side by side (ROS 2, 30 Hz).

    .venv/bin/python bench/tracking_cost.py [--json docs/benchmarks/tracking_cost.json] [--frames 150]

For 640x480, 1280x720 and 1920x1080 rgb8 camera images at 30 Hz (the renders of
``bench.common.render_images`` pasted into the frame, ``bench.stages.camera_images``), the node with
the shipped parameters (``default``: tracking on, markers drawn only while someone subscribes, and
nobody does here), then with ``temporal_filter:=false publish_markers:=false`` (``untracked``: what
the node did before), then ``default`` again (the two ``default`` runs bound the machine's drift).
Per run: frames answered, dropped by the node (newest wins), lost in transport, latency (receive
time minus image stamp) p50 / p90, through :class:`bench.ros_e2e.NodeUnderTest`. Conventions of
:mod:`bench.common`; the machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import common, stages  # noqa: E402
from bench.ros_e2e import NodeUnderTest  # noqa: E402

VARIANTS = (("default", ()), ("untracked", ("temporal_filter:=false", "publish_markers:=false")), ("default", ()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "tracking_cost.json")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "demo.pt")
    parser.add_argument("--frames", type=int, default=150, help="frames per run (30 Hz)")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    images, _, _, K = common.render_images(3)
    result: dict[str, Any] = {**common.run_record(device), "rows": []}
    print(f"{'camera':10s} {'variant':10s} {'answered':>9s} {'dropped':>8s} {'lost':>5s} {'p50 ms':>8s} {'p90 ms':>8s}")
    for size in stages.CAMERA_SIZES[1:]:
        frames, Kc = stages.camera_images(size, images, K)
        for name, params in VARIANTS:
            with NodeUnderTest(frames, Kc, args.checkpoint, device="cpu", node_params=params) as node:
                node.warm_up()
                row = node.run(30, args.frames)
            row.update(width=size[0], height=size[1], variant=name)
            result["rows"].append(row)
            print(f"{size[0]}x{size[1]:<5d} {name:10s} {row['received']:>5d}/{row['published']:<3d} "
                  f"{row['node_dropped']:>8d} {row['lost_in_transport']:>5d} {row['latency_ms']['p50']:8.1f} "
                  f"{row['latency_ms']['p90']:8.1f}", flush=True)  # fmt: skip
    result["load_average_after"] = list(os.getloadavg())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
