"""In-process benchmarks: the node's per-frame stages, scaling, coarse-to-fine vs full grid, training.

Conventions (timings, memory, images) are those of :mod:`bench.common`. Every function takes a
:class:`Setup` and returns a JSON-able dict.

Stages, in the order the node runs them for one ``sensor_msgs/Image`` (``node.py: _process``):

* ``image_conversion``: ``image_conversion.image_to_rgb`` of the message, ``(224, 224, 3)`` uint8;
* ``preprocessing``: ``camera.model_input`` (centre square, antialiased resize to the model size);
* ``encoder``: ``model.encoder``; ``head``: ``model.head`` (sphere projection, S² and SO(3) convolutions);
* ``distribution``: ``SO3Distribution.from_fourier`` coarse-to-fine to the target level;
* ``summary``: crop correction, nominal translation and ``camera.pose_estimate`` (mode,
  covariance, 100 samples, top modes) per image;
* ``messages``: the five messages the node publishes per image (``messages.*_msg``).

A batch of ``B`` runs ``B`` images through the model as one batch (as the node will for ``B``
detections) and the per-image stages ``B`` times.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.common import measure, peak_rss_mb, rss_mb

__all__ = [
    "Setup",
    "frame_stages",
    "raw_model_cost",
    "scaling_levels",
    "scaling_image_size",
    "scaling_detections",
    "coarse_to_fine_vs_full_grid",
    "training_throughput",
]

STAGES = ("image_conversion", "preprocessing", "encoder", "head", "distribution", "summary", "messages")


@dataclass
class Setup:
    """What every benchmark needs: the model, the rendered images and the run's sizes."""

    model: Any  # pose_core.ImageToSphere, eval mode, on ``device``
    device: torch.device
    image_size: int  # model input side (the checkpoint's training size)
    images: list[np.ndarray]  # (224, 224, 3) uint8 renders
    K: np.ndarray  # (3, 3) intrinsics of the renders
    repeats: int
    warmup: int
    quick: bool
    target_level: int = 5
    num_samples: int = 100
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def time(self, fn) -> dict[str, float]:
        return measure(fn, self.repeats, self.warmup, self.device)

    def memory(self) -> dict[str, float]:
        out = {"rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}
        if self.device.type == "cuda":
            out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out

    def reset_cuda_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)


def _image_msgs(setup: Setup, n: int) -> list[Any]:
    from std_msgs.msg import Header

    from pose_distribution_ros.image_conversion import numpy_to_image

    header = Header(frame_id="bench_camera_optical")
    return [numpy_to_image(setup.images[i % len(setup.images)], "rgb8", header) for i in range(n)]


def _summaries(setup: Setup, dist: Any, regions: list[tuple[int, int, int, int]], width: int, height: int) -> list:
    """What the node computes per image after ``predict``: correction, translation, ``pose_estimate``."""
    from pose_core import camera

    out = []
    for i, region in enumerate(regions):
        center = camera.region_center(region, width, height)
        correction = camera.crop_ray_rotation(setup.K, center)
        translation = camera.translation_from_nominal(1.0, setup.K, center)
        out.append(
            camera.pose_estimate(
                dist, translation, index=i, num_samples=setup.num_samples, generator=setup.generator,
                correction=correction,
            )
        )
    return out


def _messages(estimates: list) -> list:
    from std_msgs.msg import Header

    from pose_distribution_ros import messages

    header = Header(frame_id="bench_camera_optical")
    msgs = [messages.pose_distribution_msg(e, header, "object") for e in estimates]
    out = [messages.pose_distribution_array_msg(header, msgs)]
    for e in estimates:
        out += [
            messages.pose_with_covariance_msg(e, header),
            messages.pose_array_msg(e, header),
            messages.transform_msg(e, header, "object"),
        ]
    return out


def frame_stages(setup: Setup, batch: int) -> dict[str, Any]:
    """Per-stage timings for ``batch`` images (module docstring), plus the whole frame (``total``)."""
    from pose_core import SO3Distribution, camera
    from pose_distribution_ros.image_conversion import image_to_rgb

    if setup.quick and batch > 1:  # one run, no warm-up: the B = 1 runs warmed everything up
        setup = dataclasses.replace(setup, warmup=0, repeats=1)
    setup.reset_cuda_peak()
    model, dev = setup.model, setup.device
    msgs = _image_msgs(setup, batch)
    rgbs = [image_to_rgb(m) for m in msgs]
    inputs = [camera.model_input(rgb, setup.image_size) for rgb in rgbs]
    regions = [r for _, r in inputs]
    x = torch.cat([t for t, _ in inputs]).to(dev)
    H, W = rgbs[0].shape[:2]
    with torch.inference_mode():
        feats = model.encoder(x)
        coeffs = model.head(feats)
    dist = SO3Distribution.from_fourier(coeffs, model.lmax, target_level=setup.target_level)
    estimates = _summaries(setup, dist, regions, W, H)

    def preprocess():
        return torch.cat([camera.model_input(rgb, setup.image_size)[0] for rgb in rgbs]).to(dev)

    def total():
        rgb = [image_to_rgb(m) for m in msgs]
        inp = [camera.model_input(r, setup.image_size) for r in rgb]
        d = model.predict(torch.cat([t for t, _ in inp]), target_level=setup.target_level)
        _messages(_summaries(setup, d, [r for _, r in inp], W, H))

    with torch.inference_mode():
        out = {
            "image_conversion": setup.time(lambda: [image_to_rgb(m) for m in msgs]),
            "preprocessing": setup.time(preprocess),
            "encoder": setup.time(lambda: model.encoder(x)),
            "head": setup.time(lambda: model.head(feats)),
            "distribution": setup.time(
                lambda: SO3Distribution.from_fourier(coeffs, model.lmax, target_level=setup.target_level)
            ),
            "summary": setup.time(lambda: _summaries(setup, dist, regions, W, H)),
            "messages": setup.time(lambda: _messages(estimates)),
        }
    out["total"] = setup.time(total)
    out["batch"] = batch
    out["memory"] = setup.memory()
    return out


def raw_model_cost(setup: Setup, size: int = 224) -> dict[str, Any]:
    """``predict`` (encoder, head, distribution) on one ``size`` px input: the model without the resize."""
    from pose_core import camera

    setup.reset_cuda_peak()
    model = setup.model
    x = camera.model_input(setup.images[0], size)[0].to(setup.device)
    with torch.inference_mode():
        feats = model.encoder(x)
        coeffs = model.head(feats)
        out = {
            "input_px": size,
            "encoder": setup.time(lambda: model.encoder(x)),
            "head": setup.time(lambda: model.head(feats)),
            "predict": setup.time(lambda: model.predict(x, target_level=setup.target_level)),
        }
    del coeffs
    out["memory"] = setup.memory()
    return out


def scaling_levels(setup: Setup, levels: tuple[int, ...] = (3, 4, 5, 6)) -> list[dict[str, Any]]:
    """Cost of the distribution and of the summary against the coarse-to-fine target level (one image)."""
    from pose_core import SO3Distribution, camera, grids

    x, region = camera.model_input(setup.images[0], setup.image_size)
    with torch.inference_mode():
        coeffs = setup.model(x.to(setup.device))
    rows = []
    for level in levels:
        setup.reset_cuda_peak()
        dist = SO3Distribution.from_fourier(coeffs, setup.model.lmax, target_level=level)
        row = {
            "level": level,
            "mode_resolution_deg": math.degrees(grids.resolution(level)),
            "distribution": setup.time(lambda lv=level: SO3Distribution.from_fourier(coeffs, setup.model.lmax,
                                                                                       target_level=lv)),
            "summary": setup.time(lambda d=dist: _summaries(setup, d, [region], 224, 224)),
        }
        row["memory"] = setup.memory()
        rows.append(row)
    return rows


def scaling_image_size(setup: Setup, sizes: tuple[int, ...] = (64, 96, 128, 224)) -> list[dict[str, Any]]:
    """Cost of the model (encoder, head, ``predict``) against its input side (one image)."""
    return [raw_model_cost(setup, size) for size in sizes]


def _detection_regions(n: int, width: int = 224, height: int = 224) -> list[tuple[int, int, int, int]]:
    """``n`` square boxes ``(u0, v0, u1, v1)`` of side ``width / 2`` laid over the image."""
    side = width // 2
    rng = np.random.default_rng(n)
    out = []
    for _ in range(n):
        u0, v0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        out.append((u0, v0, u0 + side, v0 + side))
    return out


def scaling_detections(setup: Setup, counts: tuple[int, ...] = (1, 2, 4, 8)) -> list[dict[str, Any]]:
    """Cost per image against the number of detections: crops as one batch through ``predict``, then a summary each."""
    from pose_core import camera

    image = setup.images[0]
    rows = []
    for n in counts:
        setup.reset_cuda_peak()
        regions = _detection_regions(n)

        def frame(regions=regions):
            x = torch.cat([camera.model_input(image[v0:v1, u0:u1], setup.image_size)[0]
                           for u0, v0, u1, v1 in regions])
            dist = setup.model.predict(x, target_level=setup.target_level)
            return _summaries(setup, dist, regions, 224, 224)

        row = {"detections": n, "frame": setup.time(frame)}
        row["per_detection_ms"] = row["frame"]["p50_ms"] / n
        row["memory"] = setup.memory()
        rows.append(row)
    return rows


def coarse_to_fine_vs_full_grid(setup: Setup, num_images: int, level: int = 5) -> dict[str, Any]:
    """Coarse-to-fine (level 3 -> ``level``) against the exhaustive search of the whole ``level`` grid.

    Timing at batch 1 (with ``setup.quick``: the whole batch of ``num_images`` in one pass, both
    ways, so that the slow exhaustive search runs once). ``full_grid`` is
    :func:`pose_core.fourier.full_grid_argmax` as it stands (it builds each chunk's Wigner-D rows
    on the fly); ``precomputed_matrix`` is what the reference pays with its ``N x so3_dim`` matrix
    held in memory (4.3 GB at level 5 in float32): one chunk's product, timed, times the number of
    chunks. Agreement over ``num_images`` renders: the two modes within one level-``level`` cell
    (``resolution(level)``), in the same cell, and the log-density of the coarse-to-fine mode within
    1e-3 of the grid maximum (symmetric objects have several equally high modes; either is right).
    """
    import time

    from pose_core import SO3Distribution, camera, fourier, grids, so3

    model, lmax = setup.model, setup.model.lmax
    x = torch.cat([camera.model_input(setup.images[i % len(setup.images)], setup.image_size)[0]
                   for i in range(num_images)]).to(setup.device)
    with torch.inference_mode():
        coeffs = model(x)  # (N, so3_dim)
    timed = coeffs if setup.quick else coeffs[:1]
    c2f = setup.time(lambda: SO3Distribution.from_fourier(timed, lmax, target_level=level).mode())

    def full_grid() -> tuple[torch.Tensor, torch.Tensor, float]:
        t = time.perf_counter()
        idx, val = fourier.full_grid_argmax(timed, level, lmax)
        if setup.device.type == "cuda":
            torch.cuda.synchronize(setup.device)
        return idx, val, 1000 * (time.perf_counter() - t)

    best_idx, best_val, full_ms = full_grid()
    if not setup.quick:
        best_idx, best_val = fourier.full_grid_argmax(coeffs, level, lmax)  # (N,), (N,)

    chunk = 32768
    W = fourier.cell_flat_wigner(level, torch.arange(chunk, device=setup.device), lmax, coeffs.dtype)
    matmul = setup.time(lambda: (timed @ W.T).max(dim=1))
    precomputed_ms = matmul["p50_ms"] * grids.num_cells(level) / chunk

    mode = SO3Distribution.from_fourier(coeffs, lmax, target_level=level).mode()  # (N, 3, 3)
    full_mode = grids.cell_rotations(level, best_idx, dtype=mode.dtype)
    angle = so3.geodesic_distance(mode, full_mode)  # (N,)
    value = fourier.evaluate_rotations(coeffs, mode[:, None], lmax)[:, 0]  # (N,): f at the c2f mode
    res = grids.resolution(level)
    c2f_ms = c2f["p50_ms"]
    return {
        "level": level,
        "cells": grids.num_cells(level),
        "timing_batch": timed.shape[0],
        "coarse_to_fine": c2f,
        "full_grid_ms": full_ms,
        "precomputed_matrix_ms": precomputed_ms,
        "speedup": full_ms / c2f_ms,
        "speedup_vs_precomputed_matrix": precomputed_ms / c2f_ms,
        "images": num_images,
        "mode_agreement": float((angle <= res * (1 + 1e-6)).float().mean()),
        "same_cell": float((angle <= 1e-4).float().mean()),
        "value_agreement": float(((best_val - value).abs() <= 1e-3).float().mean()),
        "max_angle_deg": float(angle.max().rad2deg()),
        "resolution_deg": math.degrees(res),
    }


def training_throughput(setup: Setup, batch: int = 32, steps: int = 10) -> dict[str, Any]:
    """Training images/s (forward, loss, backward, AdamW step) in float32 and with AMP; GPU only."""
    if setup.device.type != "cuda":
        return {"skipped": "CPU run: training throughput is measured on a GPU only "
                           "(the CPU figure is in checkpoints/demo.json: 2,000 steps x 32 images in about 50 min)"}
    from pose_core.model import ImageToSphere
    from train.train import _loss

    out: dict[str, Any] = {"batch": batch, "image_px": setup.image_size}
    for name, amp in (("fp32", None), ("amp_bf16", torch.bfloat16), ("amp_fp16", torch.float16)):
        model = ImageToSphere(**{**vars(setup.model.config), "pretrained": False}).to(setup.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
        x = torch.rand(batch, 3, setup.image_size, setup.image_size, device=setup.device)
        from pose_core import so3

        R = so3.random_rotations(batch, device=setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)

        def step(model=model, opt=opt, scaler=scaler, x=x, R=R, amp=amp):
            opt.zero_grad(set_to_none=True)
            loss = _loss(model, model, x, R, amp)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        t = measure(step, steps, warmup=3, device=setup.device)
        out[name] = {"step": t, "images_per_s": batch / (t["p50_ms"] / 1000),
                     "cuda_max_allocated_mb": torch.cuda.max_memory_allocated(setup.device) / 2**20}
    return out
