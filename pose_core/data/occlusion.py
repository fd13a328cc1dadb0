"""Occlusion levels (OccludedPASCAL3D+'s) and a dataset of rendered images occluded at a controlled level.

**Levels.** :data:`OCCLUSION_LEVELS` maps a level to the interval ``[low, high]`` of the fraction of
the object's pixels that an occluder hides: level 0 is unoccluded, levels 1 / 2 / 3 are
OccludedPASCAL3D+'s foreground levels FGL1 / FGL2 / FGL3 (20–40 %, 40–60 %, 60–80 %; Wang et al.,
CVPR 2020, the benchmark of NeMo). The fraction is measured on the masks, alpha-weighted:
``sum(occluder * object) / sum(object)``.

**Dataset.** :class:`OccludedRenders` renders one mesh (:class:`~pose_core.data.render.Mesh`) at
uniformly random rotations with :func:`~pose_core.data.randomize.compose`: a procedural background, the
object, and (levels 1–3) one occluder — a textured patch, a mesh silhouette of another shape
(:func:`~pose_core.data.shapes.get_shape`) or gripper-like bars, each about 1/3 of the items — placed
to hide a fraction drawn uniformly in the level's interval. An item whose achieved fraction misses
the interval is drawn again from a derived seed (at most ``max_attempts`` draws, then
:class:`RuntimeError`), so every item's ``occluded`` lies inside its level's interval.

**Determinism and pairing.** Item ``index`` is a function of ``(seed, split, index)`` only: the same
arguments give the same image in every process. Its rotation, background, crop and occluder kind do
not depend on ``level``, so the four levels of one ``(seed, split)`` are the same poses and scenes
seen through more and more occlusion (until a retry redraws an item).

**Camera.** Square ``S x S`` images of the renderer's default camera
(:class:`~pose_core.data.render.Camera`: focal ``1.75 S`` px, principal point ``((S - 1) / 2, (S - 1) / 2)``,
object origin at ``(0, 0, distance)``, distance 4). ``crop_jitter`` moves the principal point by up to
8 % of ``S`` and scales the focal length by 0.85–1.15 (a detector's imperfect box); the item's ``K`` is
then that camera's, exactly.

Items are dicts (the default ``torch`` collate batches them):

* ``image`` ``(3, S, S)`` float32 RGB in [0, 1];
* ``rotation`` ``(3, 3)`` float32, object -> camera optical frame (:mod:`pose_core.so3`);
* ``K`` ``(3, 3)`` float32 intrinsics of the image (OpenCV convention, pixel centres at integers);
* ``translation`` ``(3,)`` float32 object origin in the camera frame, ``(0, 0, distance)``;
* ``occluded`` (float): the achieved fraction; ``target`` (float): the fraction asked for;
* ``level`` (int); ``occluder`` (str): ``none``, ``patch``, ``mesh`` or ``bars``;
* ``object_mask`` ``(S, S)`` float32 object alpha; ``occluder_mask`` ``(S, S)`` float32 occluder alpha;
  ``visible_mask`` ``(S, S)`` float32 ``= object_mask * (1 - occluder_mask)``.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core import preprocess, so3
from pose_core.data.randomize import Randomization, compose
from pose_core.data.render import Camera, Mesh, Renderer

__all__ = ["OCCLUDER_KINDS", "OCCLUSION_LEVELS", "OccludedRenders", "occlusion_level"]

#: Level -> ``(low, high)`` fraction of the object's pixels hidden (OccludedPASCAL3D+'s FGL1–3; 0: none).
OCCLUSION_LEVELS: dict[int, tuple[float, float]] = {0: (0.0, 0.0), 1: (0.2, 0.4), 2: (0.4, 0.6), 3: (0.6, 0.8)}
#: Occluder kinds of :class:`OccludedRenders`.
OCCLUDER_KINDS: tuple[str, ...] = ("patch", "mesh", "bars")
_DEFAULT_BACKGROUNDS = ("grey", "flat", "noise", "fractal", "stripes", "checkers", "blobs")
_DEFAULT_OCCLUDER_SHAPES = ("tet", "cube", "icosa", "cone", "cyl")


def occlusion_level(fraction: float) -> int:
    """The level band ``fraction`` (in [0, 1]) falls in: ``[0, 0.2)`` -> 0, ``[0.2, 0.4)`` -> 1,
    ``[0.4, 0.6)`` -> 2, ``[0.6, 1]`` -> 3 (OccludedPASCAL3D+ has no level for 0–20 % or above 80 %:
    they count as 0 and 3). :class:`ValueError` outside [0, 1] or for NaN."""
    f = float(fraction)
    if not 0.0 <= f <= 1.0:  # also NaN
        raise ValueError(f"an occluded fraction must lie in [0, 1], got {fraction!r}")
    for level in (3, 2, 1):
        if f >= OCCLUSION_LEVELS[level][0]:
            return level
    return 0


def _check_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or int(level) not in OCCLUSION_LEVELS:
        raise ValueError(f"level must be one of {sorted(OCCLUSION_LEVELS)}, got {level!r}")
    return int(level)


def _split_offset(split: str | int) -> int:
    if isinstance(split, bool) or not isinstance(split, (str, int, np.integer)):
        raise ValueError(f"split must be a name or an integer seed offset, got {split!r}")
    if isinstance(split, str):
        return zlib.crc32(split.encode())
    if int(split) < 0:
        raise ValueError(f"a split seed offset must be >= 0, got {split}")
    return int(split)


def _stream(entropy: Sequence[int], tag: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*entropy, 0x0CC1, tag]))


class OccludedRenders(Dataset):
    """``size`` renders of ``mesh`` occluded at ``level`` (see the module docstring).

    Args:
        mesh: the object (a :class:`~pose_core.data.render.Mesh`, or anything with a ``.mesh``, such as
            a :class:`~pose_core.data.shapes.Shape`).
        level: 0 (unoccluded) to 3 (:data:`OCCLUSION_LEVELS`).
        size: number of items.
        image_size: side ``S`` of the square images, px.
        seed: data seed.
        split: a name (hashed) or an integer seed offset: other splits, other items.
        backgrounds: background kinds drawn uniformly (:data:`pose_core.data.backgrounds.KINDS`);
            default the procedural ones but black. ``photo`` needs photos
            (:class:`~pose_core.data.backgrounds.PhotoLibrary`: the shipped ones, or ``background_dir``).
        occluders: kind -> weight among :data:`OCCLUDER_KINDS` (default equal weights).
        occluder_shapes: SYMSOL shape names whose silhouettes the ``mesh`` occluder uses.
        lighting: random lights (else the renderer's default light).
        crop_jitter: shift the principal point and scale the focal length a little (``K`` stays exact).
        max_attempts: draws per item before giving up on the level's interval.
        camera_distance: the object's distance from the camera.
    """

    def __init__(
        self,
        mesh: Mesh | Any,
        level: int,
        size: int = 100,
        image_size: int = 128,
        seed: int = 0,
        split: str | int = "test",
        backgrounds: Sequence[str] = _DEFAULT_BACKGROUNDS,
        occluders: Mapping[str, float] | None = None,
        occluder_shapes: Sequence[str] = _DEFAULT_OCCLUDER_SHAPES,
        lighting: bool = False,
        crop_jitter: bool = False,
        max_attempts: int = 8,
        background_dir: str | None = None,
        camera_distance: float = 4.0,
    ) -> None:
        if not isinstance(mesh, Mesh):
            mesh = getattr(mesh, "mesh", None)
            if not isinstance(mesh, Mesh):
                raise ValueError("mesh must be a render Mesh (or have a .mesh attribute that is one)")
        self.mesh = mesh
        self.level = _check_level(level)
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if int(image_size) < 8:
            raise ValueError(f"image_size must be >= 8 px, got {image_size}")
        if int(max_attempts) < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.size, self.image_size, self.seed = int(size), int(image_size), int(seed)
        self.split_offset = _split_offset(split)
        self.max_attempts = int(max_attempts)
        weights = dict.fromkeys(OCCLUDER_KINDS, 1.0) if occluders is None else dict(occluders)
        unknown = set(weights) - set(OCCLUDER_KINDS)
        if unknown:
            raise ValueError(f"unknown occluder kinds {sorted(unknown)}; expected some of {OCCLUDER_KINDS}")
        if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"occluder weights must be >= 0 with a positive sum, got {weights}")
        if weights.get("mesh", 0) > 0 and not occluder_shapes:
            raise ValueError("mesh occluders are asked for but occluder_shapes is empty")
        self.kinds = tuple(k for k in OCCLUDER_KINDS if weights.get(k, 0) > 0)
        w = np.array([weights[k] for k in self.kinds], dtype=np.float64)
        self._kind_p = w / w.sum()
        low, high = OCCLUSION_LEVELS[self.level]
        # one Randomization per occluder kind: everything off but the background, (lights) and the occluder
        base = Randomization.off(backgrounds=list(backgrounds), background_dir=background_dir,
                                 lighting_p=1.0 if lighting else 0.0, occlusion_p=1.0 if self.level else 0.0,
                                 occlusion=[low, high], distractor_shapes=list(occluder_shapes))
        self._cfg = {
            "patch": dataclasses.replace(base, occluder_mesh_p=0.0, occluder_bars_p=0.0),
            "mesh": dataclasses.replace(base, occluder_mesh_p=1.0, occluder_bars_p=0.0),
            "bars": dataclasses.replace(base, occluder_mesh_p=0.0, occluder_bars_p=1.0),
        }
        self.crop_jitter = bool(crop_jitter)
        self.renderer = Renderer(Camera(self.image_size, self.image_size, distance=float(camera_distance)))

    def __len__(self) -> int:
        return self.size

    def _entropy(self, index: int) -> list[int]:
        return [self.seed, self.split_offset, index]

    def rotation(self, index: int) -> np.ndarray:
        """The rotation ``(3, 3)`` float64 of item ``index`` (Haar-uniform; the same at every level)."""
        g = torch.Generator().manual_seed(int(_stream(self._entropy(index), 1).integers(2**62)))
        return so3.random_rotations(1, g, dtype=torch.float64)[0].numpy()

    def occluder_kind(self, index: int) -> str:
        """The occluder kind of item ``index`` (``none`` at level 0; else the same at every level)."""
        if self.level == 0:
            return "none"
        return str(self.kinds[int(_stream(self._entropy(index), 2).choice(len(self.kinds), p=self._kind_p))])

    def intrinsics(self, index: int) -> np.ndarray:
        """``K`` ``(3, 3)`` float64 of item ``index``: the camera's, or its jittered crop (``crop_jitter``)."""
        cam = self.renderer.camera
        K = cam.K.copy()
        if self.crop_jitter:
            rng = _stream(self._entropy(index), 3)
            K[0, 0] = K[1, 1] = float(cam.focal) * rng.uniform(0.85, 1.15)  # type: ignore[arg-type]
            r, phi = rng.uniform(0.0, 0.08) * self.image_size, rng.uniform(0, 2 * math.pi)
            K[0, 2] += r * math.cos(phi)
            K[1, 2] += r * math.sin(phi)
        return K

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        R = self.rotation(index)
        K = self.intrinsics(index)
        t = self.renderer.camera.translation
        kind = self.occluder_kind(index)
        cfg = self._cfg["patch" if kind == "none" else kind]
        low, high = OCCLUSION_LEVELS[self.level]
        tried = []
        for attempt in range(self.max_attempts):
            entropy = self._entropy(index) + ([attempt] if attempt else [])
            img, info = compose(self.renderer, self.mesh, R, cfg, entropy, intrinsics=K, translation=t,
                                return_masks=True)
            obj = info["object_mask"]
            if obj.sum() < 4.0:
                raise RuntimeError(f"item {index}: the object covers {obj.sum():.1f} px of the {self.image_size} px "
                                   "image; it is out of view or too small to occlude at a level")
            occluded = float(info["occluded"])
            if low <= occluded <= high:
                break
            tried.append(round(occluded, 3))
        else:
            raise RuntimeError(f"item {index} (level {self.level}, occluder {kind}): no draw of {self.max_attempts} "
                               f"hid a fraction in [{low}, {high}] of the object (got {tried})")
        occ = info["occluder_mask"]
        return {
            "image": preprocess.to_tensor(img),
            "rotation": torch.from_numpy(R).to(torch.float32),
            "K": torch.from_numpy(K).to(torch.float32),
            "translation": torch.from_numpy(np.asarray(t)).to(torch.float32),
            "occluded": occluded,
            "target": float(info["occlusion"]),
            "level": self.level,
            "occluder": info["occluder"] if self.level else "none",
            "object_mask": torch.from_numpy(obj),
            "occluder_mask": torch.from_numpy(occ),
            "visible_mask": torch.from_numpy(obj * (1.0 - occ)),
        }

