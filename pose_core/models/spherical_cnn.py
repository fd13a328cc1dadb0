"""Spherical CNN of Esteves et al. (ECCV 2018): rotation-invariant classification of S² signals.

After "Learning SO(3) Equivariant Representations with Spherical CNNs" (Esteves, Allen-Blanchette,
Makadia, Daniilidis), re-derived on this project's harmonics (:mod:`pose_core.wigner` basis,
:mod:`pose_core.s2` grids). Input: functions on the equiangular ``2b x 2b`` grid of
:mod:`pose_core.s2`, e.g. the six channels of :func:`pose_core.data.sphere_projection.project_mesh`
(distance, cos, sin of the shape; the same of its convex hull) ``(B, 6, 2b, 2b)``.

Everything but the input's grid -> coefficient projection works on spherical harmonic coefficients
``(B, C, (L+1)**2)``:

* **Spherical convolution with zonal filters.** For a filter ``h`` symmetric about the pole,
  ``(f * h)_lm = 2 pi sqrt(4 pi / (2l + 1)) f_lm h_l0``: one number per degree per channel pair,
  shared by all ``m``. The constant is absorbed into the learnt spectrum. Each filter's spectrum is
  learnt at ``anchors`` degrees spaced evenly over ``[0, L]`` and linearly interpolated between them:
  a smooth spectrum is a filter localised in space (the paper's point: few parameters, local support).
  A bias acts on degree 0 only.
* **Spectral pooling**: a layer's output keeps degrees ``<= L_out`` (its ``bandlimit``), i.e. it
  truncates the spectrum instead of pooling on the grid.
* **Normalisation** (:class:`SphereBatchNorm`): per channel, the sphere-and-batch mean is removed
  from degree 0 and every coefficient is divided by the standard deviation of the function values
  (Parseval): it commutes with rotations.
* **Nonlinearity** (:class:`SphereActivation`): pointwise, at the nodes of a Gauss-Legendre rule,
  then projected back to degrees ``<= L``. With ``activation="quadratic"`` (``s(x) = x/2 + x**2/4``,
  zero at 0 and -2, like a soft ReLU over the normalised range) the rule is exact for the
  degree-``3L`` integrand, so the layer is **exactly** rotation-equivariant (up to round-off);
  ``"relu"`` is the paper's choice, evaluated on the same nodes, and equivariant only up to aliasing.
* **Invariant descriptor**: the mean over the sphere (degree 0) of the last layer's channels, per
  branch; a small MLP classifies the concatenated descriptors. Two branches (the paper's shape and
  convex-hull inputs) have the same architecture and separate weights.

Consequently, with the quadratic activation, rotating the input coefficients by ``D_l(g)``
(:func:`pose_core.s2.rotate_coefficients`) leaves :meth:`SphericalCNN.descriptor_from_coefficients`
unchanged to float precision. Rotating the *mesh* changes the grid samples (the grid is not
rotation-invariant), so the descriptor of a re-projected rotated mesh agrees only approximately.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pose_core import s2, wigner

__all__ = ["KIND", "SphericalCNNConfig", "SphericalCNN", "SphericalConv", "SphereBatchNorm", "SphereActivation",
           "ACTIVATIONS"]

#: ``kind`` of this model's checkpoints (:func:`pose_core.model.load_model`).
KIND = "spherical_cnn"
#: Pointwise nonlinearities of :class:`SphereActivation`.
ACTIVATIONS = ("quadratic", "relu")


@dataclass
class SphericalCNNConfig:
    """Architecture. ``bandwidth`` ``b``: the input grid is ``2b x 2b``; ``in_channels`` split evenly into
    ``branches`` (in order: the first half is the shape, the second its hull); per branch, one convolution
    block per entry of ``channels`` with output degree ``bandlimits[i]`` (non-increasing, the first
    ``< b``); ``anchors`` degrees carry each filter's spectrum; ``hidden`` and ``dropout``: the classifier
    (``hidden`` 0: a linear one, as the paper's ``--no_final_fc``).
    ``class_names``: the labels, in index order. Defaults: our CPU setting (b = 16, 32 x 32 grid);
    ``config/train/spherical_cnn_modelnet40.yaml`` holds the paper's (b = 32)."""

    bandwidth: int = 16
    in_channels: int = 6
    branches: int = 2
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    bandlimits: list[int] = field(default_factory=lambda: [15, 8, 4])
    anchors: int = 6
    activation: str = "quadratic"
    hidden: int = 64
    dropout: float = 0.3
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        checks = {
            "bandwidth >= 2": self.bandwidth >= 2,
            "in_channels divisible by branches": self.branches >= 1 and self.in_channels % self.branches == 0,
            "channels and bandlimits of equal, non-zero length": len(self.channels) == len(self.bandlimits) > 0,
            "bandlimits[0] < bandwidth": bool(self.bandlimits) and self.bandlimits[0] < self.bandwidth,
            "bandlimits non-increasing and >= 0": all(a >= b >= 0 for a, b in zip(self.bandlimits,
                                                                                  self.bandlimits[1:] + [0])),
            "channels >= 1": all(c >= 1 for c in self.channels),
            "anchors >= 2": self.anchors >= 2,
            f"activation in {ACTIVATIONS}": self.activation in ACTIVATIONS,
            "0 <= dropout < 1": 0 <= self.dropout < 1,
            "hidden >= 0": self.hidden >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad SphericalCNNConfig ({', '.join(bad)}): {self}")


def _degree_index(lmax: int) -> torch.Tensor:
    """``(s2_dim(lmax),)`` int64: the degree ``l`` of each coefficient of the :mod:`pose_core.wigner` layout."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])


def _interpolation(anchors: int, lmax: int) -> torch.Tensor:
    """``(anchors, lmax + 1)``: linear interpolation from values at ``anchors`` evenly spaced degrees in
    ``[0, lmax]`` to every degree (each column sums to 1)."""
    pos = torch.linspace(0, anchors - 1, lmax + 1, dtype=torch.float64) if lmax > 0 else torch.zeros(1)
    lo = pos.floor().clamp(max=anchors - 2).long()
    frac = pos - lo
    M = torch.zeros(anchors, lmax + 1, dtype=torch.float64)
    cols = torch.arange(lmax + 1)
    M[lo, cols] = 1 - frac
    M[lo + 1, cols] += frac
    return M


class SphericalConv(nn.Module):
    """Zonal spherical convolution ``(B, C_in, (L_in+1)**2) -> (B, C_out, (L_out+1)**2)``, ``L_out <= L_in``
    (the degrees above ``L_out`` are dropped: spectral pooling). Spectrum learnt at ``anchors`` degrees."""

    def __init__(self, in_channels: int, out_channels: int, lmax_in: int, lmax_out: int, anchors: int):
        super().__init__()
        if lmax_out > lmax_in:
            raise ValueError(f"lmax_out {lmax_out} > lmax_in {lmax_in}: a convolution cannot add degrees")
        self.lmax_in, self.lmax_out = lmax_in, lmax_out
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, anchors) / math.sqrt(in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("interp", _interpolation(anchors, lmax_out), persistent=False)
        self.register_buffer("degree", _degree_index(lmax_out), persistent=False)

    def spectrum(self) -> torch.Tensor:
        """The filters' spectra ``(C_out, C_in, L_out + 1)``."""
        return self.weight @ self.interp.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = wigner.s2_dim(self.lmax_out)
        h = self.spectrum()[..., self.degree]  # (C_out, C_in, n)
        y = torch.einsum("bin,oin->bon", x[..., :n], h.to(x.dtype))
        return torch.cat((y[..., :1] + self.bias.to(x.dtype)[:, None], y[..., 1:]), -1)


class SphereBatchNorm(nn.Module):
    """Batch normalisation of S² signals ``(B, C, (L+1)**2)`` that commutes with rotations: per channel the
    mean function value (over sphere and batch) is removed from degree 0 and all coefficients are divided
    by the standard deviation of the function values (``mean f**2 = sum c**2``); affine scale and degree-0
    shift. Running statistics as in :class:`torch.nn.BatchNorm1d` (momentum 0.1)."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x[..., 0].mean(0)  # (C,)
            var = (x.pow(2).sum(-1).mean(0) - mean.pow(2)).clamp_min(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        scale = (self.weight.to(x.dtype) / (var + self.eps).sqrt())[:, None]
        y = x * scale
        shift = (self.bias.to(x.dtype) - mean * scale[:, 0])[:, None]
        return torch.cat((y[..., :1] + shift, y[..., 1:]), -1)


class SphereActivation(nn.Module):
    """Pointwise nonlinearity of an S² signal ``(B, C, (L+1)**2) -> (B, C, (L+1)**2)``: synthesised at the
    nodes of :func:`pose_core.s2.gauss_legendre_grid` of degree ``3L``, ``s`` applied, projected back. Exact
    (rotation-equivariant to round-off) for ``"quadratic"``; aliased for ``"relu"``."""

    def __init__(self, lmax: int, activation: str = "quadratic"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        pts, w = s2.gauss_legendre_grid(3 * lmax)
        Y = wigner.spherical_harmonics(pts, lmax)  # (Q, n)
        # float64 tables (cast to the input's dtype): a float64 model is exact to float64 round-off
        self.register_buffer("synthesis", Y.T.contiguous(), persistent=False)  # (n, Q)
        self.register_buffer("analysis", Y * w[:, None], persistent=False)  # (Q, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x @ self.synthesis.to(x.dtype)  # (B, C, Q)
        f = 0.5 * f + 0.25 * f * f if self.activation == "quadratic" else F.relu(f)
        return f @ self.analysis.to(x.dtype)


class _Branch(nn.Module):
    """Input normalisation and the convolution blocks of one branch: coefficients ``(B, C_in, n_0)`` ->
    the last block's signal ``(B, C_last, (L_last+1)**2)``."""

    def __init__(self, in_channels: int, cfg: SphericalCNNConfig):
        super().__init__()
        self.input_norm = SphereBatchNorm(in_channels)
        blocks, c, l_in = [], in_channels, cfg.bandlimits[0]
        for c_out, l_out in zip(cfg.channels, cfg.bandlimits):
            blocks.append(nn.Sequential(SphericalConv(c, c_out, l_in, l_out, cfg.anchors), SphereBatchNorm(c_out),
                                        SphereActivation(l_out, cfg.activation)))
            c, l_in = c_out, l_out
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input_norm(x))


class SphericalCNN(nn.Module):
    """S² signals ``(B, in_channels, 2b, 2b)`` (equiangular grid of :mod:`pose_core.s2`) -> class logits
    ``(B, num_classes)``; see the module docstring. ``input_key`` names the batch entry it reads."""

    kind = KIND
    input_key = "signal"

    def __init__(self, config: SphericalCNNConfig | dict, class_names: list[str] | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = SphericalCNNConfig(**config)
        if class_names is not None:
            config = dataclasses.replace(config, class_names=list(class_names))
        if len(config.class_names) < 2:
            raise ValueError(f"a classifier needs at least 2 class names, got {config.class_names}")
        self.config = config
        self.lmax = config.bandlimits[0]
        per = config.in_channels // config.branches
        self.branches = nn.ModuleList(_Branch(per, config) for _ in range(config.branches))
        width = config.channels[-1] * config.branches
        k = len(config.class_names)
        self.head = (nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, k)) if config.hidden == 0 else
                     nn.Sequential(nn.Linear(width, config.hidden), nn.BatchNorm1d(config.hidden), nn.ReLU(),
                                   nn.Dropout(config.dropout), nn.Linear(config.hidden, k)))
        A = s2.equiangular_analysis_matrix(config.bandwidth, self.lmax)
        self.register_buffer("analysis", A, persistent=False)  # (4b^2, n_0) float64, cast to the input's dtype

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def coefficients(self, signal: torch.Tensor) -> torch.Tensor:
        """Grid signal ``(B, C, 2b, 2b)`` -> coefficients ``(B, C, (L_0+1)**2)`` (quadrature projection)."""
        b = self.config.bandwidth
        if signal.ndim != 4 or signal.shape[1:] != (self.config.in_channels, 2 * b, 2 * b):
            raise ValueError(f"signal must be (B, {self.config.in_channels}, {2 * b}, {2 * b}) for bandwidth {b}, "
                             f"got {tuple(signal.shape)}")
        return signal.flatten(-2) @ self.analysis.to(signal.dtype)

    def descriptor_from_coefficients(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Rotation-invariant descriptor ``(B, branches * channels[-1])`` of input coefficients
        ``(B, in_channels, (L_0+1)**2)``: per branch, the sphere mean of each last-layer channel."""
        chunks = coeffs.chunk(self.config.branches, dim=1)
        return torch.cat([branch(x)[..., 0] for branch, x in zip(self.branches, chunks)], -1)

    def descriptor(self, signal: torch.Tensor) -> torch.Tensor:
        """Rotation-invariant descriptor ``(B, D)`` of grid signals ``(B, C, 2b, 2b)``."""
        return self.descriptor_from_coefficients(self.coefficients(signal))

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return self.head(self.descriptor(signal))

    @torch.no_grad()
    def predict_proba(self, signal: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, num_classes)`` (eval mode is the caller's: :func:`load_model` sets it)."""
        return self(signal).softmax(-1)

    def checkpoint_payload(self) -> dict[str, Any]:
        """The model-specific part of a checkpoint (:func:`pose_core.model.save_checkpoint`)."""
        return {"kind": KIND, "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_checkpoint_payload(cls, payload: dict) -> SphericalCNN:
        """Rebuild from :func:`pose_core.model.read_checkpoint`'s dict (ValueError if it does not fit)."""
        model = cls(dict(payload["config"]))
        model.load_state_dict(payload["state_dict"], strict=True)
        return model
