"""Robustness and calibration suite: the conditions a robot camera and an imperfect detector produce.

Usage (from the repository root)::

    python train/robustness.py --checkpoint checkpoints/demo.pt [--per-shape 40] [--json OUT]
        [--montage PNG] [--conditions clean,bg_photo,...] [--seed-offset N]

Every condition (:data:`CONDITIONS`) renders the checkpoint's own shapes (its training config's
``data.shapes`` and ``data.meshes``) at its input size, ``--per-shape`` images each, with one
perturbation: :class:`pose_core.data.randomize.Randomization` with every knob off but one. The
rotations are the same in every condition (seed = the training data seed + ``--seed-offset``,
default :data:`SUITE_SEED_OFFSET`, never a training or calibration seed), so conditions differ by the
perturbation alone; photo backgrounds are the *held-out* shipped photos, never used in training.

Per condition, mean over shapes (each shape's number first, symmetry-aware: errors to the nearest
equivalent): ``acc@15``, ``acc@30``, ``median_deg``, ``ll`` (grid log-likelihood at level
``--grid-level``, uniform -2.29), ``entropy`` (nats, uniform +2.29), ``cov50`` / ``cov90`` (how often
the truth lies in the 50 % / 90 % highest-density region, at grid level 3:
:mod:`pose_core.calibration`), and ``occluded`` (mean fraction of the object actually covered).
The table goes to stdout; ``--json`` writes every number (per shape too); ``--montage`` a picture:
one row per condition, one image per shape, each with its error. Then (unless ``--no-ood``) the mean
entropy on inputs unlike any training image (:data:`OOD_INPUTS`: no object on a held-out photo or on
grey, an unknown object), JSON key ``ood_entropy``: an honest model is unsure there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from pose_core import calibration, metrics
from pose_core.data.meshes import ShapesDataset
from pose_core.data.randomize import Randomization
from pose_core.distribution import SO3Distribution
from pose_core.model import ImageToSphere

__all__ = ["CONDITIONS", "OOD_INPUTS", "SUITE_SEED_OFFSET", "condition", "run_suite", "ood_entropy", "format_table",
           "main", "METRICS"]

#: Added to the training data seed for the suite's renders (not the held-out twin's nor calibration's).
SUITE_SEED_OFFSET = 2_000_029
#: Grid level of the HDR coverage and entropy (36,864 cells of 3.75 degrees).
COVERAGE_LEVEL = 3
#: Per-condition numbers, in table order.
METRICS = ("acc@15", "acc@30", "median_deg", "ll", "entropy", "cov50", "cov90", "occluded")

_COLOR_ONLY = {"color_p": 1.0, "white_balance": 0.0, "brightness": [1.0, 1.0], "contrast": [1.0, 1.0],
               "saturation": [1.0, 1.0], "gamma": [1.0, 1.0]}
_PATCH = {"occlusion_p": 1.0, "occluder_mesh_p": 0.0}

#: name -> the knobs it turns on (over :meth:`Randomization.off`).
CONDITIONS: dict[str, dict[str, Any]] = {
    "clean": {},
    "bg_photo": {"backgrounds": ["photo"], "photo_split": "heldout"},
    "bg_noise": {"backgrounds": ["noise"]},
    "bg_grey": {"backgrounds": ["grey"]},
    "occl_20_40": {**_PATCH, "occlusion": [0.2, 0.4]},
    "occl_40_60": {**_PATCH, "occlusion": [0.4, 0.6]},
    "occl_60_80": {**_PATCH, "occlusion": [0.6, 0.8]},
    "shift_10": {"shift": [0.10, 0.10]},
    "shift_25": {"shift": [0.25, 0.25]},
    "scale_0.7": {"scale": [0.7, 0.7]},
    "scale_1.4": {"scale": [1.4, 1.4]},
    "noise_0.02": {"noise_p": 1.0, "noise": [0.02, 0.02]},
    "noise_0.05": {"noise_p": 1.0, "noise": [0.05, 0.05]},
    "blur_3": {"blur_p": 1.0, "blur": [3.0, 3.0]},
    "bright_1.5": {**_COLOR_ONLY, "brightness": [1.5, 1.5]},
    "grazing_light": {"lighting_p": 1.0, "lights": [1, 1], "light_angle_deg": [80.0, 80.0],
                      "light_intensity": [0.65, 0.65], "light_color": 0.0, "ambient": [0.35, 0.35],
                      "specular": [0.0, 0.0]},
}


#: Inputs unlike any training image, for :func:`ood_entropy`: no object on a held-out photo or on
#: grey, and an object the model never saw (the pybullet_data bunny, plain render).
OOD_INPUTS = ("empty_photo", "empty_grey", "unknown_object")
_UNKNOWN_MESH = "pybullet_data/bunny.obj"


@torch.no_grad()
def ood_entropy(model: ImageToSphere, image_size: int, n: int = 40, seed: int = SUITE_SEED_OFFSET,
                batch_size: int = 32) -> dict[str, float]:
    """Mean entropy (nats; uniform 2.29) of the model's distributions on :data:`OOD_INPUTS`, ``n`` each.
    An honest model is unsure there: its entropy rises above that on clean images of its objects."""
    from pose_core import preprocess
    from pose_core.data.backgrounds import PhotoLibrary, procedural
    from train.datasets import resolve_mesh_path

    rng = np.random.default_rng(seed)
    photos = PhotoLibrary(split="heldout")
    from pose_core.data.shapes import mesh_shape

    bunny = mesh_shape(resolve_mesh_path(_UNKNOWN_MESH), name="bunny")
    data = ShapesDataset([bunny], size=n, image_size=image_size, seed=seed)
    images = {  # (n, 3, H, W) in [0, 1]
        "empty_photo": preprocess.to_tensor(np.stack([photos.crop(rng, image_size, image_size) for _ in range(n)])),
        "empty_grey": preprocess.to_tensor(np.stack([procedural("grey", rng, image_size, image_size)] * n)),
        "unknown_object": torch.stack([data[i]["image"] for i in range(n)]),
    }
    model.eval()
    out = {}
    for name, imgs in images.items():
        ents = []
        for start in range(0, n, batch_size):
            x = imgs[start:start + batch_size].to(model.device)
            logits = model.grid_logits(model.calibrated(model(x).float()), COVERAGE_LEVEL)
            ents.append(calibration.entropy(logits).cpu())
        out[name] = float(torch.cat(ents).mean())
    return out


def condition(name: str) -> Randomization:
    """The :class:`Randomization` of condition ``name`` (:data:`CONDITIONS`)."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; expected one of {list(CONDITIONS)}")
    return Randomization.off(**CONDITIONS[name])


@torch.no_grad()
def _measure(model: ImageToSphere, dataset: ShapesDataset, grid_level: int, batch_size: int,
             keep: int) -> dict[str, Any]:
    """Per-item numbers of ``model`` on ``dataset`` and the first ``keep`` images per shape (montage)."""
    from train.datasets import collate

    s = model.inference
    out: dict[str, list] = {k: [] for k in ("shape", "error", "ll", "entropy", "cov", "occluded")}
    kept: dict[str, list] = {}
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate(items)
        images = batch["image"].to(model.device)
        eq = [e.to(model.device) for e in batch["equivalents"]]
        coeffs = model.calibrated(model(images).float())
        dist = SO3Distribution.from_fourier(coeffs, model.lmax, s.base_level, s.target_level, s.top_k)
        err = metrics.nearest_equivalent_error(dist.mode(), eq).cpu()
        logits = model.grid_logits(coeffs, COVERAGE_LEVEL)
        cells, mask = calibration.truth_cells([e.cpu() for e in batch["equivalents"]], COVERAGE_LEVEL)
        out["error"].append(err)
        out["ll"].append(metrics.grid_log_likelihood(coeffs, model.lmax, eq, level=grid_level).cpu())
        out["entropy"].append(calibration.entropy(logits).cpu())
        out["cov"].append(calibration.hdr_coverage(logits.cpu(), cells, mask).cpu())
        out["shape"].extend(batch["shape"])
        out["occluded"].extend(float(it.get("occluded", 0.0)) for it in items)
        for b, name in enumerate(batch["shape"]):
            if len(kept.setdefault(name, [])) < keep:
                kept[name].append((items[b]["image"], math.degrees(float(err[b]))))
    return {
        "shape": out["shape"], "error": torch.cat(out["error"]).numpy(), "ll": torch.cat(out["ll"]).double().numpy(),
        "entropy": torch.cat(out["entropy"]).numpy(), "cov": torch.cat(out["cov"]).numpy(),
        "occluded": np.asarray(out["occluded"]), "kept": kept,
    }


def _summary(errors: np.ndarray, ll: np.ndarray, ent: np.ndarray, cov: np.ndarray, occ: np.ndarray) -> dict[str, float]:
    deg = np.degrees(errors)
    return {"n": int(deg.size), "acc@15": float((deg < 15).mean()), "acc@30": float((deg < 30).mean()),
            "median_deg": float(np.median(deg)), "ll": float(ll.mean()), "entropy": float(ent.mean()),
            "cov50": float(cov[:, 0].mean()), "cov90": float(cov[:, 1].mean()), "occluded": float(occ.mean())}


def run_suite(
    model: ImageToSphere,
    shapes: Sequence[Any],
    image_size: int,
    per_shape: int = 40,
    seed: int = SUITE_SEED_OFFSET,
    conditions: Sequence[str] | None = None,
    grid_level: int = 4,
    batch_size: int = 32,
    keep: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """The suite on ``shapes`` (names or :class:`~pose_core.data.shapes.Shape`); see the module docstring.

    Returns ``{"per_shape", "seed", "grid_level", "coverage_level", "seconds", "conditions": {name:
    {"mean": {...}, "shapes": {shape: {...}}}}, "montage": {name: {shape: [(image, error_deg)]}}}``
    (``montage`` holds tensors; :func:`main` drops it from the JSON).
    """
    start = time.perf_counter()
    names = list(CONDITIONS) if conditions is None else list(conditions)
    model.eval()
    result: dict[str, Any] = {"per_shape": per_shape, "seed": seed, "grid_level": grid_level,
                              "coverage_level": COVERAGE_LEVEL, "conditions": {}, "montage": {}}
    for name in names:
        t0 = time.perf_counter()
        data = ShapesDataset(list(shapes), size=per_shape, image_size=image_size, seed=seed,
                             randomization=condition(name))
        m = _measure(model, data, grid_level, batch_size, keep)
        labels = np.asarray(m["shape"], dtype=object)
        per = {}
        for shape in data.shape_names:
            sel = labels == shape
            per[shape] = _summary(m["error"][sel], m["ll"][sel], m["entropy"][sel], m["cov"][sel], m["occluded"][sel])
        mean = {k: float(np.mean([per[s][k] for s in per])) for k in METRICS}
        mean["n"] = int(len(labels))
        result["conditions"][name] = {"mean": mean, "shapes": per}
        result["montage"][name] = m["kept"]
        if progress:
            print(f"  {name:<14} Acc@15 {mean['acc@15']:.2f}  median {mean['median_deg']:5.1f}  LL {mean['ll']:6.2f}  "
                  f"cov90 {mean['cov90']:.2f}  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    result["seconds"] = time.perf_counter() - start
    return result


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run_suite`'s means per condition."""
    head = ("| condition | Acc@15 | Acc@30 | median | LL | entropy | in 50 % HDR | in 90 % HDR |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [head]
    for name, c in result["conditions"].items():
        m = c["mean"]
        label = name if not name.startswith("occl") else f"{name} (achieved {m['occluded']:.2f})"
        rows.append(f"| {label} | {m['acc@15']:.2f} | {m['acc@30']:.2f} | {m['median_deg']:.1f}° | {m['ll']:.2f} | "
                    f"{m['entropy']:.2f} | {m['cov50']:.2f} | {m['cov90']:.2f} |")
    return "\n".join(rows)


def write_montage(result: dict[str, Any], path: str | Path, scale: int = 1) -> Path:
    """One row per condition, one image per shape (its error in degrees below it), as a PNG."""
    from PIL import Image, ImageDraw

    montage = result["montage"]
    names = list(montage)
    shapes = list(dict.fromkeys(s for n in names for s in montage[n]))
    first = next(iter(montage[names[0]].values()))[0][0]
    size = first.shape[-1] * scale
    label_w, text_h = 110, 14
    canvas = Image.new("RGB", (label_w + size * len(shapes), (size + text_h) * len(names) + text_h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, shape in enumerate(shapes):
        draw.text((label_w + j * size + 2, 0), shape, fill="black")
    for i, name in enumerate(names):
        y = text_h + i * (size + text_h)
        draw.text((2, y + size // 2), name, fill="black")
        for j, shape in enumerate(shapes):
            entries = montage[name].get(shape) or []
            if not entries:
                continue
            image, err = entries[0]
            arr = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(arr).resize((size, size), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + j * size, y))
            draw.text((label_w + j * size + 2, y + size), f"{err:.0f} deg", fill="red" if err > 15 else "green")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def checkpoint_shapes(payload: dict) -> tuple[list[Any], int, int]:
    """``(shapes, image_size, data seed)`` of a checkpoint's training data (rendered data only)."""
    from train.config import config_from_dict
    from train.datasets import dataset_shapes, rendered_source

    raw = (payload.get("meta") or {}).get("train_config") or payload.get("train_config")
    if not isinstance(raw, dict):
        raise ValueError("the checkpoint holds no training config: cannot tell which shapes it knows")
    data = config_from_dict(raw).data
    if data.name == "shards":
        try:
            data = rendered_source(data)
        except ValueError as exc:
            raise ValueError(f"the checkpoint was trained on shards that are not here to tell its shapes: {exc}") \
                from exc
    if data.name not in ("symsol", "mesh"):
        raise ValueError(f"the suite renders shapes; this checkpoint was trained on {data.name!r}")
    return dataset_shapes(data), int(data.image_size), int(data.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from pose_core.model import load_model, read_checkpoint

    p = argparse.ArgumentParser(prog="train/robustness.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--per-shape", type=int, default=40, help="images per shape and condition (default 40)")
    p.add_argument("--conditions", default=None, help=f"comma-separated subset of {','.join(CONDITIONS)}")
    p.add_argument("--seed-offset", type=int, default=SUITE_SEED_OFFSET)
    p.add_argument("--grid-level", type=int, default=4, help="grid of the log-likelihood (default 4)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--montage", default=None, help="write a PNG: one row per condition, one image per shape")
    p.add_argument("--no-ood", action="store_true", help="skip the entropy on inputs unlike the training data")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.per_shape < 1:
        p.error(f"--per-shape must be >= 1, got {args.per_shape}")
    conditions = None if args.conditions is None else [c.strip() for c in args.conditions.split(",") if c.strip()]
    for c in conditions or []:
        if c not in CONDITIONS:
            p.error(f"unknown condition {c!r}; expected some of {','.join(CONDITIONS)}")
    try:
        payload = read_checkpoint(args.checkpoint)
        shapes, size, seed = checkpoint_shapes(payload)
    except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
        p.error(str(exc))
    model = load_model(args.checkpoint, device=args.device)
    result = run_suite(model, shapes, size, per_shape=args.per_shape, seed=seed + args.seed_offset,
                       conditions=conditions, grid_level=args.grid_level, batch_size=args.batch_size, progress=True)
    print(f"{args.checkpoint}: {args.per_shape} images per shape and condition, temperature "
          f"{model.inference.temperature:.3g}, {result['seconds']:.0f} s (uniform: LL -2.29, entropy 2.29)")
    print(format_table(result))
    if not args.no_ood:
        result["ood_entropy"] = ood_entropy(model, size, n=args.per_shape, seed=seed + args.seed_offset)
        clean = result["conditions"].get("clean", {}).get("mean", {}).get("entropy")
        print("entropy on inputs unlike the training data (nats; uniform 2.29"
              + (f", clean {clean:.2f}" if clean is not None else "") + "): "
              + ", ".join(f"{k} {v:.2f}" for k, v in result["ood_entropy"].items()))
    if args.montage:
        print(f"montage: {write_montage(result, args.montage)}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in result.items() if k != "montage"}
        record.update({"checkpoint": str(args.checkpoint), "temperature": model.inference.temperature})
        out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
