"""Which known object a depth crop or a mesh shows, in any orientation: the shape classifiers' API.

A :class:`ShapeRecognizer` wraps a trained classifier (:class:`pose_core.models.SphericalCNN` or
:class:`pose_core.models.PointNet`, from :func:`pose_core.model.load_model`) with the input settings
it was trained with (:class:`pose_core.data.shape_classes.ShapeSetConfig`, read from the checkpoint's
training config), and turns a depth crop into the model's input exactly as the training data did:
:func:`pose_core.data.sphere_projection.project_depth` for the spherical CNN,
:func:`pose_core.data.sphere_projection.depth_points` for PointNet.

``camera_to_world`` (``(3, 3)``, camera optical frame -> a gravity-aligned frame with z up, e.g. from
TF) matters for a model trained with rotations about z only; a model trained on SO(3) rotations (or
an exactly invariant spherical CNN) does not need it.

    recognizer = ShapeRecognizer.load("checkpoints/spherical_cnn_shapes_depth.pt")
    result = recognizer.recognize_depth(depth, K, mask=mask)   # depth (H, W) metres, K (3, 3)
    result.best, result.confidence, result.top(3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pose_core.data.shape_classes import ShapeSetConfig, normalize_mesh
from pose_core.data.sphere_projection import depth_points, project_depth, project_mesh

__all__ = ["Recognition", "ShapeRecognizer"]


@dataclass(frozen=True)
class Recognition:
    """A classifier's answer: ``probabilities`` ``(K,)`` float64 over ``class_names`` (summing to 1)."""

    class_names: tuple[str, ...]
    probabilities: np.ndarray

    @property
    def best(self) -> str:
        """The most probable class."""
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        """The probability of :attr:`best`."""
        return float(np.max(self.probabilities))

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes with their probabilities, most probable first."""
        order = np.argsort(-self.probabilities)[:k]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]


class ShapeRecognizer:
    """A shape classifier and the input settings it was trained with (see the module docstring)."""

    def __init__(self, model: Any, shape_set: ShapeSetConfig | None = None):
        if getattr(model, "input_key", None) not in ("signal", "points"):
            raise ValueError(f"not a shape classifier: {type(model).__name__} (want a SphericalCNN or PointNet)")
        self.model = model.eval()
        self.shape_set = shape_set if shape_set is not None else ShapeSetConfig()
        if model.input_key == "signal" and self.shape_set.bandwidth != model.config.bandwidth:
            raise ValueError(f"shape_set.bandwidth {self.shape_set.bandwidth} is not the model's "
                             f"{model.config.bandwidth}")

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> ShapeRecognizer:
        """From a checkpoint of ``train/train.py`` (its ``meta.train_config.data.shape_set`` gives the input
        settings; absent: the defaults with the model's bandwidth). ValueError if it holds no classifier."""
        from pose_core.model import CLASSIFIER_KINDS, load_model, read_checkpoint

        payload = read_checkpoint(path)
        if payload.get("kind") not in CLASSIFIER_KINDS:
            raise ValueError(f"checkpoint {path} holds a {payload.get('kind', 'image_to_sphere')!r} model, "
                             f"not a shape classifier {CLASSIFIER_KINDS}")
        model = load_model(path, device=device)
        raw = (((payload.get("meta") or {}).get("train_config") or {}).get("data") or {}).get("shape_set")
        shape_set = ShapeSetConfig(**raw) if isinstance(raw, dict) else None
        if shape_set is None and model.input_key == "signal":
            shape_set = ShapeSetConfig(bandwidth=model.config.bandwidth)
        return cls(model, shape_set)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.model.class_names)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _answer(self, x: torch.Tensor) -> Recognition:
        with torch.no_grad():
            p = self.model(x[None].to(self._device())).double().softmax(-1)[0].cpu().numpy()
        return Recognition(self.class_names, p)

    def inputs_from_depth(self, depth: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None,
                          camera_to_world: np.ndarray | None = None) -> torch.Tensor:
        """The model's input for one depth crop: a signal ``(6, 2b, 2b)`` or points ``(points, 3)``."""
        if self.model.input_key == "signal":
            return project_depth(depth, K, self.shape_set.bandwidth, frame_rotation=camera_to_world, mask=mask)
        pts = depth_points(depth, K, frame_rotation=camera_to_world, mask=mask)
        gen = torch.Generator().manual_seed(0)  # the same crop always gives the same answer
        pick = torch.randint(len(pts), (self.shape_set.points,), generator=gen)
        return torch.from_numpy(pts).float()[pick]

    def recognize_depth(self, depth: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None,
                        camera_to_world: np.ndarray | None = None) -> Recognition:
        """Class probabilities of the object a depth crop ``(H, W)`` (metres) shows; ``K`` ``(3, 3)`` its
        intrinsics; ``mask`` ``(H, W)`` bool: the object's pixels (default: every valid depth).
        ValueError for a crop with too few valid pixels or bad shapes."""
        return self._answer(self.inputs_from_depth(depth, K, mask, camera_to_world))

    def recognize_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> Recognition:
        """Class probabilities of a whole mesh (``(V, 3)``, ``(F, 3)``) in the pose it is given in."""
        v = normalize_mesh(vertices)
        if self.model.input_key == "signal":
            return self._answer(project_mesh(v, faces, self.shape_set.bandwidth))
        from pose_core.surface import sample_surface

        gen = torch.Generator().manual_seed(0)
        pts = sample_surface(torch.from_numpy(v), torch.tensor(np.asarray(faces), dtype=torch.long),
                             self.shape_set.points, generator=gen)
        return self._answer(pts.float())
