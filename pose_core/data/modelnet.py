"""ModelNet10-SO(3) (Liao et al., CVPR 2019) as used by Image2Sphere.

Two on-disk layouts are read, both under one ``root`` folder (the reference's ``dataset_path``):

* ``layout="npz"`` -- the Image2Sphere reference's converted files::

      root/modelnet10/modelnet10_train.npz          split "train"          (from train_100V)
      root/modelnet10/modelnet10_limited_train.npz  split "train_limited"  (from train_20V)
      root/modelnet10/modelnet10_test.npz           split "test"           (from test_20V)

  each with ``imgs`` ``(L, 224, 224, 1)`` uint8 grey, ``rots`` ``(L, 3, 3)`` float32 rotation
  matrices and ``cat_ids`` ``(L,)`` integer indices into :data:`MODELNET10_CATEGORIES`.

* ``layout="lmdb"`` -- the original release those files are converted from::

      root/ModelNet10-SO3/{train_100V,train_20V,test_20V}.Rawjpg.lmdb/
          data.mdb, lock.mdb     LMDB: key = view id (utf-8), value = the encoded JPEG bytes
          viewID2quat.pkl        Python-2 pickle: dict view id -> quaternion (w, x, y, z)
          imgId2dbId.pkl         optional: dict view id -> LMDB key, when keys were renamed

  A view id reads ``"<category>_<cad number>.v<view>"``, e.g. ``"night_stand_0001.v003"``; the
  category is everything before the last ``_``. Items are in the pickle's order, which is the
  order the reference wrote its ``.npz`` files in, so item ``i`` is the same view in both layouts.

**Rotation convention.** The dataset was made by rotating each CAD model by a Haar-uniform rotation
in front of a fixed camera and storing that rotation; the reference uses the matrix of the stored
quaternion as the label without transposing it. That matrix maps model (object) coordinates to the
rotated model's coordinates in the fixed scene, i.e. it is an object -> camera rotation as in
:mod:`pose_core.so3` (``x_camera = R @ x_object``), so it is used as it is, not transposed. The
renderer's fixed camera mounting is not published: the labels are object -> camera up to one
constant rotation on the left, which no metric on this data set (geodesic errors are invariant to
it) can see.

Items are dicts: ``image`` ``(3, H, W)`` float32 RGB in ``[0, 1]`` (grey replicated to 3
channels), ``rotation`` ``(3, 3)`` float32, ``equivalents`` ``(1, 3, 3)`` float32 (the identity:
ModelNet10-SO(3) is evaluated without symmetries), ``shape`` (category name) and ``category``
(int index into :data:`MODELNET10_CATEGORIES`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core import preprocess, so3
from pose_core.data._io import (
    decode_image_rgb,
    load_npz_arrays,
    load_pickle,
    require_dir,
    require_file,
)

__all__ = [
    "MODELNET10_CATEGORIES",
    "MODELNET10_LMDB_SPLITS",
    "MODELNET10_NPZ_FILES",
    "ModelNet10SO3",
    "modelnet10_category_of_view",
    "wxyz_to_xyzw",
]

#: Category names in the reference's order; ``category`` / ``cat_ids`` index into this tuple.
MODELNET10_CATEGORIES: tuple[str, ...] = (
    "bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet",
)  # fmt: skip

#: Split name -> file name under ``root/modelnet10/`` (the reference's conversion output).
MODELNET10_NPZ_FILES: dict[str, str] = {
    "train": "modelnet10_train.npz",
    "train_limited": "modelnet10_limited_train.npz",
    "test": "modelnet10_test.npz",
}

#: Split name -> name of the original release's LMDB, ``root/ModelNet10-SO3/<name>.Rawjpg.lmdb``.
MODELNET10_LMDB_SPLITS: dict[str, str] = {
    "train": "train_100V",
    "train_limited": "train_20V",
    "test": "test_20V",
}

_NPZ_KEYS = ("imgs", "rots", "cat_ids")
_ROT_TOL = 1e-3  # how far from orthonormal, det +1, a stored rotation may be (they are float32)


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Reorder quaternions ``(..., 4)`` from scalar-first ``(w, x, y, z)`` to ROS ``(x, y, z, w)``."""
    q = np.asarray(q)
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape (..., 4), got {q.shape}")
    return np.concatenate((q[..., 1:], q[..., :1]), axis=-1)


def modelnet10_category_of_view(view_id: str) -> int:
    """Category index of a view id such as ``"night_stand_0001.v003"`` (the part before the last ``_``)."""
    name = view_id.rsplit("_", 1)[0] if "_" in view_id else ""
    try:
        return MODELNET10_CATEGORIES.index(name)
    except ValueError:
        raise ValueError(
            f"view id {view_id!r} does not start with a ModelNet10 category followed by '_': "
            f"expected one of {MODELNET10_CATEGORIES}"
        ) from None


def _check_rotations(rots: np.ndarray, source: str) -> None:
    """ValueError naming ``source`` unless ``rots`` ``(L, 3, 3)`` are rotations (to ``_ROT_TOL``)."""
    r = rots.astype(np.float64)
    err = np.abs(r @ np.swapaxes(r, -1, -2) - np.eye(3)).max(axis=(-1, -2)) if len(r) else np.zeros(0)
    det = np.linalg.det(r) if len(r) else np.zeros(0)
    bad = np.flatnonzero((err > _ROT_TOL) | (np.abs(det - 1) > _ROT_TOL) | ~np.isfinite(err))
    if bad.size:
        raise ValueError(
            f"{source}: {bad.size} of {len(r)} stored matrices are not rotations "
            f"(first at index {int(bad[0])}: |R R^T - I|max={err[bad[0]]:.3g}, det={det[bad[0]]:.4g})"
        )


class ModelNet10SO3(Dataset):
    """ModelNet10-SO(3) views; see the module docstring for the layouts and the item dict.

    Args:
        root: the folder holding ``modelnet10/`` (``layout="npz"``) or ``ModelNet10-SO3/``
            (``layout="lmdb"``).
        split: ``"train"`` (100 views per CAD model), ``"train_limited"`` (20 views) or ``"test"``.
        layout: ``"npz"`` (the reference's converted files) or ``"lmdb"`` (the original release).
        npz_cache_dir: ``layout="npz"`` only. ``None`` (default) loads all images into memory as the
            reference does (20 GB for ``"train"``). A folder makes the images be copied, once,
            uncompressed to ``<npz_cache_dir>/<npz name>.imgs.npy`` and memory-mapped from there.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "train_limited", "test"] = "train",
        layout: Literal["npz", "lmdb"] = "npz",
        npz_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if split not in MODELNET10_NPZ_FILES:
            raise ValueError(f"split must be one of {tuple(MODELNET10_NPZ_FILES)}, got {split!r}")
        if layout not in ("npz", "lmdb"):
            raise ValueError(f"layout must be 'npz' or 'lmdb', got {layout!r}")
        self.root = require_dir(root, "ModelNet10-SO(3) root folder")
        self.split = split
        self.layout = layout
        self.categories = MODELNET10_CATEGORIES
        self._lmdb_env: Any = None
        self._lmdb_pid: int | None = None
        if layout == "npz":
            self._init_npz(npz_cache_dir)
        else:
            self._init_lmdb()

    # ------------------------------------------------------------------ npz layout
    def _init_npz(self, cache_dir: str | os.PathLike[str] | None) -> None:
        folder = require_dir(self.root / "modelnet10", "ModelNet10-SO(3) .npz folder")
        path = require_file(folder / MODELNET10_NPZ_FILES[self.split], f"ModelNet10-SO(3) {self.split} file")
        self.source = path
        if cache_dir is None:
            arrays = load_npz_arrays(path, _NPZ_KEYS, "ModelNet10-SO(3) file")
            imgs = arrays["imgs"]
        else:
            arrays = load_npz_arrays(path, _NPZ_KEYS[1:], "ModelNet10-SO(3) file")
            imgs = _memmap_npz_member(path, "imgs", Path(cache_dir))
        rots, cat_ids = arrays["rots"], arrays["cat_ids"]
        n = len(rots)
        if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[3] not in (1, 3)):
            raise ValueError(f"{path}: 'imgs' must be uint8 (L, H, W, 1|3) or (L, H, W), got {imgs.dtype} {imgs.shape}")
        if rots.shape != (n, 3, 3):
            raise ValueError(f"{path}: 'rots' must have shape (L, 3, 3), got {rots.shape}")
        if len(imgs) != n or cat_ids.shape != (n,) or not np.issubdtype(cat_ids.dtype, np.integer):
            raise ValueError(
                f"{path}: expected imgs (L, H, W, C), rots (L, 3, 3) and integer cat_ids (L,) with one L, "
                f"got {imgs.shape}, {rots.shape}, {cat_ids.dtype} {cat_ids.shape}"
            )
        if n and (cat_ids.min() < 0 or cat_ids.max() >= len(MODELNET10_CATEGORIES)):
            raise ValueError(f"{path}: 'cat_ids' must lie in [0, {len(MODELNET10_CATEGORIES)}), got "
                             f"[{cat_ids.min()}, {cat_ids.max()}]")
        _check_rotations(rots, str(path))
        self._imgs = imgs  # (L, H, W, C) or (L, H, W) uint8
        self._rots = torch.from_numpy(np.ascontiguousarray(rots, dtype=np.float32))  # (L, 3, 3)
        self._cat_ids = cat_ids.astype(np.int64)  # (L,)
        self._view_ids: list[str] | None = None

    # ----------------------------------------------------------------- lmdb layout
    def _init_lmdb(self) -> None:
        folder = require_dir(self.root / "ModelNet10-SO3", "ModelNet10-SO(3) LMDB folder")
        db = require_dir(folder / f"{MODELNET10_LMDB_SPLITS[self.split]}.Rawjpg.lmdb", "ModelNet10-SO(3) LMDB")
        require_file(db / "data.mdb", "LMDB data file")
        self.source = db
        quat_path = db / "viewID2quat.pkl"
        table = load_pickle(quat_path, "ModelNet10-SO(3) rotation table")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{quat_path}: expected a non-empty dict view id -> quaternion (w, x, y, z), "
                             f"got {type(table).__name__}")
        view_ids = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in table]
        try:
            wxyz = np.array([np.asarray(q, dtype=np.float64).reshape(4) for q in table.values()])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{quat_path}: every value must be a quaternion of 4 numbers (w, x, y, z): {e}") from e
        norms = np.linalg.norm(wxyz, axis=1)
        if not np.all(np.isfinite(norms)) or np.any(np.abs(norms - 1) > 1e-2):
            raise ValueError(f"{quat_path}: quaternions must have unit norm, found norms in "
                             f"[{norms.min():.4g}, {norms.max():.4g}]")
        try:
            cat_ids = np.array([modelnet10_category_of_view(v) for v in view_ids], dtype=np.int64)
        except ValueError as e:
            raise ValueError(f"{quat_path}: {e}") from e
        q_xyzw = torch.from_numpy(wxyz_to_xyzw(wxyz))
        self._rots = so3.quat_to_matrix(q_xyzw).to(torch.float32)  # (L, 3, 3)
        self._cat_ids = cat_ids
        self._view_ids = view_ids
        renamed = db / "imgId2dbId.pkl"
        if renamed.exists():
            key_table = load_pickle(renamed, "ModelNet10-SO(3) LMDB key table")
            if not isinstance(key_table, dict):
                raise ValueError(f"{renamed}: expected a dict view id -> LMDB key, got {type(key_table).__name__}")
            try:
                keys = [_as_key_bytes(key_table[v]) for v in view_ids]
            except KeyError as e:
                raise ValueError(f"{renamed}: no LMDB key for view id {e.args[0]!r} of {quat_path}") from None
        else:
            keys = [v.encode("utf-8") for v in view_ids]
        self._lmdb_keys = keys
        self._check_lmdb_keys()

    def _env(self) -> Any:
        """The LMDB environment, opened lazily once per process (environments must not cross fork)."""
        if self._lmdb_env is None or self._lmdb_pid != os.getpid():
            import lmdb

            try:
                self._lmdb_env = lmdb.open(
                    str(self.source), readonly=True, lock=False, readahead=False, meminit=False, max_readers=512
                )
            except lmdb.Error as e:
                raise ValueError(f"{self.source} is not a readable LMDB database: {e!r}") from e
            self._lmdb_pid = os.getpid()
        return self._lmdb_env

    def _check_lmdb_keys(self) -> None:
        """ValueError naming the LMDB unless every view of the rotation table has an image in it."""
        import lmdb

        try:
            with self._env().begin(buffers=False) as txn:
                stored = set(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as e:
            raise ValueError(f"{self.source} is not a readable LMDB database: {e!r}") from e
        missing = [k for k in self._lmdb_keys if k not in stored]
        if missing:
            raise ValueError(
                f"{self.source}: {len(missing)} of {len(self._lmdb_keys)} views of viewID2quat.pkl have no "
                f"image in the LMDB, e.g. {[m.decode('utf-8', 'replace') for m in missing[:3]]}"
            )

    def _read_lmdb_image(self, index: int) -> np.ndarray:
        import lmdb

        key = self._lmdb_keys[index]
        try:
            with self._env().begin() as txn:
                raw = txn.get(key)
        except lmdb.Error as e:
            raise ValueError(f"{self.source}: cannot read key {key!r}: {e!r}") from e
        if raw is None:
            raise ValueError(f"{self.source}: no image under key {key!r}")
        return decode_image_rgb(raw, f"{self.source} entry {key.decode('utf-8', 'replace')!r}")

    # --------------------------------------------------------------------- Dataset
    def __len__(self) -> int:
        return len(self._rots)

    def view_id(self, index: int) -> str | None:
        """The original view id of item ``index`` (``layout="lmdb"`` only; ``None`` for npz)."""
        return None if self._view_ids is None else self._view_ids[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        if self.layout == "npz":
            img = np.asarray(self._imgs[index])  # (H, W, C) or (H, W) uint8
            if img.ndim == 2:
                img = img[:, :, None]
        else:
            img = self._read_lmdb_image(index)  # (H, W, 3) uint8
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)  # grey renders: the same value in R, G and B
        image = preprocess.to_tensor(np.ascontiguousarray(img)).contiguous()  # (3, H, W)
        cat = int(self._cat_ids[index])
        return {
            "image": image,
            "rotation": self._rots[index].clone(),
            "equivalents": torch.eye(3, dtype=torch.float32)[None],  # (1, 3, 3)
            "shape": MODELNET10_CATEGORIES[cat],
            "category": cat,
        }


def _as_key_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, np.bytes_):
        return bytes(key)
    return str(key).encode("utf-8")


def _memmap_npz_member(npz_path: Path, name: str, cache_dir: Path) -> np.ndarray:
    """Memory-map member ``name`` of ``npz_path``, first copying it uncompressed into ``cache_dir``.

    A member of an ``.npz`` is a complete ``.npy`` file, so it is copied as bytes, never held in memory.
    The copy is redone when the archive is newer than it.
    """
    import zipfile
    import zlib

    cache_dir.mkdir(parents=True, exist_ok=True)
    dst = cache_dir / f"{npz_path.name}.{name}.npy"
    if not dst.exists() or dst.stat().st_mtime < npz_path.stat().st_mtime:
        tmp = dst.with_suffix(f".tmp{os.getpid()}")
        try:
            with zipfile.ZipFile(npz_path) as zf, zf.open(f"{name}.npy") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 24)
            os.replace(tmp, dst)
        except (zipfile.BadZipFile, KeyError, EOFError, zlib.error, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"ModelNet10-SO(3) file {npz_path}: cannot extract '{name}.npy': {e!r}") from e
    try:
        return np.load(dst, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise ValueError(f"cached array {dst} (from {npz_path}) is not a readable .npy: {e!r}") from e
