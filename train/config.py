"""Training configuration: dataclasses, YAML loading and ``key.sub=value`` overrides.

A config file (``config/train/<name>.yaml``) holds the fields of :class:`TrainConfig`; sections
``data``, ``eval_data`` (optional), ``model`` (:class:`pose_core.model.ModelConfig`), ``optim`` and
``eval`` are nested mappings. Command-line overrides ``optim.lr=3e-4``, ``data.shapes=[cube,cone]``
are parsed as YAML scalars/lists and converted to the field's type. Unknown keys and values of the
wrong type raise ``ValueError`` naming the key and what was received.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pose_core.data.randomize import Randomization
from pose_core.data.reconstruction import ReconstructionSetConfig
from pose_core.data.scenes import SceneConfig
from pose_core.data.shape_classes import ShapeSetConfig
from pose_core.model import CLASSIFIER_KINDS, MODEL_KINDS, ModelConfig
from pose_core.models.pointnet import PointNetConfig
from pose_core.models.reconstruction import ReconstructionConfig
from pose_core.models.spherical_cnn import SphericalCNNConfig
from pose_core.models.spyropose import SpyroPoseConfig
from pose_core.refine.neural_mesh import NeuralMeshConfig

__all__ = [
    "MeshSpec",
    "DataConfig",
    "OptimConfig",
    "EvalConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "DATASETS",
    "SHAPE_DATASETS",
    "RECONSTRUCTION_DATASETS",
]

#: Dataset kinds understood by :func:`train.datasets.build_dataset`.
DATASETS = ("symsol", "symsol_dir", "mesh", "shards", "modelnet10", "pascal3d", "scenes", "procedural_shapes",
            "modelnet40", "mesh_folder", "reconstruction_shapes", "r2n2")
#: The shape-classification datasets (3D shapes, not images): for the classifier kinds.
SHAPE_DATASETS = ("procedural_shapes", "modelnet40", "mesh_folder")
#: Images with 3D shape targets (surface points, voxels, occupancy): for ``kind: reconstruction``.
RECONSTRUCTION_DATASETS = ("reconstruction_shapes", "r2n2")


@dataclass
class MeshSpec:
    """A mesh file (OBJ, URDF, GLB, STL, PLY...) rendered like a SYMSOL shape. ``path`` may start with
    ``pybullet_data/`` (resolved with ``pybullet_data.getDataPath()``). Its symmetry: ``symmetry``, a
    short spec (``cyclic:4``, ``dihedral:2:x``, ``revolution``...: see
    :func:`pose_core.data.shapes.symmetry_rotations`), or ``symmetries``, ``(K, 3, 3)`` nested
    lists, identity first; neither: no symmetry. Both are in the normalised object frame of
    :func:`pose_core.data.mesh_shape`."""

    path: str = "pybullet_data/duck_vhacd.urdf"
    name: str = "duck"
    symmetries: list | None = None
    symmetry: str | None = None

    def __post_init__(self) -> None:
        if self.symmetry is not None and self.symmetries is not None:
            raise ValueError(f"mesh {self.name!r}: give symmetry or symmetries, not both")
        if self.symmetry is not None:
            from pose_core.data.shapes import symmetry_rotations

            symmetry_rotations(self.symmetry)  # a bad spec fails here, naming the forms


@dataclass
class DataConfig:
    """Where the images come from (see :data:`DATASETS`).

    * ``symsol``: rendered on the fly (``shapes``, ``size`` per shape, ``image_size``, ``seed``,
      ``occluders``).
    * ``symsol_dir``: a written SYMSOL split under ``root`` (``split``; ``size`` ``None`` = all).
    * ``mesh``: ``meshes`` (mesh files with their symmetries) together with the SYMSOL ``shapes``
      (may be empty), rendered on the fly with the same seed scheme.
    * ``shards``: items pre-rendered under ``root`` by ``train/render_shards.py`` from a ``symsol`` or
      ``mesh`` config (recorded in the shards; its held-out twin is rendered on the fly).
    * ``modelnet10``, ``pascal3d``: the public datasets under ``root`` (``split``).
    * ``scenes``: SE(3) training data (:class:`pose_core.data.scenes.SE3RenderDataset`): the one
      object of ``shapes`` / ``meshes`` anywhere in a real camera's view at a varying distance, with
      simulated detection boxes and the object-centred crops (``scene``: camera, distances, box
      error; ``None``: the defaults); for ``kind: spyropose``.
    * ``procedural_shapes``, ``modelnet40``, ``mesh_folder``: 3D shapes for the shape classifiers (``kind:
      spherical_cnn``, ``pointnet``): the procedural set of :mod:`pose_core.data.procedural` (split ``train`` /
      ``test``, shapes from disjoint seeds), ModelNet40's OFF files under ``root``, or your own meshes under
      ``root`` (:mod:`pose_core.data.mesh_folder`: ``root/<class>/<split>/*.stl|obj|ply|off|glb``); how
      they are posed and seen (whole mesh or single-view depth, z or SO(3) rotations): ``shape_set``
      (:class:`pose_core.data.shape_classes.ShapeSetConfig`; ``None``: its defaults). ``seed``: the views'.
      ``procedural_shapes`` adds one class per entry of ``meshes`` (e.g. the ``pybullet_data`` duck): a
      known object, the same mesh in other poses in the held-out split.
    * ``reconstruction_shapes``: renders of the procedural set (split ``train`` / ``test``) with their 3D
      targets, for ``kind: reconstruction`` (:class:`pose_core.data.reconstruction.ReconstructionDataset`);
      ``recon_set`` (:class:`pose_core.data.reconstruction.ReconstructionSetConfig`; ``None``: its defaults)
      says which classes, how many shapes, views, image size and targets; ``meshes`` add known objects
      (``per_class`` shapes each: the one mesh, other views); ``seed``: the views'.
    * ``r2n2``: the R2N2 ShapeNet release under ``root`` (:class:`pose_core.data.r2n2.R2N2`: renders, 32^3
      voxels, cameras), the models of ``split`` listed in ``root/splits.json`` (``{synset: {"train": [ids],
      "test": [ids]}}``); ``recon_set.classes``: synset ids; image size and samples from ``recon_set``.

    ``randomize`` (rendered data only): domain randomisation, a
    :class:`pose_core.data.randomize.Randomization` mapping (``randomize: {}`` takes the defaults,
    the shipped checkpoint's recipe); ``None``: plain renders (black background, one light, centred).
    """

    name: str = "symsol"
    shapes: list[str] = field(default_factory=lambda: ["tet", "cube", "icosa", "cone", "cyl"])
    meshes: list[MeshSpec] = field(default_factory=list)
    size: int | None = 1000
    image_size: int = 224
    seed: int = 0
    occluders: int = 0
    root: str | None = None
    split: str = "train"
    pascal_warp: bool = False
    pascal_synth: bool = False
    randomize: Randomization | None = None
    scene: SceneConfig | None = None
    shape_set: ShapeSetConfig | None = None
    recon_set: ReconstructionSetConfig | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"data.name must be one of {DATASETS}, got {self.name!r}")
        needs_root = ("symsol_dir", "shards", "modelnet10", "pascal3d", "modelnet40", "mesh_folder", "r2n2")
        if self.name in needs_root and not self.root:
            raise ValueError(f"data.name={self.name!r} needs data.root (the dataset folder), got {self.root!r}")
        if self.name == "mesh" and not self.meshes:
            raise ValueError("data.name='mesh' needs at least one entry in data.meshes")
        if self.randomize is not None and self.name not in ("symsol", "mesh", "scenes"):
            raise ValueError(f"data.randomize applies to rendered data (symsol, mesh, scenes), not {self.name!r}")
        if self.name == "scenes" and len(self.shapes) + len(self.meshes) != 1:
            raise ValueError("data.name='scenes' renders one object: give exactly one entry in data.shapes or "
                             f"data.meshes, got shapes {self.shapes} and {len(self.meshes)} meshes")
        if self.randomize is not None and self.occluders:
            raise ValueError("data.occluders (flat quads) and data.randomize do not combine: "
                             "set data.randomize.occlusion_p instead")


@dataclass
class OptimConfig:
    """Optimizer and LR schedule. Defaults: the Image2Sphere reference (``dmklee/image2sphere``
    ``src/train.py``): SGD, lr 1e-3, momentum 0.9, Nesterov, no weight decay, step decay x0.1 every
    15 epochs, 40 epochs, batch 64.

    ``schedule``: ``constant``, ``step`` (x ``step_gamma`` every ``step_epochs`` epochs, or every
    ``step_steps`` steps when set) or ``cosine`` (to ``min_lr_ratio * lr`` at the last step); all
    after ``warmup_steps`` of linear warm-up.
    """

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "step"
    step_epochs: float = 15.0
    step_steps: int | None = None
    step_gamma: float = 0.1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {self.name!r}")
        if self.schedule not in ("constant", "step", "cosine"):
            raise ValueError(f"optim.schedule must be constant, step or cosine, got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass
class EvalConfig:
    """Periodic evaluation on a small held-out set during training (``every`` steps; 0: only at the end,
    ``None``: never). The held-out set is ``eval_data`` or, by default, ``data`` with
    ``seed + 1_000_003`` (other rotations) and ``size`` items per shape (split ``test`` for the
    public datasets). ``grid_level``: grid of the IPDF/I2S log-likelihood."""

    every: int | None = 0
    size: int = 16
    grid_level: int = 4
    batch_size: int = 16
    plots: int = 0


@dataclass
class TrainConfig:
    """One training run. ``kind``: the model trained (:data:`pose_core.model.MODEL_KINDS`): ``image_to_sphere``
    (section ``model``), ``spyropose`` (section ``spyropose``), ``neural_mesh`` (section ``neural_mesh``, the
    render-and-compare refiner of :mod:`pose_core.refine`), which two train on ``data.name: scenes``, or the
    shape classifiers ``spherical_cnn`` / ``pointnet`` (sections of those names) on ``procedural_shapes`` /
    ``modelnet40``, or ``reconstruction`` (section ``reconstruction``: single-view 3D shape, five decoders) on
    ``reconstruction_shapes``.
    ``epochs`` or ``max_steps`` (the smaller bound wins when both are set);
    ``max_seconds`` also stops it (wall time of this run, with a final evaluation and checkpoint).
    ``init_from``: a checkpoint whose weights the run starts from (fine-tuning: fresh optimizer,
    schedule and step 0; its model config must equal ``model``); ignored when resuming.
    ``init_encoder_from``: a checkpoint of any kind whose image encoder (``encoder.*`` weights, same
    architecture) this run's encoder starts from, e.g. the shipped Image2Sphere's for a SpyroPose
    model of an object it knows; ignored when resuming."""

    name: str = "run"
    kind: str = "image_to_sphere"
    data: DataConfig = field(default_factory=DataConfig)
    eval_data: DataConfig | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    spyropose: SpyroPoseConfig = field(default_factory=SpyroPoseConfig)
    neural_mesh: NeuralMeshConfig = field(default_factory=NeuralMeshConfig)
    spherical_cnn: SphericalCNNConfig = field(default_factory=SphericalCNNConfig)
    pointnet: PointNetConfig = field(default_factory=PointNetConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    epochs: int | None = 40
    max_steps: int | None = None
    max_seconds: float | None = None
    init_from: str | None = None
    init_encoder_from: str | None = None
    batch_size: int = 64
    amp: str = "none"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int | None = 1000
    runs_dir: str = "runs"
    checkpoint_dir: str = "checkpoints"
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if (self.kind in ("spyropose", "neural_mesh")) != (self.data.name == "scenes"):
            raise ValueError(f"kind {self.kind!r} with data.name {self.data.name!r}: spyropose and neural_mesh models "
                             "train on data.name 'scenes' (SE(3) labels), and 'scenes' data trains only those")
        if (self.kind in CLASSIFIER_KINDS) != (self.data.name in SHAPE_DATASETS):
            raise ValueError(f"kind {self.kind!r} with data.name {self.data.name!r}: the shape classifiers "
                             f"{CLASSIFIER_KINDS} train on {SHAPE_DATASETS}, and those train only them")
        if (self.kind == "reconstruction") != (self.data.name in RECONSTRUCTION_DATASETS):
            raise ValueError(f"kind {self.kind!r} with data.name {self.data.name!r}: kind 'reconstruction' trains on "
                             f"{RECONSTRUCTION_DATASETS}, and those train only it")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps (both are None)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


# ----------------------------------------------------------------------------- (de)serialisation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from YAML) converted to type ``tp``; ``ValueError`` naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is list or tp is list:
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, str) and origin is list:  # "cube,cone" convenience
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key}: expected a string, got {value!r}")
    raise ValueError(f"{key}: unsupported field type {_type_name(tp)}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        keys = [f"{prefix}.{k}" if prefix else k for k in unknown]
        raise ValueError(f"unknown config key(s) {keys}{where}; known: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{prefix or 'config'}: {e}") from e


def config_from_dict(data: dict) -> TrainConfig:
    """:class:`TrainConfig` from a plain dict (as in YAML files and checkpoints)."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping, got {type(data).__name__}")
    return _from_dict(TrainConfig, data)


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain dict (YAML/JSON/``weights_only``-safe) of ``cfg``."""
    return dataclasses.asdict(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"override must look like key.sub=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"bad override key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse the value of override {item!r}: {e}") from e
    return key.split("."), value


#: Config sections that default to ``None``: overriding one of their keys starts from these defaults.
_OPTIONAL_SECTIONS: dict[str, type] = {"eval_data": DataConfig, "scene": SceneConfig, "shape_set": ShapeSetConfig,
                                       "randomize": Randomization, "recon_set": ReconstructionSetConfig}


def apply_overrides(data: dict, overrides: Sequence[str], defaults: dict | None = None) -> dict:
    """Copy of ``data`` with ``key.sub=value`` ``overrides`` applied (values parsed as YAML).

    ``defaults`` (``config_to_dict(TrainConfig())``) tells which keys exist, so that overriding a
    section key absent from the file works, and a misspelt key raises ``ValueError``.
    """
    import copy

    out = copy.deepcopy(data)
    defaults = config_to_dict(TrainConfig()) if defaults is None else defaults
    for item in overrides:
        path, value = _parse_override(item)
        node, ref = out, defaults
        for i, part in enumerate(path[:-1]):
            sub = node.get(part)
            ref_sub = ref.get(part) if isinstance(ref, dict) else None
            if ref_sub is None and part in _OPTIONAL_SECTIONS:  # a section whose default is None
                ref_sub = dataclasses.asdict(_OPTIONAL_SECTIONS[part]())
            if not isinstance(ref_sub, dict) and not isinstance(sub, dict):
                raise ValueError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a config section")
            if sub is None:
                sub = node[part] = {}
            node, ref = sub, ref_sub if isinstance(ref_sub, dict) else {}
        last = path[-1]
        if ref and last not in ref:
            raise ValueError(f"override {item!r}: unknown key {'.'.join(path)!r}; known: {sorted(ref)}")
        node[last] = value
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read YAML ``path`` (``None``: defaults), apply ``overrides``, validate, return :class:`TrainConfig`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"cannot parse config {path}: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return config_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path or 'config'}: {e}") from e
