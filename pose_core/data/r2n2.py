"""R2N2 (Choy et al., ECCV 2016) ShapeNet renders and voxels in the public layout::

    root/ShapeNetRendering/{synset}/{model_id}/rendering/00.png ...           137 x 137 RGBA, transparent background
    root/ShapeNetRendering/{synset}/{model_id}/rendering/renderings.txt       png names, one a line
    root/ShapeNetRendering/{synset}/{model_id}/rendering/rendering_metadata.txt
        one line per view (same order): azimuth_deg elevation_deg in_plane_deg distance_ratio fov_deg
    root/ShapeNetVox32/{synset}/{model_id}/model.binvox                       32^3 solid voxels
    root/splits.json (optional, any name: ``split_file``)                      which models are train / test

served as items of :mod:`pose_core.data.reconstruction` (same keys, same object frame, same grid).

Conventions, stated once:

* **Axes.** ShapeNet (and so the binvox files and the R2N2 cameras) is y up; our object frame is z up. One
  constant, :data:`SHAPENET_TO_OBJECT`, maps ShapeNet coordinates to ours for both the voxels and the
  cameras: ``(x, y, z) -> (x, -z, y)``, a proper rotation of +90 degrees about x (ShapeNet +y -> our +z,
  ShapeNet +z -> our -y, x kept). It is the rotation Blender applies when it imports a ShapeNet
  ``.obj``, so our object frame *is* the Blender world the R2N2 views were rendered in (meshrcnn's and
  PyTorch3D's ``compute_extrinsic_matrix`` fold the same matrix into the R2N2 extrinsics).
* **binvox** (:func:`read_binvox`). Header ``#binvox 1``, ``dim D D D``, ``translate tx ty tz``, ``scale s``,
  ``data``, then ``(value, count)`` byte pairs run-length encoding ``D^3`` cells; the linear index of cell
  ``(x, y, z)`` is ``x * D * D + z * D + y`` (y fastest). The grid is returned as ``[x, y, z]`` of the file's
  coordinates; the centre of cell ``(i, j, k)`` is ``translate + scale * ((i, j, k) + 0.5) / D``.
* **Voxels in our grid** (:func:`binvox_to_object_grid`). The occupied cells, rotated by
  :data:`SHAPENET_TO_OBJECT`, are centred on the bounding-box centre of their solid (the union of the
  cubes, not of the centres: a one-cell-thick part keeps its thickness) and scaled to bounding-box diagonal
  1 (as :func:`pose_core.data.reconstruction.unit_diagonal`), then rasterised into the 32^3 grid of
  :mod:`pose_core.voxels` by **nearest cell**: every occupied source cell is sampled at ``k^3`` regularly
  spaced points (``k`` the smallest integer making their spacing at most one of our cells, 1 for R2N2's
  models, whose source cells are smaller than ours after the rescaling) and the cell of ours holding each
  point is set. This is a resampling, not an exact volume overlap: a surface may move by up to half a cell
  and thin parts may thicken by one cell.
* **Cameras** (:func:`r2n2_view_rotation`). ``rotation`` is object -> camera (optical frame: x right,
  y down, z forward) = :func:`pose_core.data.reconstruction.view_rotation` ``(-radians(azimuth_deg),
  radians(elevation_deg))`` of our frame: the camera sits at elevation ``elevation_deg`` above the xy-plane
  (looking at the centre, z up in the image) and azimuth 0 on our +x axis (ShapeNet +x); R2N2's azimuth
  turns **clockwise seen from above** (from +x towards -y, i.e. about -z), hence the minus sign: the
  camera's direction is ``(cos el cos az, -cos el sin az, sin el)``. This reproduces the R2N2 extrinsics of
  meshrcnn / PyTorch3D (``compute_extrinsic_matrix`` composed with their y-up -> Blender rotation) up to
  their OpenGL camera axes (``diag(1, -1, -1)``). ``in_plane_deg`` (0 in every R2N2 view) is applied, when
  not 0, as a roll of the camera about its optical axis: ``Rz(in_plane) @ R`` in camera coordinates (the
  image content turns clockwise on screen by ``in_plane_deg``; a convention of ours, not checked against
  the renderer, since R2N2 never uses it). ``distance_ratio`` (R2N2's camera distance is ``1.75 *
  distance_ratio`` ShapeNet units) and ``fov_deg`` are passed on as floats but not used here.
* **Split file** (:func:`read_r2n2_split`), JSON in either of two formats: ours, ``{synset: {"train": [model
  ids], "test": [model ids]}}``, or PyTorch3D's (e.g. meshrcnn's ``pix2mesh_splits_val05.json``), ``{"train":
  {synset: {model id: [view indices]}}, "val": ..., "test": ...}``, where a model's views may be split too
  (only the listed views are loaded). A file whose top level has the requested split is read as the latter.
* **Incomplete downloads** are errors, not skips: a listed model (in the split file, or a folder of renders
  when ``split`` is ``None``) without its ``model.binvox``, render folder, ``renderings.txt`` or
  ``rendering_metadata.txt`` raises :class:`FileNotFoundError` naming the missing path when the dataset is
  built, and a missing or corrupt png when its view is read; a silent skip would change the split.
* **Items** (:class:`R2N2`): exactly the keys of :class:`pose_core.data.reconstruction.ReconstructionDataset`
  items plus ``azimuth_deg``, ``elevation_deg``, ``distance_ratio`` and ``fov_deg`` (floats, from the
  metadata line of the view). ``image`` is the RGBA render composited on
  black, resized to ``image_size`` with PIL's bilinear filter; ``points`` are
  :func:`pose_core.voxels.voxel_surface_points` of the voxels; ``occ_points`` are half uniform in the voxel
  cube and half near the voxel surface (surface points plus Gaussian noise of ``occupancy_sigma``), ``occ``
  their label by looking up the grid cell (0 outside the cube). Samples are drawn from ``seed`` and the
  model's index, so all views of a model share them and the dataset is the same wherever it is built.
  ``label`` is the index of the synset in the sorted loaded synsets (:attr:`R2N2.class_names`), ``shape``
  the synset id (``class_names[label]``, as the procedural set's class name; the readable name is in
  :data:`R2N2_SYNSET_NAMES` and :attr:`R2N2.category_names`), ``shape_index`` the model's index.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from pose_core.data._io import read_text_lines, require_dir, require_file

__all__ = ["SHAPENET_TO_OBJECT", "R2N2_SYNSET_NAMES", "R2N2", "R2N2Config", "read_binvox", "write_binvox",
           "binvox_to_object_grid", "r2n2_view_rotation", "read_rendering_metadata", "read_r2n2_split"]

#: ShapeNet (y up) -> our object frame (z up): ``(x, y, z) -> (x, -z, y)``, +90 degrees about x.
SHAPENET_TO_OBJECT = np.array([[1.0, 0.0, 0.0],
                               [0.0, 0.0, -1.0],
                               [0.0, 1.0, 0.0]])

R2N2_VOXEL_RESOLUTION = 32

#: The 13 R2N2 categories: ShapeNet synset id -> name (the names of PyTorch3D's ``r2n2_synset_dict.json``).
R2N2_SYNSET_NAMES: dict[str, str] = {
    "02691156": "airplane", "02828884": "bench", "02933112": "cabinet", "02958343": "car", "03001627": "chair",
    "03211117": "display", "03636649": "lamp", "03691459": "loudspeaker", "04090263": "rifle", "04256520": "sofa",
    "04379243": "table", "04401088": "telephone", "04530566": "watercraft",
}


# ---------------------------------------------------------------------------------------------------- binvox
def read_binvox(path: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Read a binvox file (see the module docstring): ``occupancy`` ``(D, D, D)`` bool indexed ``[x, y, z]``
    of the file's coordinates, ``translate`` ``(3,)`` float64 and ``scale`` float. Raises
    :class:`FileNotFoundError` for a missing file and :class:`ValueError` naming the file for a bad header,
    run lengths that do not add up to ``D^3``, or truncated data."""
    p = require_file(path, "binvox file")
    raw = p.read_bytes()
    pos, header = 0, {}
    for expected in ("#binvox", "dim", "translate", "scale", "data"):
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"binvox file {p} is truncated in its header: expected a {expected!r} line")
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        tokens = line.split()
        if not tokens or tokens[0] != expected:
            raise ValueError(f"binvox file {p}: bad header, expected a {expected!r} line, got {line!r}")
        header[expected] = tokens[1:]
    try:
        dims = [int(t) for t in header["dim"]]
        translate = np.array([float(t) for t in header["translate"]], dtype=np.float64)
        scale = float(header["scale"][0]) if len(header["scale"]) == 1 else float("nan")
    except ValueError:
        raise ValueError(f"binvox file {p}: bad header numbers {header}") from None
    if len(dims) != 3 or len(set(dims)) != 1 or dims[0] < 1:
        raise ValueError(f"binvox file {p}: bad header, expected 'dim D D D' with equal D >= 1, got {dims}")
    if translate.shape != (3,) or not np.isfinite(translate).all() or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"binvox file {p}: bad header, expected 'translate tx ty tz' and 'scale s' (s > 0), "
                         f"got {header['translate']} and {header['scale']}")
    D = dims[0]
    data = np.frombuffer(raw, dtype=np.uint8, offset=pos)
    if len(data) % 2:
        raise ValueError(f"binvox file {p} is truncated: odd number ({len(data)}) of run-length bytes")
    values, counts = data[0::2], data[1::2].astype(np.int64)
    total = int(counts.sum())
    if total != D ** 3:
        what = "truncated" if total < D ** 3 else "corrupt"
        raise ValueError(f"binvox file {p} is {what}: its runs cover {total} cells, expected D^3 = {D ** 3}")
    if ((values != 0) & (values != 1)).any():
        raise ValueError(f"binvox file {p} is corrupt: run values must be 0 or 1")
    flat = np.repeat(values.astype(bool), counts)
    occupancy = np.ascontiguousarray(flat.reshape(D, D, D).transpose(0, 2, 1))  # [x, z, y] -> [x, y, z]
    return occupancy, translate, scale


def write_binvox(path: str | Path, occupancy: np.ndarray, translate: Sequence[float] = (0.0, 0.0, 0.0),
                 scale: float = 1.0) -> None:
    """Write ``occupancy`` ``(D, D, D)`` (``[x, y, z]``, truthy = occupied) as a binvox file that
    :func:`read_binvox` reads back exactly."""
    occ = np.asarray(occupancy).astype(bool)
    if occ.ndim != 3 or len(set(occ.shape)) != 1:
        raise ValueError(f"occupancy must be a cubic (D, D, D) grid, got shape {occ.shape}")
    t = [float(x) for x in translate]
    if len(t) != 3 or not float(scale) > 0:
        raise ValueError(f"need translate (3,) and scale > 0, got {translate} and {scale}")
    D = occ.shape[0]
    flat = occ.transpose(0, 2, 1).ravel().astype(np.uint8)  # binvox order: y fastest, then z, then x
    out = bytearray()
    i = 0
    while i < len(flat):
        v = flat[i]
        j = i
        while j < len(flat) and flat[j] == v and j - i < 255:
            j += 1
        out += bytes((int(v), j - i))
        i = j
    head = (f"#binvox 1\ndim {D} {D} {D}\ntranslate {t[0]!r} {t[1]!r} {t[2]!r}\nscale {float(scale)!r}\n"
            "data\n").encode("ascii")
    Path(path).write_bytes(head + bytes(out))


def binvox_to_object_grid(occupancy: np.ndarray, translate: Sequence[float], scale: float,
                          resolution: int = R2N2_VOXEL_RESOLUTION) -> np.ndarray:
    """The binvox solid (file frame, see :func:`read_binvox`) in our object frame and grid: ``(R, R, R)``
    bool (module docstring: rotation, unit diagonal, nearest-cell rasterisation). An empty grid stays empty."""
    occ = np.asarray(occupancy, dtype=bool)
    D = occ.shape[0]
    out = np.zeros((resolution,) * 3, dtype=bool)
    idx = np.argwhere(occ)
    if len(idx) == 0:
        return out
    cell_src = float(scale) / D
    centres = (np.asarray(translate, dtype=np.float64) + cell_src * (idx + 0.5)) @ SHAPENET_TO_OBJECT.T
    lo, hi = centres.min(0) - cell_src / 2, centres.max(0) + cell_src / 2  # the solid's box (a rotation of
    diag = float(np.linalg.norm(hi - lo))                                  # a cube is axis-aligned here)
    cell_src /= diag
    cell_dst = 1.0 / resolution  # our grid spans [-0.5, 0.5]
    k = max(1, math.ceil(cell_src / cell_dst - 1e-9))
    offs = (np.arange(k) + 0.5) / k - 0.5
    sub = np.stack(np.meshgrid(offs, offs, offs, indexing="ij"), -1).reshape(-1, 3) * cell_src
    pts = ((centres - (lo + hi) / 2) / diag)[:, None, :] + sub[None]
    ijk = np.floor((pts.reshape(-1, 3) + 0.5) * resolution).astype(np.int64)
    ijk = np.clip(ijk, 0, resolution - 1)  # points on the cube's faces
    out[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
    return out


# ---------------------------------------------------------------------------------------------------- cameras
def r2n2_view_rotation(azimuth_deg: float, elevation_deg: float, in_plane_deg: float = 0.0) -> np.ndarray:
    """Object -> camera rotation ``(3, 3)`` float64 of an R2N2 view in our object frame (module docstring)."""
    from pose_core.data.reconstruction import view_rotation

    R = view_rotation(-math.radians(float(azimuth_deg)), math.radians(float(elevation_deg)))
    if in_plane_deg:
        c, s = math.cos(math.radians(in_plane_deg)), math.sin(math.radians(in_plane_deg))
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R
    return R


def read_rendering_metadata(path: str | Path) -> np.ndarray:
    """``rendering_metadata.txt`` as ``(V, 5)`` float64: azimuth_deg, elevation_deg, in_plane_deg,
    distance_ratio, fov_deg per view (ValueError naming the file and line for a malformed line)."""
    lines = read_text_lines(path, "R2N2 rendering metadata")
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = [float(t) for t in line.split()]
            if len(row) != 5 or not np.isfinite(row).all():
                raise ValueError
        except ValueError:
            raise ValueError(f"R2N2 rendering metadata {path} line {number}: expected 5 numbers 'azimuth elevation "
                             f"in_plane distance_ratio fov', got {line!r}") from None
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _read_render(path: Path, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: the RGBA render composited on black, bilinear resize."""
    p = require_file(path, "R2N2 render")
    try:
        with Image.open(p) as im:
            im.load()
            rgba = im.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"R2N2 render {p} is not a decodable image: {e!r}") from e
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    rgb = Image.alpha_composite(black, rgba).convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- dataset
def read_r2n2_split(path: str | Path, split: str) -> dict[str, list[tuple[str, list[int] | None]]]:
    """The models of ``split`` in the JSON split file ``path`` (either format of the module docstring):
    ``{synset: [(model_id, view indices or None for all), ...]}`` in the file's order. Raises
    :class:`FileNotFoundError` if missing and :class:`ValueError` naming the file if it is not valid JSON of
    either format or lacks ``split``."""
    p = require_file(path, "R2N2 split file")
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"R2N2 split file {p} is not valid JSON: {e!r}") from e
    shape = "{synset: {split: [model ids]}} or {split: {synset: {model id: [view indices]}}}"
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"R2N2 split file {p}: expected {shape}")
    out: dict[str, list[tuple[str, list[int] | None]]] = {}
    if split in data:  # {split: {synset: {model id: [views]}}} (PyTorch3D, meshrcnn) or {split: {synset: [ids]}}
        for synset, models in data[split].items():
            if isinstance(models, dict):
                entries = [(m, v) for m, v in models.items()]
                if not all(isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
                           for _, v in entries):
                    raise ValueError(f"R2N2 split file {p}: {split}/{synset} must map model ids to view indices")
                out[synset] = [(str(m), list(v)) for m, v in entries]
            elif isinstance(models, list) and all(isinstance(m, str) for m in models):
                out[synset] = [(m, None) for m in models]
            else:
                raise ValueError(f"R2N2 split file {p}: {split}/{synset} must be a list of model ids or a "
                                 "{model id: [view indices]} mapping")
        return out
    missing = sorted(s for s, splits in data.items() if split not in splits)
    if missing:
        raise ValueError(f"R2N2 split file {p}: no split {split!r}, neither at the top level nor in the synsets "
                         f"{missing} (expected {shape})")
    for synset, splits in data.items():
        ids = splits[split]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"R2N2 split file {p}: {synset}/{split} must be a list of model ids")
        out[synset] = [(i, None) for i in ids]
    return out


@dataclass(frozen=True)
class R2N2Config:
    """The item settings of :class:`R2N2` (the fields :class:`pose_core.data.reconstruction.ReconstructionSetConfig`
    shares with it)."""

    image_size: int = 64
    surface_points: int = 5000
    voxel_resolution: int = R2N2_VOXEL_RESOLUTION
    occupancy_points: int = 2048
    occupancy_sigma: float = 0.02


class R2N2(Dataset):
    """The views of the R2N2 models (module docstring), model by model (synsets sorted, then model ids as
    listed: sorted folder names, or the split file's order), view by view.

    Args:
        root: the folder holding ``ShapeNetRendering`` and ``ShapeNetVox32``.
        split: a split of the split file (``"train"``, ``"test"``, ...) or ``None``: every model on disk.
        synsets: the synset ids to load (default: the split file's, or every synset folder of renders).
        split_file: the JSON split file (module docstring: both formats); default ``root/splits.json``.
            Needed unless ``split`` is ``None`` (then it must not be given).
        image_size: side of ``image`` in pixels.
        views: ``None`` (every view of the model: of ``renderings.txt``, or those the split file lists),
            an int ``n`` (the first ``n`` of those) or view indices (those of them the model has).
        surface_points, occupancy_points: sizes of ``points`` and of ``occ_points`` (even).
        seed: of the per-model samples.
        occupancy_sigma: the noise of the near-surface half of ``occ_points``.

    Render lists and metadata are read when the dataset is built; a model missing its voxels, its render
    folder, lists or a listed render raises :class:`FileNotFoundError` naming the path (renders when the
    view is read). ``models`` is the list of ``(synset, model_id)``, ``metadata[m]`` the ``(V, 5)`` metadata
    of model ``m`` (:func:`read_rendering_metadata`), ``class_names`` the loaded synset ids (labels index
    them) and ``category_names`` their readable names (:data:`R2N2_SYNSET_NAMES`)."""

    def __init__(self, root: str | Path, split: str | None = "train", synsets: Sequence[str] | None = None,
                 split_file: str | Path | None = None, image_size: int = 64,
                 views: int | Sequence[int] | None = None, surface_points: int = 5000, occupancy_points: int = 2048,
                 seed: int = 0, occupancy_sigma: float = 0.02) -> None:
        checks = {"image_size >= 1": int(image_size) >= 1, "surface_points >= 1": int(surface_points) >= 1,
                  "occupancy_points >= 2 and even": int(occupancy_points) >= 2 and int(occupancy_points) % 2 == 0,
                  "occupancy_sigma > 0": float(occupancy_sigma) > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad R2N2 settings: {', '.join(bad)}")
        self.root = require_dir(root, "R2N2 root")
        self.render_root = require_dir(self.root / "ShapeNetRendering", "R2N2 renders folder")
        self.voxel_root = require_dir(self.root / "ShapeNetVox32", "R2N2 voxels folder")
        self.config = R2N2Config(int(image_size), int(surface_points), R2N2_VOXEL_RESOLUTION, int(occupancy_points),
                                 float(occupancy_sigma))
        self.voxel_resolution = R2N2_VOXEL_RESOLUTION
        self.seed, self.split = int(seed), split
        if isinstance(synsets, str):
            raise ValueError(f"synsets must be a sequence of synset ids, got the string {synsets!r}")

        listed: dict[str, list[tuple[str, list[int] | None]]] | None = None
        if split is None:
            if split_file is not None:
                raise ValueError(f"split=None loads every model on disk: give a split to use {split_file}")
        else:
            if split_file is None:
                split_file = self.root / "splits.json"
                if not split_file.is_file():
                    raise ValueError(f"split {split!r} needs a split_file (none given and no {split_file}); "
                                     "split=None loads every model on disk")
            listed = read_r2n2_split(split_file, split)
            if synsets is not None:
                absent = sorted(set(synsets) - set(listed))
                if absent:
                    raise ValueError(f"R2N2 split file {split_file} has no split {split!r} of the synsets {absent}")
        if synsets is None:
            if listed is not None:
                names = sorted(listed)
            else:
                names = sorted(d.name for d in self.render_root.iterdir() if d.is_dir())
            if not names:
                raise FileNotFoundError(f"R2N2 renders folder {self.render_root} has no synset folder")
        else:
            names = sorted(set(synsets))
            if not names:
                raise ValueError("synsets must name at least one synset")
        self.class_names: list[str] = names
        self.category_names: list[str] = [R2N2_SYNSET_NAMES.get(s, s) for s in names]

        self.models: list[tuple[str, str]] = []
        self.metadata: list[np.ndarray] = []
        self._renders: list[list[str]] = []
        self._index: list[tuple[int, int]] = []  # (model, view) per item
        for synset in names:
            if listed is not None:
                entries = listed[synset]
            else:
                folder = require_dir(self.render_root / synset, f"R2N2 renders folder of synset {synset!r}")
                entries = [(d.name, None) for d in sorted(folder.iterdir()) if d.is_dir()]
            for model_id, allowed in entries:
                require_file(self._voxel_path(synset, model_id), f"R2N2 voxels of model {synset}/{model_id}")
                rdir = require_dir(self.render_root / synset / model_id / "rendering",
                                   f"R2N2 renders of model {synset}/{model_id}")
                pngs = read_text_lines(rdir / "renderings.txt", f"R2N2 render list of model {synset}/{model_id}")
                meta = read_rendering_metadata(rdir / "rendering_metadata.txt")
                if len(meta) != len(pngs):
                    raise ValueError(f"R2N2 model {synset}/{model_id}: {rdir / 'renderings.txt'} lists {len(pngs)} "
                                     f"renders but {rdir / 'rendering_metadata.txt'} has {len(meta)} lines")
                chosen = self._choose_views(views, len(pngs), rdir, allowed)
                if not chosen:  # the split file gives none of the chosen views of this model to this split
                    continue
                m = len(self.models)
                self.models.append((synset, model_id))
                self.metadata.append(meta)
                self._renders.append(pngs)
                self._index.extend((m, v) for v in chosen)
        if not self.models:
            raise ValueError(f"no R2N2 model found under {self.root} (split {split!r}, synsets {names})")
        self.model_labels = [names.index(s) for s, _ in self.models]

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _choose_views(views, n: int, rdir: Path, allowed: list[int] | None) -> list[int]:
        """The view indices of one model: ``views`` (see the class docstring) among ``allowed`` (the split
        file's, ``None``: all ``n``)."""
        bad = [v for v in (allowed or []) if not 0 <= v < n]
        if bad:
            raise ValueError(f"the split file lists views {bad} of {rdir}, which has {n} renders")
        available = list(range(n)) if allowed is None else list(allowed)
        if views is None:
            return available
        if isinstance(views, (int, np.integer)) and not isinstance(views, bool):
            if not 1 <= views <= n:
                raise ValueError(f"views={views}: {rdir} has {n} renders")
            return available[:int(views)]
        chosen = [int(v) for v in views]
        bad = [v for v in chosen if not 0 <= v < n]
        if bad or not chosen:
            raise ValueError(f"views {list(views)}: need indices in 0..{n - 1} ({rdir} has {n} renders)")
        return [v for v in chosen if v in available]

    def _voxel_path(self, synset: str, model_id: str) -> Path:
        return self.voxel_root / synset / model_id / "model.binvox"

    def model_targets(self, m: int) -> dict[str, torch.Tensor]:
        """Per-model targets of model ``m``: ``voxels`` ``(32, 32, 32)`` bool, ``points``, ``occ_points``, ``occ``
        (bool), deterministic in ``seed`` and ``m``."""
        synset, model_id = self.models[m]
        occ_src, translate, scale = read_binvox(self._voxel_path(synset, model_id))
        grid = torch.from_numpy(binvox_to_object_grid(occ_src, translate, scale, self.voxel_resolution))
        if not grid.any():
            raise ValueError(f"R2N2 voxels {self._voxel_path(synset, model_id)} are empty")
        from pose_core.voxels import VOXEL_HALF_EXTENT, voxel_surface_points

        cfg = self.config
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + m)
        points = voxel_surface_points(grid, cfg.surface_points, generator=gen)
        half = cfg.occupancy_points // 2
        uniform = (torch.rand((half, 3), generator=gen) * 2 - 1) * VOXEL_HALF_EXTENT
        near = voxel_surface_points(grid, half, generator=gen)
        near = near + cfg.occupancy_sigma * torch.randn(near.shape, generator=gen)
        q = torch.cat([uniform, near])
        R = self.voxel_resolution
        ijk = torch.floor((q + VOXEL_HALF_EXTENT) * (R / (2 * VOXEL_HALF_EXTENT))).long()
        inside = ((ijk >= 0) & (ijk < R)).all(1)
        ijk = ijk.clamp(0, R - 1)
        occ = grid[ijk[:, 0], ijk[:, 1], ijk[:, 2]] & inside
        return {"voxels": grid, "points": points, "occ_points": q, "occ": occ}

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} R2N2 views")
        m, v = self._index[i]
        synset, model_id = self.models[m]
        t = self.model_targets(m)
        rdir = self.render_root / synset / model_id / "rendering"
        image = _read_render(rdir / self._renders[m][v], self.config.image_size)
        az, el, in_plane, distance_ratio, fov = (float(x) for x in self.metadata[m][v])
        return {
            "image": torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0),
            "points": t["points"].float(),
            "voxels": t["voxels"].float(),
            "occ_points": t["occ_points"].float(),
            "occ": t["occ"].float(),
            "label": int(self.model_labels[m]), "shape": synset, "shape_index": m,
            "rotation": torch.from_numpy(r2n2_view_rotation(az, el, in_plane).astype(np.float32)),
            "azimuth_deg": az, "elevation_deg": el, "distance_ratio": distance_ratio, "fov_deg": fov,
        }
