"""Single-view 3D reconstruction: five decoders and the retrieval baseline on held-out shapes, one run.

    .venv/bin/python bench/reconstruction.py [--quick] [--steps 700] [--per-class 60] [--views 4]
        [--test-per-class 10] [--test-views 2] [--out runs/reconstruction_bench]
        [--json docs/benchmarks/reconstruction.json]

Every model is trained in this one process the same way (``config/train/reconstruction_shapes.yaml``: the
same shapes, views, optimiser, seed and number of steps ``--steps`` of ``batch_size`` 32; the wall time each
took on ``--threads`` CPU threads is recorded), then scored on the same held-out procedural shapes (seeds
never trained on, other views):

* decoders ``voxels`` (32^3), ``points`` (``--main-points``), ``mesh`` (ico-sphere level 4), ``implicit``
  (occupancy network, read on a 64^3 grid) and ``parametric`` (AtlasNet, 4 patches);
* ``retrieval``: the training shape whose image embedding (the trained ``points`` model's encoder) is nearest
  (Tatarchenko et al.): a decoder that does not beat it only recognises;
* the ``n_points`` study of the points decoder (``--study-points``, 500 / 1,000 / 2,500 / 5,000);
* ``reference``: an independent sample of ``n`` points of the true surface (the best any method can do at
  that density; F1 at 0.01 is limited by point spacing, not only by the model).

Scores (:func:`pose_core.pointsets.shape_scores`): F1 at 0.05 and 0.01 of the bounding-box diagonal and the
chamfer distance, against 5,000 true surface points per view; volumetric IoU on the 32^3 grid for voxels and
implicit. Every method but ``points`` answers with ``--eval-points`` points (the points decoder has its own
fixed count). Also per model: parameters, steps, training seconds, latency per image (batch of one, p50).
Checkpoints are kept under ``--out`` (pictures: ``bench/reconstruction_pictures.py``). ``--quick``: 3 classes,
a few shapes and steps (a smoke test: the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import run_record, summarize_ms
from train.config import load_config
from train.datasets import build_dataset
from train.evaluate import evaluate_reconstruction, score_reconstructions
from train.train import run as train_run

CONFIG = "config/train/reconstruction_shapes.yaml"
DECODERS = ("voxels", "points", "mesh", "implicit", "parametric")


def _config(name: str, overrides: list[str], args: argparse.Namespace, out: Path):
    base = [
        f"name={name}", f"max_steps={args.steps}", "epochs=null", f"checkpoint_dir={out}", f"runs_dir={out}",
        "tensorboard=false", "progress=false", "eval.every=null", "checkpoint_every=null", f"seed={args.seed}",
        "device=cpu", f"log_every={10**9}", f"data.recon_set.per_class={args.per_class}",
        f"data.recon_set.views={args.views}",
    ]
    if args.classes:
        base.append(f"data.recon_set.classes=[{','.join(args.classes)}]")
    if args.quick:
        base += ["batch_size=4", "reconstruction.pretrained=false", "reconstruction.ico_level=2",
                 "reconstruction.implicit_resolution=16"]
    return load_config(CONFIG, base + overrides)


def _latency(fn, images: torch.Tensor, n: int) -> dict[str, float]:
    samples = []
    for i in range(min(n, len(images)) + 2):
        x = images[i % len(images)][None]
        t = time.perf_counter()
        fn(x)
        if i >= 2:  # two warm-up calls
            samples.append(1000 * (time.perf_counter() - t))
    return summarize_ms(samples)


def _train(name: str, overrides: list[str], args: argparse.Namespace, out: Path) -> tuple[Any, dict[str, Any]]:
    from pose_core.model import load_model

    cfg = _config(name, overrides, args, out)
    t_data = time.time()
    build_dataset(cfg.data)  # renders and targets computed (or read from the cache) before the clock starts
    data_s = time.time() - t_data
    t0 = time.time()
    result = train_run(cfg, command="bench/reconstruction.py")
    train_s = time.time() - t0
    model = load_model(result["checkpoint"])
    info = {"steps": result["step"], "train_s": train_s, "data_s": data_s, "batch_size": cfg.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()), "checkpoint": result["checkpoint"],
            "config": dataclasses.asdict(model.config)}
    print(f"{name}: {result['step']} steps in {train_s:.0f} s (data {data_s:.0f} s)", flush=True)
    return model, info


def _row(name: str, res: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    o = res["overall"]
    row = {"method": name, **{k: o[k] for k in o}, "per_class": res["per_class"],
           "seconds_per_image_batched": res["seconds_per_image"], **extra}
    iou = f"  IoU {o['iou']:.3f}" if "iou" in o else ""
    print(f"{name}: F1@0.05 {o['f1@0.05']:.3f}  F1@0.01 {o['f1@0.01']:.3f}  chamfer {o['chamfer']:.5f}{iou}",
          flush=True)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pose_core.models.retrieval import ShapeRetrieval

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probe = _config("probe", [], args, out)
    test_data = dataclasses.replace(probe.data, split="test", seed=probe.data.seed + 1_000_003,
                                    recon_set=dataclasses.replace(probe.data.recon_set, per_class=args.test_per_class,
                                                                  views=args.test_views))
    test = build_dataset(test_data)
    images = torch.stack([test[i]["image"] for i in range(min(len(test), args.timing_items))])
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for decoder in args.decoders:
        n = [f"reconstruction.n_points={args.main_points}"] if decoder == "points" else []
        model, info = _train(f"recon_{decoder}", [f"reconstruction.decoder={decoder}", *n], args, out)
        models[decoder] = model
        res = evaluate_reconstruction(model, test, n_points=args.eval_points)
        lat = _latency(lambda x, m=model: m.reconstruct(x, n_points=args.eval_points), images, args.timing_items)
        rows.append(_row(decoder, res, {**info, "latency_ms": lat}))
    retrieval = None
    if "points" in models:
        train_set = build_dataset(_config("probe", [], args, out).data)
        t0 = time.time()
        retrieval = ShapeRetrieval.build(models["points"], train_set)
        build_s = time.time() - t0
        res = score_reconstructions(lambda x, n, g: retrieval.reconstruct(x, n), test, n_points=args.eval_points)
        lat = _latency(lambda x: retrieval.reconstruct(x, args.eval_points), images, args.timing_items)
        rows.append(_row("retrieval", res, {"embedding_of": "points", "train_views": len(train_set),
                                            "build_s": build_s, "latency_ms": lat}))
    study: list[dict[str, Any]] = []
    for n_points in args.study_points:
        if n_points == args.main_points and "points" in models:
            model, row = models["points"], next(r for r in rows if r["method"] == "points")
            res = {"overall": {k: row[k] for k in ("f1@0.05", "f1@0.01", "chamfer")}}
            info = {k: row[k] for k in ("steps", "train_s", "parameters")}
        else:
            model, info = _train(f"recon_points_{n_points}", ["reconstruction.decoder=points",
                                                              f"reconstruction.n_points={n_points}"], args, out)
            res = evaluate_reconstruction(model, test)
            info = {k: info[k] for k in ("steps", "train_s", "parameters")}

        reference = _reference_scores(_fresh_samples(test, n_points, seed=12345), test)
        study.append({"n_points": n_points, **{k: res["overall"][k] for k in ("f1@0.05", "f1@0.01", "chamfer")},
                      **info, "reference": reference})
        print(f"n_points {n_points}: F1@0.05 {res['overall']['f1@0.05']:.3f}  F1@0.01 {res['overall']['f1@0.01']:.3f}"
              f"  (reference {reference['f1@0.05']:.3f} / {reference['f1@0.01']:.3f})", flush=True)
    reference = _reference_scores(_fresh_samples(test, args.eval_points, seed=54321), test)
    rows.append({"method": "reference", **reference, "n_points": args.eval_points})
    return {"rows": rows, "study": study, "n_test": len(test), "test_shapes": len(test.shapes),
            "classes": list(test.class_names), "checkpoints": str(out)}


def _fresh_samples(test: Any, n: int, seed: int) -> torch.Tensor:
    """``(S, n, 3)``: a new area-uniform sample of every held-out shape's true surface (object frame)."""
    from pose_core.data.reconstruction import unit_diagonal
    from pose_core.surface import sample_surface

    gen = torch.Generator().manual_seed(seed)
    return torch.stack([sample_surface(torch.from_numpy(unit_diagonal(v)), torch.from_numpy(f.astype("int64")), n,
                                       generator=gen).float() for v, f, _, _ in test.shapes])


def _reference_scores(points_per_shape: torch.Tensor, test: Any) -> dict[str, float]:
    """Scores of ``points_per_shape`` ``(S, n, 3)`` (one fresh sample of each true surface) against the targets
    of every view of ``test``, as the methods are scored."""
    from pose_core.pointsets import shape_scores

    views = test.config.views
    pred = points_per_shape.repeat_interleave(views, dim=0)
    target = torch.from_numpy(test.surface).repeat_interleave(views, dim=0)
    scores = {k: v.double().mean().item() for k, v in shape_scores(pred, target).items()}
    return scores


def table(result: dict[str, Any]) -> str:
    head = (f"{'method':<11} {'F1@0.05':>8} {'F1@0.01':>8} {'chamfer':>9} {'IoU':>6} {'params M':>9} {'steps':>6} "
            f"{'train s':>8} {'ms/img':>7}")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        iou = f"{r['iou']:.3f}" if "iou" in r else "-"
        params = f"{r['parameters'] / 1e6:.2f}" if "parameters" in r else "-"
        steps = str(r.get("steps", "-"))
        train_s = f"{r['train_s']:.0f}" if "train_s" in r else "-"
        ms = f"{r['latency_ms']['p50_ms']:.1f}" if "latency_ms" in r else "-"
        lines.append(f"{r['method']:<11} {r['f1@0.05']:>8.3f} {r['f1@0.01']:>8.3f} {r['chamfer']:>9.5f} {iou:>6} "
                     f"{params:>9} {steps:>6} {train_s:>8} {ms:>7}")
    lines += ["", f"{'n_points':>8} {'F1@0.05':>8} {'F1@0.01':>8} {'chamfer':>9} {'steps':>6} {'train s':>8} "
                  f"{'ref F1@0.05':>11} {'ref F1@0.01':>11}"]
    for s in result["study"]:
        lines.append(f"{s['n_points']:>8} {s['f1@0.05']:>8.3f} {s['f1@0.01']:>8.3f} {s['chamfer']:>9.5f} "
                     f"{s['steps']:>6} {s['train_s']:>8.0f} {s['reference']['f1@0.05']:>11.3f} "
                     f"{s['reference']['f1@0.01']:>11.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=700, help="training steps of every model (batch 32)")
    p.add_argument("--per-class", type=int, default=60, help="training shapes per class")
    p.add_argument("--views", type=int, default=4, help="views per training shape")
    p.add_argument("--test-per-class", type=int, default=10, help="held-out shapes per class")
    p.add_argument("--test-views", type=int, default=2, help="views per held-out shape")
    p.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=list(DECODERS))
    p.add_argument("--main-points", type=int, default=5000, help="points of the points decoder in the main table")
    p.add_argument("--study-points", type=int, nargs="*", default=[500, 1000, 2500, 5000])
    p.add_argument("--eval-points", type=int, default=5000, help="points every other method answers with")
    p.add_argument("--classes", nargs="+", default=None, help="procedural classes (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timing-items", type=int, default=20)
    p.add_argument("--out", default="runs/reconstruction_bench", help="folder for the trained checkpoints")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.per_class, args.views, args.test_per_class, args.test_views = 2, 2, 1, 1, 1
        args.classes = args.classes or ["box", "torus", "chair"]
        args.timing_items, args.main_points, args.study_points, args.eval_points = 2, 200, [100, 200], 500
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = run(args)
    result["seconds"] = time.time() - t0
    result["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["record"] = run_record(torch.device("cpu"))
    given = argv if argv is not None else sys.argv[1:]
    result["command"] = " ".join(["python", "bench/reconstruction.py", *given])
    print()
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
