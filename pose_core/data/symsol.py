"""SYMSOL-like data: the on-disk layout, a writer, a reader and a ``torch`` dataset.

On-disk layout (that of the Image2Sphere SYMSOL loader)::

    {root}/{split}/images/{shape}_{idx:05d}.png      224x224 RGB (or the size written)
    {root}/{split}/rotations.npz                      one entry per shape

``rotations.npz`` is a plain ``np.savez`` archive (no pickled objects). For each shape, entry
``{shape}`` is float32 ``(N, K, 3, 3)``: row ``i`` holds the ``K`` equivalent rotations of image
``i`` (see :mod:`pose_core.data.shapes`), row ``[i, 0]`` being the rendering rotation. Where ``K``
varies from image to image (the SYMSOL II shapes), ``{shape}`` is ``(N, 1, 3, 3)``, the rendering
rotation only, as in the real SYMSOL II, and the full sets are stored ragged beside it:
``{shape}__equivalents`` ``(sum K_i, 3, 3)`` float32, concatenated in image order, and
``{shape}__counts`` ``(N,)`` int64, the ``K_i``. Readers that know only the regular layout still
work; :class:`SymsolSplit` reads both.

Data derived from ``(seed, shape, index)`` only: the rendering rotation of item ``index`` of
``shape`` is Haar-uniform (:func:`pose_core.so3.random_rotations`) under a generator seeded from
that triple (and so are its occluders, if any), so worker processes, shuffling and the other shapes
in a dataset change nothing.

CLI: ``python -m pose_core.data.symsol --out DIR --shapes cube,cone --size N --split train --seed S``.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core import preprocess, so3
from pose_core.data.render import Camera, Renderer, random_occluders
from pose_core.data.shapes import SHAPE_NAMES, SYMSOL_I, SYMSOL_II, get_shape

__all__ = [
    "ROTATIONS_FILE",
    "SymsolFileError",
    "SymsolSplit",
    "SymsolLikeDataset",
    "collate_symsol",
    "item_rotation",
    "read_png",
    "render_item",
    "write_split",
    "main",
]

ROTATIONS_FILE = "rotations.npz"
_EQ_SUFFIX, _COUNT_SUFFIX = "__equivalents", "__counts"


class SymsolFileError(ValueError):
    """A SYMSOL file exists but cannot be read or has the wrong content; ``filename`` names it."""

    def __init__(self, filename: Path | str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = str(filename)


def _parse_shapes(shapes: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(shapes, str):
        aliases = {"symsol1": SYMSOL_I, "symsol2": SYMSOL_II, "all": SHAPE_NAMES}
        shapes = aliases.get(shapes, tuple(s.strip() for s in shapes.split(",") if s.strip()))
    out = tuple(shapes)
    if not out:
        raise ValueError("no shapes given")
    bad = [s for s in out if s not in SHAPE_NAMES]
    if bad:
        raise ValueError(f"unknown shapes {bad}; expected names from {SHAPE_NAMES}")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate shapes in {out}")
    return out


def _seed_sequence(seed: int, shape: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(shape.encode()), int(index)])


def item_rotation(seed: int, shape: str, index: int) -> np.ndarray:
    """The rendering rotation ``(3, 3)`` float64 of item ``index`` of ``shape`` under ``seed``."""
    state = int(_seed_sequence(seed, shape, index).generate_state(1, np.uint64)[0]) >> 1
    g = torch.Generator().manual_seed(state)
    return so3.random_rotations(1, g, dtype=torch.float64)[0].numpy()


def render_item(
    renderer: Renderer, shape: str, index: int, seed: int = 0, occluders: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``(H, W, 3)`` uint8, rotation ``(3, 3)`` and equivalents ``(K, 3, 3)`` (float64) of one item.

    ``occluders``: the largest number of random occluders (0: none)."""
    R = item_rotation(seed, shape, index)
    s = get_shape(shape)
    occ = []
    if occluders:
        rng = np.random.default_rng(_seed_sequence(seed, shape, index).spawn(1)[0])
        occ = random_occluders(rng, renderer.camera, max_count=occluders)
    img = renderer.render(s.mesh, R, occluders=occ)
    return img, R, s.equivalent_rotations(R, distance=renderer.camera.distance)


def write_split(
    root: str | Path,
    split: str,
    shapes: str | Sequence[str],
    size: int,
    seed: int = 0,
    image_size: int = 224,
    occluders: int = 0,
    renderer: Renderer | None = None,
    verbose: bool = False,
) -> Path:
    """Render ``size`` images per shape into ``{root}/{split}`` (layout in the module docstring).

    Returns the split directory. Items equal those of ``SymsolLikeDataset(shapes, size,
    image_size, seed, occluders=occluders)``.
    """
    names = _parse_shapes(shapes)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    renderer = renderer or Renderer(Camera(image_size, image_size))
    out = Path(root) / split
    (out / "images").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    arrays: dict[str, np.ndarray] = {}
    for name in names:
        eqs = []
        for i in range(size):
            img, _, eq = render_item(renderer, name, i, seed, occluders)
            Image.fromarray(img).save(out / "images" / f"{name}_{i:05d}.png", compress_level=1)
            eqs.append(eq.astype(np.float32))
            if verbose and (i + 1) % 100 == 0:
                print(f"{name}: {i + 1}/{size}", file=sys.stderr)
        counts = np.array([len(e) for e in eqs], dtype=np.int64)
        if (counts == counts[0]).all():
            arrays[name] = np.stack(eqs)
        else:
            arrays[name] = np.stack([e[:1] for e in eqs])
            arrays[name + _EQ_SUFFIX] = np.concatenate(eqs)
            arrays[name + _COUNT_SUFFIX] = counts
    tmp = out / (ROTATIONS_FILE + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out / ROTATIONS_FILE)
    return out


class SymsolSplit:
    """A split on disk (layout in the module docstring), rotations loaded eagerly and checked.

    Raises ``FileNotFoundError`` for a missing ``rotations.npz`` and :class:`SymsolFileError` naming
    the file for an unreadable or malformed one; images are read (and checked) on access.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.dir = Path(root) / split
        path = self.dir / ROTATIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"SYMSOL rotations file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise SymsolFileError(path, f"cannot read SYMSOL rotations ({type(e).__name__}: {e})") from e
        self._rot: dict[str, np.ndarray] = {}
        self._eq: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key, arr in raw.items():
            if key.endswith((_EQ_SUFFIX, _COUNT_SUFFIX)):
                continue
            if arr.ndim != 4 or arr.shape[2:] != (3, 3) or arr.shape[1] < 1:
                raise SymsolFileError(path, f"entry {key!r} must have shape (N, K, 3, 3), got {arr.shape}")
            self._rot[key] = arr
            if key + _EQ_SUFFIX in raw:
                eq, counts = raw[key + _EQ_SUFFIX], raw.get(key + _COUNT_SUFFIX)
                if counts is None or counts.shape != (len(arr),) or eq.shape != (int(counts.sum()), 3, 3):
                    raise SymsolFileError(path, f"ragged equivalents of {key!r} are inconsistent")
                self._eq[key] = (eq, np.concatenate(([0], np.cumsum(counts))))
        self.path = path

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(self._rot)

    def count(self, shape: str) -> int:
        """Number of images of ``shape``."""
        return len(self._arr(shape))

    def _arr(self, shape: str) -> np.ndarray:
        if shape not in self._rot:
            raise KeyError(f"shape {shape!r} not in {self.path} (has {self.shapes})")
        return self._rot[shape]

    def rotation(self, shape: str, index: int) -> np.ndarray:
        """Rendering rotation ``(3, 3)`` float32 of image ``index``."""
        return self._arr(shape)[index, 0]

    def equivalents(self, shape: str, index: int) -> np.ndarray:
        """Equivalent rotations ``(K, 3, 3)`` float32 of image ``index`` (element 0: the rendering one)."""
        arr = self._arr(shape)
        if shape in self._eq:
            if not -len(arr) <= index < len(arr):
                raise IndexError(f"index {index} out of range for {len(arr)} images of {shape!r}")
            eq, offsets = self._eq[shape]
            i = index % len(arr)
            return eq[offsets[i] : offsets[i + 1]]
        return arr[index]

    def image_path(self, shape: str, index: int) -> Path:
        return self.dir / "images" / f"{shape}_{index:05d}.png"

    def image(self, shape: str, index: int) -> np.ndarray:
        """Image ``(H, W, 3)`` uint8 of ``shape`` number ``index``."""
        return read_png(self.image_path(shape, index))


def read_png(path: Path) -> np.ndarray:
    """RGB image ``(H, W, 3)`` uint8; ``FileNotFoundError`` / :class:`SymsolFileError` name the file."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"SYMSOL image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise SymsolFileError(path, f"cannot read image ({type(e).__name__}: {e})") from e


class SymsolLikeDataset(Dataset):
    """SYMSOL-like items, rendered on the fly or read from ``{root}/{split}``.

    ``shapes``: names from :data:`~pose_core.data.shapes.SHAPE_NAMES`, a comma-separated string, or
    ``"symsol1"`` / ``"symsol2"`` / ``"all"``. ``size``: number of items *per shape*; items are laid
    out shape by shape, item ``j`` being number ``j % size`` of ``shapes[j // size]``, so
    ``len = size * len(shapes)``. With ``root``, ``size=None`` takes every stored image, and
    ``seed``, ``occluders`` and ``background`` are ignored (the files are the data).

    Rendering (``root=None``) uses one :class:`Renderer` per process, its GL context made on the
    first item, so the dataset works in ``DataLoader`` workers. ``occluders``: up to this many random
    occluding quads per image. Items are dicts: ``image`` ``(3, H, W)`` float32 RGB in [0, 1],
    ``rotation`` ``(3, 3)`` float32, ``equivalents`` ``(K, 3, 3)`` float32 (``K`` depends on the shape,
    and for SYMSOL II on the pose: batch with :func:`collate_symsol`), ``shape`` str and
    ``shape_index`` int (index into :data:`SHAPE_NAMES`, SYMSOL's ``label_shape``).
    """

    def __init__(
        self,
        shapes: str | Sequence[str] = SYMSOL_I,
        size: int | None = 1000,
        image_size: int = 224,
        seed: int = 0,
        root: str | Path | None = None,
        split: str = "train",
        occluders: int = 0,
        background: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        self.shapes = _parse_shapes(shapes)
        self.seed = int(seed)
        self.occluders = int(occluders)
        self.split_data: SymsolSplit | None = None
        if root is not None:
            self.split_data = SymsolSplit(root, split)
            missing = [s for s in self.shapes if s not in self.split_data.shapes]
            if missing:
                raise ValueError(f"shapes {missing} not in {self.split_data.path}")
            counts = [self.split_data.count(s) for s in self.shapes]
            if size is not None and min(counts) < size:
                held = dict(zip(self.shapes, counts))
                raise ValueError(f"size {size} per shape but {self.split_data.path} holds {held}")
            sizes = counts if size is None else [size] * len(self.shapes)
        else:
            if size is None or size < 1:
                raise ValueError(f"size must be >= 1 when rendering, got {size}")
            sizes = [size] * len(self.shapes)
        self._offsets = np.concatenate(([0], np.cumsum(sizes)))
        self.renderer = Renderer(Camera(image_size, image_size), background=tuple(background))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, item: int) -> tuple[str, int]:
        """``(shape, index within shape)`` of dataset item ``item``."""
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for a dataset of {len(self)}")
        k = int(np.searchsorted(self._offsets, item, side="right")) - 1
        return self.shapes[k], item - int(self._offsets[k])

    def __getitem__(self, item: int) -> dict[str, Any]:
        shape, index = self.locate(int(item))
        if self.split_data is not None:
            img = self.split_data.image(shape, index)
            R = self.split_data.rotation(shape, index)
            eq = self.split_data.equivalents(shape, index)
        else:
            img, R, eq = render_item(self.renderer, shape, index, self.seed, self.occluders)
        return {
            "image": preprocess.to_tensor(img),
            "rotation": torch.as_tensor(np.asarray(R), dtype=torch.float32),
            "equivalents": torch.as_tensor(np.asarray(eq), dtype=torch.float32),
            "shape": shape,
            "shape_index": SHAPE_NAMES.index(shape),
        }


def collate_symsol(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items of :class:`SymsolLikeDataset`: ``image`` ``(B, 3, H, W)``, ``rotation`` ``(B, 3, 3)``,
    ``shape_index`` ``(B,)`` int64 stacked; ``equivalents`` a list of ``(K_b, 3, 3)``; ``shape`` a list."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "rotation": torch.stack([b["rotation"] for b in batch]),
        "shape_index": torch.tensor([b["shape_index"] for b in batch], dtype=torch.int64),
        "equivalents": [b["equivalents"] for b in batch],
        "shape": [b["shape"] for b in batch],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Pre-render a SYMSOL-like split (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m pose_core.data.symsol", description="Render a SYMSOL-like split.")
    p.add_argument("--out", required=True, help="dataset root; writes OUT/SPLIT/images and OUT/SPLIT/rotations.npz")
    p.add_argument("--shapes", default="symsol1", help="comma-separated shape names, or symsol1 / symsol2 / all")
    p.add_argument("--size", type=int, required=True, help="images per shape")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--occluders", type=int, default=0, help="up to this many random occluders per image")
    args = p.parse_args(argv)
    out = write_split(args.out, args.split, args.shapes, args.size, seed=args.seed, image_size=args.image_size,
                      occluders=args.occluders, verbose=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
