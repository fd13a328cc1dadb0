"""Pre-rendered shards: rendered (and randomised) items written once, read back at disk speed.

When rendering in DataLoader workers cannot keep a GPU busy, render the data once
(``train/render_shards.py``) and train from the shards (``data.name: shards``). Layout under
``root``::

    manifest.json            {"format", "version", "shape_names", "image_size", "count",
                              "shards": [{"dir", "count"}], "source": {...the data config...}}
    shard_00000/images.npy   (n, H, W, 3) uint8, row 0 = top
    shard_00000/rotations.npy (n, 3, 3) float64, pose rotations (pose_core.so3 convention)
    shard_00000/shape_index.npy (n,) int16, into shape_names
    shard_00000/distance.npy (n,) float32, camera to object origin (for marked shapes' equivalents)
    shard_00000/occluded.npy (n,) float32, fraction of the object an occluder covers

Items are those of :class:`~pose_core.data.meshes.ShapesDataset`, bit for bit (the equivalent
rotations are recomputed from the shapes, which the reader is given). Arrays are memory-mapped, so
workers share the page cache. A shard is written to a temporary folder and renamed: an interrupted
write leaves whole shards and no manifest entry for the partial one; writing again resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pose_core import preprocess
from pose_core.data.shapes import Shape, get_shape
from pose_core.data.symsol import item_rotation

__all__ = ["SHARD_FORMAT", "write_shards", "ShardDataset", "read_manifest"]

SHARD_FORMAT = "pose_distribution.shards"
_FIELDS = ("images", "rotations", "shape_index", "distance", "occluded")


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the shards under ``root``; ``ValueError`` naming what is wrong."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{root} holds no shards (no manifest.json; write them with train/render_shards.py)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"could not read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path} is not a shard manifest (format {SHARD_FORMAT!r})")
    return manifest


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, root / "manifest.json")


def write_shards(dataset: Any, root: str | Path, source: dict[str, Any], shard_size: int = 4096,
                 num_workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """Render every item of ``dataset`` (a :class:`~pose_core.data.meshes.ShapesDataset`) into shards
    under ``root``; ``source``: the data config, recorded. Resumes after the last whole shard."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = list(dataset.shape_names)
    size = int(dataset.renderer.camera.width)
    manifest: dict[str, Any] = {"format": SHARD_FORMAT, "version": 1, "shape_names": names, "image_size": size,
                                "count": len(dataset), "shards": [], "source": source}
    if (root / "manifest.json").is_file():
        old = read_manifest(root)
        if old.get("source") != source or old.get("count") != len(dataset):
            raise ValueError(f"{root} holds shards of other data; write them to an empty folder")
        manifest["shards"] = old["shards"]
    done = sum(s["count"] for s in manifest["shards"])
    index = len(manifest["shards"])
    while done < len(dataset):
        n = min(shard_size, len(dataset) - done)
        sub = torch.utils.data.Subset(dataset, range(done, done + n))
        loader = DataLoader(sub, batch_size=64, num_workers=num_workers, collate_fn=list,
                            multiprocessing_context="spawn" if num_workers > 0 else None)
        cols: dict[str, list] = {f: [] for f in _FIELDS}
        g = done
        for batch in loader:
            for item in batch:
                cols["rotations"].append(item_rotation(dataset.seed, *dataset.locate(g)))  # float64, exact
                g += 1
                cols["images"].append((item["image"].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
                cols["shape_index"].append(item["shape_index"])
                cols["distance"].append(item.get("distance", dataset.renderer.camera.distance))
                cols["occluded"].append(item.get("occluded", 0.0))
        name = f"shard_{index:05d}"
        tmp = root / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.save(tmp / "images.npy", np.stack(cols["images"]))
        np.save(tmp / "rotations.npy", np.stack(cols["rotations"]).astype(np.float64))
        np.save(tmp / "shape_index.npy", np.asarray(cols["shape_index"], np.int16))
        np.save(tmp / "distance.npy", np.asarray(cols["distance"], np.float32))
        np.save(tmp / "occluded.npy", np.asarray(cols["occluded"], np.float32))
        shutil.rmtree(root / name, ignore_errors=True)
        os.replace(tmp, root / name)
        manifest["shards"].append({"dir": name, "count": n})
        _write_manifest(root, manifest)
        done += n
        index += 1
        if progress:
            print(f"shard {name}: {done}/{len(dataset)} items", flush=True)
    _write_manifest(root, manifest)
    return manifest


class ShardDataset(Dataset):
    """Items of shards under ``root`` (see the module docstring). ``shapes``: the :class:`Shape` objects
    (or SYMSOL names) of the manifest's ``shape_names``, in any order, for the equivalent rotations."""

    def __init__(self, root: str | Path, shapes: Sequence[str | Shape]) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        by_name = {(s if isinstance(s, str) else s.name): s for s in shapes}
        self.shape_names = tuple(self.manifest["shape_names"])
        missing = [n for n in self.shape_names if n not in by_name]
        if missing:
            raise ValueError(f"shards under {root} hold shapes {missing} that were not given")
        self._shapes = [by_name[n] for n in self.shape_names]
        counts = [int(s["count"]) for s in self.manifest["shards"]]
        if sum(counts) < int(self.manifest["count"]):
            raise ValueError(f"shards under {root} are incomplete ({sum(counts)} of {self.manifest['count']} "
                             "items): run train/render_shards.py again to finish them")
        self._starts = np.cumsum([0, *counts])
        self._arrays: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._arrays:  # opened lazily: each worker maps its own
            d = self.root / self.manifest["shards"][k]["dir"]
            try:
                self._arrays[k] = {f: np.load(d / f"{f}.npy", mmap_mode="r") for f in _FIELDS}
            except (OSError, ValueError) as exc:
                raise ValueError(f"shard {d} is unreadable ({exc}); delete it and its manifest entry, "
                                 "then run train/render_shards.py again") from exc
        return self._arrays[k]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for {len(self)} shard items")
        k = int(np.searchsorted(self._starts, item, side="right") - 1)
        a = self._shard(k)
        i = item - int(self._starts[k])
        si = int(a["shape_index"][i])
        s = self._shapes[si]
        shape = get_shape(s) if isinstance(s, str) else s
        R = np.asarray(a["rotations"][i], dtype=np.float64)
        eq = shape.equivalent_rotations(R, distance=float(a["distance"][i]))
        return {
            "image": preprocess.to_tensor(np.array(a["images"][i])),  # a copy: the map is read-only
            "rotation": torch.as_tensor(R, dtype=torch.float32),
            "equivalents": torch.as_tensor(np.asarray(eq), dtype=torch.float32),
            "shape": self.shape_names[si],
            "shape_index": si,
            "occluded": float(a["occluded"][i]),
        }
