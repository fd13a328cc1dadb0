"""Your own object in one command: mesh in; randomised renders, training, calibration, the robustness
suite, and a checkpoint the node loads out.

Usage (from the repository root)::

    python train/own_object.py --mesh pybullet_data/jenga/jenga.urdf --symmetry dihedral:2 --out outputs/jenga
    .venv/bin/pose_distribution_node --ros-args -p checkpoint:=outputs/jenga/jenga.pt

``--mesh``: OBJ, URDF, GLB/glTF, STL, PLY (``pybullet_data/...`` paths resolve into that package).
``--symmetry``: ``none`` (default), ``cyclic:N[:axis]``, ``dihedral:N[:axis]``, ``revolution[:axis]``,
``revolution+flip[:axis]`` in the mesh file's frame (:func:`pose_core.data.shapes.symmetry_rotations`).

What it does, all under ``--out``:

1. trains on renders of the mesh with the default domain randomisation
   (:class:`pose_core.data.randomize.Randomization`; ``--background-dir`` adds your own photos),
   starting from ``--init`` (default ``checkpoints/demo.pt``: a model that already reads shapes;
   ``none``: ImageNet weights). ``--steps`` (default 300 on CPU, 6000 on CUDA) and ``--minutes`` bound
   it; the training checkpoint ``train/<name>.pt`` is written every 100 steps and a second run with
   the same ``--out`` resumes it;
2. fits the temperature on held-out renders (:mod:`train.calibrate`);
3. runs the robustness suite (:mod:`train.robustness`) and writes ``robustness.json``,
   ``montage.png`` and ``report.md`` (the table, calibration, commands);
4. writes ``<name>.pt``: the calibrated inference checkpoint (``checkpoint:=`` of the node).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

__all__ = ["build_config", "main"]

DEFAULT_INIT = "checkpoints/demo.pt"


def build_config(mesh: str, name: str, symmetry: str | None, out: Path, steps: int, minutes: float | None,
                 init: str | None, device: str, batch_size: int | None, background_dir: str | None):
    """The :class:`train.config.TrainConfig` of an own-object run."""
    from pose_core.data.randomize import Randomization
    from pose_core.model import ModelConfig, checkpoint_input_size, read_checkpoint, resolve_device
    from train.config import DataConfig, EvalConfig, MeshSpec, OptimConfig, TrainConfig

    cuda = resolve_device(device).type == "cuda"
    if init is not None:
        payload = read_checkpoint(init)
        model = ModelConfig(**{**payload["config"], "pretrained": False})
        image_size = checkpoint_input_size(payload) or 96
    else:
        model = ModelConfig(encoder="mobilenet_v2", pretrained=True)
        image_size = 96
    data = DataConfig(name="mesh", shapes=[], meshes=[MeshSpec(path=mesh, name=name, symmetry=symmetry)],
                      size=1_000_000, image_size=image_size, seed=0,
                      randomize=Randomization(background_dir=background_dir))
    return TrainConfig(
        name=name, data=data, model=model, epochs=None, max_steps=steps,
        max_seconds=None if minutes is None else 60.0 * minutes, init_from=init,
        optim=OptimConfig(name="adamw", lr=3e-4 if init else 1e-3, weight_decay=1e-4, schedule="cosine",
                          warmup_steps=min(100, max(1, steps // 10)), min_lr_ratio=0.05),
        eval=EvalConfig(every=None), batch_size=batch_size or (64 if cuda else 32),
        amp="bf16" if cuda else "none", device=device, num_workers=8 if cuda else 1, log_every=25,
        checkpoint_every=100, runs_dir=str(out / "runs"), checkpoint_dir=str(out / "train"), progress=False,
    )


def _report(path: Path, args: argparse.Namespace, cfg, train_result: dict, cal: dict, suite: dict,
            command: str) -> None:
    from train.robustness import format_table

    b, a = cal["before"], cal["after"]
    lines = [
        f"# {cfg.name}: pose distribution model",
        "",
        f"- mesh: `{args.mesh}`, symmetry: `{args.symmetry}`",
        f"- trained: {train_result['step']} steps of {cfg.batch_size} randomised {cfg.data.image_size} px renders "
        f"in {train_result['seconds'] / 60:.1f} min on {cfg.device}, from `{cfg.init_from or 'ImageNet weights'}`",
        f"- command: `{command}`",
        f"- temperature {cal['temperature']:.3f} (held-out renders, {cal['n']} images): log-likelihood "
        f"{b['ll']:.2f} → {a['ll']:.2f}, truth in the 90 % region {b['cov90']:.2f} → {a['cov90']:.2f}",
        "",
        f"## Robustness suite ({suite['per_shape']} images per condition; uniform: LL −2.29, entropy 2.29)",
        "",
        format_table(suite),
        "",
        "![montage](montage.png)",
        "",
        "## Use it",
        "",
        "```bash",
        f".venv/bin/pose_distribution_node --ros-args -p checkpoint:={path.parent / (cfg.name + '.pt')}",
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from pose_core.model import load_model, read_checkpoint, resolve_device, save_checkpoint
    from train.calibrate import CALIBRATION_SEED_OFFSET, calibrate
    from train.datasets import dataset_shapes
    from train.robustness import SUITE_SEED_OFFSET, run_suite, write_montage
    from train.train import run

    p = argparse.ArgumentParser(prog="train/own_object.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--mesh", required=True, help="OBJ / URDF / GLB / STL / PLY file (pybullet_data/... allowed)")
    p.add_argument("--symmetry", default="none", help="none, cyclic:N[:axis], dihedral:N[:axis], revolution[:axis], "
                                                      "revolution+flip[:axis]")
    p.add_argument("--out", required=True, help="folder for the checkpoint and the report")
    p.add_argument("--name", default=None, help="object name (default: the mesh file's stem)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 300 on CPU, 6000 on CUDA)")
    p.add_argument("--minutes", type=float, default=None, help="stop training after this long")
    p.add_argument("--init", default=DEFAULT_INIT,
                   help=f"weights to start from (default {DEFAULT_INIT}; none: ImageNet)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--background-dir", default=None, help="a folder of your own background photos")
    p.add_argument("--per-shape", type=int, default=20, help="suite images per condition (default 20)")
    p.add_argument("--calibration-images", type=int, default=60, help="held-out images for the temperature")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    command = shlex.join([sys.executable, "train/own_object.py", *(sys.argv[1:] if argv is None else argv)])

    from train.datasets import resolve_mesh_path

    mesh_path = resolve_mesh_path(args.mesh)
    if not mesh_path.is_file():
        p.error(f"mesh file not found: {mesh_path}")
    init = None if args.init in (None, "", "none") else args.init
    if init is not None and not Path(init).is_file():
        p.error(f"--init checkpoint not found: {init} (use --init none to start from ImageNet weights)")
    if args.background_dir is not None and not Path(args.background_dir).expanduser().is_dir():
        p.error(f"--background-dir {args.background_dir} is not a folder")
    name = args.name or mesh_path.stem
    try:
        device = str(resolve_device(args.device))
        steps = args.steps if args.steps is not None else (6000 if device.startswith("cuda") else 300)
        out = Path(args.out)
        cfg = build_config(args.mesh, name, args.symmetry, out, steps, args.minutes, init, device, args.batch_size,
                           args.background_dir)
        shapes = dataset_shapes(cfg.data)  # reads the mesh now: a bad file fails before any training
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        p.error(str(exc))

    start = time.time()
    train_ckpt = Path(cfg.checkpoint_dir) / f"{name}.pt"
    done = int(read_checkpoint(train_ckpt).get("step", 0)) if train_ckpt.is_file() else None
    if done is None:
        train_result = run(cfg, command=command)
    elif done < steps:
        print(f"resuming {train_ckpt} at step {done}", flush=True)
        train_result = run(cfg, resume=train_ckpt, command=command)
    else:
        print(f"{train_ckpt} already holds {steps} steps: skipping training", flush=True)
        meta = read_checkpoint(train_ckpt).get("meta", {})
        train_result = {"step": steps, "seconds": float(meta.get("train_seconds", 0.0))}

    model = load_model(train_ckpt, device=device)
    payload = read_checkpoint(train_ckpt)
    size, seed = cfg.data.image_size, cfg.data.seed
    cal = calibrate(model, shapes, size, seed + CALIBRATION_SEED_OFFSET, cfg.data.randomize,
                    per_shape=args.calibration_images)
    final = save_checkpoint(model, out / f"{name}.pt",
                            meta={**payload.get("meta", {}), "calibration": cal, "own_object_command": command},
                            train_config=payload.get("train_config"))
    suite = run_suite(model, shapes, size, per_shape=args.per_shape, seed=seed + SUITE_SEED_OFFSET, progress=True)
    write_montage(suite, out / "montage.png", scale=2)
    record = {k: v for k, v in suite.items() if k != "montage"}
    (out / "robustness.json").write_text(json.dumps({**record, "calibration": cal,
                                                     "config": dataclasses.asdict(cfg)}, indent=2) + "\n")
    _report(out / "report.md", args, cfg, train_result, cal, suite, command)
    clean = suite["conditions"]["clean"]["mean"]
    print(f"{name}: {train_result['step']} steps, temperature {cal['temperature']:.2f}; clean Acc@15 "
          f"{clean['acc@15']:.2f}, median {clean['median_deg']:.1f} deg ({(time.time() - start) / 60:.1f} min)")
    print(f"report: {out / 'report.md'}")
    print(f"checkpoint: {final}")
    print(f"run it: .venv/bin/pose_distribution_node --ros-args -p checkpoint:={final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
