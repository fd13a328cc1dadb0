"""Your own meshes, one folder per class, in ModelNet's layout but any common format::

    root/{class}/{train,test}/*.{off,obj,stl,ply,glb,gltf}      e.g. root/gripper_a/train/scan_03.stl

Classes are the sub-folders of ``root`` that have the split's folder, sorted by name (the position
of a name is its label). OFF files are read by :func:`pose_core.data.modelnet40.read_off`, the other
formats by ``trimesh`` (scenes flattened into one mesh). Meshes come in their file coordinates;
:class:`pose_core.data.shape_classes.ShapeClassDataset` normalises them (centre, unit sphere), so
units do not matter. Items: ``vertices`` ``(V, 3)`` float64, ``faces`` ``(F, 3)`` int64 (numpy),
``label``, ``name``, ``path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pose_core.data._io import require_dir
from pose_core.data.modelnet40 import read_off

__all__ = ["MESH_SUFFIXES", "MeshFolder", "read_mesh"]

#: File suffixes :class:`MeshFolder` reads (lower case).
MESH_SUFFIXES = (".off", ".obj", ".stl", ".ply", ".glb", ".gltf")


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` float64 and triangles ``(F, 3)`` int64 of a mesh file (:data:`MESH_SUFFIXES`);
    ValueError naming the file when it holds no triangles or cannot be parsed."""
    path = Path(path)
    if path.suffix.lower() == ".off":
        return read_off(path)
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # trimesh raises many kinds for broken files
        raise ValueError(f"cannot read mesh {path}: {exc}") from exc
    vertices = np.asarray(getattr(mesh, "vertices", ()), dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(getattr(mesh, "faces", ()), dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0:
        raise ValueError(f"mesh {path} has no triangles")
    return vertices, faces


class MeshFolder(Dataset):
    """The meshes of one ``split`` under ``root`` (layout in the module docstring); ``classes``: a subset
    of the class folders (default all that have the split). ``files``: ``(path str, label int)``."""

    def __init__(self, root: str | Path, split: str = "train", classes: list[str] | None = None) -> None:
        self.root = require_dir(root, "mesh folder root")
        self.split = split
        present = sorted(p.name for p in self.root.iterdir() if (p / split).is_dir())
        if classes is not None:
            missing = [c for c in classes if c not in present]
            if missing:
                raise FileNotFoundError(f"{self.root}: no {split!r} folder for classes {missing}; found {present}")
            present = [c for c in present if c in classes]
        if not present:
            raise FileNotFoundError(f"{self.root} has no class folder with a {split!r} sub-folder "
                                    f"(layout root/<class>/{split}/<mesh file>)")
        self.classes: tuple[str, ...] = tuple(present)
        self.files: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            found = sorted(f for f in (self.root / name / split).iterdir()
                           if f.is_file() and f.suffix.lower() in MESH_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{self.root / name / split} holds no mesh file ({', '.join(MESH_SUFFIXES)})")
            self.files.extend((str(f), label) for f in found)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.files[i]
        vertices, faces = read_mesh(path)
        return {"vertices": vertices, "faces": faces, "label": label, "name": self.classes[label], "path": path}
