"""Evaluate an ImageToSphere checkpoint: LL, Acc@15, Acc@30, median error, overall and per shape.

Usage (from the repository root)::

    python train/evaluate.py --checkpoint checkpoints/demo.pt --dataset symsol [--json OUT]
        [--plots DIR] [--grid-level 5] [--limit N] [--size N] [--root DIR]

``--dataset``: a dataset name (``symsol``, ``symsol_dir``, ``mesh``, ``modelnet10``, ``pascal3d``) or
a YAML file (an SE(3) checkpoint: ``scenes``, its training data's held-out twin, scored by
:func:`evaluate_se3`). With a name equal to the checkpoint's training data, the held-out twin of that data is
used (rendered data: same shapes and image size, another seed; on-disk data: split ``test``); another
name takes the :class:`train.config.DataConfig` defaults (with ``--root``). A YAML file is either a
training config (its ``eval_data``, else the held-out twin of its ``data``) or a bare ``DataConfig``
mapping, used as it is.

Metrics (definitions in :mod:`pose_core.metrics`): the prediction is the mode of the coarse-to-fine
distribution (``model.inference`` settings); errors are to the nearest equivalent rotation;
``ll`` is the IPDF / Image2Sphere grid log-likelihood at ``--grid-level`` (level 5 = 2,359,296 cells,
as Image2Sphere evaluates), ``ll_continuous`` the band-limited log-density; both averaged over each
image's equivalents, then over images.

JSON (``--json``) keys: ``checkpoint``, ``dataset`` (the DataConfig dict), ``grid_level``,
``ll_convention``, ``n``, ``seconds``, ``overall`` (= ``groups["all"]``) and ``groups``: per shape
or category, plus ``all`` and (several groups) ``mean_of_groups``; each group has ``n``,
``acc@15``, ``acc@30`` (fractions), ``median_deg``, ``mean_deg``, ``ll``, ``ll_continuous``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from torch.utils.data import DataLoader, Dataset, Subset

from pose_core import metrics
from pose_core.distribution import SO3Distribution
from pose_core.model import ImageToSphere

__all__ = ["evaluate", "evaluate_se3", "evaluate_classifier", "evaluate_reconstruction", "score_reconstructions",
           "record_se3", "format_table", "resolve_eval_data", "main", "GROUP_KEYS",
           "SE3_KEYS"]

#: Keys of every group in the result of :func:`evaluate`.
GROUP_KEYS = ("n", "acc@15", "acc@30", "median_deg", "mean_deg", "ll", "ll_continuous")


def _subset(dataset: Dataset, limit: int | None) -> Dataset:
    """At most ``limit`` items, evenly spaced (datasets are laid out shape by shape: all shapes stay)."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    idx = np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    return Subset(dataset, idx.tolist())


@torch.no_grad()
def evaluate(
    model: ImageToSphere,
    dataset: Dataset,
    grid_level: int = 5,
    batch_size: int = 16,
    limit: int | None = None,
    num_workers: int = 0,
    plots_dir: str | Path | None = None,
    num_plots: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (items with ``image``, ``equivalents``, ``shape``).

    Returns ``{"grid_level", "ll_convention", "n", "seconds", "overall", "groups"}`` (see the module
    docstring). The model is put in eval mode and left so.
    """
    from train.datasets import collate

    if not 0 <= grid_level <= 6:
        raise ValueError(f"grid_level must be in [0, 6], got {grid_level}")
    start = time.perf_counter()
    model.eval()
    device = model.device
    data = _subset(dataset, limit)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                        multiprocessing_context="spawn" if num_workers > 0 else None)
    s = model.inference
    errors, lls, lls_cont, groups = [], [], [], []
    plotted = 0
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False)
    for batch in it:
        images = batch["image"].to(device)
        eq = [e.to(device) for e in batch["equivalents"]]
        coeffs = model.calibrated(model(images).float())  # (B, so3_dim), as predict sees them
        dist = SO3Distribution.from_fourier(coeffs, model.lmax, s.base_level, s.target_level, s.top_k)
        errors.append(metrics.nearest_equivalent_error(dist.mode(), eq).cpu())
        lls.append(metrics.grid_log_likelihood(coeffs, model.lmax, eq, level=grid_level).cpu())
        lls_cont.append(metrics.log_likelihood(dist, eq).cpu())
        groups.extend(batch["shape"])
        if plots_dir is not None and plotted < num_plots:
            from pose_core.plots import plot_so3_distribution

            for b in range(min(num_plots - plotted, images.shape[0])):
                fig = plot_so3_distribution(
                    dist, b=b, gt=eq[b].cpu(), image=images[b].cpu(),
                    path=Path(plots_dir) / f"{plotted:03d}_{batch['shape'][b]}.png",
                    title=f"{batch['shape'][b]}: error {math.degrees(float(errors[-1][b])):.1f} deg",
                )
                fig.clear()
                plotted += 1
    if not errors:
        raise ValueError("the evaluation dataset is empty")
    err = torch.cat(errors)
    table = metrics.aggregate_by(groups, err, torch.cat(lls))
    cont = metrics.aggregate_by(groups, err, torch.cat(lls_cont))
    for name in table:
        table[name]["ll_continuous"] = cont[name]["ll"]
    return {
        "grid_level": grid_level,
        "ll_convention": (
            f"ll: log(softmax probability of the level-{grid_level} grid cell holding the ground truth * N / pi^2), "
            "IPDF/Image2Sphere; ll_continuous: band-limited log-density; both Haar volume pi^2, averaged over "
            "each image's equivalent rotations, then over images"
        ),
        "n": int(err.numel()),
        "seconds": time.perf_counter() - start,
        "overall": table["all"],
        "groups": table,
    }


#: Keys of :func:`evaluate_se3`'s ``overall``.
SE3_KEYS = ("n", "acc@15", "acc@30", "median_deg", "t_median_mm", "t_median_frac_distance", "t_median_frac_diameter",
            "ll_se3", "outside_box", "inside_95", "seconds_per_image")


@torch.no_grad()
def score_reconstructions(reconstruct: Any, dataset: Any, batch_size: int = 16, n_points: int = 5000,
                          occupancy: Any = None, seed: int = 0) -> dict[str, Any]:
    """Score ``reconstruct`` (images ``(B, 3, S, S)`` -> points ``(B, n, 3)``, object frame) on every view of
    ``dataset`` (a :class:`pose_core.data.reconstruction.ReconstructionDataset`) against its ground-truth surface
    points (all of them): ``overall`` and ``per_class`` means of :func:`pose_core.pointsets.shape_scores`, plus
    ``iou`` (:func:`pose_core.voxels.voxel_iou` at the data's voxel grid) when ``occupancy`` (images -> occupancy
    probabilities ``(B, R, R, R)``) is given; ``seconds``: time in ``reconstruct`` per image. ``n_points`` is what
    ``reconstruct`` is asked for; ``seed`` seeds the torch generator it receives (sampling methods)."""
    from pose_core.data.reconstruction import collate_reconstruction
    from pose_core.pointsets import shape_scores
    from pose_core.voxels import voxel_iou

    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list[float]] = {}
    classes: list[str] = []
    seconds = 0.0
    # batches by hand: a DataLoader draws its base seed from the global RNG, which a resumed run must not see
    for start in range(0, len(dataset), batch_size):
        batch = collate_reconstruction([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        t0 = time.perf_counter()
        pred = reconstruct(batch["image"], n_points, gen)
        seconds += time.perf_counter() - t0
        scores = shape_scores(pred.float().cpu(), batch["points"])
        if occupancy is not None:
            grid = occupancy(batch["image"]).float().cpu()
            if grid.shape[1:] != batch["voxels"].shape[1:]:  # another resolution: compare on the data's grid
                grid = torch.nn.functional.interpolate(grid[:, None], size=batch["voxels"].shape[1:],
                                                       mode="trilinear", align_corners=False)[:, 0]
            scores["iou"] = voxel_iou(grid, batch["voxels"])
        for k, v in scores.items():
            rows.setdefault(k, []).extend(v.double().tolist())
        classes += batch["shape"]
    n = len(classes)
    overall: dict[str, Any] = {k: float(np.mean(v)) for k, v in rows.items()}
    overall["n"] = n
    per_class = {}
    for name in sorted(set(classes)):
        idx = [i for i, c in enumerate(classes) if c == name]
        per_class[name] = {k: float(np.mean([v[i] for i in idx])) for k, v in rows.items()} | {"n": len(idx)}
    return {"overall": overall, "per_class": per_class, "seconds_per_image": seconds / max(n, 1)}


def evaluate_reconstruction(model: Any, dataset: Any, batch_size: int = 16, n_points: int = 5000,
                            seed: int = 0) -> dict[str, Any]:
    """:func:`score_reconstructions` of a :class:`pose_core.models.reconstruction.ShapeReconstructor` (in eval
    mode), with volumetric IoU for the voxel and implicit decoders. The points decoder answers with its own
    ``n_points``; the others are sampled with ``n_points``."""
    model.eval()
    device = model.device

    def run(images, n, gen):
        return model.reconstruct(images.to(device), n_points=n, generator=gen if device.type == "cpu" else None)

    occupancy = None
    if model.config.decoder in ("voxels", "implicit"):
        resolution = dataset.config.voxel_resolution if model.config.decoder == "implicit" else None

        def occupancy(images):  # on the data's grid (the implicit decoder is queried at its cell centres)
            return model.occupancy_grid(images.to(device), resolution=resolution)
    return score_reconstructions(run, dataset, batch_size=batch_size, n_points=n_points, occupancy=occupancy,
                                 seed=seed)


@torch.no_grad()
def evaluate_classifier(model: Any, dataset: Any, batch_size: int = 64) -> dict[str, Any]:
    """Shape classifier (:data:`pose_core.model.CLASSIFIER_KINDS`) on a ``ShapeClassDataset``: ``overall``
    (``accuracy``, ``nll`` mean negative log-likelihood of the true class, ``n``), ``per_class`` accuracy,
    ``confusion`` ``[true][predicted]`` counts and ``seconds`` (model time, excluding data)."""
    from pose_core.data.shape_classes import collate_shapes

    model.eval()
    device = next(model.parameters()).device
    if list(model.class_names) != list(dataset.class_names):
        raise ValueError(f"the model's classes {model.class_names} are not the data's {dataset.class_names}")
    k = len(dataset.class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    nll, seconds = 0.0, 0.0
    # batches by hand: a DataLoader draws its base seed from the global RNG, which a resumed run must not see
    for start in range(0, len(dataset), batch_size):
        batch = collate_shapes([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        t0 = time.perf_counter()
        logp = model(batch[model.input_key].to(device)).float().log_softmax(-1).cpu()
        seconds += time.perf_counter() - t0
        labels = batch["label"]
        nll -= float(logp.gather(1, labels[:, None]).sum())
        np.add.at(confusion, (labels.numpy(), logp.argmax(-1).numpy()), 1)
    n = int(confusion.sum())
    per_class = {name: float(confusion[i, i] / max(confusion[i].sum(), 1))
                 for i, name in enumerate(dataset.class_names)}
    return {"overall": {"accuracy": float(np.trace(confusion) / max(n, 1)), "nll": nll / max(n, 1), "n": n},
            "per_class": per_class, "confusion": confusion.tolist(), "seconds": seconds}


@torch.no_grad()
def evaluate_se3(model: Any, dataset: Dataset, batch_size: int = 16, limit: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Metrics of an SE(3) model (:class:`pose_core.models.SpyroPose`) on SE(3) items (``image``, ``K``,
    ``t_hat``, ``translation``, ``equivalents``: :class:`pose_core.data.scenes.SE3RenderDataset`).

    ``overall`` (:data:`SE3_KEYS`): the joint mode's rotation error to the nearest equivalent
    (``acc@15``, ``acc@30``, ``median_deg``) and translation error (median in mm, and as a fraction of
    the true distance and of the object's diameter); ``ll_se3`` the mean log-density of the true pose
    (Haar volume pi^2 x m^3, averaged over the equivalents) over the images whose truth lies in the
    model's translation box, ``outside_box`` the share that does not; ``inside_95`` the share whose
    true translation lies in the 95 % ellipsoid of the translation block of the 6x6 covariance about
    the mode; ``seconds_per_image`` the model's time (batched, this machine).
    """
    from pose_core.data.scenes import se3_collate

    start = time.perf_counter()
    model.eval()
    data = _subset(dataset, limit)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=se3_collate)
    rot_err, t_err, dist_true, ll, inside = [], [], [], [], []
    model_seconds = 0.0
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval se3", leave=False)
    for batch in it:
        t0 = time.perf_counter()
        dist = model.predict(batch["image"], batch["K"], batch["t_hat"]).to("cpu")
        R_mode, t_mode = dist.mode()
        model_seconds += time.perf_counter() - t0
        truth = batch["translation"].to(torch.float64)
        rot_err.append(metrics.nearest_equivalent_error(R_mode.to(torch.float64),
                                                        [e.to(torch.float64) for e in batch["equivalents"]]))
        t_err.append(metrics.translation_error(t_mode, truth))
        dist_true.append(torch.linalg.norm(truth, dim=1))
        ll.append(metrics.se3_log_likelihood(dist, batch["equivalents"], truth))
        cov = dist.covariance().to(torch.float64)[:, :3, :3].numpy()
        inside.append(torch.from_numpy(metrics.inside_ellipsoid(truth.numpy(), t_mode.to(torch.float64).numpy(), cov)))
    if not rot_err:
        raise ValueError("the evaluation dataset is empty")
    err, te, dt, lls, ins = (torch.cat(x) for x in (rot_err, t_err, dist_true, ll, inside))
    finite = torch.isfinite(lls)
    n = int(err.numel())
    overall = {
        "n": n,
        "acc@15": metrics.accuracy_at(err, 15.0),
        "acc@30": metrics.accuracy_at(err, 30.0),
        "median_deg": math.degrees(metrics.median_error(err)),
        "t_median_mm": 1000.0 * float(te.median()),
        "t_median_frac_distance": float((te / dt).median()),
        "t_median_frac_diameter": float(te.median()) / float(model.object.diameter_m),
        "ll_se3": float(lls[finite].mean()) if finite.any() else -math.inf,
        "outside_box": float((~finite).double().mean()),
        "inside_95": float(ins.double().mean()),
        "seconds_per_image": model_seconds / n,
    }
    return {"n": n, "seconds": time.perf_counter() - start, "overall": overall, "groups": {"all": overall}}


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate` as a text table, one row per group."""
    level = result["grid_level"]
    head = f"{'group':<16}{'N':>7}{f'LL(L{level})':>10}{'LL(cont)':>10}{'Acc@15':>9}{'Acc@30':>9}{'Median°':>9}"
    rows = [head, "-" * len(head)]
    for name, g in result["groups"].items():
        rows.append(
            f"{name:<16}{g['n']:>7d}{g['ll']:>10.3f}{g['ll_continuous']:>10.3f}"
            f"{g['acc@15']:>9.3f}{g['acc@30']:>9.3f}{g['median_deg']:>9.2f}"
        )
    return "\n".join(rows)


def resolve_eval_data(dataset: str, checkpoint: dict, root: str | None = None, size: int | None = None):
    """The :class:`train.config.DataConfig` that ``--dataset`` names (see the module docstring)."""
    import yaml

    from train.config import DataConfig, EvalConfig, _coerce, config_from_dict
    from train.datasets import heldout_config

    train_cfg = (checkpoint.get("meta") or {}).get("train_config") or checkpoint.get("train_config")
    eval_size = EvalConfig().size if size is None else size
    if dataset.endswith((".yaml", ".yml")):
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(f"dataset config not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping, got {type(raw).__name__}")
        if "data" in raw:
            cfg = config_from_dict(raw)
            data = cfg.eval_data or heldout_config(cfg.data, size if size is not None else cfg.eval.size)
        else:
            data = _coerce(raw, DataConfig, "dataset")
    elif isinstance(train_cfg, dict) and train_cfg.get("data", {}).get("name") == dataset:
        cfg = config_from_dict(train_cfg)
        data = heldout_config(cfg.data, eval_size)
    else:
        kwargs: dict[str, Any] = {"name": dataset, "root": root}
        if isinstance(train_cfg, dict) and "image_size" in train_cfg.get("data", {}):
            kwargs["image_size"] = train_cfg["data"]["image_size"]
        data = heldout_config(DataConfig(**kwargs), eval_size)
    if root is not None:
        data = dataclasses.replace(data, root=root)
    if size is not None and data.name in ("symsol", "mesh", "scenes"):
        data = dataclasses.replace(data, size=size)
    return data


def record_se3(checkpoint: str | Path, size: int = 100, reproduce_size: int = 6) -> dict[str, Any]:
    """The record shipped beside an SE(3) checkpoint (``checkpoints/se3_<object>.json``): how it was made
    (``command``, ``config``, ``data_seeds``, ``hardware``, ``torch``, ``train_seconds``, ``steps``,
    ``temperature``, ``calibration``, from its ``meta``), ``metrics`` (:func:`evaluate_se3` on ``size``
    held-out scenes of its training data) and ``reproduce`` (the dataset and metrics of a small evaluation
    that ``test/test_shipped_se3.py`` runs again)."""
    from pose_core.model import load_model, read_checkpoint
    from train.datasets import build_dataset

    payload = read_checkpoint(checkpoint)
    meta = payload.get("meta") or {}
    model = load_model(checkpoint)
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "object": payload.get("object")}
    for key in ("command", "train_config", "data_seeds", "hardware", "torch", "train_seconds", "step", "resumed_from",
                "calibration", "exported_from_step"):
        out[key] = meta.get(key)
    out["temperature"] = float(model.temperature)
    for name, n in (("metrics", size), ("reproduce", reproduce_size)):
        data = resolve_eval_data("scenes", payload, size=n)
        res = evaluate_se3(model, build_dataset(data), batch_size=20)
        out[name] = {"dataset": dataclasses.asdict(data), "overall": res["overall"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from pose_core.model import load_model, read_checkpoint
    from train.datasets import build_dataset

    p = argparse.ArgumentParser(prog="train/evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train/train.py (or save_checkpoint)")
    p.add_argument("--dataset", default=None, help="dataset name or YAML file (see the module docstring)")
    p.add_argument("--root", default=None, help="dataset folder for symsol_dir / modelnet10 / pascal3d")
    p.add_argument("--size", type=int, default=None, help="items per shape for rendered data")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plots", default=None, help="write a few PNG plots of predicted distributions here")
    p.add_argument("--num-plots", type=int, default=4)
    p.add_argument("--grid-level", type=int, default=5, help="grid of the IPDF/I2S log-likelihood (default 5)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N items (evenly spaced)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--record", default=None,
                   help="SE(3) checkpoints: write the record shipped beside it (train.evaluate.record_se3) here")
    args = p.parse_args(argv)
    if args.record:
        rec = record_se3(args.checkpoint, size=args.size or 100)
        Path(args.record).write_text(json.dumps(rec, indent=2) + "\n")
        print(f"wrote {args.record}: " + "  ".join(f"{k} {rec['metrics']['overall'][k]:.4g}" for k in SE3_KEYS))
        return 0
    if args.dataset is None:
        p.error("give --dataset (or --record for an SE(3) checkpoint)")

    payload = read_checkpoint(args.checkpoint)
    model = load_model(args.checkpoint, device=args.device)
    data_cfg = resolve_eval_data(args.dataset, payload, root=args.root, size=args.size)
    dataset = build_dataset(data_cfg)
    if getattr(model, "pose_space", "so3") == "se3":
        result = evaluate_se3(model, dataset, batch_size=args.batch_size, limit=args.limit, progress=True)
        result = {"checkpoint": str(args.checkpoint), "dataset": dataclasses.asdict(data_cfg), **result}
        o = result["overall"]
        print(f"{args.checkpoint} on {data_cfg.name} ({result['n']} scenes, {result['seconds']:.1f} s)")
        print("  ".join(f"{k} {o[k]:.4g}" for k in SE3_KEYS))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    result = evaluate(model, dataset, grid_level=args.grid_level, batch_size=args.batch_size, limit=args.limit,
                      num_workers=args.num_workers, plots_dir=args.plots, num_plots=args.num_plots, progress=True)
    result = {"checkpoint": str(args.checkpoint), "dataset": dataclasses.asdict(data_cfg), **result}
    print(f"{args.checkpoint} on {data_cfg.name} ({result['n']} images, {result['seconds']:.1f} s); "
          f"LL at grid level {args.grid_level}")
    print(format_table(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
