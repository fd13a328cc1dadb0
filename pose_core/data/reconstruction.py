"""Single-view reconstruction data: renders of shapes with their ground truth in the object frame.

Conventions, stated once for the reconstruction code:

* **Object frame, unit-diagonal units.** Every shape is centred on its bounding-box centre and scaled so
  that its bounding-box diagonal is 1 (:func:`unit_diagonal`; ShapeNet's and R2N2's normalisation), z up
  (the procedural set's). Every target (surface points, voxels, occupancy) and every prediction of
  :mod:`pose_core.models.reconstruction` is in this frame: a planner gets it in the camera frame with
  the object's pose (TF) and in metres with its size (:mod:`pose_core.shape_fusion`).
* **Views.** A camera on a sphere of radius ``camera_distance`` around the shape, at azimuth
  ``U[0, 360)`` degrees and elevation ``U[elevation_deg]`` (R2N2 renders 24 views at 25-30 degrees up),
  looks at the centre with z up in the image; ``rotation`` ``(3, 3)`` is object -> camera
  (:mod:`pose_core.data.render`). The shape, of bounding radius <= 0.5, fills about 90 % of the image at
  the default distance (:class:`pose_core.data.render.Camera`'s default focal length).
* **Items** (dicts): ``image`` ``(3, S, S)`` float32 in [0, 1]; ``points`` ``(N, 3)`` float32 surface samples
  (area-uniform, ``surface_points`` of them); ``voxels`` ``(R, R, R)`` float32 in {0, 1}
  (:func:`pose_core.voxels.voxelize`, grid of :mod:`pose_core.voxels`); ``occ_points`` ``(M, 3)`` and
  ``occ`` ``(M,)`` float32 occupancy samples (half uniform in the voxel cube, half near the surface,
  Gaussian ``occupancy_sigma``); ``label`` int, ``shape`` (class name), ``shape_index`` (index of the
  shape in this dataset: views of one shape share it), ``rotation``.

Per-shape targets and per-view images are computed once and cached on disk
(:func:`pose_core.fourier.cache_dir`, under a hash of the shapes and the settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core.data._cache import cached_arrays, shapes_cache_file

__all__ = ["ReconstructionSetConfig", "ReconstructionDataset", "unit_diagonal", "view_rotation",
           "collate_reconstruction"]

_CACHE_VERSION = 1
_ARRAYS = ("images", "rotations", "surface", "voxels", "occ_points", "occ")  # what a dataset computes and caches


@dataclass
class ReconstructionSetConfig:
    """Which shapes and how they are seen. ``classes``: procedural class names (``None``: all of
    :data:`pose_core.data.procedural.PROCEDURAL_CLASSES`); ``per_class``: shapes per class; ``views``: renders
    per shape; ``image_size``: pixels (square); ``elevation_deg``: ``[min, max]`` of the camera's elevation;
    ``camera_distance``: from the shape's centre (unit-diagonal units); ``surface_points``, ``voxel_resolution``,
    ``occupancy_points``, ``occupancy_sigma``: the targets (see the module docstring)."""

    classes: list[str] | None = None
    per_class: int = 40
    views: int = 4
    image_size: int = 64
    elevation_deg: list[float] = field(default_factory=lambda: [15.0, 45.0])
    camera_distance: float = 2.0
    surface_points: int = 5000
    voxel_resolution: int = 32
    occupancy_points: int = 2048
    occupancy_sigma: float = 0.02
    cache: bool = True

    def __post_init__(self) -> None:
        e = list(self.elevation_deg)
        checks = {
            "per_class >= 1": self.per_class >= 1,
            "views >= 1": self.views >= 1,
            "image_size >= 16": self.image_size >= 16,
            "elevation_deg [min, max] within [-90, 90], min <= max": len(e) == 2 and -90 < e[0] <= e[1] < 90,
            "camera_distance > 0.5 (outside the shape)": self.camera_distance > 0.5,
            "surface_points >= 1": self.surface_points >= 1,
            "voxel_resolution >= 2": self.voxel_resolution >= 2,
            "occupancy_points >= 2 and even": self.occupancy_points >= 2 and self.occupancy_points % 2 == 0,
            "occupancy_sigma > 0": self.occupancy_sigma > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad ReconstructionSetConfig ({', '.join(bad)}): {self}")


def unit_diagonal(vertices: np.ndarray) -> np.ndarray:
    """``vertices`` ``(V, 3)`` centred on their bounding-box centre, scaled to bounding-box diagonal 1."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"vertices must be a finite (V, 3) array with V >= 1, got shape {v.shape}")
    lo, hi = v.min(0), v.max(0)
    d = float(np.linalg.norm(hi - lo))
    if d <= 0:
        raise ValueError("degenerate mesh: all vertices coincide")
    return (v - (lo + hi) / 2) / d


def view_rotation(azimuth: float, elevation: float) -> np.ndarray:
    """Object -> camera rotation ``(3, 3)`` of a camera at ``azimuth``, ``elevation`` (radians) around the
    object's centre, looking at it, z up in the image (the camera's position is ``-R.T @ (0, 0, d)``)."""
    from pose_core.pinhole import look_at

    eye = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                    math.sin(elevation)])
    return look_at(eye)


class ReconstructionDataset(Dataset):
    """Views of ``shapes`` (a list of ``(vertices (V, 3), faces (F, 3), label, class name)``, any scale: they
    are normalised by :func:`unit_diagonal`), see the module docstring. View angles and samples come from
    ``seed`` and the shape's index, so the dataset is the same wherever it is built. Faces must be wound
    outward for the voxels and occupancy (the winding number of :mod:`pose_core.voxels`)."""

    def __init__(self, shapes: list, class_names: list[str], config: ReconstructionSetConfig, seed: int = 0):
        if not shapes:
            raise ValueError("no shapes given")
        self.config, self.seed, self.class_names = config, int(seed), list(class_names)
        self.shapes = shapes
        self.shape_labels = np.array([int(s[2]) for s in shapes], dtype=np.int64)
        self.shape_names = [str(s[3]) for s in shapes]
        path = shapes_cache_file("reconstruction_sets", _CACHE_VERSION, self.seed, config, shapes) if config.cache \
            else None
        n = len(shapes)
        arrays = cached_arrays(path, self._compute, _ARRAYS, {"surface": n, "images": n * config.views})
        for k, v in arrays.items():
            setattr(self, k, v)

    # ------------------------------------------------------------------ computing (cached: pose_core.data._cache)
    def _compute(self) -> dict[str, np.ndarray]:
        from pose_core.data.render import Camera, Mesh, Renderer
        from pose_core.surface import sample_surface
        from pose_core.voxels import VOXEL_HALF_EXTENT, occupancy, voxelize

        cfg = self.config
        S, R, V = cfg.image_size, cfg.voxel_resolution, cfg.views
        n = len(self.shapes)
        out = {
            "images": np.zeros((n * V, S, S, 3), dtype=np.uint8),
            "rotations": np.zeros((n * V, 3, 3), dtype=np.float32),
            "surface": np.zeros((n, cfg.surface_points, 3), dtype=np.float32),
            "voxels": np.zeros((n, R, R, R), dtype=bool),
            "occ_points": np.zeros((n, cfg.occupancy_points, 3), dtype=np.float32),
            "occ": np.zeros((n, cfg.occupancy_points), dtype=bool),
        }
        renderer = Renderer(camera=Camera(S, S, distance=cfg.camera_distance, near=0.05, far=10.0))
        lo, hi = (math.radians(x) for x in cfg.elevation_deg)
        try:
            for i, (vertices, faces, _, _) in enumerate(self.shapes):
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
                v = unit_diagonal(vertices)
                f = np.array(faces, dtype=np.int64)  # a writable copy (torch.from_numpy)
                vt, ft = torch.from_numpy(v), torch.from_numpy(f)
                out["surface"][i] = sample_surface(vt, ft, cfg.surface_points, generator=gen).numpy()
                out["voxels"][i] = voxelize(v, f, R).numpy()
                half = cfg.occupancy_points // 2
                uniform = (torch.rand((half, 3), generator=gen, dtype=torch.float64) * 2 - 1) * VOXEL_HALF_EXTENT
                near = sample_surface(vt, ft, half, generator=gen)
                near = near + cfg.occupancy_sigma * torch.randn(near.shape, generator=gen, dtype=torch.float64)
                q = torch.cat([uniform, near])
                out["occ_points"][i] = q.numpy()
                out["occ"][i] = occupancy(v, f, q).numpy()
                mesh = Mesh.from_indexed(v, f)  # flat-shaded, grey
                angles = torch.rand((V, 2), generator=gen, dtype=torch.float64).numpy()
                for k in range(V):
                    Rv = view_rotation(2 * math.pi * angles[k, 0], lo + (hi - lo) * angles[k, 1])
                    out["images"][i * V + k] = renderer.render(mesh, Rv)
                    out["rotations"][i * V + k] = Rv
        finally:
            renderer.close()
        return out

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self.shapes) * self.config.views

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} views")
        s = i // self.config.views
        return {
            "image": torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255.0),
            "points": torch.from_numpy(self.surface[s]),
            "voxels": torch.from_numpy(self.voxels[s].astype(np.float32)),
            "occ_points": torch.from_numpy(self.occ_points[s]),
            "occ": torch.from_numpy(self.occ[s].astype(np.float32)),
            "label": int(self.shape_labels[s]), "shape": self.shape_names[s], "shape_index": s,
            "rotation": torch.from_numpy(self.rotations[i]),
        }


def collate_reconstruction(batch: list[dict]) -> dict:
    """Batch of :class:`ReconstructionDataset` items (or R2N2 items): tensors stacked, ``label`` and
    ``shape_index`` ``(B,)`` int64, ``shape`` a list of str."""
    out = {k: torch.stack([b[k] for b in batch]) for k in ("image", "points", "voxels", "occ_points", "occ",
                                                          "rotation")}
    out["label"] = torch.tensor([b["label"] for b in batch], dtype=torch.long)
    out["shape_index"] = torch.tensor([b["shape_index"] for b in batch], dtype=torch.long)
    out["shape"] = [b["shape"] for b in batch]
    return out
