"""``ShapesDataset``: SYMSOL shapes and user meshes (e.g. the pybullet_data duck) in one dataset.

:class:`~pose_core.data.symsol.SymsolLikeDataset` takes SYMSOL shape *names* only; this dataset takes
:class:`~pose_core.data.shapes.Shape` objects too (from :func:`~pose_core.data.shapes.mesh_shape`,
with the user's symmetry rotations), and renders them with the same :class:`Renderer` and the same
seed scheme: item ``index`` of the shape named ``name`` has the rendering rotation
:func:`~pose_core.data.symsol.item_rotation` ``(seed, name, index)`` and the same occluders, so a
SYMSOL shape gives the very images ``SymsolLikeDataset`` renders.

Items are the dicts of ``SymsolLikeDataset`` (batch with :func:`~pose_core.data.symsol.collate_symsol`),
except ``shape_index``, which indexes :attr:`ShapesDataset.shape_names` (the dataset's own list).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pose_core import preprocess
from pose_core.data.randomize import Randomization, compose
from pose_core.data.render import Camera, Renderer, random_occluders
from pose_core.data.shapes import SHAPE_NAMES, Shape, get_shape
from pose_core.data.symsol import _seed_sequence, item_rotation

__all__ = ["ShapesDataset"]


class ShapesDataset(Dataset):
    """``size`` rendered items per shape, laid out shape by shape (``len = size * len(shapes)``).

    Args:
        shapes: SYMSOL names (:data:`~pose_core.data.shapes.SHAPE_NAMES`) and/or :class:`Shape` objects
            (names must be unique).
        size: items per shape.
        image_size: square image side, pixels.
        seed: data seed (see the module docstring).
        occluders: up to this many random occluding quads per image.
        background: RGB in [0, 1].
        randomization: domain randomisation (:mod:`pose_core.data.randomize`; ``None``: plain
            renders). Its random streams come from the item's seed sequence, so item ``index`` of a
            shape is the same image in every process; items then also carry ``occluded`` (the
            fraction of the object an occluder covers).
    """

    def __init__(
        self,
        shapes: Sequence[str | Shape],
        size: int = 1000,
        image_size: int = 224,
        seed: int = 0,
        occluders: int = 0,
        background: Sequence[float] = (0.0, 0.0, 0.0),
        randomization: Randomization | None = None,
    ) -> None:
        if isinstance(shapes, (str, Shape)):
            shapes = [shapes]
        items: list[Shape | str] = []
        for s in shapes:
            if isinstance(s, str):
                if s not in SHAPE_NAMES:
                    raise ValueError(f"unknown shape {s!r}; expected a Shape or a name from {SHAPE_NAMES}")
                items.append(s)  # resolved lazily with get_shape (cheap to pickle into workers)
            elif isinstance(s, Shape):
                items.append(s)
            else:
                raise ValueError(f"shapes must be names or Shape objects, got {type(s).__name__}")
        if not items:
            raise ValueError("no shapes given")
        self.shape_names = tuple(s if isinstance(s, str) else s.name for s in items)
        if len(set(self.shape_names)) != len(self.shape_names):
            raise ValueError(f"duplicate shape names in {self.shape_names}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._shapes = items
        self.size = int(size)
        self.seed = int(seed)
        self.occluders = int(occluders)
        self.randomization = randomization
        self.renderer = Renderer(Camera(image_size, image_size), background=tuple(background))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.size * len(self._shapes)

    def shape(self, k: int) -> Shape:
        """The :class:`Shape` number ``k``."""
        s = self._shapes[k]
        return get_shape(s) if isinstance(s, str) else s

    def locate(self, item: int) -> tuple[str, int]:
        """``(shape name, index within shape)`` of dataset item ``item``."""
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for a dataset of {len(self)}")
        return self.shape_names[item // self.size], item % self.size

    def __getitem__(self, item: int) -> dict[str, Any]:
        name, index = self.locate(int(item))
        k = int(item) // self.size
        shape = self.shape(k)
        R = item_rotation(self.seed, name, index)
        occ = []
        if self.occluders:
            rng = np.random.default_rng(_seed_sequence(self.seed, name, index).spawn(1)[0])
            occ = random_occluders(rng, self.renderer.camera, max_count=self.occluders)
        extra: dict[str, Any] = {}
        distance = self.renderer.camera.distance
        if self.randomization is None:
            img = self.renderer.render(shape.mesh, R, occluders=occ)
        else:
            if occ:
                raise ValueError("occluders (flat quads) and randomization do not combine: "
                                 "use the randomization's occlusion")
            entropy = list(_seed_sequence(self.seed, name, index).entropy)  # type: ignore[arg-type]
            img, info = compose(self.renderer, shape.mesh, R, self.randomization, entropy)
            distance = info["distance"]
            extra["occluded"] = info["occluded"]
            extra["distance"] = distance
        eq = shape.equivalent_rotations(R, distance=distance)
        return {
            **extra,
            "image": preprocess.to_tensor(img),
            "rotation": torch.as_tensor(np.asarray(R), dtype=torch.float32),
            "equivalents": torch.as_tensor(np.asarray(eq), dtype=torch.float32),
            "shape": name,
            "shape_index": k,
        }
