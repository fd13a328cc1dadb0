"""Render-and-compare refinement under occlusion: the distribution's mode, NeMo, and ours, side by side.

    .venv/bin/python bench/refine.py [--quick] [--per-level 25] [--json docs/benchmarks/refine.json]
        [--plot docs/benchmarks/refine_occlusion.png] [--checkpoint checkpoints/demo.pt]
        [--refiner checkpoints/refine_duck.pt]

Held-out renders of the pybullet_data duck (:class:`pose_core.data.occlusion.OccludedRenders`,
128 px, procedural backgrounds, Haar-random rotations, seed ``--seed``: never trained on) at the
OccludedPASCAL3D+ levels L0 (none), L1 (20-40 % of the object's pixels hidden), L2 (40-60 %),
L3 (60-80 %), the hidden fraction measured from the masks, occluders a mix of other meshes,
textured patches and gripper-like bars. The same images for every method, one process:

* ``mode``: the mode of the shipped Image2Sphere distribution (``--checkpoint``, its 96 px input);
* ``nemo``: NeMo's recipe with our neural mesh (``--refiner``): the best of 144 grid poses, then
  300 Adam steps (lr 0.05, x0.2 every 100), :meth:`pose_core.refine.RefineSettings.nemo`;
* ``ours``: the distribution's top ``--modes`` modes refined in parallel for ``--steps`` steps, the
  hypothesis of highest posterior weight (prior density x render-and-compare likelihood);
* ``ours_both``: ours plus the grid's best pose as one more hypothesis (the grid's 144 scores added).

Reported per method and level: Acc@pi/6 (30 deg), Acc@pi/18 (10 deg), median error (deg, geodesic;
the duck has no symmetry), ``ms_per_object`` (p50 / p90 of the wall time per image, batch of one,
the Image2Sphere forward included for the methods that use it), and the render-and-compare cost:
``evaluations`` (poses rendered and compared: grid scoring + steps x hypotheses + final scores) and
``iterations`` (Adam steps x hypotheses). The re-weighting of the distribution's samples (``ours``:
``--samples`` more evaluations) is timed and counted apart, ``reweight_evaluations``: it is what
the distribution gains, not part of finding the pose. ``--quick``: 4 images per level (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import run_record, summarize_ms
from pose_core import so3
from pose_core.data.occlusion import OCCLUSION_LEVELS, OccludedRenders
from pose_core.data.shapes import mesh_shape
from pose_core.model import load_model
from pose_core.refine import NeuralMesh, RefineSettings, refine

METHODS = ("mode", "nemo", "ours", "ours_both")


def _metrics(errors_deg: list[float]) -> dict[str, float]:
    e = np.asarray(errors_deg, dtype=np.float64)
    return {"acc_pi6": float((e < 30.0).mean()), "acc_pi18": float((e < 10.0).mean()),
            "median_deg": float(np.median(e)), "n": int(len(e))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(max(1, args.threads))
    i2s = load_model(args.checkpoint)
    nm = load_model(args.refiner)
    if not isinstance(nm, NeuralMesh):
        raise SystemExit(f"{args.refiner} is not a neural mesh checkpoint (kind {getattr(nm, 'kind', '?')})")
    from train.datasets import resolve_mesh_path

    shape = mesh_shape(resolve_mesh_path(args.mesh), name="duck")
    ours = RefineSettings(init="modes", num_modes=args.modes, mode_radius_deg=args.mode_radius, steps=args.steps,
                          lr=args.lr, decay_every=args.decay_every, lr_decay=args.lr_decay, num_samples=0)
    ours_both = RefineSettings(init="both", num_modes=args.modes, mode_radius_deg=args.mode_radius, steps=args.steps,
                               lr=args.lr,
                               decay_every=args.decay_every, lr_decay=args.lr_decay, num_samples=0)
    nemo = RefineSettings.nemo(num_samples=0)
    levels = [int(x) for x in args.levels]
    out: dict[str, Any] = {"levels": {}, "settings": {"ours": vars_settings(ours), "nemo": vars_settings(nemo),
                                                     "ours_both": vars_settings(ours_both)}}
    gen = torch.Generator().manual_seed(0)
    for level in levels:
        ds = OccludedRenders(shape.mesh, level, size=args.per_level, image_size=args.size, seed=args.seed)
        errs: dict[str, list[float]] = {m: [] for m in METHODS}
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        cost: dict[str, list[int]] = {m: [] for m in METHODS}
        iters: dict[str, list[int]] = {m: [] for m in METHODS}
        reweight_ms: list[float] = []
        occluded: list[float] = []
        kinds: dict[str, int] = {}
        for i in range(len(ds)):
            item = ds[i]
            R_true = item["rotation"].double()
            img, K, t = item["image"], item["K"], item["translation"]  # the unit-sphere object's frame
            occluded.append(float(item["occluded"]))
            kinds[item["occluder"]] = kinds.get(item["occluder"], 0) + 1

            t0 = time.perf_counter()
            with torch.no_grad():
                dist = i2s.predict(img[None])
            R_mode = dist.mode()[0].double()
            t_i2s = 1000 * (time.perf_counter() - t0)
            errs["mode"].append(math.degrees(float(so3.geodesic_distance(R_mode, R_true))))
            times["mode"].append(t_i2s)
            cost["mode"].append(0)
            iters["mode"].append(0)

            for name, settings, init in (("nemo", nemo, None), ("ours", ours, dist), ("ours_both", ours_both, dist)):
                if name not in args.methods:
                    continue
                t0 = time.perf_counter()
                res = refine(nm, img, K, init, translation=t, settings=settings, generator=gen)
                ms = 1000 * (time.perf_counter() - t0) + (t_i2s if init is not None else 0.0)
                errs[name].append(math.degrees(float(so3.geodesic_distance(res.rotation[0].double(), R_true))))
                times[name].append(ms)
                cost[name].append(res.evaluations)
                iters[name].append(res.iterations)
            if "ours" in args.methods and args.samples > 0:
                t0 = time.perf_counter()
                res = refine(nm, img, K, dist, translation=t, settings=RefineSettings(
                    init="modes", num_modes=args.modes, mode_radius_deg=args.mode_radius, steps=0,
                    num_samples=args.samples), generator=gen)
                reweight_ms.append(1000 * (time.perf_counter() - t0))
            if args.verbose:
                print(f"L{level} {i:3d} occ {occluded[-1]:.2f} {item['occluder']:6s} " + "  ".join(
                    f"{m} {errs[m][-1]:6.1f}" for m in METHODS if errs[m]), flush=True)
        row: dict[str, Any] = {"range": list(OCCLUSION_LEVELS[level]), "occluded_mean": float(np.mean(occluded)),
                               "occluded_min": float(np.min(occluded)), "occluded_max": float(np.max(occluded)),
                               "occluders": kinds, "methods": {}}
        for m in METHODS:
            if not errs[m]:
                continue
            row["methods"][m] = {**_metrics(errs[m]), "ms_per_object": summarize_ms(times[m]),
                                 "evaluations": float(np.mean(cost[m])), "iterations": float(np.mean(iters[m])),
                                 "errors_deg": [round(e, 2) for e in errs[m]]}
        if reweight_ms:
            row["reweight"] = {"ms": summarize_ms(reweight_ms), "evaluations": args.samples + args.modes}
        out["levels"][f"L{level}"] = row
        print_level(level, row)
    return out


def vars_settings(s: RefineSettings) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(s)


def print_level(level: int, row: dict[str, Any]) -> None:
    lo, hi = row["range"]
    print(f"\nL{level} ({100 * lo:.0f}-{100 * hi:.0f} % hidden; measured {100 * row['occluded_min']:.0f}-"
          f"{100 * row['occluded_max']:.0f} %, occluders {row['occluders']})")
    head = ("method", "Acc@pi/6", "Acc@pi/18", "median", "ms p50", "evals", "iters")
    print(f"{head[0]:10s} {head[1]:>9s} {head[2]:>10s} {head[3]:>8s} {head[4]:>8s} {head[5]:>7s} {head[6]:>6s}")
    for m, r in row["methods"].items():
        print(f"{m:10s} {r['acc_pi6']:9.2f} {r['acc_pi18']:10.2f} {r['median_deg']:7.1f}° "
              f"{r['ms_per_object']['p50_ms']:8.0f} {r['evaluations']:7.0f} {r['iterations']:6.0f}", flush=True)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"mode": "Image2Sphere mode", "nemo": "NeMo (144-pose grid + 300 steps)",
             "ours": "ours (top modes + refine)", "ours_both": "ours + grid's best"}
    levels = list(result["levels"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "acc_pi6", "Acc@π/6"), (axes[1], "acc_pi18", "Acc@π/18")):
        for m in METHODS:
            ys = [result["levels"][lv]["methods"].get(m, {}).get(key) for lv in levels]
            if any(y is None for y in ys):
                continue
            ax.plot(range(len(levels)), ys, marker="o", label=names[m])
        ax.set_xticks(range(len(levels)), [f"{lv}\n{int(100 * result['levels'][lv]['range'][0])}-"
                                           f"{int(100 * result['levels'][lv]['range'][1])} %" for lv in levels])
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{title} vs occlusion (held-out duck renders)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/demo.pt", help="Image2Sphere checkpoint (the distribution)")
    p.add_argument("--refiner", default="checkpoints/refine_duck.pt", help="neural mesh checkpoint")
    p.add_argument("--mesh", default="pybullet_data/duck_vhacd.urdf")
    p.add_argument("--per-level", type=int, default=25)
    p.add_argument("--levels", nargs="+", default=["0", "1", "2", "3"])
    p.add_argument("--size", type=int, default=128, help="image side (px)")
    p.add_argument("--seed", type=int, default=20261203, help="data seed (held out: training uses others)")
    p.add_argument("--modes", type=int, default=4)
    p.add_argument("--mode-radius", type=float, default=45.0, help="separation of the modes (deg)")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--decay-every", type=int, default=100)
    p.add_argument("--lr-decay", type=float, default=0.2)
    p.add_argument("--samples", type=int, default=64, help="samples re-weighted (timed apart)")
    p.add_argument("--methods", nargs="+", default=list(METHODS[1:]), help="refinement methods run (mode always)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.per_level = 4
    t0 = time.time()
    result = run(args)
    result["seconds"] = time.time() - t0
    result["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["record"] = run_record(torch.device("cpu"))
    result["command"] = " ".join(["python", "bench/refine.py"] + (argv if argv is not None else sys.argv[1:]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
