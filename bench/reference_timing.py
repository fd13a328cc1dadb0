"""Time the Image2Sphere reference's own inference (run by ``bench/run.py --reference PATH``).

    REF_PYTHON bench/reference_timing.py --reference PATH [--encoder resnet50] [--level 4]
                                         [--eval-wigners FILE] [--repeats 10] [--threads 0]

Runs in the *reference's* Python environment (it needs torchvision, which does not import beside
this project's torch), so of this project it imports only :mod:`bench.common` (numpy and torch);
besides, the checkout at ``PATH`` (``src.predictor.I2S``), torch and e3nn. It builds
``I2S(encoder=..., eval_grid_rec_level=level)`` with random weights and times, on a random
224x224 image (batch 1, after 2 warm-ups), its ``predict`` (encoder + head + the product with the
full eval-grid Wigner matrix + argmax: the reference's inference) and its ``forward`` alone.
Prints one JSON object on stdout.

The reference caches that matrix as ``eval_rec5.pt`` *in the working directory* whatever the
level; this script runs in a temporary directory, into which ``--eval-wigners`` (a matrix saved
for the same level and lmax) is linked to skip minutes of building it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, type=Path, help="checkout of dmklee/image2sphere")
    p.add_argument("--encoder", default="resnet50", help="its encoder name, without _pretrained")
    p.add_argument("--level", type=int, default=4, help="eval grid level (its default 5 needs a 4.3 GB matrix)")
    p.add_argument("--eval-wigners", type=Path, default=None, help="saved eval-grid matrix of that level")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    import e3nn.nn  # noqa: F401  (e3nn 0.6 does not import the submodule the reference uses)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.common: numpy + torch only
    from bench.common import measure

    sys.path.insert(0, str(args.reference.resolve()))
    from src.predictor import I2S  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory(prefix="i2s_ref_") as tmp:
        os.chdir(tmp)
        if args.eval_wigners is not None:
            os.symlink(args.eval_wigners.resolve(), Path(tmp) / "eval_rec5.pt")
        t0 = time.perf_counter()
        model = I2S(encoder=args.encoder, eval_grid_rec_level=args.level).eval()
        build_s = time.perf_counter() - t0
    grid = model.eval_wigners.shape[1]
    x = torch.rand(1, 3, 224, 224)
    o = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        forward = measure(lambda: model.forward(x, o), args.repeats, warmup=2)
    predict = measure(lambda: model.predict(x, o), args.repeats, warmup=2)
    print(json.dumps({
        "model": f"I2S {args.encoder} (random weights), eval grid level {args.level} ({grid} rotations)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "build_s": build_s,
        "eval_matrix_mb": model.eval_wigners.numel() * model.eval_wigners.element_size() / 2**20,
        "forward": forward, "predict": predict,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
