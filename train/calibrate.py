"""Fit a checkpoint's temperature on held-out renders, so that its distributions are as wide as its errors.

Usage (from the repository root)::

    python train/calibrate.py --checkpoint checkpoints/demo.pt --out checkpoints/demo.pt [--per-shape 60]
    python train/calibrate.py --checkpoint checkpoints/se3_duck.pt --out checkpoints/se3_duck.pt   # SE(3)

The calibration set is the checkpoint's own shapes (its training config) rendered with a seed used
nowhere else (training data seed + :data:`CALIBRATION_SEED_OFFSET`): half plain renders, half
randomised with the training recipe (``data.randomize``; the default
:class:`~pose_core.data.randomize.Randomization` when the model was trained without). The
temperature ``T`` maximising the held-out log-likelihood (:func:`pose_core.calibration.fit_temperature`,
at grid level 3) goes into ``inference.temperature`` of ``--out`` (written atomically; it may be the
input; an inference checkpoint, without optimizer state), with the numbers before and after in
``meta.calibration``. ``train/robustness.py`` then
says whether the 90 % regions hold the truth on 85–95 % of images condition by condition.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from pose_core import calibration
from pose_core.data.meshes import ShapesDataset
from pose_core.data.randomize import Randomization
from pose_core.model import ImageToSphere

__all__ = ["CALIBRATION_SEED_OFFSET", "collect_logits", "calibrate", "main"]

#: Added to the training data seed for the calibration renders.
CALIBRATION_SEED_OFFSET = 2_000_003


@torch.no_grad()
def collect_logits(model: ImageToSphere, datasets: Sequence[ShapesDataset], level: int = 3,
                   batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uncalibrated grid logits ``(B, N)`` at ``level`` and truth cells / mask ``(B, K)`` over ``datasets``."""
    from train.datasets import collate

    model.eval()
    logits, equivalents = [], []
    for data in datasets:
        for start in range(0, len(data), batch_size):
            batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
            coeffs = model(batch["image"].to(model.device)).float()
            logits.append(model.grid_logits(coeffs, level).cpu())
            equivalents.extend(batch["equivalents"])
    cells, mask = calibration.truth_cells(equivalents, level)
    return torch.cat(logits), cells, mask


def calibrate(model: ImageToSphere, shapes: Sequence[Any], image_size: int, seed: int,
              recipe: Randomization | None, per_shape: int = 60) -> dict[str, Any]:
    """Fit and set ``model.inference.temperature``; returns the numbers before and after."""
    half = max(1, per_shape // 2)
    sets = [ShapesDataset(list(shapes), size=half, image_size=image_size, seed=seed, randomization=Randomization.off()),
            ShapesDataset(list(shapes), size=half, image_size=image_size, seed=seed + 1,
                          randomization=recipe or Randomization())]
    logits, cells, mask = collect_logits(model, sets)
    temperature = calibration.fit_temperature(logits, cells, mask)

    def numbers(t: float) -> dict[str, float]:
        scaled = logits / t
        cov = calibration.hdr_coverage(scaled, cells, mask).double().mean(0)
        return {"ll": float(calibration.truth_log_likelihood(scaled, cells, mask).mean()),
                "cov50": float(cov[0]), "cov90": float(cov[1]),
                "entropy": float(calibration.entropy(scaled).mean())}

    model.inference.temperature = temperature
    return {"temperature": temperature, "n": int(logits.shape[0]), "seed": seed, "level": 3,
            "before": numbers(1.0), "after": numbers(temperature)}


@torch.no_grad()
def calibrate_se3(model: Any, payload: dict, n: int = 120, iterations: int = 12) -> dict[str, Any]:
    """Fit and set ``model.temperature`` of an SE(3) model on ``n`` scenes of its training data drawn with
    the calibration seed (training seed + :data:`CALIBRATION_SEED_OFFSET`): the ``T`` maximising the mean
    log-density of the true poses (``train.evaluate.evaluate_se3``'s ``ll_se3``); returns the numbers
    (``ll_se3``, ``inside_95``, ``acc@15``, ``t_median_mm``) before and after."""
    import dataclasses

    from train.config import config_from_dict
    from train.datasets import scenes_dataset
    from train.evaluate import evaluate_se3

    cfg = config_from_dict(payload.get("train_config") or payload["meta"]["train_config"])
    data = scenes_dataset(dataclasses.replace(cfg.data, seed=cfg.data.seed + CALIBRATION_SEED_OFFSET, size=n))
    items = [data[i] for i in range(len(data))]  # rendered once

    def numbers(t: float) -> dict[str, float]:
        model.temperature = t
        o = evaluate_se3(model, items, batch_size=20)["overall"]
        return {k: o[k] for k in ("ll_se3", "inside_95", "acc@15", "median_deg", "t_median_mm", "outside_box")}

    before = numbers(1.0)
    t = calibration.maximise_over_temperature(lambda t: numbers(t)["ll_se3"], (0.3, 10.0), iterations)
    after = numbers(t)
    return {"temperature": t, "n": n, "seed": data.seed, "before": before, "after": after}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from pose_core.model import load_model, read_checkpoint
    from train.config import config_from_dict
    from train.datasets import rendered_source
    from train.robustness import checkpoint_shapes

    p = argparse.ArgumentParser(prog="train/calibrate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="calibrated checkpoint (may be --checkpoint itself)")
    p.add_argument("--per-shape", type=int, default=60, help="calibration images per shape (default 60)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        payload = read_checkpoint(args.checkpoint)
        if payload.get("kind") == "spyropose":
            return _main_se3(args, payload)
        shapes, size, seed = checkpoint_shapes(payload)
    except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
        p.error(str(exc))
    raw = (payload.get("meta") or {}).get("train_config") or payload.get("train_config")
    recipe = rendered_source(config_from_dict(raw).data).randomize
    model = load_model(args.checkpoint, device=args.device)
    model.inference.temperature = 1.0  # fit from the network's own output
    result = calibrate(model, shapes, size, seed + CALIBRATION_SEED_OFFSET, recipe, per_shape=args.per_shape)
    out = _save_calibrated(model, payload, result, args.out)
    b, a = result["before"], result["after"]
    print(f"temperature {result['temperature']:.3f} on {result['n']} held-out images; "
          f"LL {b['ll']:.2f} -> {a['ll']:.2f}, in 50 % HDR {b['cov50']:.2f} -> {a['cov50']:.2f}, "
          f"in 90 % HDR {b['cov90']:.2f} -> {a['cov90']:.2f}, entropy {b['entropy']:.2f} -> {a['entropy']:.2f}")
    print(f"wrote {out}")
    return 0


def _save_calibrated(model: Any, payload: dict, result: dict, out: str) -> Any:
    """Write the calibrated ``model`` to ``out`` (inference checkpoint) with ``result`` in ``meta.calibration``."""
    from pose_core.model import save_checkpoint

    meta = dict(payload.get("meta") or {})
    meta["calibration"] = result
    extra = {k: payload[k] for k in ("train_config",) if k in payload}
    return save_checkpoint(model, out, meta=meta, **extra)


def _main_se3(args: argparse.Namespace, payload: dict) -> int:
    """:func:`main` for an SE(3) checkpoint (``--per-shape``: the number of scenes)."""
    from pose_core.model import load_model

    model = load_model(args.checkpoint, device=args.device)
    result = calibrate_se3(model, payload, n=args.per_shape * 2)
    out = _save_calibrated(model, payload, result, args.out)
    b, a = result["before"], result["after"]
    print(f"temperature {result['temperature']:.3f} on {result['n']} held-out scenes; SE(3) LL {b['ll_se3']:.2f} -> "
          f"{a['ll_se3']:.2f}, truth in the 95 % translation ellipsoid {b['inside_95']:.2f} -> {a['inside_95']:.2f}, "
          f"Acc@15 {b['acc@15']:.2f} -> {a['acc@15']:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
