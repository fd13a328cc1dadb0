"""Calibration of SO(3) distributions: highest-density-region coverage, entropy, temperature.

All functions work on a distribution given as grid logits ``(B, N)`` over the ``N = 72 * 8**level``
equal-volume cells of :mod:`pose_core.grids` (``ImageToSphere.grid_logits``), and on the truth as
cell indices ``(B, K)`` of each image's equivalent rotations with a mask ``(B, K)`` bool
(:func:`truth_cells`). Densities follow :mod:`pose_core.metrics`: Haar measure of volume
``pi**2``, so the uniform distribution has entropy ``log(pi**2) = 2.29`` nats and every
log-density ``-2.29``.

* **Coverage.** The ``a``-highest-density region (HDR) is the smallest set of cells, taken from the
  most probable down, holding mass ``a``. The truth lies in it when the mass of the cells strictly
  more probable than the truth's cell is below ``a``; for a symmetric object any equivalent counts
  (the most probable one). A calibrated model has the truth in its 90 % HDR on 90 % of images.
* **Temperature.** ``logits / T``: ``T > 1`` widens the distribution. :func:`fit_temperature`
  picks the ``T`` that maximises the held-out log-likelihood (a 1-D search in ``log T``), and the
  model applies it through ``InferenceSettings.temperature``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from pose_core import grids
from pose_core.line_search import golden_section
from pose_core.metrics import Equivalents, pad_equivalents

__all__ = [
    "truth_cells",
    "hdr_coverage",
    "entropy",
    "truth_log_likelihood",
    "fit_temperature",
    "maximise_over_temperature",
    "UNIFORM_ENTROPY",
]

#: Entropy (nats) of the uniform distribution on SO(3) w.r.t. the Haar measure of volume pi^2.
UNIFORM_ENTROPY = math.log(math.pi**2)


def truth_cells(equivalents: Equivalents, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells ``(B, K)`` int64 at grid ``level`` of each image's equivalents, and their mask ``(B, K)``."""
    eq, mask = pad_equivalents(equivalents, dtype=torch.float64)
    return grids.cell_of(eq, level), mask


def _check(logits: torch.Tensor, cells: torch.Tensor, mask: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, N), got {tuple(logits.shape)}")
    if cells.shape != mask.shape or cells.dim() != 2 or cells.shape[0] != logits.shape[0]:
        raise ValueError(f"cells and mask must be (B, K) with B = {logits.shape[0]}, got {tuple(cells.shape)}, "
                         f"{tuple(mask.shape)}")


def hdr_coverage(logits: torch.Tensor, cells: torch.Tensor, mask: torch.Tensor,
                 levels: Sequence[float] = (0.5, 0.9)) -> torch.Tensor:
    """``(B, len(levels))`` bool: the truth lies in the ``levels[j]`` highest-density region."""
    _check(logits, cells, mask)
    logp = torch.log_softmax(logits.double(), dim=1)
    truth = logp.gather(1, cells.to(logp.device)).masked_fill(~mask.to(logp.device), -math.inf).amax(1)  # (B,)
    above = torch.where(logp > truth[:, None], logp.exp(), torch.zeros_like(logp)).sum(1)  # (B,)
    return torch.stack([above < a for a in levels], dim=1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Differential entropy ``(B,)`` nats of the grid distributions (Haar volume pi^2; uniform 2.29)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, N), got {tuple(logits.shape)}")
    logp = torch.log_softmax(logits.double(), dim=1)
    n = logits.shape[1]
    log_density = logp + math.log(n / math.pi**2)
    return -(logp.exp() * log_density).sum(1)


def truth_log_likelihood(logits: torch.Tensor, cells: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-density ``(B,)`` at the truth, averaged over the equivalents (as :mod:`pose_core.metrics`)."""
    _check(logits, cells, mask)
    logp = torch.log_softmax(logits.double(), dim=1)
    ld = logp.gather(1, cells.to(logp.device)) + math.log(logits.shape[1] / math.pi**2)
    m = mask.to(logp.device)
    return torch.where(m, ld, torch.zeros_like(ld)).sum(1) / m.sum(1)


def fit_temperature(logits: torch.Tensor, cells: torch.Tensor, mask: torch.Tensor,
                    bounds: tuple[float, float] = (0.05, 20.0), iterations: int = 60) -> float:
    """The temperature ``T`` in ``bounds`` maximising the mean :func:`truth_log_likelihood` of ``logits / T``
    (golden-section search in ``log T``; the log-likelihood is concave in ``1 / T``)."""
    _check(logits, cells, mask)
    return maximise_over_temperature(
        lambda t: float(truth_log_likelihood(logits / t, cells, mask).mean()), bounds, iterations)


def maximise_over_temperature(objective: Callable[[float], float], bounds: tuple[float, float] = (0.05, 20.0),
                              iterations: int = 60) -> float:
    """The ``T`` in ``bounds`` maximising ``objective(T)`` (unimodal in ``log T``: golden-section search); e.g.
    the held-out log-likelihood of a model run at temperature ``T``."""
    lo, hi, _, _ = golden_section(lambda log_t: -objective(math.exp(log_t)), math.log(bounds[0]),
                                  math.log(bounds[1]), iterations)
    return math.exp(0.5 * (lo + hi))
