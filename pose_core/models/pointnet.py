"""PointNet-style classifier of point sets: the non-equivariant baseline beside the spherical CNN.

After Qi et al., "PointNet" (CVPR 2017), without the input and feature transform networks (the
T-Nets): a shared MLP on each point ``(B, N, 3) -> (B, N, C)``, a max over the points (invariant to
their order, not to rotations), and an MLP classifier. Points are in the same normalised frame as
the spherical signals of :mod:`pose_core.data.sphere_projection` (centred, farthest point at
radius 1), so both models see the same shapes in the same poses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["KIND", "PointNetConfig", "PointNet"]

#: ``kind`` of this model's checkpoints (:func:`pose_core.model.load_model`).
KIND = "pointnet"


@dataclass
class PointNetConfig:
    """``widths``: the shared per-point MLP (1x1 convolutions, batch norm, ReLU); ``hidden``, ``dropout``:
    the classifier; ``class_names``: the labels in index order."""

    widths: list[int] = field(default_factory=lambda: [64, 64, 128])
    hidden: int = 64
    dropout: float = 0.3
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths) or self.hidden < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"bad PointNetConfig (widths non-empty and >= 1, hidden >= 1, 0 <= dropout < 1): {self}")


class PointNet(nn.Module):
    """Points ``(B, N, 3)`` -> class logits ``(B, num_classes)``. ``input_key`` names the batch entry it reads."""

    kind = KIND
    input_key = "points"

    def __init__(self, config: PointNetConfig | dict, class_names: list[str] | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = PointNetConfig(**config)
        if class_names is not None:
            config = dataclasses.replace(config, class_names=list(class_names))
        if len(config.class_names) < 2:
            raise ValueError(f"a classifier needs at least 2 class names, got {config.class_names}")
        self.config = config
        layers: list[nn.Module] = []
        c = 3
        for w in config.widths:
            layers += [nn.Conv1d(c, w, 1), nn.BatchNorm1d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, config.hidden), nn.BatchNorm1d(config.hidden), nn.ReLU(),
                                  nn.Dropout(config.dropout), nn.Linear(config.hidden, len(config.class_names)))

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def descriptor(self, points: torch.Tensor) -> torch.Tensor:
        """Global feature ``(B, widths[-1])``: the max over the points of the shared MLP."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
        return self.features(points.transpose(1, 2)).amax(-1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.descriptor(points))

    @torch.no_grad()
    def predict_proba(self, points: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, num_classes)``."""
        return self(points).softmax(-1)

    def checkpoint_payload(self) -> dict[str, Any]:
        """The model-specific part of a checkpoint (:func:`pose_core.model.save_checkpoint`)."""
        return {"kind": KIND, "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_checkpoint_payload(cls, payload: dict) -> PointNet:
        """Rebuild from :func:`pose_core.model.read_checkpoint`'s dict (ValueError if it does not fit)."""
        model = cls(dict(payload["config"]))
        model.load_state_dict(payload["state_dict"], strict=True)
        return model
