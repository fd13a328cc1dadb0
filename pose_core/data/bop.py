"""BOP (Benchmark for 6D Object Pose Estimation) datasets: T-LESS, HomebrewedDB (HB) and the others in BOP format.

On-disk layout (the BOP toolkit's), under ``root``::

    root/<dataset>/                               e.g. root/tless, root/hb
        camera.json | camera_<type>.json          optional: cx, cy, fx, fy, width, height, depth_scale
        test_targets_bop19.json                   optional: [{scene_id, im_id, obj_id, inst_count}, ...]
        models/ | models_cad/ | models_eval/      (T-LESS ships models_cad/, the others models/)
            models_info.json                      {obj_id: {diameter, min_x, ..., size_z, symmetries_*}}
            obj_{obj_id:06d}.ply                  mesh in millimetres
        <split>/                                  e.g. tless/train_primesense, tless/test_primesense,
                                                       hb/val_primesense, hb/test_primesense
            {scene_id:06d}/
                scene_gt.json        {im_id: [{cam_R_m2c: 9 floats row-major, cam_t_m2c: 3 floats mm, obj_id}]}
                scene_camera.json    {im_id: {cam_K: 9 floats row-major, depth_scale, [cam_R_w2c, cam_t_w2c (mm),
                                              elev, mode]}}
                scene_gt_info.json   optional: {im_id: [{bbox_obj, bbox_visib: [x, y, w, h] px, px_count_all,
                                              px_count_valid, px_count_visib, visib_fract}]}  (one per GT)
                rgb/{im_id:06d}.png|.jpg   or  gray/{im_id:06d}.png|.tif   (grey replicated to 3 channels)
                depth/{im_id:06d}.png|.tif  optional, uint16; value * depth_scale = depth in mm
                mask/{im_id:06d}_{gt_index:06d}.png, mask_visib/{im_id:06d}_{gt_index:06d}.png   optional

JSON keys of images and objects are decimal strings (``"3"``); ``gt_index`` is the position of an
instance in its image's ``scene_gt.json`` list (the mask files' second number).

**Conventions** (those of :mod:`pose_core.so3` and :mod:`pose_core.pinhole`). A pose ``(R, t)`` maps
model points into the camera optical frame (x right, y down, z forward): ``p_cam = R @ p_obj + t``;
BOP's ``cam_R_m2c`` is exactly that ``R`` (read row-major, used as stored, not transposed), and
``cam_t_m2c`` is ``t`` in millimetres. **Everything returned here is in metres**: translations,
depths, model extents, diameters and symmetry offsets are divided by 1000. Depth images become
float32 metres (``value * depth_scale / 1000``); a stored 0 stays 0, "no measurement", as in
:func:`pose_core.pinhole.valid_depths`. ``K`` is ``(3, 3)`` float64 in pixels (pixel centres at
integers, OpenCV). Boxes are ``(x, y, w, h)`` integer pixels; ``(-1, -1, -1, -1)`` means "not visible"
(BOP's own value) or "unknown" (no ``scene_gt_info.json``), where ``visib_fract`` is NaN.

**Symmetries** (``models_info.json``). A symmetry ``(R_s, t_s)`` maps the model onto itself,
``x -> R_s x + t_s``, so a pose ``(R, t)`` is indistinguishable from ``(R R_s, R t_s + t)``
(:meth:`ObjectInfo.equivalent_poses`). ``symmetries_discrete`` are row-major 4x4 matrices (translation
in mm); ``symmetries_continuous`` are rotations by any angle about ``axis`` through the point
``offset`` (mm), discretised here into ``continuous_steps`` equal turns (360 by default: one degree,
as :func:`pose_core.data.shapes.symmetry_rotations` does for ``revolution``). The full set is
combined as the BOP toolkit's ``misc.get_symmetry_transformations`` does: every discrete symmetry
(identity first) followed by every continuous turn, ``R = R_c R_d``, ``t = R_c t_d + t_c``.

A file that exists but cannot be read (bad JSON, a missing key, a non-rotation ``cam_R_m2c``, an
image of ``scene_gt.json`` with no entry in ``scene_camera.json``, ...) raises :class:`ValueError`
naming the file, the image or object key and the field; a missing required file or folder raises
:class:`FileNotFoundError`; missing optional files are fine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from pose_core import so3
from pose_core.data._io import read_image_rgb, require_dir, require_file

if TYPE_CHECKING:  # pragma: no cover
    from pose_core.data.render import Mesh

__all__ = [
    "BOP_CONTINUOUS_STEPS",
    "BOP_MODELS_DIRS",
    "BopCamera",
    "BopDataset",
    "BopInstance",
    "BopTarget",
    "ObjectInfo",
    "bop_symmetries",
    "find_models_dir",
    "load_bop_model",
    "read_camera_file",
    "read_models_info",
    "read_scene_camera",
    "read_scene_gt",
    "read_scene_gt_info",
    "read_targets",
]

#: Default number of turns a continuous symmetry is discretised into (one degree each).
BOP_CONTINUOUS_STEPS = 360
#: Model folders tried, in order, under ``root/<dataset>/`` when none is given.
BOP_MODELS_DIRS: tuple[str, ...] = ("models", "models_cad", "models_eval")

_MM = 1000.0  # millimetres per metre: BOP stores mm, everything here is divided by this
_ROT_TOL = 1e-3  # how far from orthonormal with det +1 a stored rotation may be
_IMAGE_DIRS = ("rgb", "gray")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_DEPTH_EXTS = (".png", ".tif", ".tiff")
_UNKNOWN_BOX = (-1, -1, -1, -1)

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True, eq=False)
class BopCamera:
    """Camera of one image: ``K`` ``(3, 3)`` float64 px; ``depth_scale`` mm per depth-image unit (``None``
    when not stored); ``width``/``height`` px when known (``scene_camera.json`` does not store them:
    :meth:`BopDataset.camera` reads them from the image header); the world -> camera
    pose ``R_w2c`` ``(3, 3)`` and ``t_w2c`` ``(3,)`` m, ``elev`` and ``mode`` when stored."""

    K: np.ndarray
    depth_scale: float | None = None
    width: int | None = None
    height: int | None = None
    R_w2c: np.ndarray | None = None
    t_w2c: np.ndarray | None = None
    elev: float | None = None
    mode: int | None = None


@dataclass(frozen=True, eq=False)
class BopInstance:
    """One ground-truth object instance: ``R`` ``(3, 3)`` float64 object -> camera and ``t`` ``(3,)`` float64
    metres (``p_cam = R p_obj + t``); boxes ``(x, y, w, h)`` px (``(-1, -1, -1, -1)``: not visible or
    unknown); ``visib_fract`` in [0, 1] (NaN when unknown); pixel counts ``-1`` when unknown."""

    scene_id: int
    im_id: int
    gt_index: int
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    bbox_obj: Box = _UNKNOWN_BOX
    bbox_visib: Box = _UNKNOWN_BOX
    visib_fract: float = math.nan
    px_count_all: int = -1
    px_count_valid: int = -1
    px_count_visib: int = -1


@dataclass(frozen=True)
class BopTarget:
    """One entry of a BOP test-targets file; ``obj_id``/``inst_count`` are ``None`` in the BOP'24 form
    (all objects of the image)."""

    scene_id: int
    im_id: int
    obj_id: int | None = None
    inst_count: int | None = None


@dataclass(frozen=True, eq=False)
class ObjectInfo:
    """An object of ``models_info.json``, in metres.

    ``bbox_min`` ``(3,)`` and ``bbox_size`` ``(3,)`` give the model's axis-aligned box; ``symmetries_discrete``
    ``(D, 4, 4)`` (translation column in m, identity not included), ``continuous_axes`` ``(C, 3)`` unit axes
    and ``continuous_offsets`` ``(C, 3)`` m are the stored symmetries; ``symmetry_rotations`` ``(K, 3, 3)``
    and ``symmetry_translations`` ``(K, 3)`` m are the full discretised set (identity first, see the module
    docstring), ``K = (D + 1) * max(1, C * continuous_steps)``.
    """

    obj_id: int
    diameter: float
    bbox_min: np.ndarray
    bbox_size: np.ndarray
    symmetries_discrete: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    continuous_axes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    continuous_offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    symmetry_rotations: np.ndarray = field(default_factory=lambda: np.eye(3)[None])
    symmetry_translations: np.ndarray = field(default_factory=lambda: np.zeros((1, 3)))

    @property
    def diameter_m(self) -> float:
        """Alias of ``diameter`` (metres)."""
        return self.diameter

    @property
    def is_symmetric(self) -> bool:
        """Whether the object has any symmetry besides the identity."""
        return len(self.symmetry_rotations) > 1

    @property
    def bbox_corners(self) -> np.ndarray:
        """The 8 corners ``(8, 3)`` m of the model's box."""
        idx = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=np.float64)
        return self.bbox_min + idx * self.bbox_size

    def equivalent_poses(self, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The poses ``(K, 3, 3)``, ``(K, 3)`` indistinguishable from ``(R (3, 3), t (3,) m)``:
        ``(R R_s, R t_s + t)``."""
        R = np.asarray(R, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        if R.shape != (3, 3) or t.shape != (3,):
            raise ValueError(f"expected R (3, 3) and t (3,), got {R.shape} and {t.shape}")
        return R @ self.symmetry_rotations, self.symmetry_translations @ R.T + t


# ----------------------------------------------------------------------------- field helpers
def _load_json(path: str | Path, what: str) -> Any:
    p = require_file(path, what)
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {p} is not valid JSON: {e}") from e


def _id(key: Any, path: Path, what: str) -> int:
    """An image/object/scene id from a JSON key or value (a non-negative integer)."""
    try:
        if isinstance(key, bool) or (isinstance(key, float) and not key.is_integer()):
            raise ValueError
        value = int(key)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {what} must be a non-negative integer, got {key!r}") from None
    if value < 0:
        raise ValueError(f"{path}: {what} must be a non-negative integer, got {key!r}")
    return value


def _mapping(data: Any, path: Path, expected: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {expected}, got {type(data).__name__}")
    return data


def _get(entry: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {where} must be a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{path}: {where} lacks key {key!r}")
    return entry[key]


def _floats(value: Any, n: int, path: Path, where: str, key: str) -> np.ndarray:
    """``value`` as ``(n,)`` finite float64, else ValueError naming file, entry and key."""
    try:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or \
                any(isinstance(v, (bool, str)) for v in value):
            raise TypeError
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
        raise ValueError(f"{path}: {where} key {key!r} must be a list of {n} finite numbers, got {value!r}")
    return arr


def _number(value: Any, path: Path, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: {where} key {key!r} must be a finite number, got {value!r}")
    return float(value)


def _int(value: Any, path: Path, where: str, key: str) -> int:
    x = _number(value, path, where, key)
    if not x.is_integer():
        raise ValueError(f"{path}: {where} key {key!r} must be an integer, got {value!r}")
    return int(x)


def _box(value: Any, path: Path, where: str, key: str) -> Box:
    arr = _floats(value, 4, path, where, key)
    if not all(float(v).is_integer() for v in arr):
        raise ValueError(f"{path}: {where} key {key!r} must be 4 integers (x, y, w, h), got {value!r}")
    x, y, w, h = (int(v) for v in arr)
    return (x, y, w, h)


def _rotation(value: Any, path: Path, where: str, key: str) -> np.ndarray:
    R = _floats(value, 9, path, where, key).reshape(3, 3)  # row-major
    _check_rotation(R, path, where, key)
    return R


def _check_rotation(R: np.ndarray, path: Path, where: str, key: str) -> None:
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if not (err <= _ROT_TOL and abs(det - 1.0) <= _ROT_TOL):
        raise ValueError(f"{path}: {where} key {key!r} is not a rotation (|R R^T - I|max={err:.3g}, det={det:.4g})")


# ----------------------------------------------------------------------------- models
def bop_symmetries(
    discrete: np.ndarray | None = None,
    axes: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    continuous_steps: int = BOP_CONTINUOUS_STEPS,
) -> tuple[np.ndarray, np.ndarray]:
    """The full symmetry set ``(R (K, 3, 3), t (K, 3))`` float64, identity first, from discrete symmetries
    ``(D, 4, 4)`` (translations in the unit wanted for ``t``) and continuous ones (unit ``axes`` ``(C, 3)``
    through ``offsets`` ``(C, 3)``, same unit) each discretised into ``continuous_steps`` turns.

    Combined as the BOP toolkit does: for every discrete ``(R_d, t_d)`` (identity first) and every
    continuous turn ``(R_c, t_c = o - R_c o)``: ``R = R_c R_d``, ``t = R_c t_d + t_c``.
    """
    disc = np.zeros((0, 4, 4)) if discrete is None else np.asarray(discrete, dtype=np.float64).reshape(-1, 4, 4)
    axes = np.zeros((0, 3)) if axes is None else np.asarray(axes, dtype=np.float64).reshape(-1, 3)
    offsets = np.zeros((len(axes), 3)) if offsets is None else np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
    if len(offsets) != len(axes):
        raise ValueError(f"got {len(axes)} continuous axes but {len(offsets)} offsets")
    if int(continuous_steps) != continuous_steps or continuous_steps < 1:
        raise ValueError(f"continuous_steps must be a positive integer, got {continuous_steps!r}")
    norms = np.linalg.norm(axes, axis=1)
    if np.any(~(norms > 0)):
        raise ValueError(f"continuous symmetry axes must be non-zero, got {axes.tolist()}")
    Rd = np.concatenate([np.eye(3)[None], disc[:, :3, :3]])  # (D+1, 3, 3)
    td = np.concatenate([np.zeros((1, 3)), disc[:, :3, 3]])  # (D+1, 3)
    if len(axes) == 0:
        return Rd, td
    angles = 2.0 * math.pi * np.arange(int(continuous_steps)) / int(continuous_steps)
    rotvecs = (axes / norms[:, None])[:, None, :] * angles[None, :, None]  # (C, N, 3)
    Rc = so3.rotvec_to_matrix(torch.from_numpy(rotvecs.reshape(-1, 3))).numpy()  # (C*N, 3, 3)
    Rc[:: int(continuous_steps)] = np.eye(3)  # angle 0: exactly the identity
    oc = np.repeat(offsets, int(continuous_steps), axis=0)  # (C*N, 3)
    tc = oc - np.einsum("kij,kj->ki", Rc, oc)
    R = np.einsum("cij,djk->dcik", Rc, Rd).reshape(-1, 3, 3)  # discrete-major, as the toolkit's loops
    t = (np.einsum("cij,dj->dci", Rc, td) + tc[None]).reshape(-1, 3)
    return R, t


def read_models_info(
    path: str | os.PathLike[str], continuous_steps: int = BOP_CONTINUOUS_STEPS
) -> dict[int, ObjectInfo]:
    """Read ``models_info.json`` into ``{obj_id: ObjectInfo}`` (metres; see the module docstring)."""
    p = Path(path)
    data = _mapping(_load_json(p, "BOP models info"), p, "{obj_id: info}")
    out: dict[int, ObjectInfo] = {}
    for key, entry in data.items():
        obj_id = _id(key, p, "object key")
        where = f"object {key!r}"
        diameter = _number(_get(entry, "diameter", p, where), p, where, "diameter")
        if diameter <= 0:
            raise ValueError(f"{p}: {where} key 'diameter' must be positive, got {diameter!r}")
        bmin = np.array([_number(_get(entry, f"min_{a}", p, where), p, where, f"min_{a}") for a in "xyz"])
        bsize = np.array([_number(_get(entry, f"size_{a}", p, where), p, where, f"size_{a}") for a in "xyz"])
        if np.any(bsize < 0):
            raise ValueError(f"{p}: {where} sizes must be non-negative, got {bsize.tolist()}")
        disc_raw = entry.get("symmetries_discrete", [])
        if not isinstance(disc_raw, list):
            raise ValueError(f"{p}: {where} key 'symmetries_discrete' must be a list of 16-number lists")
        disc = np.zeros((len(disc_raw), 4, 4))
        for i, m in enumerate(disc_raw):
            M = _floats(m, 16, p, f"{where} symmetries_discrete[{i}]", "symmetries_discrete").reshape(4, 4)
            if np.abs(M[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
                raise ValueError(f"{p}: {where} key 'symmetries_discrete'[{i}] must have last row 0 0 0 1, "
                                 f"got {M[3].tolist()}")
            _check_rotation(M[:3, :3], p, f"{where} symmetries_discrete[{i}]", "symmetries_discrete")
            M[:3, 3] /= _MM
            disc[i] = M
        cont_raw = entry.get("symmetries_continuous", [])
        if not isinstance(cont_raw, list):
            raise ValueError(f"{p}: {where} key 'symmetries_continuous' must be a list of {{axis, offset}}")
        axes = np.zeros((len(cont_raw), 3))
        offsets = np.zeros((len(cont_raw), 3))
        for i, c in enumerate(cont_raw):
            w = f"{where} symmetries_continuous[{i}]"
            a = _floats(_get(c, "axis", p, w), 3, p, w, "axis")
            if not np.linalg.norm(a) > 0:
                raise ValueError(f"{p}: {w} key 'axis' must be non-zero, got {a.tolist()}")
            axes[i] = a / np.linalg.norm(a)
            offsets[i] = _floats(_get(c, "offset", p, w), 3, p, w, "offset") / _MM
        R, t = bop_symmetries(disc, axes, offsets, continuous_steps)
        out[obj_id] = ObjectInfo(obj_id, diameter / _MM, bmin / _MM, bsize / _MM, disc, axes, offsets, R, t)
    return out


def find_models_dir(dataset_dir: str | os.PathLike[str]) -> Path | None:
    """The first of :data:`BOP_MODELS_DIRS` under ``dataset_dir`` that holds ``models_info.json``, else ``None``."""
    for name in BOP_MODELS_DIRS:
        d = Path(dataset_dir) / name
        if (d / "models_info.json").is_file():
            return d
    return None


def load_bop_model(path: str | os.PathLike[str], color: tuple[float, float, float] = (0.8, 0.8, 0.8)) -> Mesh:
    """A BOP model file (``obj_{obj_id:06d}.ply``, millimetres) as a :class:`~pose_core.data.render.Mesh` in
    metres, read with :func:`pose_core.data.shapes.load_trimesh` (needs ``trimesh``)."""
    from pose_core.data.render import Mesh
    from pose_core.data.shapes import load_trimesh

    mesh = load_trimesh(path, color)
    return Mesh(mesh.positions.astype(np.float64) / _MM, mesh.normals, mesh.colors, uvs=mesh.uvs,
                texture=mesh.texture, textured=mesh.textured, name=mesh.name)


# ----------------------------------------------------------------------------- scenes
def read_camera_file(path: str | os.PathLike[str]) -> BopCamera:
    """A dataset-level ``camera.json`` / ``camera_<type>.json`` (``cx, cy, fx, fy, width, height``, optional
    ``depth_scale``) as a :class:`BopCamera`."""
    p = Path(path)
    entry = _mapping(_load_json(p, "BOP camera file"), p, "{cx, cy, fx, fy, width, height}")
    w = "camera"
    fx, fy, cx, cy = (_number(_get(entry, k, p, w), p, w, k) for k in ("fx", "fy", "cx", "cy"))
    K = _intrinsics([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], p, w, "fx/fy")
    width, height = (_int(_get(entry, k, p, w), p, w, k) for k in ("width", "height"))
    scale = _number(entry["depth_scale"], p, w, "depth_scale") if "depth_scale" in entry else None
    return BopCamera(K, scale, width, height)


def _intrinsics(values: Any, path: Path, where: str, key: str) -> np.ndarray:
    K = _floats(values, 9, path, where, key).reshape(3, 3)  # row-major
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.array_equal(K[2], [0.0, 0.0, 1.0]) and K[1, 0] == 0):
        raise ValueError(f"{path}: {where} key {key!r} is not a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] "
                         f"with fx, fy > 0, got {K.tolist()}")
    return K


def read_scene_camera(
    path: str | os.PathLike[str], width: int | None = None, height: int | None = None
) -> dict[int, BopCamera]:
    """Read ``scene_camera.json`` into ``{im_id: BopCamera}`` (``width``/``height``: the image size when known)."""
    p = Path(path)
    data = _mapping(_load_json(p, "BOP scene camera file"), p, "{im_id: camera}")
    out: dict[int, BopCamera] = {}
    for key, entry in data.items():
        im_id = _id(key, p, "image key")
        where = f"image {key!r}"
        K = _intrinsics(_get(entry, "cam_K", p, where), p, where, "cam_K")
        scale = None
        if "depth_scale" in entry:
            scale = _number(entry["depth_scale"], p, where, "depth_scale")
            if scale <= 0:
                raise ValueError(f"{p}: {where} key 'depth_scale' must be positive, got {scale!r}")
        R_w2c = _rotation(entry["cam_R_w2c"], p, where, "cam_R_w2c") if "cam_R_w2c" in entry else None
        t_w2c = _floats(entry["cam_t_w2c"], 3, p, where, "cam_t_w2c") / _MM if "cam_t_w2c" in entry else None
        elev = _number(entry["elev"], p, where, "elev") if "elev" in entry else None
        mode = _int(entry["mode"], p, where, "mode") if "mode" in entry else None
        out[im_id] = BopCamera(K, scale, width, height, R_w2c, t_w2c, elev, mode)
    return out


def read_scene_gt(path: str | os.PathLike[str]) -> dict[int, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Read ``scene_gt.json`` into ``{im_id: [(obj_id, R (3, 3), t (3,) m), ...]}`` in file order (``gt_index``)."""
    p = Path(path)
    data = _mapping(_load_json(p, "BOP scene ground-truth file"), p, "{im_id: [instance, ...]}")
    out: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for key, entries in data.items():
        im_id = _id(key, p, "image key")
        if not isinstance(entries, list):
            raise ValueError(f"{p}: image {key!r} must hold a list of instances, got {type(entries).__name__}")
        rows = []
        for i, entry in enumerate(entries):
            where = f"image {key!r} instance {i}"
            obj_id = _id(_get(entry, "obj_id", p, where), p, f"{where} key 'obj_id'")
            R = _rotation(_get(entry, "cam_R_m2c", p, where), p, where, "cam_R_m2c")
            t = _floats(_get(entry, "cam_t_m2c", p, where), 3, p, where, "cam_t_m2c") / _MM
            rows.append((obj_id, R, t))
        out[im_id] = rows
    return out


def read_scene_gt_info(path: str | os.PathLike[str]) -> dict[int, list[dict[str, Any]]]:
    """Read ``scene_gt_info.json`` into ``{im_id: [{bbox_obj, bbox_visib, visib_fract, px_count_*}, ...]}``
    (boxes as int tuples; keys that are absent are filled with the "unknown" values of :class:`BopInstance`)."""
    p = Path(path)
    data = _mapping(_load_json(p, "BOP scene ground-truth info file"), p, "{im_id: [info, ...]}")
    out: dict[int, list[dict[str, Any]]] = {}
    for key, entries in data.items():
        im_id = _id(key, p, "image key")
        if not isinstance(entries, list):
            raise ValueError(f"{p}: image {key!r} must hold a list of instance infos, got {type(entries).__name__}")
        rows = []
        for i, entry in enumerate(entries):
            where = f"image {key!r} instance {i}"
            fract = _number(_get(entry, "visib_fract", p, where), p, where, "visib_fract")
            if not 0.0 <= fract <= 1.0:
                raise ValueError(f"{p}: {where} key 'visib_fract' must lie in [0, 1], got {fract!r}")
            row: dict[str, Any] = {"visib_fract": fract}
            for k in ("bbox_obj", "bbox_visib"):
                row[k] = _box(entry[k], p, where, k) if k in entry else _UNKNOWN_BOX
            for k in ("px_count_all", "px_count_valid", "px_count_visib"):
                row[k] = _int(entry[k], p, where, k) if k in entry else -1
            rows.append(row)
        out[im_id] = rows
    return out


def read_targets(path: str | os.PathLike[str]) -> list[BopTarget]:
    """Read a test-targets file (``test_targets_bop19.json``: ``[{scene_id, im_id, obj_id, inst_count}]``, or
    the BOP'24 form without ``obj_id``/``inst_count``)."""
    p = Path(path)
    data = _load_json(p, "BOP test targets file")
    if not isinstance(data, list):
        raise ValueError(f"{p}: expected a JSON list of targets, got {type(data).__name__}")
    out = []
    for i, entry in enumerate(data):
        where = f"target {i}"
        scene_id = _id(_get(entry, "scene_id", p, where), p, f"{where} key 'scene_id'")
        im_id = _id(_get(entry, "im_id", p, where), p, f"{where} key 'im_id'")
        obj_id = _id(entry["obj_id"], p, f"{where} key 'obj_id'") if "obj_id" in entry else None
        count = _id(entry["inst_count"], p, f"{where} key 'inst_count'") if "inst_count" in entry else None
        out.append(BopTarget(scene_id, im_id, obj_id, count))
    return out


def _find_file(folder: Path, stem: str, exts: Iterable[str]) -> Path | None:
    for ext in exts:
        f = folder / f"{stem}{ext}"
        if f.is_file():
            return f
    return None


def _read_plain(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} {path} is not a decodable image: {e!r}") from e


# ----------------------------------------------------------------------------- dataset
class BopDataset(Dataset):
    """The ground-truth object instances of one BOP split folder (one item per instance).

    Args:
        root_or_split_dir: a split folder such as ``root/tless/test_primesense`` (holding the scene folders),
            or ``root`` when ``dataset`` and ``split`` are given (the folder is then ``root/dataset/split``).
        obj_ids: keep only these objects (default: all).
        min_visib_fract: keep only instances with ``visib_fract >= min_visib_fract`` (needs
            ``scene_gt_info.json`` when positive).
        targets_file: keep only the instances a test-targets file names (its ``(scene_id, im_id, obj_id)``;
            all objects of an image in the BOP'24 form). A relative path that does not exist is looked for in
            the dataset folder, so ``"test_targets_bop19.json"`` works.
        dataset, split: folder names under ``root`` (e.g. ``"tless"``, ``"test_primesense"``).
        scene_ids: keep only these scenes (default: all scene folders with a ``scene_gt.json``).
        models_dir: the folder with ``models_info.json`` and the ``.ply`` models; default: the first of
            :data:`BOP_MODELS_DIRS` in the dataset folder that has a ``models_info.json`` (none: no object info).
        load_masks: whether items carry ``mask`` / ``mask_visib`` when those files exist.
        continuous_steps: turns per continuous symmetry in :attr:`models_info`.

    Attributes: ``split_dir``, ``dataset_dir``, ``models_dir`` (or ``None``), ``models_info``
    ``{obj_id: ObjectInfo}`` (empty without models), ``instances`` (list of :class:`BopInstance`, sorted by
    scene, image, gt_index), ``cameras`` ``{(scene_id, im_id): BopCamera}`` (sizes filled in by :meth:`camera`),
    ``targets`` (or ``None``), ``nominal_camera`` (the dataset's ``camera*.json``, or ``None``).

    Items are dicts: ``rgb`` ``(H, W, 3)`` uint8 (grey replicated), ``depth`` ``(H, W)`` float32 metres (0: no
    measurement) or ``None`` without a depth image, ``K`` ``(3, 3)`` float64, ``rotation`` ``(3, 3)`` float64
    object -> camera, ``translation`` ``(3,)`` float64 m, ``bbox_obj`` and ``bbox_visib`` ``(4,)`` int64
    ``(x, y, w, h)``, ``visib_fract`` (float), ``obj_id``, ``scene_id``, ``im_id``, ``gt_index`` (int), and
    ``mask_visib`` / ``mask`` ``(H, W)`` bool when those files exist.
    """

    def __init__(
        self,
        root_or_split_dir: str | os.PathLike[str],
        obj_ids: Iterable[int] | None = None,
        min_visib_fract: float = 0.0,
        targets_file: str | os.PathLike[str] | None = None,
        *,
        dataset: str | None = None,
        split: str | None = None,
        scene_ids: Iterable[int] | None = None,
        models_dir: str | os.PathLike[str] | None = None,
        load_masks: bool = True,
        continuous_steps: int = BOP_CONTINUOUS_STEPS,
    ) -> None:
        base = Path(root_or_split_dir)
        if (dataset is None) != (split is None):
            raise ValueError("give both dataset and split (root_or_split_dir is then the BOP root), or neither "
                             f"(root_or_split_dir is the split folder); got dataset={dataset!r}, split={split!r}")
        if dataset is not None and split is not None:
            base = base / dataset / split
        self.split_dir = require_dir(base, "BOP split folder")
        self.dataset_dir = self.split_dir.parent
        if not (isinstance(min_visib_fract, (int, float)) and math.isfinite(min_visib_fract)):
            raise ValueError(f"min_visib_fract must be a finite number, got {min_visib_fract!r}")
        self.min_visib_fract = float(min_visib_fract)
        self.load_masks = load_masks

        # models
        if models_dir is not None:
            self.models_dir: Path | None = require_dir(models_dir, "BOP models folder")
            info_path = require_file(self.models_dir / "models_info.json", "BOP models info")
        else:
            self.models_dir = find_models_dir(self.dataset_dir)
            info_path = None if self.models_dir is None else self.models_dir / "models_info.json"
        self.models_info: dict[int, ObjectInfo] = {} if info_path is None else read_models_info(
            info_path, continuous_steps)

        # the sensor's nominal camera: camera_<type>.json for split "<name>_<type>", else camera.json. Only
        # informative: its image size need not be the split's (T-LESS train_primesense images are 400x400 crops,
        # camera_primesense.json says 720x540), so nothing is checked against it.
        self.nominal_camera: BopCamera | None = None
        names = ([f"camera_{self.split_dir.name.split('_', 1)[1]}.json"] if "_" in self.split_dir.name else [])
        for name in [*names, "camera.json"]:
            if (self.dataset_dir / name).is_file():
                self.nominal_camera = read_camera_file(self.dataset_dir / name)
                break

        # scenes
        wanted_scenes = None if scene_ids is None else {int(s) for s in scene_ids}
        scene_dirs = sorted(
            (int(d.name), d) for d in self.split_dir.iterdir()
            if d.is_dir() and d.name.isdigit() and (d / "scene_gt.json").is_file()
            and (wanted_scenes is None or int(d.name) in wanted_scenes)
        )
        if not scene_dirs:
            raise FileNotFoundError(f"BOP split folder {self.split_dir} has no scene folder <scene_id>/scene_gt.json"
                                    + ("" if wanted_scenes is None else f" for scenes {sorted(wanted_scenes)}"))
        self._scene_dirs: dict[int, Path] = dict(scene_dirs)
        self.cameras: dict[tuple[int, int], BopCamera] = {}
        all_instances: list[BopInstance] = []
        for scene_id, d in scene_dirs:
            all_instances.extend(self._read_scene(scene_id, d))

        # targets
        self.targets: list[BopTarget] | None = None
        selected: dict[tuple[int, int], set[int] | None] | None = None
        if targets_file is not None:
            tpath = Path(targets_file)
            if not tpath.is_absolute() and not tpath.exists() and (self.dataset_dir / tpath).exists():
                tpath = self.dataset_dir / tpath
            self.targets = read_targets(tpath)
            selected = self._select_targets(tpath, self.targets, all_instances)

        wanted_objs = None if obj_ids is None else {int(o) for o in obj_ids}
        if self.min_visib_fract > 0:
            unknown = next((i for i in all_instances if math.isnan(i.visib_fract)), None)
            if unknown is not None:
                raise ValueError(
                    f"min_visib_fract={self.min_visib_fract} needs visib_fract, but scene {unknown.scene_id} has no "
                    f"{self._scene_dirs[unknown.scene_id] / 'scene_gt_info.json'}")
        self.instances: list[BopInstance] = [
            i for i in all_instances
            if (wanted_objs is None or i.obj_id in wanted_objs)
            and (self.min_visib_fract <= 0 or i.visib_fract >= self.min_visib_fract)
            and (selected is None or _target_wants(selected, i))
        ]
        self._image_loc: dict[int, tuple[str, str]] = {}

    def _read_scene(self, scene_id: int, d: Path) -> list[BopInstance]:
        gt_path = d / "scene_gt.json"
        cam_path = require_file(d / "scene_camera.json", "BOP scene camera file")
        gt = read_scene_gt(gt_path)
        cams = read_scene_camera(cam_path)
        info_path = d / "scene_gt_info.json"
        info = read_scene_gt_info(info_path) if info_path.is_file() else None
        out = []
        for im_id in sorted(gt):
            if im_id not in cams:
                raise ValueError(f"{cam_path}: lacks image key '{im_id}' that {gt_path} annotates")
            self.cameras[(scene_id, im_id)] = cams[im_id]
            rows = gt[im_id]
            infos: list[dict[str, Any]] | None = None
            if info is not None:
                if im_id not in info:
                    raise ValueError(f"{info_path}: lacks image key '{im_id}' that {gt_path} annotates")
                infos = info[im_id]
                if len(infos) != len(rows):
                    raise ValueError(f"{info_path}: image key '{im_id}' has {len(infos)} instance infos but "
                                     f"{gt_path} has {len(rows)} instances")
            for k, (obj_id, R, t) in enumerate(rows):
                if self.models_info and obj_id not in self.models_info:
                    raise ValueError(f"{gt_path}: image key '{im_id}' instance {k} has obj_id {obj_id}, which "
                                     f"{self.models_dir / 'models_info.json'} does not list")
                extra = {} if infos is None else infos[k]
                out.append(BopInstance(scene_id, im_id, k, obj_id, R, t, **extra))
        return out

    @staticmethod
    def _select_targets(
        path: Path, targets: list[BopTarget], instances: list[BopInstance]
    ) -> dict[tuple[int, int], set[int] | None]:
        counts: dict[tuple[int, int, int], int] = {}
        images: set[tuple[int, int]] = set()
        for i in instances:
            images.add((i.scene_id, i.im_id))
            counts[(i.scene_id, i.im_id, i.obj_id)] = counts.get((i.scene_id, i.im_id, i.obj_id), 0) + 1
        selected: dict[tuple[int, int], set[int] | None] = {}
        for n, tg in enumerate(targets):
            key = (tg.scene_id, tg.im_id)
            if key not in images:
                raise ValueError(f"{path}: target {n} names scene {tg.scene_id} image {tg.im_id}, which has no "
                                 "ground truth in this split (wrong targets file or split?)")
            if tg.obj_id is None:
                selected[key] = None
                continue
            have = counts.get((tg.scene_id, tg.im_id, tg.obj_id), 0)
            if have == 0 or (tg.inst_count is not None and tg.inst_count > have):
                raise ValueError(f"{path}: target {n} asks for {tg.inst_count} instance(s) of obj_id {tg.obj_id} in "
                                 f"scene {tg.scene_id} image {tg.im_id}, whose ground truth has {have}")
            if key not in selected:
                selected[key] = set()
            objs = selected[key]
            if objs is not None:
                objs.add(tg.obj_id)
        return selected

    # ------------------------------------------------------------------ files
    def scene_dir(self, scene_id: int) -> Path:
        """The folder of scene ``scene_id``."""
        return self._scene_dirs[scene_id]

    def camera(self, scene_id: int, im_id: int) -> BopCamera:
        """The camera of image ``im_id`` of scene ``scene_id``, with its image size (read from the image header)."""
        cam = self.cameras[(scene_id, im_id)]
        if cam.width is None:
            path = self.image_path(scene_id, im_id)
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise ValueError(f"BOP image {path} is not a decodable image: {e!r}") from e
            cam = dataclasses.replace(cam, width=width, height=height)
            self.cameras[(scene_id, im_id)] = cam
        return cam

    def image_path(self, scene_id: int, im_id: int) -> Path:
        """The colour (``rgb/``) or grey (``gray/``) image of an image id (.png, .jpg, .tif)."""
        d = self._scene_dirs[scene_id]
        stem = f"{im_id:06d}"
        loc = self._image_loc.get(scene_id)
        if loc is not None and (d / loc[0] / f"{stem}{loc[1]}").is_file():
            return d / loc[0] / f"{stem}{loc[1]}"
        for sub in _IMAGE_DIRS:
            f = _find_file(d / sub, stem, _IMAGE_EXTS)
            if f is not None:
                self._image_loc[scene_id] = (sub, f.suffix)
                return f
        raise FileNotFoundError(f"BOP image not found: expected {d}/rgb/{stem}.png (or .jpg, .tif; or under gray/)")

    def read_depth(self, scene_id: int, im_id: int) -> np.ndarray | None:
        """Depth ``(H, W)`` float32 metres (0: no measurement) of an image, or ``None`` without a depth file."""
        f = _find_file(self._scene_dirs[scene_id] / "depth", f"{im_id:06d}", _DEPTH_EXTS)
        if f is None:
            return None
        raw = _read_plain(f, "BOP depth image")
        if raw.ndim != 2 or not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
            raise ValueError(f"BOP depth image {f} must be a one-channel image, got {raw.dtype} {raw.shape}")
        scale = self.cameras[(scene_id, im_id)].depth_scale
        if scale is None:
            raise ValueError(f"{self._scene_dirs[scene_id] / 'scene_camera.json'}: image key '{im_id}' lacks key "
                             f"'depth_scale', needed for {f}")
        return (raw.astype(np.float64) * scale / _MM).astype(np.float32)

    def _read_mask(self, folder: str, inst: BopInstance) -> np.ndarray | None:
        f = self._scene_dirs[inst.scene_id] / folder / f"{inst.im_id:06d}_{inst.gt_index:06d}.png"
        if not f.is_file():
            return None
        m = _read_plain(f, f"BOP {folder}")
        if m.ndim == 3:
            m = m[..., 0]
        return np.ascontiguousarray(m > 0)

    def load_model(self, obj_id: int) -> Mesh:
        """The mesh of object ``obj_id`` in metres (``models_dir/obj_{obj_id:06d}.ply``; needs trimesh)."""
        if self.models_dir is None:
            raise FileNotFoundError(f"no BOP models folder with models_info.json in {self.dataset_dir}")
        return load_bop_model(self.models_dir / f"obj_{int(obj_id):06d}.ply")

    def symmetries(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(R (K, 3, 3), t (K, 3) m)`` of object ``obj_id`` (the identity only without models info)."""
        info = self.models_info.get(int(obj_id))
        if info is None:
            return np.eye(3)[None], np.zeros((1, 3))
        return info.symmetry_rotations, info.symmetry_translations

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} instances")
        inst = self.instances[index % len(self)]
        cam = self.cameras[(inst.scene_id, inst.im_id)]
        img_path = self.image_path(inst.scene_id, inst.im_id)
        rgb = read_image_rgb(img_path, "BOP image")
        if not rgb.flags.writeable:
            rgb = rgb.copy()
        h, w = rgb.shape[:2]
        item: dict[str, Any] = {
            "rgb": rgb,
            "depth": self.read_depth(inst.scene_id, inst.im_id),
            "K": cam.K.copy(),
            "rotation": inst.R.copy(),
            "translation": inst.t.copy(),
            "bbox_obj": np.array(inst.bbox_obj, dtype=np.int64),
            "bbox_visib": np.array(inst.bbox_visib, dtype=np.int64),
            "visib_fract": inst.visib_fract,
            "obj_id": inst.obj_id,
            "scene_id": inst.scene_id,
            "im_id": inst.im_id,
            "gt_index": inst.gt_index,
        }
        extra: Mapping[str, np.ndarray | None] = {}
        if self.load_masks:
            extra = {"mask_visib": self._read_mask("mask_visib", inst), "mask": self._read_mask("mask", inst)}
        for k, v in extra.items():
            if v is not None:
                item[k] = v
        for k in ("depth", "mask_visib", "mask"):
            v = item.get(k)
            if v is not None and v.shape != (h, w):
                raise ValueError(f"BOP {k} of scene {inst.scene_id} image {inst.im_id} is {v.shape[1]}x{v.shape[0]} "
                                 f"px, but its image {img_path} is {w}x{h}")
        return item


def _target_wants(selected: dict[tuple[int, int], set[int] | None], inst: BopInstance) -> bool:
    key = (inst.scene_id, inst.im_id)
    if key not in selected:
        return False
    objs = selected[key]
    return objs is None or inst.obj_id in objs
