"""In-process benchmarks: the per-frame estimator's stages, scaling, coarse-to-fine vs full grid, training.

Conventions (timings, memory, images) are those of :mod:`bench.common`. Every function takes a
:class:`Setup` and returns a JSON-able dict.

A frame is what the node does for one ``sensor_msgs/Image``, and nothing is copied from it:

* ``image_conversion``: ``image_conversion.image_to_rgb`` of the message, ``(H, W, 3)`` uint8;
* ``estimate``: :meth:`pose_core.pipeline.PoseEstimator.estimate` (the node's one call), and
  its own steps from ``FrameEstimate.timings_ms``: ``crops`` (crops and resize to the model
  input), ``model`` (``predict``: encoder, head, coarse-to-fine), ``summary`` (batched summary
  with the viewing-ray corrections), ``translation``;
* ``messages``: the messages the node publishes per frame (``messages.*_msg``);
* ``total``: message in, messages out.

The model step is broken down (``encoder``, ``head``, ``distribution``) by calling the model's
parts on the same input. ``B`` objects are ``B`` detection boxes in one image (one batch through
the model, as the node serves detections).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.common import measure, peak_rss_mb, rss_mb, summarize_ms

__all__ = [
    "Setup",
    "frame_stages",
    "raw_model_cost",
    "scaling_levels",
    "scaling_image_size",
    "scaling_detections",
    "camera_sizes",
    "backends_side_by_side",
    "coarse_to_fine_vs_full_grid",
    "training_throughput",
]

STAGES = ("image_conversion", "crops", "model", "summary", "translation", "estimate", "messages", "total")
MODEL_PARTS = ("encoder", "head", "distribution")


@dataclass
class Setup:
    """What every benchmark needs: the model, the rendered images and the run's sizes."""

    model: Any  # pose_core.ImageToSphere, eval mode, on ``device``
    device: torch.device
    images: list[np.ndarray]  # (224, 224, 3) uint8 renders
    K: np.ndarray  # (3, 3) intrinsics of the renders
    repeats: int
    warmup: int
    quick: bool
    target_level: int = 5
    num_samples: int = 100

    @property
    def image_size(self) -> int:
        """The model's input side (the checkpoint's, or the pipeline's fallback)."""
        from pose_core.pipeline import FALLBACK_INPUT_SIZE

        return self.model.input_size or FALLBACK_INPUT_SIZE

    def estimator(self, **settings: Any) -> Any:
        """A :class:`pose_core.pipeline.PoseEstimator` of the model with these settings (seed 0)."""
        from pose_core.pipeline import EstimatorSettings, PoseEstimator

        s = EstimatorSettings(target_level=settings.pop("target_level", self.target_level),
                              num_samples=settings.pop("num_samples", self.num_samples), **settings)
        return PoseEstimator(self.model, s)

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


def _image_msg(image: np.ndarray) -> Any:
    from std_msgs.msg import Header

    from pose_distribution_ros.image_conversion import numpy_to_image

    return numpy_to_image(image, "rgb8", Header(frame_id="bench_camera_optical"))


def _messages(frame: Any) -> list:
    """The messages the node publishes for one frame (node.py ``_process``)."""
    from std_msgs.msg import Header

    from pose_distribution_ros import messages

    header = Header(frame_id="bench_camera_optical")
    objects = frame.objects
    msgs = [messages.pose_distribution_msg(o, header, f"object_{i}") for i, o in enumerate(objects)]
    out = [messages.pose_distribution_array_msg(header, msgs)]
    if objects:
        out += [messages.pose_with_covariance_msg(objects[0], header),
                messages.pose_array_msg(objects[0], header, samples=msgs[0].samples)]
        out += [messages.transform_msg(o, header, f"object_{i}") for i, o in enumerate(objects)]
    return out


def _boxes(n: int, width: int = 224, height: int = 224) -> list[Any] | None:
    """``None`` (whole image) for ``n == 0``, else ``n`` boxes of side ``width / 2`` laid over the image."""
    from pose_core.pipeline import Box

    if n == 0:
        return None
    side = width // 2
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        cu, cv = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
        out.append(Box((float(cu), float(cv)), (side / 1.2, side / 1.2), score=1.0 - i / (n + 1)))
    return out


def _time_estimate(setup: Setup, estimator: Any, rgb: np.ndarray, K: np.ndarray, boxes: list[Any] | None = None
                   ) -> tuple[dict[str, float], dict[str, dict[str, float]], Any]:
    """Timing of ``estimator.estimate(rgb, K, boxes=boxes)`` over ``setup``'s runs, the timing of each
    of its own steps (``FrameEstimate.timings_ms``) over the same calls, and the last frame."""
    steps: dict[str, list[float]] = {}
    last: list[Any] = []

    def call() -> None:
        frame = estimator.estimate(rgb, K, boxes=boxes)
        for key, ms in frame.timings_ms.items():
            steps.setdefault(key, []).append(ms)
        last[:] = [frame]

    timing = setup.time(call)
    return timing, {key: summarize_ms(v) for key, v in steps.items()}, last[0]


def _estimate_stages(setup: Setup, estimator: Any, msg: Any, K: np.ndarray, boxes: list[Any] | None
                     ) -> dict[str, Any]:
    """Timings of ``STAGES`` for one frame (``msg``) with ``boxes``."""
    from pose_distribution_ros.image_conversion import image_to_rgb

    estimate, steps, frame = _time_estimate(setup, estimator, image_to_rgb(msg), K, boxes)
    out: dict[str, Any] = {
        "image_conversion": setup.time(lambda: image_to_rgb(msg)),
        "estimate": estimate,
        "messages": setup.time(lambda: _messages(frame)),
        "total": setup.time(lambda: _messages(estimator.estimate(image_to_rgb(msg), K, boxes=boxes))),
    }
    for key in ("crops", "model", "summary", "translation"):
        out[key] = steps.get(key, summarize_ms([]))
    out["objects"] = len(frame.objects)
    return out


def frame_stages(setup: Setup, batch: int) -> dict[str, Any]:
    """Per-stage timings of a frame with ``batch`` objects (1: the whole image; more: boxes), plus the
    model's parts on the same input."""
    from pose_core import SO3Distribution, preprocess

    if setup.quick and batch > 1:  # one run, no warm-up: the B = 1 runs warmed everything up
        setup = dataclasses.replace(setup, warmup=0, repeats=1)
    setup.reset_cuda_peak()
    estimator = setup.estimator(max_detections=max(8, batch))
    image = setup.images[0]
    out = _estimate_stages(setup, estimator, _image_msg(image), setup.K, None if batch == 1 else _boxes(batch))
    model = setup.model
    x = torch.cat([preprocess.model_input(image, setup.image_size)[0]] * batch).to(setup.device)
    with torch.inference_mode():
        feats = model.encoder(x)
        coeffs = model.head(feats)
        out["encoder"] = setup.time(lambda: model.encoder(x))
        out["head"] = setup.time(lambda: model.head(feats))
        out["distribution"] = setup.time(
            lambda: SO3Distribution.from_fourier(coeffs, model.lmax, target_level=estimator.target_level))
    out["batch"] = batch
    out["memory"] = setup.memory()
    return out


def raw_model_cost(setup: Setup, size: int = 224) -> dict[str, Any]:
    """``predict`` (encoder, head, distribution) on one ``size`` px input: the torch model without the resize."""
    from pose_core import preprocess

    setup.reset_cuda_peak()
    model = setup.model
    x = preprocess.model_input(setup.images[0], size)[0].to(setup.device)
    # the torch model on this input as it is: no resize, no exported network of another input size
    saved, model.input_size = model.input_size, None
    saved_backend, model.network_backend = model.network_backend, None
    with torch.inference_mode():
        feats = model.encoder(x)
        coeffs = model.head(feats)
        out = {
            "input_px": size,
            "encoder": setup.time(lambda: model.encoder(x)),
            "head": setup.time(lambda: model.head(feats)),
            "predict": setup.time(lambda: model.predict(x, target_level=setup.target_level)),
        }
    model.input_size, model.network_backend = saved, saved_backend
    del coeffs
    out["memory"] = setup.memory()
    return out


def scaling_levels(setup: Setup, levels: tuple[int, ...] = (3, 4, 5, 6)) -> list[dict[str, Any]]:
    """Cost of the model step (with the coarse-to-fine distribution) and of the summary against the
    target level, from the estimator's own step timings (one image)."""
    from pose_core import grids

    rows = []
    image = setup.images[0]
    for level in levels:
        setup.reset_cuda_peak()
        _, steps, _ = _time_estimate(setup, setup.estimator(target_level=level), image, setup.K)
        rows.append({
            "level": level,
            "mode_resolution_deg": math.degrees(grids.resolution(level)),
            "model": steps["model"],
            "summary": steps["summary"],
            "estimate": steps["total"],
            "memory": setup.memory(),
        })
    return rows


def scaling_image_size(setup: Setup, sizes: tuple[int, ...] = (64, 96, 128, 224)) -> list[dict[str, Any]]:
    """Cost of the model (encoder, head, ``predict``) against its input side (one image)."""
    return [raw_model_cost(setup, size) for size in sizes]


def scaling_detections(setup: Setup, counts: tuple[int, ...] = (1, 2, 4, 8)) -> list[dict[str, Any]]:
    """Cost of a frame against the number of detection boxes (one batch through the model, batched
    summaries), and its ratio to one box."""
    from pose_distribution_ros.image_conversion import image_to_rgb

    rgb = image_to_rgb(_image_msg(setup.images[0]))
    estimator = setup.estimator()
    rows = []
    for n in counts:
        setup.reset_cuda_peak()
        boxes = _boxes(n)
        row = {"detections": n, "frame": setup.time(lambda b=boxes: estimator.estimate(rgb, setup.K, boxes=b))}
        row["per_detection_ms"] = row["frame"]["p50_ms"] / n
        row["memory"] = setup.memory()
        rows.append(row)
    one = rows[0]["frame"]["p50_ms"]
    for row in rows:
        row["ratio_to_one"] = row["frame"]["p50_ms"] / one
    return rows


#: Camera image sizes (width, height) of :func:`camera_sizes`.
CAMERA_SIZES = ((224, 224), (640, 480), (1280, 720), (1920, 1080))


def camera_images(size: tuple[int, int], base: list[np.ndarray], K: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames of ``size`` ``(width, height)``: each square render scaled to the image height and centred
    on a black frame (the object fills the same part of the view), and the intrinsics ``(3, 3)`` of
    that view (``K`` of the renders, scaled; pixel centres at integers)."""
    import torch.nn.functional as F

    width, height = size
    s = height / base[0].shape[0]
    u0 = (width - height) // 2
    out = []
    for img in base:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        y = F.interpolate(x, size=(height, height), mode="bilinear", align_corners=False, antialias=True)
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:, u0 : u0 + height] = y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        out.append(frame)
    K2 = np.array(K, dtype=np.float64)
    K2[0, 0] *= s
    K2[1, 1] *= s
    K2[0, 2] = s * (K[0, 2] + 0.5) - 0.5 + u0
    K2[1, 2] = s * (K[1, 2] + 0.5) - 0.5
    return out, K2


def camera_sizes(setup: Setup) -> list[dict[str, Any]]:
    """In-process cost of a frame (image conversion + estimate + messages) at robot camera sizes (whole image)."""
    estimator = setup.estimator()
    rows = []
    for size in CAMERA_SIZES:
        frames, K = camera_images(size, setup.images[:1], setup.K)
        row = _estimate_stages(setup, estimator, _image_msg(frames[0]), K, None)
        rows.append({"width": size[0], "height": size[1], "image_conversion": row["image_conversion"],
                     "crops": row["crops"], "estimate": row["estimate"], "total": row["total"],
                     "memory": setup.memory()})
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

    from pose_core import SO3Distribution, fourier, grids, preprocess, so3

    model, lmax = setup.model, setup.model.lmax
    x = torch.cat([preprocess.model_input(setup.images[i % len(setup.images)], setup.image_size)[0]
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

    full_mode = grids.cell_rotations(level, best_idx, dtype=coeffs.dtype)
    plain = SO3Distribution.from_fourier(coeffs, lmax, target_level=level, climb=0).mode()  # top-k search only
    plain_angle = so3.geodesic_distance(plain, full_mode)
    mode = SO3Distribution.from_fourier(coeffs, lmax, target_level=level).mode()  # (N, 3, 3), as predict
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
        "mode_agreement_without_climb": float((plain_angle <= res * (1 + 1e-6)).float().mean()),
        "same_cell": float((angle <= 1e-4).float().mean()),
        "value_agreement": float(((best_val - value).abs() <= 1e-3).float().mean()),
        "max_angle_deg": float(angle.max().rad2deg()),
        "resolution_deg": math.degrees(res),
    }


def backends_side_by_side(setup: Setup) -> dict[str, Any]:
    """The estimator's frame with the network in torch and in onnxruntime, one after the other (224x224
    camera image, whole image), and how far apart their coefficients are."""
    from pose_core import onnx_backend, preprocess

    if setup.device.type != "cpu" or not onnx_backend.available() or not setup.model.input_size:
        return {"skipped": "onnxruntime runs on the CPU, needs onnx + onnxruntime and a known input size"}
    model = setup.model
    saved = model.network_backend
    out: dict[str, Any] = {}
    x = preprocess.model_input(setup.images[0], model.input_size)[0]
    coeffs = {}
    for name in ("torch", "onnxruntime"):
        model.use_backend(name)
        estimate, steps, _ = _time_estimate(setup, setup.estimator(), setup.images[0], setup.K)
        out[name] = {"estimate": estimate, "model": steps["model"]}
        with torch.inference_mode():
            coeffs[name] = model(x) if name == "torch" else model.network_backend(x)
    out["max_abs_coeff_diff"] = float((coeffs["torch"] - coeffs["onnxruntime"]).abs().max())
    out["max_abs_coeff"] = float(coeffs["torch"].abs().max())
    out["speedup"] = out["torch"]["estimate"]["p50_ms"] / out["onnxruntime"]["estimate"]["p50_ms"]
    model.network_backend = saved
    return out


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
