"""OccludedPASCAL3D+ (Wang et al., CVPR 2020; the occlusion benchmark of NeMo, Wang et al., ICLR 2021).

PASCAL3D+'s ImageNet *val* images with objects cropped from MS-COCO pasted over them, at foreground
levels FGL1 / FGL2 / FGL3 (20–40 %, 40–60 %, 60–80 % of the object mask hidden) and background levels
BGL1–3 (0–20 %, 20–40 %, 40–60 % of the rest of the image). The ``download_FG.sh`` release has the
levels ``FGL1_BGL1``, ``FGL2_BGL2`` and ``FGL3_BGL3`` that pose benchmarks use.

**Layout** (read from the generator ``code/CreateOccludedDataset.py`` + ``code/Process_anno.py`` and
the README of github.com/Angtian/OccludedPASCAL3D, and from NeMo's loader
``code/dataset/CreatePascal3DNeMo.py`` + ``PrepareData.sh`` in github.com/Angtian/NeMo, which keep
both folders side by side under one data root)::

    root/PASCAL3D+_release1.1/Image_sets/<cat>_imagenet_val.txt     the image names, in order
    root/PASCAL3D+_release1.1/Annotations/<cat>_imagenet/<name>.mat the pose (PASCAL3D+ record)
    root/PASCAL3D+_release1.1/Images/<cat>_imagenet/<name>.JPEG     level 0 (unoccluded)
    root/OccludedPASCAL3D/images/<cat>FGL<f>_BGL<b>/<name>.JPEG     the occluded image
    root/OccludedPASCAL3D/annotations/<cat>FGL<f>_BGL<b>/<name>.npz its occlusion annotation
    root/OccludedPASCAL3D/lists/<cat>FGL<f>_BGL<b>.txt              "<name>.JPEG" per line (not needed)

The ``.npz`` (one per image, ``Process_anno.py``) holds ``source`` (path of the PASCAL3D+ image),
``occluder_mask`` ``(H, W)`` bool (the pasted occluders), ``mask`` ``(H, W)`` uint8 (the object mask,
PASCAL3D+'s ``obj_mask/<cat>/<name>.JPEG``, object where ``> 10`` as the generator counts it),
``box`` ``[y0, y1, x0, x1, H, W]``, ``occluder_box`` ``(n, 6)`` likewise, ``category`` and
``occluder_level`` (the generator writes the letter ``"G"`` there, a slicing slip: the level is read
from the folder name instead). Only ``occluder_mask`` is required here, as NeMo requires it.

As NeMo does, an image counts when its name is in the val list and its (occluded) image exists (the
generator leaves out images with several objects and those it could not occlude at a level); the pose
is the PASCAL3D+ record's first object, kept even when flagged occluded / truncated / difficult
(``keep_flagged=True``, NeMo's choice; ``False`` applies the Image2Sphere filter of
:mod:`pose_core.data.pascal3d`). Level 0 is the unoccluded val images: ``images/<cat>FGL0_BGL0`` if
present (the generator's ``CreateL0.py``), else the release's own images, with an empty occluder.

**Items** are those of :class:`~pose_core.data.pascal3d.Pascal3DReal` (the same perspective crop
around the record's box, :func:`~pose_core.data.pascal3d.perspective_crop`, and the same label) plus:
``level`` (FGL, int) and ``background_level`` (BGL), ``name``; ``occluder_mask`` and
``object_mask`` ``(S, S)`` float32 in [0, 1], the annotation's masks warped by the same crop
(``object_mask`` zeros and ``has_object_mask`` False when the annotation has no ``mask``);
``occluded`` (float), the hidden fraction of the object mask in the full image (NaN without a
``mask``; 0 at level 0); ``K`` ``(3, 3)`` float32, the crop's intrinsics; ``translation`` ``(3,)``
float32, the object origin in the crop's camera frame (PASCAL3D+ units: ``distance`` along the ray
of the principal point, turned by the crop).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pose_core.data._io import read_image_rgb, read_text_lines, require_dir, require_file
from pose_core.data.pascal3d import (
    PASCAL3D_CATEGORIES,
    PASCAL3D_RELEASE_DIR,
    Pascal3DAnnotation,
    _item,
    crop_camera,
    pascal3d_intrinsics,
    pascal3d_rotation,
    perspective_crop,
    read_pascal3d_annotation,
)

__all__ = [
    "OCCLUDED_PASCAL3D_DIR",
    "OCCLUDED_PASCAL3D_LEVELS",
    "OccludedPascal3D",
    "OcclusionAnnotation",
    "occluded_folder_name",
    "read_occlusion_annotation",
]

#: Folder of OccludedPASCAL3D+ under ``root``.
OCCLUDED_PASCAL3D_DIR = "OccludedPASCAL3D"
#: Foreground level -> fraction of the object hidden (the dataset's README).
OCCLUDED_PASCAL3D_LEVELS: dict[int, tuple[float, float]] = {1: (0.2, 0.4), 2: (0.4, 0.6), 3: (0.6, 0.8)}
_OBJECT_THRESHOLD = 10  # the generator's check_occ_ratio_seg: object where mask > 10


def occluded_folder_name(category: str, level: int, background_level: int) -> str:
    """``<cat>FGL<level>_BGL<background_level>``, the folder of one category at one level pair."""
    return f"{category}FGL{int(level)}_BGL{int(background_level)}"


@dataclass(frozen=True)
class OcclusionAnnotation:
    """The masks of one ``.npz``: ``occluder`` ``(H, W)`` bool; ``object`` ``(h, w)`` bool or ``None``."""

    occluder: np.ndarray
    object: np.ndarray | None


def _plane(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    """A 2-D mask from ``(H, W)`` or ``(H, W, C)`` (any channel set)."""
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"OccludedPASCAL3D+ annotation {path}: {key!r} must be an (H, W) mask, got shape {arr.shape}")
    return arr


def read_occlusion_annotation(path: str | Path) -> OcclusionAnnotation:
    """Read an OccludedPASCAL3D+ ``.npz``: ``occluder_mask`` (required) and ``mask`` (optional).

    :class:`FileNotFoundError` for a missing file; :class:`ValueError` naming the file for one that is
    not a readable ``.npz``, lacks ``occluder_mask`` or holds masks of the wrong shape or type.
    """
    p = require_file(path, "OccludedPASCAL3D+ annotation")
    try:
        with np.load(p, allow_pickle=False) as npz:
            found = list(npz.files)
            if "occluder_mask" not in found:
                raise ValueError(f"OccludedPASCAL3D+ annotation {p} lacks 'occluder_mask' (has {found})")
            occ = np.asarray(npz["occluder_mask"])
            obj = np.asarray(npz["mask"]) if "mask" in found else None
    except ValueError as e:
        if "lacks 'occluder_mask'" in str(e):
            raise
        raise ValueError(f"OccludedPASCAL3D+ annotation {p} is not a readable .npz with an occluder_mask: {e!r}") from e
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError) as e:
        raise ValueError(f"OccludedPASCAL3D+ annotation {p} is not a readable .npz with an occluder_mask: {e!r}") from e
    for key, arr in (("occluder_mask", occ), ("mask", obj)):
        if arr is not None and not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
            raise ValueError(f"OccludedPASCAL3D+ annotation {p}: {key!r} must be a numeric mask, got {arr.dtype}")
    occ_mask = _plane(occ, "occluder_mask", p) > 0
    obj_mask = None
    if obj is not None and obj.size > 0:
        obj = _plane(obj, "mask", p)
        obj_mask = obj if obj.dtype == bool else obj > _OBJECT_THRESHOLD
    return OcclusionAnnotation(occ_mask, obj_mask)


@dataclass(frozen=True)
class _Entry:
    pose: Pascal3DAnnotation  # image_path: the (occluded) image
    occlusion_path: Path | None  # None: level 0 without annotations
    name: str


class OccludedPascal3D(Dataset):
    """OccludedPASCAL3D+ at one level, with PASCAL3D+ pose labels (see the module docstring).

    Args:
        root: folder holding ``PASCAL3D+_release1.1/`` and (levels 1–3) ``OccludedPASCAL3D/``.
        level: foreground occlusion level 1, 2 or 3 (FGL), or 0 for the unoccluded images.
        background_level: BGL 1–3; default ``level`` (the foreground-only release's folders).
        categories: names from :data:`~pose_core.data.pascal3d.PASCAL3D_CATEGORIES` (default all 12).
        image_size: side ``S`` of the square crops.
        keep_flagged: keep objects the record flags occluded / truncated / difficult (NeMo does).
        occluded_dir: the OccludedPASCAL3D+ folder, if not ``root/OccludedPASCAL3D``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        level: int = 1,
        background_level: int | None = None,
        categories: tuple[str, ...] | list[str] | None = None,
        image_size: int = 224,
        keep_flagged: bool = True,
        occluded_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(level, bool) or level not in (0, 1, 2, 3):
            raise ValueError(f"level must be 0, 1, 2 or 3 (OccludedPASCAL3D+'s FGL), got {level!r}")
        bg = level if background_level is None else background_level
        if level == 0:
            if bg != 0:
                raise ValueError(f"level 0 (unoccluded) has no background level, got {background_level!r}")
        elif isinstance(bg, bool) or bg not in (1, 2, 3):
            raise ValueError(f"background_level must be 1, 2 or 3 (OccludedPASCAL3D+'s BGL), got {background_level!r}")
        cats = tuple(PASCAL3D_CATEGORIES if categories is None else categories)
        unknown = [c for c in cats if c not in PASCAL3D_CATEGORIES]
        if unknown or not cats:
            raise ValueError(f"categories must be some of {PASCAL3D_CATEGORIES}, got {list(cats)}")
        self.root = require_dir(root, "PASCAL3D+ root folder")
        self.level, self.background_level = int(level), int(bg)
        self.image_size = int(image_size)
        self.categories = PASCAL3D_CATEGORIES
        release = require_dir(self.root / PASCAL3D_RELEASE_DIR, "PASCAL3D+ release folder")
        occ_root = Path(occluded_dir) if occluded_dir is not None else self.root / OCCLUDED_PASCAL3D_DIR
        if self.level:
            require_dir(occ_root, "OccludedPASCAL3D+ folder")
        self.entries: list[_Entry] = []
        for cat in cats:
            names = read_text_lines(release / "Image_sets" / f"{cat}_imagenet_val.txt", "PASCAL3D+ ImageNet val list")
            folder = occluded_folder_name(cat, self.level, self.background_level)
            images = occ_root / "images" / folder
            annotations = occ_root / "annotations" / folder
            own_l0 = self.level == 0 and images.is_dir()
            if self.level:
                require_dir(images, f"OccludedPASCAL3D+ images of {cat} at {folder}")
                require_dir(annotations, f"OccludedPASCAL3D+ annotations of {cat} at {folder}")
            for name in names:
                if self.level or own_l0:
                    img = images / f"{name}.JPEG"
                    if not img.is_file():  # not generated at this level: NeMo skips it too
                        continue
                    npz = annotations / f"{name}.npz"
                    if self.level:
                        require_file(npz, f"OccludedPASCAL3D+ annotation of {img}")
                    occ_path: Path | None = npz if npz.is_file() else None
                else:
                    img = release / "Images" / f"{cat}_imagenet" / f"{name}.JPEG"
                    if not img.is_file():  # as NeMo, which skips a listed image that is missing
                        continue
                    occ_path = None
                pose = read_pascal3d_annotation(release / "Annotations" / f"{cat}_imagenet" / f"{name}.mat", img,
                                                keep_flagged=keep_flagged)
                if pose is not None:
                    self.entries.append(_Entry(pose, occ_path, name))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        a = e.pose
        image = read_image_rgb(a.image_path, "OccludedPASCAL3D+ image").astype(np.float64) / 255.0  # (H, W, 3)
        h, w = image.shape[:2]
        occ = np.zeros((h, w), bool)
        obj = None
        if e.occlusion_path is not None:
            ann = read_occlusion_annotation(e.occlusion_path)
            if ann.occluder.shape != (h, w):
                raise ValueError(f"OccludedPASCAL3D+ annotation {e.occlusion_path}: occluder_mask is "
                                 f"{ann.occluder.shape}, its image {a.image_path} is {(h, w)}")
            occ = ann.occluder
            obj = ann.object
            if obj is not None and obj.shape != (h, w):  # the generator did not always resize it
                obj = np.asarray(Image.fromarray(obj.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        if self.level == 0:
            occluded = 0.0
        elif obj is not None and obj.any():
            occluded = float((occ & obj).sum() / obj.sum())
        else:
            occluded = float("nan")
        obj_f = np.zeros((h, w)) if obj is None else obj.astype(np.float64)
        stack = np.concatenate([image, occ[..., None].astype(np.float64), obj_f[..., None]], axis=2)
        K = pascal3d_intrinsics(a.focal * a.viewport, a.px, a.py)
        R = pascal3d_rotation(a.azimuth, a.elevation, a.theta)
        hint = np.array([1.0, 0.0, 0.0])
        R_c, K_new = crop_camera(K, a.bbox, self.image_size, hint)
        warped, rot = perspective_crop(stack, K, R, a.bbox, self.image_size, hint)
        warped = np.clip(warped, 0.0, 1.0)
        item = _item(warped[..., :3], rot, a.category)
        item.update(
            level=self.level,
            background_level=self.background_level,
            name=e.name,
            occluder_mask=torch.from_numpy(np.ascontiguousarray(warped[..., 3], dtype=np.float32)),
            object_mask=torch.from_numpy(np.ascontiguousarray(warped[..., 4], dtype=np.float32)),
            has_object_mask=obj is not None,
            occluded=occluded,
            K=torch.from_numpy(K_new).to(torch.float32),
            translation=torch.from_numpy(R_c @ np.array([0.0, 0.0, a.distance])).to(torch.float32),
        )
        return item
