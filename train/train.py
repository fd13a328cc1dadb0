"""Train a model: ImageToSphere (SO(3)), SpyroPose (SE(3), ``kind: spyropose``), the neural mesh of
the render-and-compare refiner (``kind: neural_mesh``, :mod:`pose_core.refine`), a shape classifier
(``kind: spherical_cnn`` / ``pointnet`` on 3D shapes: :mod:`pose_core.models.spherical_cnn`) or a
single-view shape reconstructor (``kind: reconstruction``: :mod:`pose_core.models.reconstruction`).

Usage (from the repository root)::

    python train/train.py --config config/train/tiny.yaml [key.sub=value ...] [--resume PATH]
    torchrun --nproc_per_node=N train/train.py --config config/train/demo.yaml   # DDP

Writes TensorBoard logs to ``<runs_dir>/<name>`` and checkpoints to ``<checkpoint_dir>/<name>.pt``
(atomically, with :func:`pose_core.model.save_checkpoint`, every ``checkpoint_every`` steps and at
the end). Besides the model, a checkpoint holds, under extra top-level keys, everything to continue
the run: ``optimizer``, ``scheduler``, ``scaler`` (fp16), ``step``, ``epoch``, ``train_config`` and
``rng`` (torch, CUDA, numpy, python states), all loadable with ``torch.load(weights_only=True)``.
``meta`` records the command line, config, data seeds, hardware, torch version and wall time.

``--resume PATH`` restores model, optimizer, scheduler, RNG state and step, and continues with the
next batch of the same epoch (the data order depends only on ``seed`` and the epoch). Without
``--config`` the checkpoint's config is used; overrides apply on top (e.g. ``max_steps=2000``).

Multi-GPU: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP, each rank reads its
share of the data through a ``DistributedSampler``, and only rank 0 logs, evaluates and writes.
``batch_size`` is per process. AMP (``amp: bf16 | fp16``) applies on CUDA only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import random
import shlex
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from pose_core import grids
from pose_core.model import CLASSIFIER_KINDS, ImageToSphere, read_checkpoint, save_checkpoint
from pose_core.models.spyropose import SpyroPose
from train.config import TrainConfig, config_from_dict, config_to_dict, load_config
from train.datasets import HELDOUT_SEED_OFFSET, build_dataset, collate, heldout_config, rendered_source

__all__ = ["run", "main", "build_spyropose", "build_neural_mesh", "build_reconstructor", "make_scheduler_lambda",
           "ResumableSampler",
           "checkpoint_path", "hardware_info"]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle per epoch, rank ``rank`` of ``num_replicas``) that can
    start an epoch at position ``start`` of this rank's share (to resume mid-epoch)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def make_scheduler_lambda(cfg: TrainConfig, total_steps: int, steps_per_epoch: int):
    """LR multiplier as a function of the optimizer step (warm-up, then constant / step / cosine)."""
    o = cfg.optim
    step_size = o.step_steps if o.step_steps is not None else max(1, round(o.step_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if o.warmup_steps > 0 and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "step":
            return o.step_gamma ** (step // step_size)
        span = max(1, total_steps - o.warmup_steps)
        t = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def checkpoint_path(cfg: TrainConfig) -> Path:
    """``<checkpoint_dir>/<name>.pt``."""
    return Path(cfg.checkpoint_dir) / f"{cfg.name}.pt"


def hardware_info(device: torch.device) -> dict[str, Any]:
    """CPU model, core count, GPU name (when on CUDA), torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    return info


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain Python values (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    from pose_core.model import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
        return dist.get_rank(), world, device
    return 0, 1, resolve_device(cfg.device)


def _loss(ddp_model: torch.nn.Module, model: ImageToSphere, images: torch.Tensor, rotations: torch.Tensor,
          amp_dtype: torch.dtype | None) -> torch.Tensor:
    """``model.loss`` through the (possibly DDP-wrapped) forward; the grid logits in float32."""
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        coeffs = ddp_model(images)  # (B, so3_dim)
    logits = model.grid_logits(coeffs.float())  # (B, 72 * 8**train_grid_level)
    target = grids.cell_of(rotations, model.config.train_grid_level)  # (B,)
    return torch.nn.functional.cross_entropy(logits, target)


def run(cfg: TrainConfig, resume: str | os.PathLike | None = None, command: str | None = None) -> dict[str, Any]:
    """Train per ``cfg`` (optionally resuming); returns ``{"checkpoint", "step", "loss", "eval", "seconds"}``.

    ``command``: the command line recorded in the checkpoint meta (default: ``sys.argv``).
    """
    wall_start = time.time()
    rank, world, device = _setup_distributed(cfg)
    is_main = rank == 0
    _seed_all(cfg.seed + rank)
    command = command if command is not None else shlex.join([sys.executable] + sys.argv)

    # ------------------------------------------------------------------ data
    train_set = build_dataset(cfg.data)
    eval_cfg = None
    eval_set = None
    if cfg.eval.every is not None and is_main:
        eval_cfg = cfg.eval_data or heldout_config(cfg.data, cfg.eval.size)
        eval_set = build_dataset(eval_cfg)
    drop_last = len(train_set) >= cfg.batch_size * world  # type: ignore[arg-type]
    sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                               drop_last=drop_last)
    workers = cfg.num_workers
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        drop_last=drop_last, pin_memory=device.type == "cuda",
        # The main process renders too (evaluation): Mesa needs spawned workers (pose_core/data/render.py).
        multiprocessing_context="spawn" if workers > 0 else None, persistent_workers=workers > 0,
    )
    steps_per_epoch = max(1, len(loader))  # batches per epoch on this rank
    total = cfg.max_steps if cfg.max_steps is not None else 10**18
    if cfg.epochs is not None:
        total = min(total, cfg.epochs * steps_per_epoch)

    # ------------------------------------------------------------------ model, optimizer
    se3 = cfg.kind == "spyropose"
    neural_mesh = cfg.kind == "neural_mesh"
    classifier = cfg.kind in CLASSIFIER_KINDS
    reconstruction = cfg.kind == "reconstruction"
    if se3:
        model: Any = build_spyropose(cfg, train_set).to(device)
    elif classifier:
        model = build_classifier(cfg, train_set).to(device)
    elif neural_mesh:
        model = build_neural_mesh(cfg, train_set).to(device)
    elif reconstruction:
        model = build_reconstructor(cfg, train_set).to(device)
    else:
        model = ImageToSphere(**dataclasses.asdict(cfg.model)).to(device)
        model.input_size = rendered_source(cfg.data).image_size  # in the checkpoint: predict and the node resize to it
    if cfg.init_encoder_from is not None and resume is None:
        _init_encoder(model, cfg.init_encoder_from)
        if is_main:
            print(f"encoder starting from the weights of {cfg.init_encoder_from}", flush=True)
    if cfg.init_from is not None and resume is None:
        _init_weights(model, cfg)
        if is_main:
            print(f"starting from the weights of {cfg.init_from}", flush=True)
    if cfg.optim.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                                     nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
                                                     weight_decay=cfg.optim.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),  # type: ignore[arg-type]
                                weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, make_scheduler_lambda(cfg, total, steps_per_epoch))
    use_amp = cfg.amp != "none" and device.type == "cuda"
    if cfg.amp != "none" and not use_amp and is_main:
        warnings.warn(f"amp={cfg.amp!r} ignored on {device.type}: AMP is used on CUDA only", stacklevel=2)
    amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.amp == "fp16")

    step, epoch, seconds_before = 0, 0, 0.0
    if resume is not None:
        ckpt = read_checkpoint(resume)
        model.load_state_dict(ckpt["state_dict"])
        _check_training_checkpoint(ckpt, resume)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        epoch = step // steps_per_epoch
        seconds_before = float(ckpt.get("meta", {}).get("train_seconds", 0.0))
        if "rng" in ckpt and world == 1:
            _set_rng_state(ckpt["rng"])
        if is_main:
            print(f"resumed from {resume} at step {step} (epoch {epoch})", flush=True)

    ddp_model: torch.nn.Module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # SpyroPose taps the encoder's pyramid: its last 1x1 head conv (kept for checkpoint compatibility with
        # the Image2Sphere encoders it starts from) gets no gradient
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                              find_unused_parameters=se3 or neural_mesh)

    # ------------------------------------------------------------------ logging
    writer = None
    if is_main and cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(Path(cfg.runs_dir) / cfg.name))
        except ImportError as e:
            warnings.warn(f"TensorBoard logging off ({e}); pip install tensorboard", stacklevel=2)
    hardware = hardware_info(device)
    ckpt_file = checkpoint_path(cfg)
    data_seeds = {"train": cfg.data.seed, "heldout": None if eval_cfg is None else eval_cfg.seed,
                  "heldout_offset": HELDOUT_SEED_OFFSET, "shuffle": cfg.seed}

    def save(last_loss: float | None, eval_result: dict | None) -> None:
        if not is_main:
            return
        train_seconds = seconds_before + time.time() - wall_start
        meta = {
            "command": command, "train_config": config_to_dict(cfg), "data_seeds": data_seeds,
            "hardware": hardware, "torch": str(torch.__version__), "train_seconds": train_seconds,
            "wall_time_start": wall_start, "step": step, "epoch": epoch, "world_size": world,
            "loss": last_loss, "resumed_from": None if resume is None else str(resume),
        }
        if eval_result is not None:
            meta["eval"] = {"overall": eval_result["overall"]}
            if "grid_level" in eval_result:
                meta["eval"]["grid_level"] = eval_result["grid_level"]
        extra: dict[str, Any] = {
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "epoch": epoch,
            "train_config": config_to_dict(cfg), "rng": _rng_state(),
        }
        if scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        save_checkpoint(model, ckpt_file, meta=meta, **extra)

    def run_eval() -> dict | None:
        if eval_set is None or neural_mesh:  # the refiner is measured by bench/refine.py, not here
            return None
        from train.evaluate import evaluate, evaluate_classifier, evaluate_se3

        if reconstruction:
            from train.evaluate import evaluate_reconstruction

            res = evaluate_reconstruction(model, eval_set, batch_size=cfg.eval.batch_size)
            model.train()
            o = res["overall"]
            iou = f"  IoU {o['iou']:.3f}" if "iou" in o else ""
            print(f"eval step {step}: F1@0.05 {o['f1@0.05']:.3f}  F1@0.01 {o['f1@0.01']:.3f}  chamfer "
                  f"{o['chamfer']:.5f}{iou} ({o['n']} views)", flush=True)
            if writer is not None:
                for k in ("f1@0.05", "f1@0.01", "chamfer", "iou"):
                    if k in o:
                        writer.add_scalar(f"eval/{k}", o[k], step)
            return res
        if classifier:
            res = evaluate_classifier(model, eval_set, batch_size=cfg.eval.batch_size)
            model.train()
            o = res["overall"]
            print(f"eval step {step}: accuracy {o['accuracy']:.3f} ({o['n']} views)", flush=True)
            if writer is not None:
                writer.add_scalar("eval/accuracy", o["accuracy"], step)
            return res
        if se3:
            res = evaluate_se3(model, eval_set, batch_size=cfg.eval.batch_size)
            model.train()
            o = res["overall"]
            print(f"eval step {step}: Acc@15 {o['acc@15']:.3f}  median {o['median_deg']:.1f} deg  translation median "
                  f"{o['t_median_mm']:.1f} mm ({100 * o['t_median_frac_distance']:.2f} % of the distance)  "
                  f"LL {o['ll_se3']:.2f} (outside the box {o['outside_box']:.2f})  in 95 % {o['inside_95']:.2f}",
                  flush=True)
            if writer is not None:
                for k in ("acc@15", "median_deg", "t_median_mm", "ll_se3", "inside_95"):
                    writer.add_scalar(f"eval/{k}", o[k], step)
            return res
        plots = Path(cfg.runs_dir) / cfg.name / f"plots_{step:07d}" if cfg.eval.plots > 0 else None
        res = evaluate(model, eval_set, grid_level=cfg.eval.grid_level, batch_size=cfg.eval.batch_size,
                       plots_dir=plots, num_plots=cfg.eval.plots)
        model.train()
        o = res["overall"]
        print(f"eval step {step}: LL(L{res['grid_level']}) {o['ll']:.3f}  Acc@15 {o['acc@15']:.3f}  "
              f"Acc@30 {o['acc@30']:.3f}  median {o['median_deg']:.1f} deg", flush=True)
        if writer is not None:
            for k in ("ll", "ll_continuous", "acc@15", "acc@30", "median_deg"):
                writer.add_scalar(f"eval/{k}", o[k], step)
        return res

    # ------------------------------------------------------------------ loop
    model.train()
    bar = None
    if is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total if total < 10**18 else None, initial=step, desc=cfg.name, dynamic_ncols=True)
    last_loss: float | None = None
    eval_result: dict | None = None
    t_log, n_log = time.perf_counter(), 0
    while step < total:
        sampler.set_epoch(epoch)
        sampler.set_start((step - epoch * steps_per_epoch) * cfg.batch_size)
        for batch in loader:
            if step >= total:
                break
            if cfg.max_seconds is not None and time.time() - wall_start >= cfg.max_seconds:
                total = step  # the time budget is spent: stop here, evaluate and save as at the end
                if is_main:
                    print(f"max_seconds {cfg.max_seconds:g} reached at step {step}", flush=True)
                break
            stats: dict[str, torch.Tensor] = {}
            if reconstruction:  # image -> 3D shape
                tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                # the step's target subsets from its own seed: a resumed run draws what an uninterrupted one does
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + step)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, stats = ddp_model(tensors["image"], targets=tensors, generator=gen)  # through DDP's hooks
                n_batch = tensors["image"].shape[0]
            elif classifier:  # 3D shapes (spherical signals or points) -> class
                inputs = batch[model.input_key].to(device, non_blocking=True)
                labels = batch["label"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = ddp_model(inputs)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                stats = {"accuracy": (logits.argmax(-1) == labels).float().mean()}
                n_batch = labels.shape[0]
            else:
                images = batch["image"].to(device, non_blocking=True)
                rotations = batch["rotation"].to(device, non_blocking=True)
                n_batch = images.shape[0]
            if se3:
                # the importance samples of a step from its own seed: a resumed run draws what an uninterrupted one does
                gen = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + step)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss, stats = ddp_model(images, batch["K"].to(device), batch["t_hat"].to(device), rotations,
                                            batch["translation"].to(device), generator=gen)
            elif neural_mesh:
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + step)
                unit = 1.0 / model.object.radius_m  # metres -> the mesh's unit-sphere units
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    occ = batch.get("occluder_mask")
                    loss, stats = ddp_model(images, batch["K"].to(device), rotations,
                                            batch["translation"].to(device) * unit, generator=gen,
                                            occluder_mask=None if occ is None else occ.to(device))
            elif not classifier and not reconstruction:
                loss = _loss(ddp_model, model, images, rotations, amp_dtype if use_amp else None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            n_log += n_batch * world
            last_loss = float(loss.detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
            if is_main and (step % max(1, cfg.log_every) == 0 or step == total):
                dt = time.perf_counter() - t_log
                lr, rate = sched.get_last_lr()[0], n_log / max(dt, 1e-9)
                if writer is not None:
                    for k, v in stats.items():
                        writer.add_scalar(f"train/{k}", float(v), step)
                    writer.add_scalar("train/loss", last_loss, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/images_per_s", rate, step)
                if bar is None:  # no progress bar (progress: false, e.g. logs to a file): a plain line
                    of = f"/{total}" if total < 10**18 else ""
                    print(f"step {step}{of}  loss {last_loss:.4f}  lr {lr:.2e}  {rate:.1f} images/s", flush=True)
                t_log, n_log = time.perf_counter(), 0
            if cfg.eval.every and step % cfg.eval.every == 0 and step < total:
                eval_result = run_eval()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                save(last_loss, eval_result)
            if world > 1 and ((cfg.eval.every and step % cfg.eval.every == 0)
                              or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                dist.barrier()
        else:
            epoch += 1
            continue
        break
    if bar is not None:
        bar.close()
    if cfg.eval.every is not None:
        eval_result = run_eval()
    save(last_loss, eval_result)
    if writer is not None:
        writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"checkpoint": str(ckpt_file), "step": step, "loss": last_loss, "eval": eval_result,
            "seconds": time.time() - wall_start}


def build_spyropose(cfg: TrainConfig, train_set: Any) -> SpyroPose:
    """A fresh :class:`SpyroPose` for the one object of ``train_set`` (a ``SE3RenderDataset``): its
    keypoints, radius, apparent size and symmetries from the scaled mesh; ValueError when the data's
    crops are not the model's (size, padding)."""
    from pose_core.models.spyropose import ObjectModel, mesh_keypoints

    m, scene = cfg.spyropose, train_set.config
    if (scene.crop_size, scene.padding) != (m.input_size, m.crop_padding):
        raise ValueError(f"data.scene crop_size {scene.crop_size} / padding {scene.padding} differ from "
                         f"spyropose.input_size {m.input_size} / crop_padding {m.crop_padding}: set them equal")
    if len(train_set.shape_names) != 1:
        raise ValueError(f"a spyropose model is for one object, the data has {train_set.shape_names}")
    shape = train_set.shape(0)
    triangles = np.asarray(train_set.mesh(0).positions, dtype=np.float64)
    obj = ObjectModel(name=shape.name, radius_m=scene.diameter_m / 2, apparent_size_m=train_set.apparent_size(0),
                      symmetries=np.asarray(shape.symmetries).tolist())
    return SpyroPose(m, obj, mesh_keypoints(triangles, m.num_keypoints))


def build_classifier(cfg: TrainConfig, train_set: Any) -> Any:
    """A fresh shape classifier of ``cfg.kind`` (:data:`pose_core.model.CLASSIFIER_KINDS`) for the classes of
    ``train_set`` (a ``ShapeClassDataset``); ValueError when the data's bandwidth is not the model's."""
    from pose_core.models.pointnet import PointNet
    from pose_core.models.spherical_cnn import SphericalCNN

    if cfg.kind == "pointnet":
        return PointNet(cfg.pointnet, class_names=train_set.class_names)
    if train_set.config.bandwidth != cfg.spherical_cnn.bandwidth:
        raise ValueError(f"data.shape_set.bandwidth {train_set.config.bandwidth} differs from spherical_cnn.bandwidth "
                         f"{cfg.spherical_cnn.bandwidth}: set them equal")
    return SphericalCNN(cfg.spherical_cnn, class_names=train_set.class_names)


def build_reconstructor(cfg: TrainConfig, train_set: Any) -> Any:
    """A fresh :class:`pose_core.models.reconstruction.ShapeReconstructor` for ``train_set`` (a
    ``ReconstructionDataset``); ValueError when the data's image size or voxel grid is not the model's."""
    from pose_core.models.reconstruction import ShapeReconstructor

    m, d = cfg.reconstruction, train_set.config
    if d.image_size != m.image_size:
        raise ValueError(f"data.recon_set.image_size {d.image_size} differs from reconstruction.image_size "
                         f"{m.image_size}: set them equal")
    if m.decoder == "voxels" and d.voxel_resolution != m.voxel_resolution:
        raise ValueError(f"data.recon_set.voxel_resolution {d.voxel_resolution} differs from "
                         f"reconstruction.voxel_resolution {m.voxel_resolution}: set them equal")
    return ShapeReconstructor(m, class_names=train_set.class_names)


def build_neural_mesh(cfg: TrainConfig, train_set: Any) -> Any:
    """A fresh :class:`pose_core.refine.NeuralMesh` for the one object of ``train_set`` (a ``SE3RenderDataset``):
    its vertices from the unit-sphere mesh, its radius in metres from the scene."""
    from pose_core.refine.neural_mesh import MeshObject, NeuralMesh, mesh_vertices

    if len(train_set.shape_names) != 1:
        raise ValueError(f"a neural mesh is for one object, the data has {train_set.shape_names}")
    shape = train_set.shape(0)
    obj = MeshObject(name=shape.name, radius_m=train_set.config.diameter_m / 2,
                     symmetries=np.asarray(shape.symmetries).tolist())
    vertices = mesh_vertices(np.asarray(shape.mesh.positions, dtype=np.float64), cfg.neural_mesh.num_vertices)
    return NeuralMesh(cfg.neural_mesh, obj, vertices)


def _init_encoder(model: Any, path: str) -> None:
    """Load the ``encoder.*`` weights of checkpoint ``path`` into ``model.encoder``; ValueError if they do not fit."""
    state = read_checkpoint(path)["state_dict"]
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not enc:
        raise ValueError(f"init_encoder_from {path}: the checkpoint has no encoder weights")
    try:
        model.encoder.load_state_dict(enc, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"init_encoder_from {path}: its encoder does not fit this model's: {exc}") from exc


def _init_weights(model: Any, cfg: TrainConfig) -> None:
    """Load the weights of ``cfg.init_from`` into ``model``; ValueError if its model config differs."""
    ckpt = read_checkpoint(cfg.init_from)  # type: ignore[arg-type]
    want = dataclasses.asdict({"spyropose": cfg.spyropose, "neural_mesh": cfg.neural_mesh,
                               "spherical_cnn": cfg.spherical_cnn, "pointnet": cfg.pointnet,
                               "reconstruction": cfg.reconstruction}.get(cfg.kind, cfg.model))
    have = dict(ckpt["config"])
    # a neural mesh may change how it renders and trains (sigma, kappa, ...), not what its weights are
    keys = NEURAL_MESH_ARCHITECTURE if cfg.kind == "neural_mesh" else tuple(
        k for k in want if k not in ("pretrained", "class_names"))
    differ = {k: (have.get(k), want[k]) for k in keys if have.get(k) != want[k]}
    if differ:
        raise ValueError(f"init_from {cfg.init_from}: its model config differs from this run's "
                         f"(key: checkpoint, run): {differ}")
    model.load_state_dict(ckpt["state_dict"], strict=True)


#: The fields of a neural mesh config its weights depend on (``init_from`` must agree on these).
NEURAL_MESH_ARCHITECTURE = ("encoder", "feature_dim", "decoder_dim", "stride", "num_vertices", "clutter", "input_size")


def _check_training_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """ValueError unless ``ckpt`` holds what resuming needs (an exported checkpoint does not)."""
    for key in ("optimizer", "scheduler", "step"):
        if key not in ckpt:
            raise ValueError(f"{path} has no {key!r}: not a training checkpoint of train/train.py (an exported "
                             "checkpoint such as checkpoints/demo.pt cannot be resumed; its run's checkpoints can)")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="train/train.py", description="Train a model: ImageToSphere, SpyroPose, the "
                                "neural mesh, or a shape classifier (spherical CNN, PointNet).")
    p.add_argument("--config", default=None, help="YAML file (config/train/<name>.yaml)")
    p.add_argument("--resume", default=None, help="checkpoint of an earlier run to continue")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-4 max_steps=100")
    args = p.parse_args(argv)
    if args.config is None and args.resume is None:
        p.error("give --config (or --resume with a checkpoint that holds its config)")
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
    else:
        from train.config import apply_overrides

        try:
            ckpt = read_checkpoint(args.resume)
            _check_training_checkpoint(ckpt, args.resume)
        except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
            p.error(str(exc))  # at once, before any data is built
        if not isinstance(ckpt.get("train_config"), dict):
            p.error(f"{args.resume} holds no train_config; pass --config")
        cfg = config_from_dict(apply_overrides(ckpt["train_config"], args.overrides))
    argv_list = list(sys.argv[1:] if argv is None else argv)
    result = run(cfg, resume=args.resume, command=shlex.join([sys.executable, "train/train.py", *argv_list]))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"step {result['step']}  loss {result['loss']}  checkpoint {result['checkpoint']}  "
              f"({result['seconds']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
