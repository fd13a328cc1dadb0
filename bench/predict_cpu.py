"""Cost of ``ImageToSphere.predict`` for one 224x224 image, per encoder (prints a table, writes JSON).

    .venv/bin/python bench/predict_cpu.py [--threads 2] [--repeats 20] [--json predict_cpu.json]

Median and p90 over ``--repeats`` runs after 3 warm-ups, random weights (cost does not depend on
them): the whole ``predict`` (encoder + head + coarse-to-fine to level 5), the encoder alone, the
coarse-to-fine search alone, and ``predict`` followed by what the node reads per frame (mode,
covariance, 100 samples, top modes). The machine is shared: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import measure
from pose_core import ImageToSphere, SO3Distribution


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--encoders", default="resnet18,resnet50,mobilenet_v2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"device": "cpu", "threads": args.threads, "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "load_average_before": os.getloadavg(), "encoders": {}}
    x = torch.rand(1, 3, 224, 224)
    for name in args.encoders.split(","):
        model = ImageToSphere(name).eval()
        for _ in range(3):
            model.predict(x)
        with torch.inference_mode():
            coeffs = model(x)
            row = {
                "predict": measure(lambda m=model: m.predict(x), args.repeats, warmup=0),
                "encoder": measure(lambda m=model: m.encoder(x), args.repeats, warmup=0),
                "coarse_to_fine": measure(
                    lambda c=coeffs, m=model: SO3Distribution.from_fourier(c, m.lmax), args.repeats
                ),
            }

        def frame(m=model):
            d = m.predict(x)
            d.mode(), d.covariance(), d.sample(100), d.top_modes()

        row["predict_and_summary"] = measure(frame, args.repeats, warmup=0)
        results["encoders"][name] = row
        print(
            f"{name:14s} predict p50 {row['predict']['p50_ms']:6.1f} ms  p90 {row['predict']['p90_ms']:6.1f} | "
            f"encoder p50 {row['encoder']['p50_ms']:6.1f} | "
            f"coarse-to-fine p50 {row['coarse_to_fine']['p50_ms']:5.1f} | "
            f"+ mode, cov, 100 samples, top modes p50 {row['predict_and_summary']['p50_ms']:6.1f} ms"
        )
    results["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
