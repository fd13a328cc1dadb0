"""Render a config's training data once, into shards (:mod:`pose_core.data.shards`), for a GPU that
rendering in DataLoader workers cannot keep busy.

Usage (from the repository root)::

    python train/render_shards.py --config config/train/demo_randomized.yaml --out data/shards/demo \\
        [--workers 8] [--shard-size 4096] [key.sub=value ...]
    python train/train.py --config config/train/demo_randomized.yaml data.name=shards data.root=data/shards/demo

The shards hold the items of the config's ``data`` (rendered: ``symsol`` or ``mesh``, randomised or
not) bit for bit, and record that config; training from them (``data.name=shards``,
``data.root=...``) evaluates on the held-out twin of the recorded config, rendered on the fly.
Interrupted, the same command resumes after the last whole shard.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from pose_core.data.shards import write_shards
    from train.config import load_config
    from train.datasets import rendered_dataset

    p = argparse.ArgumentParser(prog="train/render_shards.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training config whose data to render")
    p.add_argument("--out", required=True, help="folder for the shards")
    p.add_argument("--workers", type=int, default=0, help="rendering processes (default 0: this one)")
    p.add_argument("--shard-size", type=int, default=4096, help="items per shard")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the config, e.g. data.size=1000")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        data = rendered_dataset(cfg.data)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    start = time.perf_counter()
    try:
        manifest = write_shards(data, args.out, dataclasses.asdict(cfg.data), shard_size=args.shard_size,
                                num_workers=args.workers, progress=True)
    except ValueError as exc:
        p.error(str(exc))
    seconds = time.perf_counter() - start
    print(f"{manifest['count']} items in {len(manifest['shards'])} shards under {args.out} "
          f"({seconds:.0f} s, {manifest['count'] / max(seconds, 1e-9):.0f} items/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
