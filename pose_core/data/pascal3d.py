"""PASCAL3D+ (release 1.1) and its RenderForCNN synthetic images, as used by Image2Sphere.

On-disk layout (the Image2Sphere reference's), under one ``root`` folder::

    root/PASCAL3D+_release1.1/
        PASCAL/VOCdevkit/VOC2012/ImageSets/Main/<cat>_train.txt   <cat>_val.txt
                                   lines "<id> <label>"; an id counts when Images/<cat>_pascal/<id>.jpg exists
        Image_sets/<cat>_imagenet_train.txt   <cat>_imagenet_val.txt      one id per line
        Images/<cat>_pascal/<id>.jpg          Annotations/<cat>_pascal/<id>.mat
        Images/<cat>_imagenet/<id>.JPEG       Annotations/<cat>_imagenet/<id>.mat
    root/syn_images_cropped_bkg_overlaid/<synset>/<model md5>/<...>_a<az>_e<el>_t<theta>_d<dist>.png

for the 12 categories of :data:`PASCAL3D_CATEGORIES` (synset ids in :data:`PASCAL3D_SYNSETS`).
Split ``"train"`` is PASCAL VOC train + ImageNet train + ImageNet val, ``"test"`` is PASCAL VOC val.
Each image contributes its annotation's *first* object, and only when that object has a viewpoint
with a non-zero ``distance``, is neither occluded, truncated nor difficult, and has a non-empty box
(the reference's filter). The ``.mat`` files are MATLAB structs ``record.objects(1)`` with fields
``class``, ``bbox`` ``[x1 y1 x2 y2]`` (pixels), ``occluded``, ``truncated``, ``difficult`` and
``viewpoint`` (``azimuth``, ``elevation``, ``theta`` in degrees, ``distance``, ``focal``, ``viewport``,
``px``, ``py``).

**Camera model.** PASCAL3D+ projects an object point ``X`` to pixel
``x = K (R X + t) / z`` with ``K = [[f, 0, px], [0, f, py], [0, 0, 1]]``, ``f = focal * viewport``
and, written as a pose rotation of :mod:`pose_core.so3` (object -> camera optical frame, x right,
y down, z forward), ``R = Rz(-theta) Rx(elevation + pi/2) Rz(-azimuth)`` (:func:`pascal3d_rotation`).
This is the rotation the reference obtains by RQ-decomposing the PASCAL3D+ projection matrix; its
label is that rotation, so no transpose is involved.

**Crop (the reference's "warp").** Every image, train or test, is resampled by a pure rotation of
the camera (a homography ``K_new R_c K^-1``) into a ``S x S`` virtual view whose optical axis goes
through the centre of the smallest cone holding the (jittered) box's four corner rays, with the box
filling the view; the label becomes ``R_c @ R``. Training augmentation (``warp=True``; always on for
the synthetic images) adds, as the reference does: a horizontal mirror with probability 1/2
(azimuth and theta negated), an in-plane rotation of the virtual view (its x axis follows
``(3, 0, 0) + N(0, 0.4^2 I)`` projected to the image plane, about 7.6 degrees std), and each box
edge moved by ``U(-0.1, 0.1)`` of the box size. Randomness comes from ``torch``'s generator (the
DataLoader seeds each worker), or from the ``generator`` given.

Items are dicts: ``image`` ``(3, S, S)`` float32 RGB in ``[0, 1]``, ``rotation`` ``(3, 3)`` float32,
``equivalents`` ``(1, 3, 3)`` (identity), ``shape`` (category name), ``category`` (int).

Differences from the reference, all deliberate: the principal point's y is ``py`` (the reference
reads ``px`` twice; ``reference_principal_point=True`` restores that); the smallest enclosing cone
is found exactly and its axis is a unit vector (the reference's randomised search can return an
axis of norm about 0.999 and so a label slightly off SO(3)); an object whose class is not one of the
12 is skipped (the reference would stop with an error); grey and CMYK images are converted to RGB.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core import preprocess, so3
from pose_core.data._io import (
    read_image_rgb,
    read_text_lines,
    require_dir,
    require_file,
)

__all__ = [
    "PASCAL3D_CATEGORIES",
    "PASCAL3D_RELEASE_DIR",
    "PASCAL3D_SYNSETS",
    "PASCAL3D_SYNTH_DIR",
    "Pascal3D",
    "Pascal3DAnnotation",
    "Pascal3DReal",
    "Pascal3DSynth",
    "crop_camera",
    "parse_synth_filename",
    "pascal3d_intrinsics",
    "pascal3d_rotation",
    "pascal3d_split_paths",
    "perspective_crop",
    "read_pascal3d_annotation",
]

#: Category names in the reference's order; ``category`` indexes into this tuple.
PASCAL3D_CATEGORIES: tuple[str, ...] = (
    "aeroplane", "bicycle", "boat", "bottle", "bus", "car", "chair",
    "diningtable", "motorbike", "sofa", "train", "tvmonitor",
)  # fmt: skip
#: ShapeNet synset id of each category (the RenderForCNN folder names), same order.
PASCAL3D_SYNSETS: tuple[str, ...] = (
    "02691156", "02834778", "02858304", "02876657", "02924116", "02958343",
    "03001627", "04379243", "03790512", "04256520", "04468005", "03211117",
)  # fmt: skip
#: Folder of the PASCAL3D+ release under ``root``.
PASCAL3D_RELEASE_DIR = "PASCAL3D+_release1.1"
#: Folder of the RenderForCNN synthetic images under ``root``.
PASCAL3D_SYNTH_DIR = "syn_images_cropped_bkg_overlaid"

#: Focal length (pixels), as ``focal * viewport``, that the reference assumes for synthetic images.
SYNTH_FOCAL_PX = 3000.0

_VIEWPOINT_FIELDS = ("azimuth", "elevation", "theta", "distance", "focal", "viewport", "px", "py")


@dataclass(frozen=True)
class Pascal3DAnnotation:
    """One annotated object: the first object of a PASCAL3D+ ``.mat`` record.

    ``bbox`` is ``(4,)`` float64 ``[x1, y1, x2, y2]`` in pixels; angles are in degrees.
    """

    image_path: Path
    annotation_path: Path
    category: int
    bbox: np.ndarray
    azimuth: float
    elevation: float
    theta: float
    distance: float
    focal: float
    viewport: float
    px: float
    py: float


# ----------------------------------------------------------------------------- camera geometry
def _axis_rotation(axis: int, angle_rad: float) -> np.ndarray:
    """``(3, 3)`` float64 rotation by ``angle_rad`` about coordinate axis ``axis`` (0=x, 1=y, 2=z)."""
    omega = torch.zeros(3, dtype=torch.float64)
    omega[axis] = angle_rad
    return so3.rotvec_to_matrix(omega).numpy()


def pascal3d_rotation(azimuth_deg: float, elevation_deg: float, theta_deg: float) -> np.ndarray:
    """Pose rotation ``(3, 3)`` float64 (object -> camera optical frame) of a PASCAL3D+ viewpoint.

    ``R = Rz(-theta) @ Rx(elevation + pi/2) @ Rz(-azimuth)``, angles given in degrees.
    """
    a, e, t = (math.radians(float(v)) for v in (azimuth_deg, elevation_deg, theta_deg))
    return _axis_rotation(2, -t) @ _axis_rotation(0, e + math.pi / 2) @ _axis_rotation(2, -a)


def pascal3d_intrinsics(focal_px: float, px: float, py: float) -> np.ndarray:
    """Pinhole intrinsics ``(3, 3)`` float64 with focal length ``focal_px`` and principal point ``(px, py)``."""
    return np.array([[focal_px, 0.0, px], [0.0, focal_px, py], [0.0, 0.0, 1.0]])


def _min_enclosing_cone_axis(rays: np.ndarray) -> np.ndarray:
    """Unit axis ``(3,)`` of the narrowest cone around the origin holding the unit ``rays`` ``(N, 3)``.

    The narrowest cone passes through 2 or 3 of the rays; all those cones are tried (N is 4 here),
    so the result is deterministic. Each candidate axis is equidistant from its defining rays.
    """
    candidates: list[tuple[np.ndarray, int]] = []  # (unnormalised axis, index of a defining ray)
    for i, j in itertools.combinations(range(len(rays)), 2):
        candidates.append((rays[i] + rays[j], i))
    for i, j, k in itertools.combinations(range(len(rays)), 3):
        m = rays[[i, j, k]]
        if abs(np.linalg.det(m)) > 1e-14:
            candidates.append((np.linalg.solve(m, np.ones(3)), i))  # axis . r = 1 for the three rays
    best, best_cos = rays[0] / np.linalg.norm(rays[0]), -np.inf
    for c, i in candidates:
        norm = np.linalg.norm(c)
        if norm < 1e-12:
            continue
        c = c / norm
        cos_edge = float(rays[i] @ c)  # cosine of the cone's half-angle
        if np.all(rays @ c >= cos_edge - 1e-12) and cos_edge > best_cos:
            best, best_cos = c, cos_edge
    return best


def crop_camera(
    K: np.ndarray, bbox: np.ndarray, out_size: int, x_axis_hint: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Virtual camera looking at ``bbox``: rotation ``R_c`` ``(3, 3)`` (old camera -> new) and intrinsics ``(3, 3)``.

    The new optical axis is the axis of the narrowest cone holding the rays of the box corners, the
    new x axis is ``x_axis_hint`` (in the old camera frame) made orthogonal to it, and the focal
    length makes the corners' farthest coordinate touch the border of the ``out_size`` square.
    """
    x1, y1, x2, y2 = (float(v) for v in bbox)
    corners = np.array([[x1, y1, 1.0], [x1, y2, 1.0], [x2, y1, 1.0], [x2, y2, 1.0]]).T  # (3, 4)
    rays = np.linalg.solve(K, corners)
    rays = rays / np.linalg.norm(rays, axis=0, keepdims=True)  # (3, 4) unit
    z = _min_enclosing_cone_axis(rays.T)
    x = x_axis_hint - np.dot(x_axis_hint, z) * z
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R_c = np.stack([x, y, z], axis=0)  # rows: new axes in old camera coordinates
    reproj = R_c @ rays
    reproj = reproj[:2] / reproj[2:]
    f = 1.0 / np.abs(reproj).max()
    s = float(out_size)
    K_new = np.array([[s * f / 2, 0.0, s / 2], [0.0, s * f / 2, s / 2], [0.0, 0.0, 1.0]])
    return R_c, K_new


def _warp_bilinear(image: np.ndarray, H_out_to_in: np.ndarray, out_size: int) -> np.ndarray:
    """Resample ``image`` ``(H, W, C)`` through the homography (output pixel -> input pixel).

    Pixel centres are at integer ``(x=column, y=row)``; bilinear, zero outside (as skimage's
    ``warp(..., order=1, mode="constant", cval=0)``). Returns ``(out_size, out_size, C)`` float64.
    """
    h, w, c = image.shape
    v, u = np.mgrid[0:out_size, 0:out_size].astype(np.float64)  # rows, columns
    pts = H_out_to_in @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])  # (3, S*S)
    x, y = pts[0] / pts[2], pts[1] / pts[2]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros((x.size, c), dtype=np.float64)
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        xi, yi = x0i + dx, y0i + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (pts[2] > 0)
        out[ok] += wgt[ok, None] * image[yi[ok], xi[ok]]
    return out.reshape(out_size, out_size, c)


def perspective_crop(
    image: np.ndarray,
    K: np.ndarray,
    rotation: np.ndarray,
    bbox: np.ndarray,
    out_size: int,
    x_axis_hint: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``image`` ``(H, W, C)`` (float) to the virtual view of :func:`crop_camera`.

    Returns the ``(out_size, out_size, C)`` float64 image and the pose rotation ``(3, 3)`` float64
    seen from the virtual camera, ``R_c @ rotation``.
    """
    R_c, K_new = crop_camera(K, bbox, out_size, x_axis_hint)
    H = K_new @ R_c @ np.linalg.inv(K)  # input pixel -> output pixel
    warped = _warp_bilinear(image, np.linalg.inv(H), out_size)
    return warped, R_c @ rotation


# ---------------------------------------------------------------------------- augmentation
def _rand(generator: torch.Generator | None, n: int) -> np.ndarray:
    return torch.rand(n, generator=generator, dtype=torch.float64).numpy()


def _sample_augmentation(generator: torch.Generator | None) -> tuple[bool, np.ndarray, np.ndarray]:
    """Draw ``(flip, x_axis_hint (3,), jitter (4,) in [-0.1, 0.1))`` as the reference's training warp."""
    flip = bool(torch.randint(2, (1,), generator=generator).item())
    hint = np.array([3.0, 0.0, 0.0]) + 0.4 * torch.randn(3, generator=generator, dtype=torch.float64).numpy()
    hint[2] = 0.0
    hint /= np.linalg.norm(hint)
    jitter = 0.2 * _rand(generator, 4) - 0.1  # (dx1, dx2, dy1, dy2) as fractions of the box size
    return flip, hint, jitter


def _warp_augmentation(
    image: np.ndarray, bbox: np.ndarray, px: float, azimuth: float, theta: float, generator: torch.Generator | None
) -> tuple[np.ndarray, np.ndarray, float, float, float, np.ndarray]:
    """The reference's training warp of one image ``(H, W, 3)``: a mirror with probability 1/2 (image,
    box ``(4,)``, principal point x, azimuth and theta flipped) and a jittered box. Returns
    ``(image, bbox, px, azimuth, theta, x_axis_hint)``."""
    flip, hint, jitter = _sample_augmentation(generator)
    if flip:
        width = image.shape[1]
        azimuth, theta = -azimuth, -theta
        image = image[:, ::-1]
        bbox = bbox.copy()
        bbox[0::2] = width - bbox[0::2]
        px = width - px
    return image, _jitter_bbox(bbox, jitter), px, azimuth, theta, hint


def _jitter_bbox(bbox: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    out = bbox.astype(np.float64).copy()
    w, h = abs(out[2] - out[0]), abs(out[3] - out[1])
    out[0::2] += jitter[:2] * w
    out[1::2] += jitter[2:] * h
    return out


def _item(image_hwc: np.ndarray, rotation: np.ndarray, category: int) -> dict[str, Any]:
    return {
        "image": preprocess.to_tensor(image_hwc).contiguous(),
        "rotation": torch.from_numpy(rotation).to(torch.float32),
        "equivalents": torch.eye(3, dtype=torch.float32)[None],  # (1, 3, 3)
        "shape": PASCAL3D_CATEGORIES[category],
        "category": category,
    }


# ------------------------------------------------------------------------- annotation files
def _mat_value(struct: Any, field: str, path: Path) -> Any:
    """The value of ``field`` in a loadmat struct, with MATLAB's 1-element array wrappers removed."""
    try:
        v = struct[field]
    except (ValueError, KeyError, IndexError) as e:
        raise ValueError(f"annotation {path}: object has no field {field!r}") from e
    while isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(-1)[0]
    return v


def _mat_float(struct: Any, field: str, path: Path) -> float:
    v = _mat_value(struct, field, path)
    try:
        return float(np.asarray(v).reshape(()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"annotation {path}: field {field!r} must be one number, got {v!r}") from e


def read_pascal3d_annotation(
    annotation_path: str | Path, image_path: str | Path, keep_flagged: bool = False
) -> Pascal3DAnnotation | None:
    """The first object of a PASCAL3D+ ``.mat`` annotation, or ``None`` where the reference skips it.

    Skipped: no viewpoint, no or zero ``distance``, occluded / truncated / difficult (unless
    ``keep_flagged``, as NeMo's OccludedPASCAL3D+ evaluation keeps them), empty box, or
    a class outside :data:`PASCAL3D_CATEGORIES`. Raises :class:`FileNotFoundError` for a missing
    file and :class:`ValueError` naming the file for one that is not such an annotation.
    """
    import scipy.io

    path = require_file(annotation_path, "PASCAL3D+ annotation")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises many types (ValueError, TypeError, OSError, MatReadError, ...)
        raise ValueError(f"annotation {path} is not a readable MATLAB .mat file: {e!r}") from e
    try:
        obj = mat["record"]["objects"][0][0][0][0]
        names = obj.dtype.names or ()
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"annotation {path}: expected a struct 'record' with a non-empty 'objects' array") from e
    for field in ("viewpoint", "class", "bbox", "occluded", "truncated", "difficult"):
        if field not in names:
            raise ValueError(f"annotation {path}: first object has no field {field!r} (has {names})")
    viewpoint = obj["viewpoint"]
    if viewpoint.dtype == np.float64 or viewpoint.size == 0:  # empty [] : no viewpoint annotated
        return None
    vp_names = viewpoint.dtype.names or ()
    if "distance" not in vp_names:
        return None
    vp = viewpoint.reshape(-1)[0]
    if _mat_float(vp, "distance", path) == 0:
        return None
    if not keep_flagged and any(_mat_float(obj, f, path) for f in ("occluded", "difficult", "truncated")):
        return None
    try:
        bbox = np.asarray(obj["bbox"], dtype=np.float64).reshape(4)
    except (ValueError, TypeError) as e:
        raise ValueError(f"annotation {path}: 'bbox' must hold 4 numbers, got {obj['bbox']!r}") from e
    left, top, right, bottom = np.trunc(bbox)
    if not (left < right and top < bottom):
        return None
    cls = _mat_value(obj, "class", path)
    if str(cls) not in PASCAL3D_CATEGORIES:
        return None
    missing = [f for f in _VIEWPOINT_FIELDS if f not in vp_names]
    if missing:
        raise ValueError(f"annotation {path}: viewpoint lacks the fields {missing}")
    vals = {f: _mat_float(vp, f, path) for f in _VIEWPOINT_FIELDS}
    return Pascal3DAnnotation(
        image_path=Path(image_path),
        annotation_path=path,
        category=PASCAL3D_CATEGORIES.index(str(cls)),
        bbox=bbox,
        **vals,
    )


def pascal3d_split_paths(release_dir: str | Path, split: Literal["train", "test"]) -> list[tuple[Path, Path]]:
    """``(image path, annotation path)`` pairs of a split, in the reference's order (before filtering)."""
    rel = require_dir(release_dir, "PASCAL3D+ release folder")
    pairs: list[tuple[Path, Path]] = []

    def pascal(cat: str, mode: str) -> None:
        lst = rel / "PASCAL/VOCdevkit/VOC2012/ImageSets/Main" / f"{cat}_{mode}.txt"
        for line in read_text_lines(lst, "PASCAL VOC image list"):
            num = line.split()[0]
            img = rel / "Images" / f"{cat}_pascal" / f"{num}.jpg"
            if img.exists():
                pairs.append((img, rel / "Annotations" / f"{cat}_pascal" / f"{num}.mat"))

    def imagenet(cat: str, mode: str) -> None:
        lst = rel / "Image_sets" / f"{cat}_imagenet_{mode}.txt"
        for num in read_text_lines(lst, "PASCAL3D+ ImageNet image list"):
            img = rel / "Images" / f"{cat}_imagenet" / f"{num}.JPEG"
            annotation = rel / "Annotations" / f"{cat}_imagenet" / f"{num}.mat"
            pairs.append((require_file(img, f"image listed in {lst}"), annotation))

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for cat in PASCAL3D_CATEGORIES:
        if split == "train":
            pascal(cat, "train")
            imagenet(cat, "train")
            imagenet(cat, "val")
        else:
            pascal(cat, "val")
    return pairs


# ----------------------------------------------------------------------------------- datasets
class Pascal3DReal(Dataset):
    """Real PASCAL3D+ images (PASCAL VOC and ImageNet); see the module docstring.

    Args:
        root: folder holding ``PASCAL3D+_release1.1/``.
        split: ``"train"`` or ``"test"``.
        warp: training augmentation (mirror, in-plane rotation, box jitter); the crop is always made.
        image_size: side ``S`` of the square output image.
        generator: source of the augmentation's randomness; ``None`` uses torch's global generator.
        reference_principal_point: use ``(px, px)`` as the principal point, as the reference does.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        warp: bool = False,
        image_size: int = 224,
        generator: torch.Generator | None = None,
        reference_principal_point: bool = False,
    ) -> None:
        self.root = require_dir(root, "PASCAL3D+ root folder")
        self.split = split
        self.warp = warp
        self.image_size = int(image_size)
        self.generator = generator
        self.reference_principal_point = reference_principal_point
        self.categories = PASCAL3D_CATEGORIES
        release = require_dir(self.root / PASCAL3D_RELEASE_DIR, "PASCAL3D+ release folder")
        self.annotations: list[Pascal3DAnnotation] = []
        for img, ann in pascal3d_split_paths(release, split):
            a = read_pascal3d_annotation(ann, img)
            if a is not None:
                self.annotations.append(a)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> dict[str, Any]:
        a = self.annotations[index]
        image = read_image_rgb(a.image_path, "PASCAL3D+ image").astype(np.float64) / 255.0  # (H, W, 3)
        bbox = a.bbox.copy()
        px, py = a.px, (a.px if self.reference_principal_point else a.py)
        azimuth, theta = a.azimuth, a.theta
        if self.warp:
            image, bbox, px, azimuth, theta, hint = _warp_augmentation(
                image, bbox, px, azimuth, theta, self.generator
            )
        else:
            hint = np.array([1.0, 0.0, 0.0])
        K = pascal3d_intrinsics(a.focal * a.viewport, px, py)
        R = pascal3d_rotation(azimuth, a.elevation, theta)
        warped, rot = perspective_crop(image, K, R, bbox, self.image_size, hint)
        return _item(warped, rot, a.category)


def parse_synth_filename(path: str | Path) -> tuple[int, int, int]:
    """``(azimuth, elevation, theta)`` in degrees from a RenderForCNN name ``..._a<a>_e<e>_t<t>_d<d>.png``."""
    parts = Path(path).name.split("_")
    try:
        if len(parts) < 4:
            raise ValueError("too few '_' fields")
        fields = parts[-4:-1]
        if [f[:1] for f in fields] != ["a", "e", "t"]:
            raise ValueError("fields are not a<..>_e<..>_t<..>")
        a, e, t = (int(f[1:]) for f in fields)
    except ValueError as err:
        raise ValueError(
            f"synthetic image {path}: name must end in _a<azimuth>_e<elevation>_t<theta>_d<distance>.png ({err})"
        ) from None
    return a, e, t


class Pascal3DSynth(Dataset):
    """RenderForCNN synthetic images of the 12 categories, always augmented as in the reference.

    Camera: focal length 3000 px, principal point at the image centre, box = the whole image;
    the label uses ``theta`` negated, as the reference does for these renderings.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 224,
        generator: torch.Generator | None = None,
    ) -> None:
        self.root = require_dir(root, "PASCAL3D+ root folder")
        synth = require_dir(self.root / PASCAL3D_SYNTH_DIR, "RenderForCNN synthetic image folder")
        self.image_size = int(image_size)
        self.generator = generator
        self.categories = PASCAL3D_CATEGORIES
        self.files: list[tuple[Path, int]] = []
        for cat, synset in enumerate(PASCAL3D_SYNSETS):
            folder = require_dir(synth / synset, f"synthetic images of {PASCAL3D_CATEGORIES[cat]}")
            self.files.extend((p, cat) for p in sorted(folder.glob("*/*.png")))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, cat = self.files[index]
        azimuth, elevation, theta = parse_synth_filename(path)
        image = read_image_rgb(path, "synthetic image").astype(np.float64) / 255.0  # (H, W, 3)
        h, w = image.shape[:2]
        bbox = np.array([0.0, 0.0, w, h])
        px, py = w / 2, h / 2
        image, bbox, px, azimuth, theta, hint = _warp_augmentation(image, bbox, px, azimuth, theta, self.generator)
        K = pascal3d_intrinsics(SYNTH_FOCAL_PX, px, py)
        R = pascal3d_rotation(azimuth, elevation, -theta)
        warped, rot = perspective_crop(image, K, R, bbox, self.image_size, hint)
        return _item(warped, rot, cat)


class Pascal3D(Dataset):
    """The reference's training mix: real images, plus (``synth=True``) 3 synthetic draws per real one.

    With ``synth=True`` the length is ``4 * len(real)``; indices past the real images return a
    uniformly drawn synthetic image. ``split="test"`` allows neither ``warp`` nor ``synth``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        warp: bool = False,
        synth: bool = False,
        image_size: int = 224,
        generator: torch.Generator | None = None,
        reference_principal_point: bool = False,
    ) -> None:
        if split == "test" and (warp or synth):
            raise ValueError("the test split is read without warp and without synthetic images")
        self.real = Pascal3DReal(root, split, warp, image_size, generator, reference_principal_point)
        self.synth = Pascal3DSynth(root, image_size, generator) if synth else None
        if self.synth is not None and len(self.synth) == 0:
            raise ValueError(f"no synthetic images found under {Path(root) / PASCAL3D_SYNTH_DIR}")
        self.generator = generator
        self.categories = PASCAL3D_CATEGORIES

    def __len__(self) -> int:
        return len(self.real) * (4 if self.synth is not None else 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if index < len(self.real) or self.synth is None:
            return self.real[index]
        j = int(torch.randint(len(self.synth), (1,), generator=self.generator).item())
        return self.synth[j]
