"""Rendering throughput of training data: images/s per process and through DataLoader workers.

    .venv/bin/python bench/render_throughput.py [--quick] --json PATH

For each image size (96 px: the shipped model; 224 px) and each data kind (``plain``: black
background, one light; ``randomised``: the default :class:`pose_core.data.randomize.Randomization`),
it measures, side by side in one run:

* ``main``: images/s rendered in this process (one GL context, Mesa's EGL; llvmpipe on a machine
  without a GPU, the GPU's EGL driver where there is one: ``gl_renderer`` says which);
* ``workers_N``: images/s arriving in batches of 32 through a ``DataLoader`` with ``N`` spawned
  workers (what training sees), after the workers have started.

A GPU is starved when the data arrive slower than it trains: compare with the ``images/s`` that
``train/train.py`` logs. Conventions of :mod:`bench.common`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils.data import DataLoader

from bench import common
from pose_core.data.meshes import ShapesDataset
from pose_core.data.randomize import Randomization

SHAPES = ["tet", "cube", "icosa", "cone", "cyl"]


def _dataset(size: int, randomised: bool, n: int) -> ShapesDataset:
    return ShapesDataset(SHAPES, size=n, image_size=size, seed=123,
                         randomization=Randomization() if randomised else None)


def _gl_renderer() -> str:
    import moderngl

    ctx = moderngl.create_standalone_context(backend="egl")
    try:
        return str(ctx.info.get("GL_RENDERER", "?"))
    finally:
        ctx.release()


def main_process(size: int, randomised: bool, n: int) -> float:
    """Images/s rendered in this process (after one warm-up image)."""
    data = _dataset(size, randomised, n)
    data[0]
    t = time.perf_counter()
    for i in range(1, len(data)):
        data[i]
    return (len(data) - 1) / (time.perf_counter() - t)


def workers(size: int, randomised: bool, n: int, num_workers: int, batch: int = 32) -> float:
    """Images/s through a DataLoader with ``num_workers`` spawned workers, after the first batch."""
    from train.datasets import collate

    data = _dataset(size, randomised, n)
    loader = DataLoader(data, batch_size=batch, num_workers=num_workers, collate_fn=collate,
                        multiprocessing_context="spawn", shuffle=False)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    count = 0
    for b in it:
        count += b["image"].shape[0]
    return count / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few images only (smoke test)")
    p.add_argument("--json", default=None)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    args = p.parse_args(argv)
    n_main = 12 if args.quick else 200  # per shape
    n_workers = 8 if args.quick else 160
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    result: dict = {"hardware": common.hardware(torch.device("cpu")), "gl_renderer": _gl_renderer(),
                    "cpu_count": os.cpu_count(), "rows": []}
    print(f"GL renderer: {result['gl_renderer']}; {os.cpu_count()} CPUs")
    print(f"{'size':>5} {'data':<11} {'main img/s':>11}" + "".join(f" {f'{w} workers':>11}" for w in counts))
    for size in (96, 224):
        for randomised in (False, True):
            row = {"size": size, "data": "randomised" if randomised else "plain",
                   "main": main_process(size, randomised, n_main // (1 if size == 96 else 2))}
            for w in counts:
                row[f"workers_{w}"] = workers(size, randomised, n_workers // (1 if size == 96 else 2), w)
            result["rows"].append(row)
            print(f"{size:>5} {row['data']:<11} {row['main']:>11.0f}"
                  + "".join(f" {row[f'workers_{w}']:>11.0f}" for w in counts), flush=True)
    result["load_average_after"] = os.getloadavg()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
