"""Score a model trained by the Image2Sphere reference (``dmklee/image2sphere``) with this project's
metrics, on a SYMSOL split on disk. It is a yardstick only: the reference's modules are imported from a
checkout given on the command line (``--reference``); none of its code is copied here.

Usage (with an interpreter in which the reference imports: torchvision, e3nn, healpy, scikit-image;
see docs/REFERENCE_COMPARISON.md)::

    python train/reference_eval.py --reference /path/to/image2sphere \\
        --run-dir RESULTS/symsolI-50000_resnet18_seed0 --data-root ROOT/symsol --split test \\
        --grid-level 4 [--grid-cache eval_wigners.pt] [--json OUT]

``--run-dir`` is the folder the reference's ``src/train.py`` wrote (``args.txt``, ``checkpoint.pt``).
The model is rebuilt from ``args.txt`` with the evaluation grid of ``--grid-level``.

``--ours CHECKPOINT`` instead scores one of our checkpoints by exactly the same grid procedure (our
level-``L`` HEALPix grid, argmax, nearest-grid-point LL), as a cross-check that the two metric
implementations do not favour either model. This mode needs only this repository.

Metrics, per shape and overall (keys as ``train/evaluate.py`` writes them):

* ``ll``: the reference's own grid log-likelihood (its ``src/train.py`` ``evaluate_ll``):
  ``log(softmax(signal on the N-point level-L grid)[i*] * N / pi**2)`` with ``i*`` the grid rotation
  nearest the ground truth (largest ``trace(R_gt R_i^T)``), averaged over each image's equivalent
  rotations as IPDF and :func:`pose_core.metrics.grid_log_likelihood` do (the reference draws one
  equivalent at random; the expectation is the same). ``log_softmax`` is used instead of
  ``log(softmax)`` (same value, no underflow).
* ``ll_render``: the same at the rendering rotation only (one equivalent per image).
* ``acc@15``, ``acc@30``, ``median_deg``, ``mean_deg``: the prediction is the argmax grid rotation
  (the reference's ``I2S.predict`` without gradient ascent); the error is to the nearest equivalent
  (:func:`pose_core.metrics.nearest_equivalent_error`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from pose_core import metrics, preprocess
from pose_core.distribution import log_density_of_equal_cells

__all__ = ["nearest_grid_log_likelihood", "score", "main"]

#: SYMSOL I class order of the reference's ``SymsolDataset`` (its class index = position here).
SYMSOL_I_CLASSES = ("tet", "cube", "icosa", "cone", "cyl")

def nearest_grid_log_likelihood(
    log_probs: torch.Tensor, grid: torch.Tensor, rotations: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """``log(p[i*] * N / pi**2)`` ``(K,)`` for one image.

    ``log_probs`` ``(N,)``: log-softmax over the grid; ``grid`` ``(N, 3, 3)``; ``rotations`` ``(K, 3, 3)``;
    ``i*`` the grid rotation with the largest ``trace(R grid_i^T)`` (the nearest one) for each ``R``.
    """
    n = grid.shape[0]
    flat = grid.reshape(n, 9)
    idx = torch.cat([(rotations[i : i + chunk].reshape(-1, 9) @ flat.T).argmax(dim=1)
                     for i in range(0, rotations.shape[0], chunk)])
    return log_density_of_equal_cells(log_probs[idx], n)


def score(logits: torch.Tensor, grid: torch.Tensor, equivalents: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-image ``error`` (radians, argmax to nearest equivalent), ``ll`` (mean over equivalents) and
    ``ll_render`` (at ``equivalents[b][0]``) from grid ``logits`` ``(B, N)`` on ``grid`` ``(N, 3, 3)``."""
    log_probs = torch.log_softmax(logits.double(), dim=1).float()
    pred = grid[logits.argmax(dim=1)]
    err = metrics.nearest_equivalent_error(pred, [e.to(grid.dtype) for e in equivalents])
    ll, ll0 = [], []
    for b, eq in enumerate(equivalents):
        v = nearest_grid_log_likelihood(log_probs[b], grid, eq.to(grid.dtype))
        ll.append(v.mean())
        ll0.append(v[0])
    return {"error": err, "ll": torch.stack(ll), "ll_render": torch.stack(ll0)}


@contextlib.contextmanager
def _cwd_with_cache(cache: str | None):
    """The reference's ``I2S`` loads ``./eval_rec5.pt`` (its name whatever the level) when present."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        if cache:
            os.symlink(os.path.abspath(cache), os.path.join(tmp, "eval_rec5.pt"))
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def load_reference_model(reference: str, run_dir: str, grid_level: int, grid_cache: str | None):
    """The reference's ``I2S`` rebuilt from ``run_dir/args.txt`` with weights ``run_dir/checkpoint.pt``."""
    sys.path.insert(0, os.path.abspath(reference))
    import e3nn.nn  # noqa: F401  (e3nn 0.6 does not import the submodule the reference uses)
    from src.predictor import I2S  # the reference's module

    args = ast.literal_eval(Path(run_dir, "args.txt").read_text())
    with _cwd_with_cache(grid_cache):
        model = I2S(
            num_classes=len(SYMSOL_I_CLASSES), encoder=args["encoder"], sphere_fdim=args["sphere_fdim"],
            lmax=args["lmax"], train_grid_rec_level=args["train_grid_rec_level"],
            train_grid_n_points=args["train_grid_n_points"], train_grid_include_gt=args["train_grid_include_gt"],
            train_grid_mode=args["train_grid_mode"], eval_grid_rec_level=grid_level,
            eval_use_gradient_ascent=0, include_class_label=args["include_class_label"],
        )
    ckpt = torch.load(Path(run_dir, "checkpoint.pt"), map_location="cpu")
    model.load_state_dict(ckpt["model_state_dict"])
    model.eval()
    n = 72 * 8**grid_level
    if model.eval_wigners.shape[1] != n or model.eval_rotmats.shape[0] != n:
        raise ValueError(f"eval grid has {model.eval_wigners.shape[1]} points, level {grid_level} needs {n} "
                         "(a --grid-cache of another level?)")
    wigners, grid = model.eval_wigners.float(), model.eval_rotmats.float()

    def logits_fn(images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return (model(images, cls)[:, 0] @ wigners).float()  # (B, N), as its compute_probabilities

    return logits_fn, grid, {"epoch": ckpt.get("epoch"), "done": ckpt.get("done"), "args": args}


def load_our_model(checkpoint: str, grid_level: int):
    from pose_core import grids
    from pose_core.model import load_model

    model = load_model(checkpoint, "cpu")
    grid = grids.so3_healpix_grid(grid_level).float()

    def logits_fn(images: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return model.grid_logits(model(images).float(), grid_level)

    return logits_fn, grid, {"config": dict(vars(model.config))}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", help="checkout of dmklee/image2sphere (its src/ is imported)")
    p.add_argument("--run-dir", help="folder written by the reference's src/train.py (args.txt, checkpoint.pt)")
    p.add_argument("--ours", help="score this checkpoint of ours by the same grid procedure instead")
    p.add_argument("--data-root", required=True, help="SYMSOL root holding SPLIT/images and SPLIT/rotations.npz")
    p.add_argument("--split", default="test")
    p.add_argument("--grid-level", type=int, default=4)
    p.add_argument("--grid-cache", default=None, help="(reference) precomputed eval Wigner matrix of --grid-level")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--limit", type=int, default=None, help="at most N images per shape")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if (a.ours is None) == (a.run_dir is None) or (a.run_dir and not a.reference):
        p.error("give either --reference and --run-dir, or --ours")

    from pose_core.data.symsol import SymsolSplit

    t0 = time.perf_counter()
    if a.ours:
        logits_fn, grid, info = load_our_model(a.ours, a.grid_level)
    else:
        logits_fn, grid, info = load_reference_model(a.reference, a.run_dir, a.grid_level, a.grid_cache)
    t_load = time.perf_counter() - t0
    split = SymsolSplit(a.data_root, a.split)
    items = [(c, s, i) for c, s in enumerate(SYMSOL_I_CLASSES)
             for i in range(split.count(s) if a.limit is None else min(a.limit, split.count(s)))]
    errs, lls, ll0s, groups = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(items), a.batch_size):
            batch = items[start : start + a.batch_size]
            # as the reference's SymsolDataset: uint8 RGB / 255, (3, H, W), no other normalisation
            images = torch.stack([preprocess.to_tensor(split.image(s, i))
                                  for _, s, i in batch])
            cls = torch.tensor([[c] for c, _, _ in batch], dtype=torch.long)
            eq = [torch.from_numpy(np.asarray(split.equivalents(s, i), dtype=np.float32)) for _, s, i in batch]
            out = score(logits_fn(images, cls), grid, eq)
            errs.append(out["error"])
            lls.append(out["ll"])
            ll0s.append(out["ll_render"])
            groups.extend(s for _, s, _ in batch)
    err = torch.cat(errs)
    table = metrics.aggregate_by(groups, err, torch.cat(lls))
    table0 = metrics.aggregate_by(groups, err, torch.cat(ll0s))
    for name in table:
        table[name]["ll_render"] = table0[name]["ll"]
    result: dict[str, Any] = {
        "model": "ours" if a.ours else "reference",
        "checkpoint": a.ours or str(Path(a.run_dir, "checkpoint.pt")),
        "data_root": a.data_root, "split": a.split, "grid_level": a.grid_level, "grid_points": int(grid.shape[0]),
        "ll_convention": "log(softmax prob. of the grid rotation nearest the gt * N / pi^2), mean over equivalents "
                         "(ll) or at the rendering rotation (ll_render); prediction: grid argmax",
        "n": int(err.numel()), "seconds_load": t_load, "seconds": time.perf_counter() - t0,
        "info": info, "overall": table["all"], "groups": table,
    }
    names = [s for s in SYMSOL_I_CLASSES if s in table] + ["all"]
    names += ["mean_of_groups"] if "mean_of_groups" in table else []
    print(f"{'group':>15} {'n':>5} {'LL':>7} {'LL_rend':>7} {'Acc@15':>7} {'Acc@30':>7} {'median':>7}")
    for g in names:
        r = table[g]
        print(f"{g:>15} {r['n']:5d} {r['ll']:7.3f} {r['ll_render']:7.3f} {r['acc@15']:7.3f} {r['acc@30']:7.3f} "
              f"{r['median_deg']:7.2f}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
