"""Rotation-invariant shape recognition: spherical CNN vs a PointNet baseline, z/z, z/SO(3), SO(3)/SO(3).

    .venv/bin/python bench/shape_recognition.py [--quick] [--epochs 30] [--per-class 40] [--views 4]
        [--test-per-class 15] [--sources mesh depth] [--json docs/benchmarks/shape_recognition.json]

For each input ``source`` (``mesh``: the whole shape, the paper's setting; ``depth``: one depth crop
from a fixed camera 30 deg above the horizon, a robot's setting) and each model (``spherical_cnn``:
``config/train/spherical_cnn_shapes.yaml``; ``pointnet``: ``config/train/pointnet_shapes.yaml``, of
about the same parameter count), two models are trained in this one process, the same way (same
shapes, same views, same optimiser, epochs and seed): one on views turned about z only, one on
Haar-random SO(3) views. Both are scored on the same held-out shapes of the procedural set (seeds
never trained on), seen in z-only and in SO(3) poses:

* ``z/z``: trained z, tested z;  ``z/SO3``: trained z, tested SO(3);  ``SO3/SO3``: trained and
  tested SO(3) (Esteves et al.'s protocols).

Also recorded per model: parameters, training seconds (this machine, ``--threads`` CPU threads),
``model_ms`` (the network per item, batch of one, p50) and ``input_ms`` (turning one depth crop or
mesh into the model's input: ray casting or point sampling, p50). ``--quick``: 3 classes, a few
shapes and steps (a smoke test: the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import run_record, summarize_ms
from train.config import load_config
from train.datasets import build_dataset
from train.evaluate import evaluate_classifier
from train.train import run as train_run

MODELS = {"spherical_cnn": "config/train/spherical_cnn_shapes.yaml", "pointnet": "config/train/pointnet_shapes.yaml"}
PROTOCOLS = (("z/z", "z", "z"), ("z/SO3", "z", "so3"), ("SO3/SO3", "so3", "so3"))


def _config(model: str, source: str, rotations: str, args: argparse.Namespace, out: Path):
    overrides = [
        f"name={model}_{source}_{rotations}", f"epochs={args.epochs}", f"checkpoint_dir={out}", f"runs_dir={out}",
        "tensorboard=false", "progress=false", "eval.every=null", "checkpoint_every=null", f"seed={args.seed}",
        "device=cpu", f"log_every={10**9}",
        f"data.shape_set.source={source}", f"data.shape_set.rotations={rotations}",
        f"data.shape_set.per_class={args.per_class}", f"data.shape_set.views={args.views}",
    ]
    if args.classes:
        overrides.append(f"data.shape_set.classes=[{','.join(args.classes)}]")
    if args.quick:
        overrides += ["data.shape_set.bandwidth=8", "spherical_cnn.bandwidth=8", "spherical_cnn.bandlimits=[7,4,2]",
                      "data.shape_set.points=128", "batch_size=8"]
    return load_config(MODELS[model], overrides)


def _test_data(cfg, rotations: str, args: argparse.Namespace):
    data = dataclasses.replace(cfg.data, split="test", seed=cfg.data.seed + 1_000_003,
                               shape_set=dataclasses.replace(cfg.data.shape_set, rotations=rotations,
                                                             per_class=args.test_per_class,
                                                             views=args.test_views))
    return build_dataset(data)


def _timings(model: Any, dataset: Any, source: str, n: int) -> dict[str, Any]:
    """p50 of the model per item (batch of one) and of making one item's input from a shape."""
    from pose_core.data.shape_classes import depth_camera, normalize_mesh, view_depth
    from pose_core.recognition import ShapeRecognizer

    rec = ShapeRecognizer(model, dataset.config)
    model_ms, input_ms = [], []
    cfg = dataset.config
    K, R_cw, _ = depth_camera(cfg)
    for i in range(min(n, len(dataset.shapes))):
        x = dataset[i * cfg.views][model.input_key][None]
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        model_ms.append(1e3 * (time.perf_counter() - t0))
        vertices, faces, _, _ = dataset.shapes[i]
        v = normalize_mesh(vertices)
        if source == "depth":
            depth = view_depth(v, faces, np.eye(3), cfg)
            t0 = time.perf_counter()
            rec.inputs_from_depth(depth, K, camera_to_world=R_cw.T)
        else:
            t0 = time.perf_counter()
            if model.input_key == "signal":
                from pose_core.data.sphere_projection import project_mesh

                project_mesh(v, faces, cfg.bandwidth)
            else:
                from pose_core.surface import sample_surface

                sample_surface(torch.from_numpy(v), torch.tensor(np.asarray(faces)), cfg.points)
        input_ms.append(1e3 * (time.perf_counter() - t0))
    return {"model_ms_p50": summarize_ms(model_ms)["p50_ms"], "input_ms_p50": summarize_ms(input_ms)["p50_ms"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="shape_bench_"))
    rows: list[dict[str, Any]] = []
    for source in args.sources:
        tests: dict[str, Any] = {}
        for model_kind in args.models:
            trained: dict[str, Any] = {}
            for rotations in ("z", "so3"):
                cfg = _config(model_kind, source, rotations, args, out)
                data_start = time.time()
                build_dataset(cfg.data)  # views computed (or read from the cache) before the clock starts
                data_s = time.time() - data_start
                t0 = time.time()
                result = train_run(cfg, command="bench/shape_recognition.py")
                train_s = time.time() - t0
                from pose_core.model import load_model

                model = load_model(result["checkpoint"])
                trained[rotations] = (model, train_s, data_s, result["step"])
                print(f"[{source}] {model_kind} trained on {rotations}: {result['step']} steps, {train_s:.0f} s "
                      f"(views {data_s:.0f} s)", flush=True)
            for rot in ("z", "so3"):
                if rot not in tests:
                    tests[rot] = _test_data(cfg, rot, args)
            row: dict[str, Any] = {"source": source, "model": model_kind,
                                   "parameters": sum(p.numel() for p in trained["z"][0].parameters()),
                                   "train_s": {r: trained[r][1] for r in trained},
                                   "steps": {r: trained[r][3] for r in trained}, "n_test": len(tests["z"])}
            for name, train_rot, test_rot in PROTOCOLS:
                res = evaluate_classifier(trained[train_rot][0], tests[test_rot])
                row[name] = res["overall"]["accuracy"]
                row[f"{name}_per_class"] = res["per_class"]
            row.update(_timings(trained["z"][0], tests["z"], source, args.timing_items))
            rows.append(row)
            print(f"[{source}] {model_kind}: z/z {row['z/z']:.3f}  z/SO3 {row['z/SO3']:.3f}  "
                  f"SO3/SO3 {row['SO3/SO3']:.3f}", flush=True)
    return {"rows": rows, "classes": list(tests["z"].class_names), "checkpoints": str(out)}


def table(result: dict[str, Any]) -> str:
    head = (f"{'source':<6} {'model':<14} {'params':>7} {'z/z':>6} {'z/SO3':>6} {'SO3/SO3':>8} "
            f"{'train s (z, so3)':>17} {'model ms':>9} {'input ms':>9}")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['source']:<6} {r['model']:<14} {r['parameters']:>7d} {r['z/z']:>6.3f} {r['z/SO3']:>6.3f} "
                     f"{r['SO3/SO3']:>8.3f} {r['train_s']['z']:>8.0f} {r['train_s']['so3']:>8.0f} "
                     f"{r['model_ms_p50']:>9.2f} {r['input_ms_p50']:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--per-class", type=int, default=40, help="training shapes per class")
    p.add_argument("--views", type=int, default=4, help="rotated views per training shape")
    p.add_argument("--test-per-class", type=int, default=15, help="held-out shapes per class")
    p.add_argument("--test-views", type=int, default=2, help="rotated views per held-out shape")
    p.add_argument("--sources", nargs="+", default=["mesh", "depth"], choices=["mesh", "depth"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--classes", nargs="+", default=None, help="procedural classes (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timing-items", type=int, default=20)
    p.add_argument("--out", default=None, help="folder for the trained checkpoints (default: a temporary one)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.per_class, args.views, args.test_per_class, args.test_views = 1, 2, 1, 1, 1
        args.classes = args.classes or ["box", "torus", "chair"]
        args.timing_items = 2
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = run(args)
    result["seconds"] = time.time() - t0
    result["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["record"] = run_record(torch.device("cpu"))
    given = argv if argv is not None else sys.argv[1:]
    result["command"] = " ".join(["python", "bench/shape_recognition.py", *given])
    print()
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
