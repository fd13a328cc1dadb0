"""Datasets of a :class:`train.config.DataConfig`: training sets and their held-out twins."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from train.config import DataConfig, MeshSpec

__all__ = ["build_dataset", "collate", "dataset_shapes", "heldout_config", "rendered_dataset", "rendered_source",
           "resolve_mesh_path", "scenes_dataset", "shape_class_dataset", "shard_source", "HELDOUT_SEED_OFFSET"]

#: Seed offset of the held-out set of rendered data (other rotations, other occluders).
HELDOUT_SEED_OFFSET = 1_000_003


def resolve_mesh_path(path: str) -> Path:
    """``pybullet_data/...`` → a file of the installed ``pybullet_data`` package; other paths as given."""
    if path.startswith("pybullet_data/"):
        try:
            import pybullet_data
        except ImportError as e:  # pragma: no cover - pybullet_data is in requirements.txt
            raise ValueError(f"mesh path {path!r} needs the pybullet_data package: {e}") from e
        return Path(pybullet_data.getDataPath()) / path[len("pybullet_data/") :]
    return Path(os.path.expanduser(path))


def _mesh_shape(spec: MeshSpec):
    from pose_core.data import mesh_shape
    from pose_core.data.shapes import symmetry_rotations

    if spec.symmetry is not None:
        return mesh_shape(resolve_mesh_path(spec.path), symmetries=symmetry_rotations(spec.symmetry), name=spec.name)
    sym = None if spec.symmetries is None else np.asarray(spec.symmetries, dtype=np.float64)
    if sym is not None and (sym.ndim != 3 or sym.shape[1:] != (3, 3)):
        raise ValueError(f"mesh {spec.name!r}: symmetries must be (K, 3, 3) nested lists, got shape {sym.shape}")
    return mesh_shape(resolve_mesh_path(spec.path), symmetries=sym, name=spec.name)


def dataset_shapes(data: DataConfig) -> list:
    """The shapes rendered data ``data`` holds: its SYMSOL names, then its meshes as
    :class:`pose_core.data.shapes.Shape` objects (with their symmetries)."""
    return list(data.shapes) + [_mesh_shape(m) for m in data.meshes]


def shard_source(data: DataConfig) -> DataConfig:
    """The rendered-data config that the shards under ``data.root`` were written from."""
    from pose_core.data.shards import read_manifest
    from train.config import _coerce

    source = read_manifest(data.root).get("source")  # type: ignore[arg-type]
    if not isinstance(source, dict):
        raise ValueError(f"shards under {data.root} do not record the data config they were rendered from")
    return _coerce(source, DataConfig, "shards.source")


def rendered_source(data: DataConfig) -> DataConfig:
    """``data`` itself, or for ``shards`` the rendered-data config they were written from."""
    return shard_source(data) if data.name == "shards" else data


def rendered_dataset(data: DataConfig):
    """A :class:`pose_core.data.meshes.ShapesDataset` of rendered data ``data`` (``symsol`` or ``mesh``):
    for SYMSOL names the very images of ``SymsolLikeDataset``."""
    from pose_core.data.meshes import ShapesDataset

    if data.name not in ("symsol", "mesh"):
        raise ValueError(f"not rendered data: {data.name!r}")
    if data.size is None:
        raise ValueError("data.size must be set for rendered data, got None")
    return ShapesDataset(dataset_shapes(data), size=data.size, image_size=data.image_size, seed=data.seed,
                         occluders=data.occluders, randomization=data.randomize)


def scenes_dataset(data: DataConfig):
    """The :class:`pose_core.data.scenes.SE3RenderDataset` of ``data`` (``name: scenes``), its
    ``randomize`` applied to the scene's images."""
    from pose_core.data.scenes import SceneConfig, SE3RenderDataset

    if data.size is None:
        raise ValueError("data.size must be set for rendered data, got None")
    scene = data.scene if data.scene is not None else SceneConfig()
    if data.randomize is not None:
        scene = dataclasses.replace(scene, randomization=data.randomize)
    return SE3RenderDataset(dataset_shapes(data), size=data.size, seed=data.seed, config=scene)


def _known_objects(data: DataConfig, names: list[str], copies: int) -> list[tuple]:
    """The meshes of ``data.meshes`` (e.g. ``pybullet_data`` ones) as ``(vertices, faces, label, name)`` shapes,
    ``copies`` of each (other views of the one mesh), one new class per mesh appended to ``names``."""
    shapes: list[tuple] = []
    for spec in data.meshes:
        soup = np.asarray(_mesh_shape(spec).mesh.positions, dtype=np.float64)  # (3T, 3)
        faces = np.arange(len(soup), dtype=np.int64).reshape(-1, 3)
        names.append(spec.name)
        shapes += [(soup, faces, len(names) - 1, spec.name)] * copies
    return shapes


def shape_class_dataset(data: DataConfig):
    """The :class:`pose_core.data.shape_classes.ShapeClassDataset` of ``data`` (``procedural_shapes``,
    ``modelnet40`` or ``mesh_folder``); its ``class_names`` are the chosen classes, labels index them."""
    from pose_core.data.shape_classes import ShapeClassDataset, ShapeSetConfig

    cfg = data.shape_set if data.shape_set is not None else ShapeSetConfig()
    if data.name == "procedural_shapes":
        from pose_core.data.procedural import PROCEDURAL_CLASSES, procedural_split

        names = list(cfg.classes) if cfg.classes is not None else list(PROCEDURAL_CLASSES)
        unknown = [c for c in names if c not in PROCEDURAL_CLASSES]
        if unknown:
            raise ValueError(f"data.shape_set.classes: unknown procedural classes {unknown}; "
                             f"known: {PROCEDURAL_CLASSES}")
        if cfg.per_class is None:
            raise ValueError("data.shape_set.per_class must be set for procedural shapes, got None")
        shapes = [(s.vertices, s.faces, names.index(s.name), s.name)
                  for s in procedural_split(data.split, cfg.per_class) if s.name in names]
        shapes += _known_objects(data, names, cfg.per_class)
    elif data.name in ("modelnet40", "mesh_folder"):
        if data.name == "modelnet40":
            from pose_core.data.modelnet40 import MODELNET40_CLASSES, ModelNet40

            ds: Any = ModelNet40(data.root, split=data.split, classes=cfg.classes)  # type: ignore[arg-type]
            class_of = MODELNET40_CLASSES
        else:
            from pose_core.data.mesh_folder import MeshFolder

            ds = MeshFolder(data.root, split=data.split, classes=cfg.classes)  # type: ignore[arg-type]
            class_of = ds.classes
        names = [class_of[label] for label in sorted({label for _, label in ds.files})]
        counts = dict.fromkeys(names, 0)
        shapes = []
        for i, (_, label) in enumerate(ds.files):
            name = class_of[label]
            if cfg.per_class is None or counts[name] < cfg.per_class:
                counts[name] += 1
                item = ds[i]
                shapes.append((np.asarray(item["vertices"]), np.asarray(item["faces"]), names.index(name), name))
    else:
        raise ValueError(f"not a shape dataset: {data.name!r}")
    return ShapeClassDataset(shapes, names, cfg, seed=data.seed)


def reconstruction_dataset(data: DataConfig):
    """The :class:`pose_core.data.reconstruction.ReconstructionDataset` of ``data`` (``reconstruction_shapes``):
    procedural shapes of ``data.split`` plus the known objects of ``data.meshes``; ``class_names`` index labels."""
    from pose_core.data.procedural import PROCEDURAL_CLASSES, procedural_split
    from pose_core.data.reconstruction import ReconstructionDataset, ReconstructionSetConfig

    cfg = data.recon_set if data.recon_set is not None else ReconstructionSetConfig()
    names = list(cfg.classes) if cfg.classes is not None else list(PROCEDURAL_CLASSES)
    unknown = [c for c in names if c not in PROCEDURAL_CLASSES]
    if unknown:
        raise ValueError(f"data.recon_set.classes: unknown procedural classes {unknown}; known: {PROCEDURAL_CLASSES}")
    shapes = [(s.vertices, s.faces, names.index(s.name), s.name)
              for s in procedural_split(data.split, cfg.per_class) if s.name in names]
    shapes += _known_objects(data, names, cfg.per_class)
    return ReconstructionDataset(shapes, names, cfg, seed=data.seed)


def heldout_config(data: DataConfig, size: int) -> DataConfig:
    """The held-out twin of ``data``: rendered data with another seed and ``size`` items per shape
    (for shards: of the config they were rendered from); on-disk data with split ``test``."""
    if data.name == "shards":
        data = shard_source(data)
    if data.name in ("symsol", "mesh", "scenes"):
        return dataclasses.replace(data, seed=data.seed + HELDOUT_SEED_OFFSET, size=size)
    if data.name in ("procedural_shapes", "modelnet40", "mesh_folder", "reconstruction_shapes", "r2n2"):  # held out
        return dataclasses.replace(data, split="test", seed=data.seed + HELDOUT_SEED_OFFSET)
    return dataclasses.replace(data, split="test", size=None, pascal_warp=False, pascal_synth=False)


def build_dataset(data: DataConfig) -> Dataset:
    """The dataset ``data`` describes. Items: dicts with ``image`` ``(3, H, W)``, ``rotation`` ``(3, 3)``,
    ``equivalents`` ``(K, 3, 3)``, ``shape`` str (batch with ``pose_core.data.collate_symsol``)."""
    from pose_core import data as pdata

    if data.name == "symsol" and data.randomize is not None:  # the same images, randomised
        return rendered_dataset(data)
    if data.name == "symsol":
        return pdata.SymsolLikeDataset(data.shapes, size=data.size, image_size=data.image_size, seed=data.seed,
                                       occluders=data.occluders)
    if data.name == "symsol_dir":
        return pdata.SymsolLikeDataset(data.shapes, size=data.size, root=data.root, split=data.split)
    if data.name == "mesh":
        return rendered_dataset(data)
    if data.name == "shards":
        from pose_core.data.shards import ShardDataset

        return ShardDataset(data.root, dataset_shapes(shard_source(data)))  # type: ignore[arg-type]
    if data.name == "scenes":
        return scenes_dataset(data)
    if data.name in ("procedural_shapes", "modelnet40", "mesh_folder"):
        return shape_class_dataset(data)
    if data.name == "reconstruction_shapes":
        return reconstruction_dataset(data)
    if data.name == "r2n2":
        from pose_core.data.r2n2 import R2N2
        from pose_core.data.reconstruction import ReconstructionSetConfig

        rc = data.recon_set if data.recon_set is not None else ReconstructionSetConfig()
        split_file = Path(data.root) / "splits.json"  # type: ignore[arg-type]
        if not split_file.is_file():
            raise FileNotFoundError(f"data.name=r2n2 needs {split_file} ({{synset: {{train: [model ids], test: "
                                    "[...]}}}}): it tells the training models from the held-out ones")
        return R2N2(data.root, split=data.split, split_file=split_file, synsets=rc.classes,  # type: ignore[arg-type]
                    image_size=rc.image_size, surface_points=rc.surface_points, occupancy_points=rc.occupancy_points,
                    seed=data.seed)
    if data.name == "modelnet10":
        return pdata.ModelNet10SO3(data.root, split=data.split)  # type: ignore[arg-type]
    if data.name == "pascal3d":
        return pdata.Pascal3D(data.root, split=data.split, warp=data.pascal_warp, synth=data.pascal_synth,  # type: ignore[arg-type]
                              image_size=data.image_size)
    raise ValueError(f"unknown dataset {data.name!r}")


def collate(batch):
    """Batch items of any dataset here: ``image`` ``(B, 3, H, W)``, ``rotation`` ``(B, 3, 3)`` stacked;
    ``equivalents`` a list of ``(K_b, 3, 3)``; ``shape`` a list of str (category names for the public sets).
    SE(3) items (with ``t_hat``) are batched by :func:`pose_core.data.scenes.se3_collate`."""
    import torch

    if batch and "signal" in batch[0]:
        from pose_core.data.shape_classes import collate_shapes

        return collate_shapes(batch)
    if batch and "occ" in batch[0]:
        from pose_core.data.reconstruction import collate_reconstruction

        return collate_reconstruction(batch)
    if batch and "t_hat" in batch[0]:
        from pose_core.data.scenes import se3_collate

        return se3_collate(batch)

    return {
        "image": torch.stack([b["image"] for b in batch]),
        "rotation": torch.stack([b["rotation"] for b in batch]),
        "equivalents": [b["equivalents"] for b in batch],
        "shape": [str(b["shape"]) for b in batch],
    }
