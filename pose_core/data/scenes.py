"""SE(3) scenes: one object anywhere in a real camera's view, its simulated detection box and the
object-centred crop an SE(3) model (:mod:`pose_core.models.spyropose`) eats.

Conventions: those of :mod:`pose_core.pinhole` (optical frame, pixel centres at integers, metres)
and :mod:`pose_core.so3` (a pose ``(R, t)`` maps object points into the camera frame).

An item of :class:`SE3RenderDataset` is drawn from its seed, the object's name and its index only
(the same item in every process and run):

1. a camera: ``width x height`` (640x480), focal length uniform in ``focal``, the principal point
   ``principal_jitter`` px around the centre;
2. a pose: a Haar-random rotation (the SYMSOL-like item rotation), a depth uniform in ``depth``, the
   projected centre uniform over the pixels that keep the object's bounding sphere in view, up to
   ``max_outside`` of its projected diameter past the image border (default 0: all of it in view; the
   image centre if the sphere is larger than the image);
3. the tight box of the projected mesh (``true_box``, not clipped), then a detector's box
   (:func:`detector_box`): centre moved by ``box_center_std`` times the box size (per axis), each side
   scaled by ``exp(N(0, box_size_log_std))``, both truncated at 3 sigma, clipped to the image (so a
   truncated object's box is too small and its depth guess too far, as a real detector's);
4. the initial translation from that box (:func:`pose_core.pinhole.translation_from_box`) and the
   crop around it (:func:`pose_core.pinhole.object_crop`), rendered directly with the crop's
   intrinsics, with ``randomization`` (backgrounds, lights, distractors, occluders, sensor effects:
   :func:`pose_core.data.randomize.compose`) when set. What of the crop lies outside the camera
   image is black, as :func:`pose_core.preprocess.crop_input` makes it: without randomisation the crop
   is the full-frame render cropped by ``crop_input`` up to resampling (tested). Distractor and
   occluder meshes are framed as in the SO(3) recipe (a unit mesh at the crop camera's default
   distance 4 fills about 0.44 of the crop side per radius, times the knob's scale).

:meth:`SE3RenderDataset.full_frame` renders the whole camera image of the same scene, and optionally
its depth (:func:`depth_image`, the object only), for the pipeline, the node and the benchmarks. Its
randomisation draws the same knobs at the full size (the same kind of background, lights, tint,
sensor effects; not the crop's pixels).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core import pinhole, preprocess
from pose_core.data.randomize import Randomization, compose
from pose_core.data.render import Camera, Mesh, Renderer
from pose_core.data.shapes import SHAPE_NAMES, Shape, get_shape
from pose_core.data.symsol import item_rotation

__all__ = ["SceneConfig", "SE3RenderDataset", "depth_image", "detector_box", "scaled_mesh", "se3_collate",
           "tight_box"]

#: Near and far planes (m) of the scene renderers: objects of 5-50 cm from 0.1 to 10 m.
_NEAR, _FAR = 0.02, 20.0
#: Mesh vertices used for the tight box (every vertex of a large mesh is not needed).
_BOX_VERTICES = 4000


@dataclass
class SceneConfig:
    """How SE(3) scenes are drawn (module docstring). Lengths in m, angles in px where stated.

    Attributes:
        width, height: the camera image (px).
        focal: focal length range (px, ``fx = fy``); principal_jitter: principal point offset (px).
        diameter_m: the object's bounding-sphere diameter (its mesh is scaled to it).
        depth: range of the object centre's depth (m).
        max_outside: how much of the bounding sphere's projected diameter may lie past the image border
            (fraction in [0, 0.5]; 0: the whole sphere in view, 0.3: up to 30 % of it cut off).
        box_center_std: detector box centre error, fraction of the box size per axis (3-sigma truncated).
        box_size_log_std: detector box side error, log-normal std per side (3-sigma truncated).
        crop_size: side (px) of the model's crop; padding: crop side / the bounding sphere's projected diameter.
        randomization: domain randomisation of the crops (``None``: black background, one light).
    """

    width: int = 640
    height: int = 480
    focal: list[float] = dataclasses.field(default_factory=lambda: [500.0, 700.0])
    principal_jitter: float = 10.0
    diameter_m: float = 0.15
    depth: list[float] = dataclasses.field(default_factory=lambda: [0.3, 1.5])
    max_outside: float = 0.0
    box_center_std: float = 0.05
    box_size_log_std: float = 0.08
    crop_size: int = 128
    padding: float = 1.1
    randomization: Randomization | None = None

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"scene image must be at least 16x16, got {self.width}x{self.height}")
        for name, lo_min in (("focal", 1.0), ("depth", _NEAR)):
            lo, hi = (float(x) for x in getattr(self, name))
            if not (lo_min <= lo <= hi) or not math.isfinite(hi):
                raise ValueError(f"scene.{name} must be a range [low, high] with {lo_min} <= low <= high, got "
                                 f"{getattr(self, name)}")
        if not 0 < self.diameter_m < 2.0:
            raise ValueError(f"scene.diameter_m must be in (0, 2) m, got {self.diameter_m}")
        if not 0.0 <= self.max_outside <= 0.5:
            raise ValueError(f"scene.max_outside must be in [0, 0.5], got {self.max_outside}")
        if self.box_center_std < 0 or self.box_size_log_std < 0 or self.principal_jitter < 0:
            raise ValueError("scene.box_center_std, box_size_log_std and principal_jitter must be >= 0")
        if self.crop_size < 8 or not self.padding > 0:
            raise ValueError(f"scene.crop_size must be >= 8 and padding > 0, got {self.crop_size}, {self.padding}")


def scaled_mesh(mesh: Mesh, factor: float) -> Mesh:
    """A copy of ``mesh`` with its positions times ``factor`` (> 0); normals, colours and texture kept."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    return Mesh(mesh.positions * np.float32(factor), mesh.normals, mesh.colors, uvs=mesh.uvs, texture=mesh.texture,
                textured=mesh.textured, name=mesh.name)


def tight_box(vertices: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``(u, v, w, h)`` (centre and size, px) of the projection of ``vertices`` ``(N, 3)`` at pose ``(R, t)``:
    the extreme pixel centres, plus one pixel (a box covers whole pixels)."""
    p = vertices @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)
    if (p[:, 2] <= 0).any():
        raise ValueError("the object is (partly) behind the camera")
    uv = (p @ np.asarray(K, np.float64).T)[:, :2] / p[:, 2:3]
    lo, hi = uv.min(0) - 0.5, uv.max(0) + 0.5
    return np.array([(lo[0] + hi[0]) / 2 - 0.5, (lo[1] + hi[1]) / 2 - 0.5, hi[0] - lo[0], hi[1] - lo[1]])


def detector_box(true_box: np.ndarray, config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """A detector's box ``(u, v, w, h)`` (px) for the tight box ``true_box`` ``(4,)``: its centre moved by
    ``config.box_center_std`` times its size per axis, each side scaled by ``exp(N(0, box_size_log_std))``
    (both 3-sigma truncated, drawn from ``rng``), clipped to the ``width x height`` image."""
    true_box = np.asarray(true_box, np.float64)
    shift = _truncated_normal(rng, config.box_center_std, 2) * true_box[2:]
    sides = true_box[2:] * np.exp(_truncated_normal(rng, config.box_size_log_std, 2))
    box = np.concatenate([true_box[:2] + shift, sides])
    lo = np.maximum(box[:2] - box[2:] / 2, -0.5)  # clipped to the image, as a detector's is
    hi = np.minimum(box[:2] + box[2:] / 2, np.array([config.width, config.height]) - 0.5)
    return np.concatenate([(lo + hi) / 2, np.maximum(hi - lo, 1.0)])


def depth_image(mesh: Mesh, R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Depth ``(height, width)`` float32 (m, the z of the nearest surface point: :mod:`pose_core.pinhole`) of
    ``mesh`` at pose ``(R (3, 3), t (3,))`` seen with intrinsics ``K`` ``(3, 3)``, sampled at the pixel
    centres; 0 (no measurement) where the mesh is not. Exact for the triangles (a CPU z-buffer, no
    anti-aliasing); ValueError when a vertex lies behind the camera (z <= 0)."""
    K = pinhole.intrinsics_matrix(K)
    p = mesh.positions.astype(np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64)
    if p.shape[0] == 0 or (p[:, 2] <= 0).any():
        raise ValueError("the mesh is (partly) behind the camera")
    uv = (p @ K.T)[:, :2] / p[:, 2:3]
    tri, z = uv.reshape(-1, 3, 2), p[:, 2].reshape(-1, 3)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    lo = np.maximum(np.ceil(tri.min(1)), 0).astype(np.int64)  # pixel centres covered by the bounding box
    hi = np.minimum(np.floor(tri.max(1)), [width - 1, height - 1]).astype(np.int64)
    n = hi - lo + 1
    keep = (np.abs(area) > 1e-12) & (n > 0).all(1)
    depth = np.full(width * height, np.inf)
    side = 2 ** np.ceil(np.log2(np.maximum(n.max(1), 1))).astype(np.int64)  # bucket the boxes by size
    for s in np.unique(side[keep]):
        members = np.nonzero(keep & (side == s))[0]
        for idx in np.array_split(members, max(1, len(members) * int(s) ** 2 // 2_000_000)):  # bounded memory
            o = np.arange(s)
            uu = (lo[idx, 0, None, None] + o[None, None, :]).astype(np.float64)  # (T, 1, s)
            vv = (lo[idx, 1, None, None] + o[None, :, None]).astype(np.float64)  # (T, s, 1)
            inb = (uu <= hi[idx, 0, None, None]) & (vv <= hi[idx, 1, None, None])
            A, B, C, ar = (x[idx, :, None, None] for x in (a, b, c, area[:, None]))
            wa = ((C[:, 0] - B[:, 0]) * (vv - B[:, 1]) - (C[:, 1] - B[:, 1]) * (uu - B[:, 0])) / ar[:, 0]
            wb = ((A[:, 0] - C[:, 0]) * (vv - C[:, 1]) - (A[:, 1] - C[:, 1]) * (uu - C[:, 0])) / ar[:, 0]
            wc = 1.0 - wa - wb
            eps = -1e-9
            inside = inb & (wa >= eps) & (wb >= eps) & (wc >= eps)
            Z = z[idx, :, None, None]
            zz = 1.0 / (wa / Z[:, 0] + wb / Z[:, 1] + wc / Z[:, 2])  # 1/z is affine in the image: exact
            flat = (vv * width + uu).astype(np.int64)
            flat = np.broadcast_to(flat, inside.shape)[inside]
            np.minimum.at(depth, flat, np.broadcast_to(zz, inside.shape)[inside])
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(height, width).astype(np.float32)


def _inside_image(lo: int, side: int, size: int, extent: int) -> np.ndarray:
    """``(size,)`` fraction of each pixel of a ``size``-pixel crop of image pixels ``lo .. lo + side - 1``
    (one axis) that lies inside an image of ``extent`` pixels (pixel ``j`` covers ``[j - 0.5, j + 0.5]``)."""
    s = side / size
    start = lo - 0.5 + np.arange(size) * s
    return np.clip((np.minimum(start + s, extent - 0.5) - np.maximum(start, -0.5)) / s, 0.0, 1.0)


def _truncated_normal(rng: np.random.Generator, std: float, size: int) -> np.ndarray:
    x = rng.normal(size=size)
    while (np.abs(x) > 3).any():
        bad = np.abs(x) > 3
        x[bad] = rng.normal(size=int(bad.sum()))
    return std * x


def _seed(seed: int, name: str, index: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(index), zlib.crc32(stream.encode())])


class SE3RenderDataset(Dataset):
    """``size`` SE(3) scenes per object (module docstring); ``len = size * len(shapes)``.

    Args:
        shapes: SYMSOL names and/or :class:`pose_core.data.shapes.Shape` objects (unit bounding sphere,
            as ``mesh_shape`` makes them), scaled to ``config.diameter_m``.
        size: scenes per object; seed: data seed; config: :class:`SceneConfig`.

    Items (tensors float32 unless said): ``image`` ``(3, S, S)`` in [0, 1] (the crop), ``K`` ``(3, 3)`` its
    intrinsics, ``rotation`` ``(3, 3)``, ``translation`` ``(3,)`` m (the truth), ``t_hat`` ``(3,)`` m (from
    the detector's box), ``box`` and ``true_box`` ``(4,)`` ``(u, v, w, h)`` px in the full image, ``K_full``
    ``(3, 3)``, ``image_size_full`` ``(2,)`` ``(W, H)``, ``region`` ``(4,)`` int64 the crop in the full
    image, ``equivalents`` ``(E, 3, 3)`` (the truth times the symmetries), ``shape`` str.
    ``image_size_full`` and ``region`` are int64. ``occluder_mask`` ``(S, S)``: the share of each crop pixel the
    randomisation's occluder covers (zeros without one), for models that must not learn the occluder as the object.
    Without rendering: :meth:`scene` (the drawn numbers);
    :meth:`crop` gives the crop as uint8 pixels, :meth:`full_frame` the camera image (and depth).
    """

    def __init__(self, shapes: Sequence[str | Shape], size: int = 1000, seed: int = 0,
                 config: SceneConfig | None = None) -> None:
        if isinstance(shapes, (str, Shape)):
            shapes = [shapes]
        self._shapes: list[Shape] = []
        for s in shapes:
            if isinstance(s, str):
                if s not in SHAPE_NAMES:
                    raise ValueError(f"unknown shape {s!r}; expected a Shape or a name from {SHAPE_NAMES}")
                s = get_shape(s)
            if not isinstance(s, Shape):
                raise ValueError(f"shapes must be names or Shape objects, got {type(s).__name__}")
            self._shapes.append(s)
        if not self._shapes:
            raise ValueError("no shapes given")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.shape_names = tuple(s.name for s in self._shapes)
        if len(set(self.shape_names)) != len(self.shape_names):
            raise ValueError(f"duplicate shape names in {self.shape_names}")
        self.size, self.seed = int(size), int(seed)
        self.config = config if config is not None else SceneConfig()
        c = self.config
        #: Mesh scale factor: unit bounding sphere → ``diameter_m``.
        self.scale = c.diameter_m / 2
        self._meshes = [scaled_mesh(s.mesh, self.scale) for s in self._shapes]
        self._box_vertices = []
        for m in self._meshes:
            v = np.unique(m.positions.astype(np.float64), axis=0)
            if len(v) > _BOX_VERTICES:
                v = v[np.random.default_rng(0).choice(len(v), _BOX_VERTICES, replace=False)]
            self._box_vertices.append(v)
        self._apparent = [pinhole.apparent_size(v) for v in self._box_vertices]
        # The cameras' default focal and distance (4) only frame the randomisation's distractor and occluder
        # meshes (unit size), as in the SO(3) recipe; the object is placed by its intrinsics and translation.
        self.crop_renderer = Renderer(Camera(c.crop_size, c.crop_size, near=_NEAR, far=_FAR))
        self.frame_renderer = Renderer(Camera(c.width, c.height, near=_NEAR, far=_FAR))

    def __len__(self) -> int:
        return self.size * len(self._shapes)

    def shape(self, k: int) -> Shape:
        """The :class:`Shape` number ``k`` (unit size; its :meth:`mesh` is the scaled one)."""
        return self._shapes[k]

    def mesh(self, k: int) -> Mesh:
        """The mesh of object ``k`` scaled to ``config.diameter_m`` (m)."""
        return self._meshes[k]

    def apparent_size(self, k: int) -> float:
        """:func:`pose_core.pinhole.apparent_size` of object ``k`` (m)."""
        return self._apparent[k]

    def locate(self, item: int) -> tuple[int, int]:
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for a dataset of {len(self)}")
        return item // self.size, item % self.size

    def scene(self, item: int) -> dict[str, Any]:
        """The drawn scene of ``item`` (numpy float64, no rendering): ``K_full``, ``rotation``,
        ``translation``, ``true_box``, ``box``, ``t_hat``, ``region``, ``K`` (the crop's)."""
        k, index = self.locate(int(item))
        c, name = self.config, self.shape_names[k]
        rng = _seed(self.seed, name, index, "scene")
        f = float(rng.uniform(*c.focal))
        cx = (c.width - 1) / 2 + float(rng.uniform(-1, 1)) * c.principal_jitter
        cy = (c.height - 1) / 2 + float(rng.uniform(-1, 1)) * c.principal_jitter
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        R = item_rotation(self.seed, name, index)
        z = float(rng.uniform(*c.depth))
        keep = f * (c.diameter_m / 2) / z * (1.0 - 2.0 * c.max_outside)  # the centre's margin to the border (px)
        u = float(rng.uniform(keep, c.width - 1 - keep)) if c.width - 1 > 2 * keep else cx
        v = float(rng.uniform(keep, c.height - 1 - keep)) if c.height - 1 > 2 * keep else cy
        t = pinhole.backproject(K, u, v, z)
        true_box = tight_box(self._box_vertices[k], R, t, K)
        box = detector_box(true_box, c, rng)
        t_hat = pinhole.translation_from_box(K, box[:2], box[2:], self._apparent[k])
        region, K_crop = pinhole.object_crop(K, t_hat, c.diameter_m / 2, c.crop_size, c.padding)
        return {"K_full": K, "rotation": R, "translation": t, "true_box": true_box, "box": box, "t_hat": t_hat,
                "region": np.asarray(region, np.int64), "K": K_crop, "shape_index": k, "index": index}

    def _render(self, renderer: Renderer, k: int, index: int, R: np.ndarray, t: np.ndarray,
                K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The image ``(H, W, 3)`` uint8 and the randomisation's occluder mask ``(H, W)`` float32 (zeros: none)."""
        c = self.config
        if c.randomization is None:
            img = renderer.render(self._meshes[k], R, intrinsics=K, translation=t)
            return img, np.zeros(img.shape[:2], np.float32)
        entropy = [self.seed, zlib.crc32(self.shape_names[k].encode()), index, zlib.crc32(b"randomize")]
        img, info = compose(renderer, self._meshes[k], R, c.randomization, entropy, intrinsics=K, translation=t,
                            return_masks=True)
        return img, info["occluder_mask"]

    def crop(self, item: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The model's crop ``(S, S, 3)`` uint8 of scene ``item`` (black where it lies outside the camera
        image) and the scene (:meth:`scene`)."""
        s = self.scene(int(item))
        c = self.config
        img, s["occluder_mask"] = self._render(self.crop_renderer, s["shape_index"], s["index"], s["rotation"],
                                               s["translation"], s["K"])
        u0, v0, u1, _ = (int(x) for x in s["region"])
        wx = _inside_image(u0, u1 - u0, c.crop_size, c.width)
        wy = _inside_image(v0, u1 - u0, c.crop_size, c.height)
        if (wx < 1).any() or (wy < 1).any():
            img = np.rint(img * (wy[:, None, None] * wx[None, :, None])).astype(np.uint8)
        return img, s

    def __getitem__(self, item: int) -> dict[str, Any]:
        img, s = self.crop(int(item))
        k = s["shape_index"]
        c = self.config
        eq = self._shapes[k].equivalent_rotations(s["rotation"])
        f32 = torch.float32
        return {
            "image": preprocess.to_tensor(img),
            "K": torch.as_tensor(s["K"], dtype=f32),
            "rotation": torch.as_tensor(s["rotation"], dtype=f32),
            "translation": torch.as_tensor(s["translation"], dtype=f32),
            "t_hat": torch.as_tensor(s["t_hat"], dtype=f32),
            "box": torch.as_tensor(s["box"], dtype=f32),
            "true_box": torch.as_tensor(s["true_box"], dtype=f32),
            "K_full": torch.as_tensor(s["K_full"], dtype=f32),
            "image_size_full": torch.tensor([c.width, c.height]),
            "region": torch.as_tensor(s["region"]),
            "equivalents": torch.as_tensor(np.asarray(eq), dtype=f32),
            "shape": self.shape_names[k],
            "occluder_mask": torch.as_tensor(s["occluder_mask"], dtype=f32),
        }

    def full_frame(self, item: int, depth: bool = False) -> dict[str, Any]:
        """The whole ``width x height`` camera image of scene ``item`` (same randomisation knobs as its crop,
        drawn at the full size): ``rgb`` ``(H, W, 3)`` uint8 and the scene's numpy fields (:meth:`scene`);
        with ``depth``, also ``depth`` ``(H, W)`` float32 m of the object alone (:func:`depth_image`: 0
        elsewhere; randomised distractors and occluders have none)."""
        s = self.scene(int(item))
        k = s["shape_index"]
        s["rgb"], _ = self._render(self.frame_renderer, k, s["index"], s["rotation"], s["translation"], s["K_full"])
        if depth:
            c = self.config
            s["depth"] = depth_image(self._meshes[k], s["rotation"], s["translation"], s["K_full"], c.width, c.height)
        return s


def se3_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`SE3RenderDataset` items: tensors stacked, ``equivalents`` and ``shape`` as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key in ("equivalents", "shape") or not isinstance(values[0], torch.Tensor):
            out[key] = values
        else:
            out[key] = torch.stack(values)
    return out
