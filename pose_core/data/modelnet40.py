"""ModelNet40 (Wu et al., CVPR 2015; Princeton) meshes in the public ``ModelNet40.zip`` layout::

    root/{class}/{train,test}/{class}_{id:04d}.off       e.g. root/chair/train/chair_0001.off

with the 40 class folders of :data:`MODELNET40_CLASSES`. Labels are indices into that sorted tuple
(also when only a subset of the classes is loaded). Meshes are returned in their raw file
coordinates: no centring, scaling or re-orientation is done here (ModelNet40 models have arbitrary
scales), so normalise downstream.

**OFF parsing** (:func:`read_off`). The header is ``OFF``; the known ModelNet40 defect where the
counts are glued to it (``OFF490 518 0`` on one line) is accepted, and so are counts on the header
line (``OFF 490 518 0``). The variants ``COFF``, ``NOFF``, ``CNOFF``, ``STOFF`` ... are accepted too:
their extra vertex columns (normals, colours, texture coordinates) follow ``x y z`` and are ignored.
Homogeneous / n-dimensional (``4OFF``, ``nOFF``) and binary OFF files are rejected with a
:class:`ValueError`. Blank lines and ``#`` comments (whole lines or line ends) are skipped. Then a
counts line ``V F [E]`` (E ignored), ``V`` vertex lines ``x y z [...]`` and ``F`` face lines
``n i1 ... in [colour ...]``; polygons with ``n > 3`` are triangulated as a fan
``(i1, ik, ik+1)``. A face with ``n < 3``, too few indices or an index outside ``0..V-1``, a
vertex line with fewer than 3 numbers, and a file with fewer vertex or face lines than announced
raise :class:`ValueError` naming the file (and the line, counted from 1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core.data._io import require_dir, require_file

__all__ = ["MODELNET40_CLASSES", "MODELNET40_SPLITS", "ModelNet40", "read_off"]

#: The 40 ModelNet40 classes, sorted; the position of a name is its label.
MODELNET40_CLASSES: tuple[str, ...] = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)
MODELNET40_SPLITS: tuple[str, ...] = ("train", "test")

_HEADER = re.compile(r"^(?P<kind>(?:ST)?C?N?OFF)(?P<rest>.*)$")


def _content_lines(text: str) -> list[tuple[int, list[str]]]:
    """``(line number from 1, tokens)`` of the lines that are not blank once ``#`` comments are cut."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if tokens:
            out.append((number, tokens))
    return out


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ASCII OFF mesh (see the module docstring for the accepted syntax).

    Returns ``vertices`` ``(V, 3)`` float64 and ``faces`` ``(T, 3)`` int64 (polygons fan-triangulated,
    so ``T >= F``), in the file's coordinates. Raises :class:`FileNotFoundError` if ``path`` is not a
    file and :class:`ValueError` (naming the file and line) if it is not a valid OFF mesh.
    """
    p = require_file(path, "OFF file")
    try:
        text = p.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise ValueError(f"OFF file {p} is not ASCII text (binary OFF is not supported): {e!r}") from e
    lines = _content_lines(text)
    if not lines:
        raise ValueError(f"OFF file {p} is empty: expected an 'OFF' header")
    number, tokens = lines[0]
    match = _HEADER.match(tokens[0])
    if match is None:
        raise ValueError(f"OFF file {p} line {number}: expected an 'OFF' header (ASCII, 3-D), got {tokens[0]!r}")
    rest = ([match["rest"]] if match["rest"] else []) + tokens[1:]
    if rest and rest[0].upper() == "BINARY":
        raise ValueError(f"OFF file {p} line {number}: binary OFF is not supported")
    if rest:
        counts_number, counts, body = number, rest, lines[1:]
    elif len(lines) > 1:
        (counts_number, counts), body = lines[1], lines[2:]
    else:
        raise ValueError(f"OFF file {p} is truncated: no 'V F E' counts line after the header")
    try:
        if len(counts) < 2:
            raise ValueError
        nv, nf = int(counts[0]), int(counts[1])
        if nv < 0 or nf < 0:
            raise ValueError
    except ValueError:
        msg = f"expected the counts 'V F E', got {' '.join(counts)!r}"
        raise ValueError(f"OFF file {p} line {counts_number}: {msg}") from None
    if len(body) < nv + nf:
        raise ValueError(f"OFF file {p} is truncated: it announces {nv} vertices and {nf} faces, "
                         f"but has only {len(body)} vertex and face lines")
    vertices = np.empty((nv, 3), np.float64)
    for i, (number, tokens) in enumerate(body[:nv]):
        try:
            if len(tokens) < 3:
                raise ValueError
            vertices[i] = [float(t) for t in tokens[:3]]
        except ValueError:
            msg = f"expected a vertex 'x y z', got {' '.join(tokens)!r}"
            raise ValueError(f"OFF file {p} line {number}: {msg}") from None
    triangles: list[list[int]] = []
    for number, tokens in body[nv:nv + nf]:
        try:
            k = int(tokens[0])
            idx = [int(t) for t in tokens[1:1 + k]]
        except ValueError:
            msg = f"expected a face 'n i1 ... in', got {' '.join(tokens)!r}"
            raise ValueError(f"OFF file {p} line {number}: {msg}") from None
        if k < 3:
            raise ValueError(f"OFF file {p} line {number}: a face needs at least 3 vertices, got n = {k}")
        if len(idx) < k:
            raise ValueError(f"OFF file {p} line {number}: the face announces {k} indices but has {len(idx)}")
        bad = [i for i in idx if i < 0 or i >= nv]
        if bad:
            raise ValueError(f"OFF file {p} line {number}: vertex index {bad[0]} out of range 0..{nv - 1}")
        triangles.extend([idx[0], idx[j], idx[j + 1]] for j in range(1, k - 1))
    faces = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    return vertices, faces


class ModelNet40(Dataset):
    """The ModelNet40 meshes of one split, class by class (classes in label order, files sorted by name).

    Args:
        root: the folder holding the class folders.
        split: ``"train"`` or ``"test"``.
        classes: the classes to load (names from :data:`MODELNET40_CLASSES`); default all class folders
            present under ``root`` whose names are ModelNet40 classes.

    ``files`` is the list of ``(path str, label int)``. Items are dicts: ``vertices`` ``(V, 3)``
    float64 tensor and ``faces`` ``(T, 3)`` int64 tensor (raw file coordinates, see :func:`read_off`),
    ``label`` (int index into :data:`MODELNET40_CLASSES`), ``name`` (class name) and ``path`` (str).
    Meshes differ in size, so batch them with a custom ``collate_fn`` (e.g. ``lambda b: b``).

    Raises :class:`ValueError` for an unknown split or class, and :class:`FileNotFoundError` for a
    missing root, a missing ``{class}/{split}`` folder, or a root without any ModelNet40 class folder.
    """

    def __init__(self, root: str | Path, split: str = "train", classes: Sequence[str] | None = None) -> None:
        if split not in MODELNET40_SPLITS:
            raise ValueError(f"unknown ModelNet40 split {split!r}; expected one of {list(MODELNET40_SPLITS)}")
        self.root = require_dir(root, "ModelNet40 root")
        self.split = split
        if classes is None:
            names = [c for c in MODELNET40_CLASSES if (self.root / c).is_dir()]
            if not names:
                raise FileNotFoundError(f"ModelNet40 root {self.root} has no class folder: expected some of "
                                        f"{list(MODELNET40_CLASSES)}")
        else:
            if isinstance(classes, str):
                raise ValueError(f"classes must be a sequence of class names, got the string {classes!r}")
            if not classes:
                raise ValueError("classes must name at least one class")
            unknown = [c for c in classes if c not in MODELNET40_CLASSES]
            if unknown:
                raise ValueError(f"unknown ModelNet40 classes {unknown}; the classes are {list(MODELNET40_CLASSES)}")
            names = sorted(set(classes), key=MODELNET40_CLASSES.index)
        self.classes: tuple[str, ...] = tuple(names)
        self.files: list[tuple[str, int]] = []
        for name in names:
            folder = require_dir(self.root / name / split, f"ModelNet40 {split} folder of class {name!r}")
            label = MODELNET40_CLASSES.index(name)
            self.files.extend((str(f), label) for f in sorted(folder.glob("*.off")) if f.is_file())

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self.files) <= i < len(self.files):
            raise IndexError(f"item {i} out of range for a ModelNet40 split of {len(self.files)} meshes")
        path, label = self.files[i]
        vertices, faces = read_off(path)
        return {"vertices": torch.from_numpy(vertices), "faces": torch.from_numpy(faces), "label": label,
                "name": MODELNET40_CLASSES[label], "path": path}
