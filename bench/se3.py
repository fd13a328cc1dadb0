"""SE(3): the SpyroPose model against today's baseline (Image2Sphere rotation + box / nominal translation).

    .venv/bin/python bench/se3.py [--per-object 100] [--json docs/benchmarks/se3.json]
        [--object duck=checkpoints/se3_duck.pt ...] [--baseline checkpoints/demo.pt] [--quick]

Held-out scenes (:class:`pose_core.data.scenes.SE3RenderDataset`, the seed of each checkpoint's
training data plus ``HELDOUT_SEED_OFFSET`` plus 1: never trained on, nor seen by the training's own
evaluation): the object anywhere in a 640x480 view at 0.3-1.5 m with its simulated detection box,
as the checkpoint's training config renders them. Every estimate is made by
:class:`pose_core.pipeline.PoseEstimator` on the full frame with the box, the call the node makes:

* ``spyropose``: the SE(3) checkpoint (its mode; its 6x6 covariance; its joint log-density);
* ``i2s_nominal``: the Image2Sphere checkpoint with the translation of today's pipeline without
  depth, ``nominal_distance_m`` (1 m) along the box's ray;
* ``i2s_box``: the same rotation with the translation from the box's size and the object's apparent
  size (:func:`pose_core.pinhole.translation_from_box`: the SpyroPose model's initial guess), to
  show what the learned translation adds to it;
* ``spyropose_depth``, ``i2s_depth``: the same with an aligned depth image of the object
  (:func:`pose_core.data.scenes.depth_image`, exact, no sensor noise): SpyroPose's crop is centred on
  the median depth in the box (plus half the object's radius), Image2Sphere's translation is the
  pipeline's back-projection of the box centre at that median depth.

Reported per object and method: rotation error to the nearest equivalent (``acc@15``,
``median_deg``), translation error (``t_median_mm``, ``t_median_frac_distance``,
``t_median_frac_diameter``), ``ll_se3`` (mean log-density of the true pose, Haar volume pi^2 x m^3;
the baseline's: its rotation density times the Gaussian of its translation covariance),
``inside_95`` (the truth inside the 95 % ellipsoid of the translation covariance; ``ll_se3`` and
``inside_95`` are ``None`` for ``i2s_box``, which has no translation covariance; ``ll_outside_support``:
the share of images whose true pose has density 0, outside the SE(3) model's translation box) and
``ms_per_object`` (``estimate()`` wall time with one box, p50 / p90, this machine, each model on the
backend the node would pick, ``auto``: ONNX Runtime for Image2Sphere on a CPU, torch for SpyroPose;
compare within one run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402

DEFAULT_JSON = REPO / "docs" / "benchmarks" / "se3.json"
DEFAULT_OBJECTS = ("duck=checkpoints/se3_duck.pt", "cube=checkpoints/se3_cube.pt")
METHODS = ("spyropose", "i2s_nominal", "i2s_box", "spyropose_depth", "i2s_depth")


def _heldout_scenes(checkpoint: dict, size: int):
    """The held-out scenes of an SE(3) checkpoint's training data (another seed than training and its eval)."""
    from train.config import config_from_dict
    from train.datasets import HELDOUT_SEED_OFFSET, scenes_dataset

    cfg = config_from_dict(checkpoint["train_config"] if "train_config" in checkpoint
                           else checkpoint["meta"]["train_config"])
    data = dataclasses.replace(cfg.data, seed=cfg.data.seed + HELDOUT_SEED_OFFSET + 1, size=size)
    return scenes_dataset(data)


def _gaussian_log_density(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    d = x - mean
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        return -math.inf
    return float(-0.5 * (d @ np.linalg.solve(cov, d) + logdet + 3 * math.log(2 * math.pi)))


def _i2s_rotation_log_density(estimator: Any, rgb: np.ndarray, K: np.ndarray, box: Any, R_eq: torch.Tensor) -> float:
    """Log-density (Haar pi^2) of the Image2Sphere distribution of ``box``'s crop at the true rotations
    ``R_eq`` ``(E, 3, 3)`` (camera frame), averaged over them: the crop's distribution evaluated in the
    crop's frame (``R_ray^T R``), as the pipeline builds it."""
    from pose_core import crops, pinhole, preprocess

    region = pinhole.detection_region(box.center, box.size, estimator.settings.detection_crop_scale)
    x = preprocess.crop_input(rgb, region, estimator.input_size)
    dist = estimator.model.predict(x, target_level=estimator.target_level)
    R_ray = crops.crop_ray_rotation(K, pinhole.region_center(region, rgb.shape[1], rgb.shape[0]))
    R_crop = (R_ray.T.to(torch.float64) @ R_eq.to(torch.float64)).to(dist.log_mass.dtype)
    return float(dist.log_prob(R_crop[None])[0].double().mean())


def _row(errors_deg, t_err, dist, lls, inside, ms, diameter) -> dict[str, Any]:
    e, te, d = np.asarray(errors_deg), np.asarray(t_err), np.asarray(dist)
    ll = np.asarray(lls, dtype=np.float64)
    finite = np.isfinite(ll)
    known = ~np.isnan(ll)  # NaN: the method has no density (no translation covariance)
    return {
        "n": int(e.size), "acc@15": float(np.mean(e <= 15.0)), "acc@30": float(np.mean(e <= 30.0)),
        "median_deg": float(np.median(e)), "t_median_mm": 1000.0 * float(np.median(te)),
        "t_median_frac_distance": float(np.median(te / d)), "t_median_frac_diameter": float(np.median(te)) / diameter,
        "ll_se3": float(ll[finite].mean()) if finite.any() else None,
        "ll_outside_support": float(np.mean(~finite[known])) if known.any() else None,
        "inside_95": float(np.mean(inside)) if known.any() else None, "ms_per_object": common.summarize_ms(ms),
    }


def run_object(name: str, se3_path: Path, i2s_path: Path, n: int) -> dict[str, Any]:
    from pose_core import metrics, pinhole, so3
    from pose_core.model import load_model, read_checkpoint
    from pose_core.pipeline import Box, EstimatorSettings, PoseEstimator

    payload = read_checkpoint(se3_path)
    scenes = _heldout_scenes(payload, n)
    se3 = PoseEstimator(load_model(se3_path), EstimatorSettings(temporal_filter=False))
    i2s = PoseEstimator(load_model(i2s_path).use_backend("auto"), EstimatorSettings(temporal_filter=False))
    obj = se3.model.object
    acc: dict[str, dict[str, list]] = {m: {k: [] for k in ("err", "t", "ll", "in", "ms")} for m in METHODS}
    dist_true = []
    for i in range(len(scenes)):
        frame = scenes.full_frame(i, depth=True)
        rgb, K = frame["rgb"], np.asarray(frame["K_full"], np.float64)
        u, v, w, h = (float(x) for x in frame["box"])
        box = Box((u, v), (w, h))
        R_true = np.asarray(frame["rotation"], np.float64)
        t_true = np.asarray(frame["translation"], np.float64)
        R_eq = torch.as_tensor(R_true @ np.asarray(scenes.shape(0).symmetries))  # (E, 3, 3)
        dist_true.append(float(np.linalg.norm(t_true)))
        for method, est, depth in (("spyropose", se3, None), ("i2s_nominal", i2s, None),
                                   ("spyropose_depth", se3, frame["depth"]), ("i2s_depth", i2s, frame["depth"])):
            t0 = time.perf_counter()
            out = est.estimate(rgb, K, depth=depth, boxes=[box])
            ms = 1000 * (time.perf_counter() - t0)
            if not out.objects:
                raise RuntimeError(f"{name} item {i}: {method} rejected the box: {out.rejected}")
            o = out.objects[0]
            R = so3.quat_to_matrix(torch.as_tensor(o.orientation))
            err = math.degrees(float(metrics.nearest_equivalent_error(R[None], R_eq[None])[0]))
            variants = [(method, o.translation, o.covariance[:3, :3])]
            if method in ("i2s_nominal", "i2s_depth"):
                log_rot = _i2s_rotation_log_density(est, rgb, K, box, R_eq)
            if method == "i2s_nominal":
                t_box = pinhole.translation_from_box(K, (u, v), (w, h), obj.apparent_size_m)
                variants.append(("i2s_box", t_box, None))
            for m, t_est, cov in variants:
                a = acc[m]
                a["err"].append(err)
                a["t"].append(float(np.linalg.norm(np.asarray(t_est) - t_true)))
                a["ms"].append(ms)
                if method == "spyropose":
                    item = scenes[i]  # the very crop the pipeline made (tested): its distribution's log-density
                    dist = se3.model.predict(item["image"][None], item["K"][None], item["t_hat"][None])
                    a["ll"].append(float(metrics.se3_log_likelihood(dist, [R_eq], torch.as_tensor(t_true)[None])[0]))
                elif method == "spyropose_depth":
                    a["ll"].append(math.nan)  # (its crop is centred on the depth guess: not recomputed here)
                elif cov is not None:
                    a["ll"].append(log_rot + _gaussian_log_density(t_true, np.asarray(t_est), cov))
                else:
                    a["ll"].append(math.nan)
                a["in"].append(bool(cov is not None and metrics.inside_ellipsoid(t_true[None], np.asarray(t_est)[None],
                                                                                 cov[None])[0]))
    rows = {m: _row(a["err"], a["t"], dist_true, a["ll"], a["in"], a["ms"], obj.diameter_m) for m, a in acc.items()}
    return {"object": name, "checkpoint": str(se3_path), "diameter_m": obj.diameter_m, "n": len(scenes),
            "methods": rows}


def format_table(results: list[dict[str, Any]]) -> str:
    head = (f"{'object':8s} {'method':12s} {'Acc@15':>7s} {'median':>7s} {'t med mm':>9s} {'% dist':>7s} "
            f"{'% diam':>7s} {'LL SE3':>8s} {'in 95%':>7s} {'ms p50':>7s}")
    lines = [head, "-" * len(head)]
    for r in results:
        for m, row in r["methods"].items():
            ll = "n/a" if row["ll_se3"] is None else f"{row['ll_se3']:.2f}"
            inside = "n/a" if row["inside_95"] is None else f"{row['inside_95']:.2f}"
            lines.append(f"{r['object']:8s} {m:12s} {row['acc@15']:7.2f} {row['median_deg']:6.1f}° "
                         f"{row['t_median_mm']:9.1f} {100 * row['t_median_frac_distance']:6.2f}% "
                         f"{100 * row['t_median_frac_diameter']:6.1f}% {ll:>8s} {inside:>7s} "
                         f"{row['ms_per_object']['p50_ms']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--object", action="append", default=None, metavar="NAME=CHECKPOINT",
                   help=f"an SE(3) checkpoint to measure (repeatable; default {' '.join(DEFAULT_OBJECTS)})")
    p.add_argument("--baseline", type=Path, default=REPO / "checkpoints" / "demo.pt",
                   help="the Image2Sphere checkpoint of the baseline (it must know the objects)")
    p.add_argument("--per-object", type=int, default=100, help="held-out scenes per object")
    p.add_argument("--quick", action="store_true", help="8 scenes per object (a smoke test)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 8 if args.quick else args.per_object
    results = []
    for spec in args.object or DEFAULT_OBJECTS:
        name, _, path = spec.partition("=")
        path_p = Path(path) if Path(path).is_absolute() else REPO / path
        if not path_p.is_file():
            p.error(f"--object {spec}: no checkpoint at {path_p}")
        t0 = time.perf_counter()
        results.append(run_object(name, path_p, args.baseline, n))
        print(f"{name}: {n} scenes in {time.perf_counter() - t0:.0f} s", flush=True)
    print(format_table(results))
    record = {**common.run_record(torch.device("cpu")), "per_object": n, "baseline": str(args.baseline),
              "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
