"""Shared pieces of the benchmark suite: timing, memory, hardware, test images.

Conventions, stated once for the whole suite (``bench/run.py`` and the modules it calls):

* Times are wall-clock milliseconds; a timing is ``{"p50_ms", "p90_ms", "n"}`` over ``n`` runs
  after warm-up runs, with ``torch.cuda.synchronize`` around each run on a GPU.
* Memory is MiB (2**20 bytes): resident set size (RSS) from ``/proc`` or ``getrusage``, and
  ``torch.cuda.max_memory_allocated`` on a GPU.
* Images are the 224x224 RGB renders of :func:`render_images` (SYMSOL I shapes at seeded random
  rotations), rendered once and reused, so that producing them costs nothing while timing.
"""

from __future__ import annotations

import datetime
import os
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Timing",
    "measure",
    "summarize_ms",
    "rss_mb",
    "peak_rss_mb",
    "process_rss_mb",
    "process_cpu_s",
    "hardware",
    "render_images",
    "SHAPES",
]

Timing = dict[str, float]

#: Shapes rendered for the benchmark images (SYMSOL I; no file needed).
SHAPES = ("cube", "tet", "icosa", "cone", "cyl")


def summarize_ms(samples_ms: list[float] | np.ndarray) -> Timing:
    """``{"p50_ms", "p90_ms", "n"}`` of ``samples_ms`` (NaN when empty)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "n": 0}
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)), "n": int(a.size)}


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 2, device: torch.device | None = None) -> Timing:
    """Median and p90 of ``repeats`` calls of ``fn`` after ``warmup`` calls (synchronised on CUDA)."""
    cuda = device is not None and device.type == "cuda"
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        samples.append(1000 * (time.perf_counter() - t))
    return summarize_ms(samples)


def git_commit() -> str:
    """The repository's HEAD commit ("" when git cannot tell), for the JSON of a benchmark."""
    repo = Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_record(device: torch.device) -> dict[str, Any]:
    """What every benchmark JSON starts with: ``command``, ``date`` (UTC), ``git_commit``, ``hardware``."""
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "hardware": hardware(device),
    }


def rss_mb() -> float:
    """Current RSS of this process (MiB)."""
    return process_rss_mb(os.getpid())["rss_mb"]


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (MiB; ``getrusage``: kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_rss_mb(pid: int) -> dict[str, float]:
    """``{"rss_mb", "peak_rss_mb"}`` of process ``pid`` (``VmRSS``, ``VmHWM`` of ``/proc/PID/status``)."""
    out = {"rss_mb": float("nan"), "peak_rss_mb": float("nan")}
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                out["peak_rss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its threads (``/proc/PID/stat``)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def hardware(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, memory, GPU, versions and the load average (a shared machine says so here)."""
    from train.train import hardware_info

    info = hardware_info(device)
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def render_images(n: int, size: int = 224, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, list[str], np.ndarray]:
    """``n`` renders: images ``[(size, size, 3) uint8]``, rotations ``(n, 3, 3)``, shape names, ``K`` ``(3, 3)``.

    Shapes cycle through :data:`SHAPES`; rotations are Haar-random from ``seed``.
    """
    from pose_core import so3
    from pose_core.data import Camera, Renderer, get_shape

    camera = Camera(width=size, height=size)
    renderer = Renderer(camera=camera)
    R = so3.random_rotations(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    names = [SHAPES[i % len(SHAPES)] for i in range(n)]
    meshes = {name: get_shape(name).mesh for name in set(names)}
    images = [renderer.render(meshes[name], R[i]) for i, name in enumerate(names)]
    renderer.close()
    return images, R, names, camera.K
