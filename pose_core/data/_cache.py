"""The on-disk cache of computed shape data (private): views, renders and targets computed once per set of
shapes and settings, read back on the next build.

A cache file lives under :func:`pose_core.fourier.cache_dir` ``/<folder>/<hash>.npz``, the hash taken over
everything that makes its arrays (a format version, the seed, the settings, and every shape's vertices,
faces, label and name), so that a changed shape or setting never reads a stale file. Files are written
atomically (temp file + rename): readers never see a half-written one; a corrupt, partial or mismatched file
is recomputed, never trusted; a read-only cache only costs the recomputation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["shapes_cache_file", "cached_arrays"]


def shapes_cache_file(folder: str, version: int, seed: int, config: Any, shapes: Sequence[tuple]) -> Path:
    """The cache file of arrays computed from ``shapes`` (``(vertices, faces, label, name)`` tuples) with the
    dataclass ``config`` and ``seed``, in ``folder`` of the cache directory."""
    from pose_core.fourier import cache_dir

    h = hashlib.sha1(json.dumps({"v": version, "seed": int(seed), "config": dataclasses.asdict(config)},
                                sort_keys=True).encode())
    for vertices, faces, label, name in shapes:
        h.update(np.ascontiguousarray(vertices, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
        h.update(f"{int(label)}:{name};".encode())
    return cache_dir() / folder / f"{h.hexdigest()[:20]}.npz"


def _load(path: Path, lengths: Mapping[str, int], keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in keys}
        if any(len(arrays[k]) != n for k, n in lengths.items()):
            return None
        return arrays
    except Exception:  # a corrupt or partial cache file is rebuilt, never trusted
        return None


def _save(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: readers never see a half-written file
    except OSError:
        pass  # a read-only cache only costs the recomputation


def cached_arrays(path: Path | None, compute: Callable[[], dict[str, np.ndarray]], keys: Sequence[str],
                  lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of cache file ``path`` when it holds them with the expected first-axis ``lengths``
    (``key -> length``); otherwise ``compute()``'s, written to ``path``. ``path`` ``None``: no cache."""
    arrays = _load(path, lengths, keys) if path is not None else None
    if arrays is None:
        arrays = compute()
        if path is not None:
            _save(path, arrays)
    return arrays
