"""Shape classification data: shapes in random poses as spherical signals and point sets.

Each item is one view of one shape: the shape turned by a rotation ``R`` drawn per the protocol of
Esteves et al. (``rotations``: ``"z"`` about the vertical axis only, ``"so3"`` Haar-uniform,
``"none"``), then seen either

* ``source="mesh"``: whole (the paper's setting): the six channels of
  :func:`pose_core.data.sphere_projection.project_mesh` and ``points`` sampled on its surface, or
* ``source="depth"``: by a depth camera (a robot's setting): a ``depth_size``-pixel depth crop rendered
  from a fixed camera ``elevation_deg`` above the horizontal plane, looking at the shape's centre
  from ``camera_distance`` (the shape fits the unit sphere); its signal from
  :func:`pose_core.data.sphere_projection.project_depth` in the *world* frame (z up: a robot knows
  gravity) and ``points`` drawn from the visible pixels, in the same centred, scaled frame.

Shapes are normalised first (bounding-box centre at the origin, farthest vertex at radius 1), so
raw ModelNet files and the procedural set are treated alike. Items are dicts: ``signal``
``(6, 2b, 2b)`` float32, ``points`` ``(points, 3)`` float32, ``label`` int, ``shape`` (class name),
``rotation`` ``(3, 3)`` float32 (object -> world). Views are computed once, in parallel-free plain
loops, and cached on disk (:func:`pose_core.fourier.cache_dir`, keyed by everything that makes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core.data._cache import cached_arrays, shapes_cache_file
from pose_core.pinhole import look_at

__all__ = ["ROTATION_MODES", "SOURCES", "ShapeSetConfig", "ShapeClassDataset", "random_rotations",
           "normalize_mesh", "depth_camera", "view_depth", "collate_shapes"]

ROTATION_MODES = ("none", "z", "so3")
SOURCES = ("mesh", "depth")
_CACHE_VERSION = 1


@dataclass
class ShapeSetConfig:
    """Which shapes and how they are seen. ``classes``: procedural class names (``None``: all of
    :data:`pose_core.data.procedural.PROCEDURAL_CLASSES`; for ModelNet40 a subset of its classes);
    ``per_class``: procedural shapes per class (``None`` for ModelNet40: all files); ``views``: rotated
    views per shape; ``bandwidth``: of the spherical signal (grid ``2b x 2b``); ``points``: points per
    item; ``depth_size``, ``elevation_deg``, ``camera_distance``: the depth camera (``source="depth"``)."""

    classes: list[str] | None = None
    per_class: int | None = 40
    source: str = "mesh"
    rotations: str = "z"
    views: int = 2
    bandwidth: int = 16
    points: int = 512
    depth_size: int = 48
    elevation_deg: float = 30.0
    camera_distance: float = 3.0
    cache: bool = True

    def __post_init__(self) -> None:
        checks = {
            f"source in {SOURCES}": self.source in SOURCES,
            f"rotations in {ROTATION_MODES}": self.rotations in ROTATION_MODES,
            "views >= 1": self.views >= 1,
            "bandwidth >= 2": self.bandwidth >= 2,
            "points >= 1": self.points >= 1,
            "depth_size >= 8": self.depth_size >= 8,
            "camera_distance > 1 (outside the unit sphere)": self.camera_distance > 1,
            "per_class >= 1 or None": self.per_class is None or self.per_class >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad ShapeSetConfig ({', '.join(bad)}): {self}")


def random_rotations(mode: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rotations ``(n, 3, 3)`` float64 of protocol ``mode`` (:data:`ROTATION_MODES`)."""
    from pose_core import so3

    if mode == "none":
        return torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
    if mode == "z":
        a = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
        zero = torch.zeros_like(a)
        return so3.zyz_to_matrix(a, zero, zero)
    if mode == "so3":
        q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
        return so3.quat_to_matrix(q / q.norm(dim=-1, keepdim=True))
    raise ValueError(f"rotations must be one of {ROTATION_MODES}, got {mode!r}")


def normalize_mesh(vertices: np.ndarray) -> np.ndarray:
    """Vertices ``(V, 3)`` float64 moved so their bounding-box centre is the origin and scaled so the
    farthest is at radius 1 (ValueError for an empty or degenerate mesh)."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"vertices must be a finite (V, 3) array with V >= 1, got shape {v.shape}")
    v = v - (v.min(0) + v.max(0)) / 2
    r = np.linalg.norm(v, axis=1).max()
    if r <= 0:
        raise ValueError("degenerate mesh: all vertices coincide")
    return v / r


def depth_camera(config: ShapeSetConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed depth camera of ``config``: intrinsics ``K`` ``(3, 3)``, world -> camera rotation
    ``R_cw`` ``(3, 3)`` and translation ``t`` ``(3,)`` (the world origin, the shape's centre, on the
    optical axis at ``camera_distance``); the unit sphere fills the crop with a 10 % margin."""
    e = math.radians(config.elevation_deg)
    eye = config.camera_distance * np.array([math.cos(e), 0.0, math.sin(e)])  # in the x-z plane, above
    R_cw = look_at(eye)
    t = -R_cw @ eye
    S = config.depth_size
    half_angle = math.asin(1.0 / config.camera_distance) * 1.1
    f = (S / 2) / math.tan(half_angle)
    K = np.array([[f, 0.0, (S - 1) / 2], [0.0, f, (S - 1) / 2], [0.0, 0.0, 1.0]])
    return K, R_cw, t


def view_depth(vertices: np.ndarray, faces: np.ndarray, rotation: np.ndarray, config: ShapeSetConfig) -> np.ndarray:
    """Depth crop ``(S, S)`` float32 (metres along the optical axis, 0: nothing) of the normalised shape
    turned by ``rotation`` (object -> world) at the world origin, seen by :func:`depth_camera`."""
    from pose_core.data.sphere_projection import render_depth

    K, R_cw, t = depth_camera(config)
    return render_depth(vertices, faces, K, R_cw @ rotation, t, config.depth_size, config.depth_size)


class ShapeClassDataset(Dataset):
    """Views of ``shapes`` (a list of ``(vertices (V, 3), faces (F, 3), label, class name)``), see the
    module docstring. Rotations and point samples come from ``seed`` (item ``i``'s from ``seed`` and
    ``i``), so a dataset is the same wherever it is built."""

    def __init__(self, shapes: list, class_names: list[str], config: ShapeSetConfig, seed: int = 0):
        if not shapes:
            raise ValueError("no shapes given")
        self.config, self.seed, self.class_names = config, int(seed), list(class_names)
        self.shapes = shapes
        self.labels = np.array([int(s[2]) for s in shapes for _ in range(config.views)], dtype=np.int64)
        self.names = [str(s[3]) for s in shapes for _ in range(config.views)]
        path = shapes_cache_file("shape_sets", _CACHE_VERSION, self.seed, config, shapes) if config.cache else None
        n = len(self.labels)
        arrays = cached_arrays(path, self._compute, ("signals", "points", "rotations"),
                               {"signals": n, "points": n, "rotations": n})
        self.signals, self.points, self.rotations = arrays["signals"], arrays["points"], arrays["rotations"]

    # ------------------------------------------------------------------ computing (cached: pose_core.data._cache)
    def _compute(self) -> dict[str, np.ndarray]:
        from pose_core.data.sphere_projection import depth_points, project_depth, project_mesh
        from pose_core.surface import sample_surface

        cfg = self.config
        n = len(self.shapes) * cfg.views
        b = cfg.bandwidth
        signals = np.zeros((n, 6, 2 * b, 2 * b), dtype=np.float32)
        points = np.zeros((n, cfg.points, 3), dtype=np.float32)
        rotations = np.zeros((n, 3, 3), dtype=np.float32)
        K, R_cw, _ = depth_camera(cfg)  # used by source "depth" only
        i = 0
        for vertices, faces, _, _ in self.shapes:
            v = normalize_mesh(vertices)
            f = np.asarray(faces, dtype=np.int64)
            for _ in range(cfg.views):
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
                R = random_rotations(cfg.rotations, 1, gen)[0].numpy()
                if cfg.source == "mesh":
                    signals[i] = project_mesh(v, f, b, rotation=R).numpy()
                    p = sample_surface(torch.from_numpy(v @ R.T), torch.tensor(f), cfg.points, generator=gen)
                    points[i] = p.numpy()
                else:
                    depth = view_depth(v, f, R, cfg)
                    signals[i] = project_depth(depth, K, b, frame_rotation=R_cw.T).numpy()
                    visible = depth_points(depth, K, frame_rotation=R_cw.T)
                    pick = torch.randint(len(visible), (cfg.points,), generator=gen).numpy()
                    points[i] = visible[pick]
                rotations[i] = R
                i += 1
        return {"signals": signals, "points": points, "rotations": rotations}

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"signal": torch.from_numpy(self.signals[i]), "points": torch.from_numpy(self.points[i]),
                "label": int(self.labels[i]), "shape": self.names[i], "rotation": torch.from_numpy(self.rotations[i])}


def collate_shapes(batch: list[dict]) -> dict:
    """Batch of :class:`ShapeClassDataset` items: tensors stacked, ``label`` ``(B,)`` int64, ``shape`` a list."""
    return {"signal": torch.stack([b["signal"] for b in batch]), "points": torch.stack([b["points"] for b in batch]),
            "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
            "shape": [b["shape"] for b in batch], "rotation": torch.stack([b["rotation"] for b in batch])}

