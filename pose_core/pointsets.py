"""Distances between point sets: nearest neighbours, chamfer distance, F-score.

Conventions, stated once for the reconstruction code (:mod:`pose_core.models.reconstruction`,
:mod:`pose_core.fitting`, :mod:`pose_core.data.reconstruction`):

* Point sets are ``(B, N, 3)`` float tensors (a single set ``(N, 3)`` is accepted and treated as
  ``B = 1``; outputs then drop the batch axis too). Both sets of a pair have the same dtype and
  device; ``N`` and ``M`` may differ.
* Shapes are in the **unit-diagonal frame** of :mod:`pose_core.data.reconstruction`: centred on their
  bounding-box centre and scaled so that the bounding-box diagonal is 1 (ShapeNet's normalisation, the
  one the seed study and Tatarchenko et al. measure in). A threshold ``tau = 0.01`` is 1 % of the
  object's size.
* :func:`chamfer_distance` is the symmetric mean of **squared** nearest-neighbour distances (the
  definition of PyTorch3D's ``chamfer_distance``, the seed's loss):
  ``mean_i min_j |a_i - b_j|^2 + mean_j min_i |a_i - b_j|^2``.
* :func:`f_score` is the seed's (and Tatarchenko et al.'s) F1: precision = fraction of predicted points
  within ``tau`` (Euclidean, not squared) of some target point, recall = fraction of target points within
  ``tau`` of some predicted point, ``F = 2 P R / (P + R)`` (0 when both are 0).

The nearest neighbour is searched (on CPU, for large sets, with SciPy's k-d tree in float64; otherwise with
one matrix product per row chunk, ``|b|^2 - 2 a.b``) and the distance to it is then recomputed in torch from
the difference ``a - b_j`` (exact: no ``|a|^2 + |b|^2 - 2 a.b`` cancellation in the value or the gradient).
Two candidates closer to each other than float rounding may be swapped by the matrix-product search; the
distance returned is then that of an equally near point. Memory ``O(B N)`` plus
one chunk, so 5,000 x 5,000 points fit. Plain PyTorch: differentiable, CPU or CUDA.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["nearest_distances", "chamfer_distance", "f_score", "shape_scores", "SCORE_TAUS"]

#: The F-score thresholds every reconstruction is scored at: the seed study's 0.05 and Tatarchenko et al.'s
#: 1 % of the object's size.
SCORE_TAUS = (0.05, 0.01)

_CHUNK_ELEMENTS = 2**24  # B * rows * M pairs per chunk (64 MB of float32 scores)
_KDTREE_PAIRS = 2**18  # N * M from which a CPU search uses a k-d tree (256 x 1024 points and up)


def _as_batch(points: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(points).__name__}")
    if points.ndim == 2:
        points = points.unsqueeze(0)
        single = True
    else:
        single = False
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, N, 3) or (N, 3) with N >= 1, got {tuple(points.shape)}")
    return points, single


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    a, single_a = _as_batch(a, "a")
    b, single_b = _as_batch(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b need the same batch size, got {a.shape[0]} and {b.shape[0]}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"a and b need the same dtype and device, got {a.dtype}/{a.device} and {b.dtype}/{b.device}")
    return a, b, single_a and single_b


def _nearest_index(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Index ``(B, N)`` into ``b`` ``(B, M, 3)`` of the nearest point to each point of ``a`` ``(B, N, 3)``
    (not differentiated: a choice). Large CPU inputs: a k-d tree per set (exact, ``O(N log M)``); otherwise
    (CUDA, small sets) one matrix product per row chunk."""
    B, N, _ = a.shape
    M = b.shape[1]
    if a.device.type == "cpu" and N * M >= _KDTREE_PAIRS:
        from scipy.spatial import cKDTree

        a_np = a.detach().to(torch.float64).numpy()
        b_np = b.detach().to(torch.float64).numpy()
        idx_np = [cKDTree(b_np[i]).query(a_np[i], k=1, workers=-1)[1] for i in range(B)]
        return torch.from_numpy(np.stack(idx_np)).long()
    rows = max(1, _CHUNK_ELEMENTS // max(1, B * M))
    idx = []
    with torch.no_grad():
        b_sq = (b * b).sum(-1).unsqueeze(1)  # (B, 1, M)
        for s in range(0, N, rows):
            rows_a = a[:, s:s + rows]
            # |a|^2 is constant along the row: the nearest point minimises |b|^2 - 2 a.b (a matrix product)
            score = torch.baddbmm(b_sq, rows_a, b.transpose(1, 2), alpha=-2.0)  # (B, rows, M)
            idx.append(score.argmin(dim=-1))
    return torch.cat(idx, dim=1)


def _nearest_squared(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance ``(B, N)`` from each point of ``a`` ``(B, N, 3)`` to its nearest in ``b`` ``(B, M, 3)``
    and that point's index ``(B, N)``. The nearest point is chosen without gradient, then the distance to it
    is recomputed differentiably: the same value and gradient as differentiating the minimum, with memory
    ``O(B N)`` instead of ``O(B N M)``."""
    idx = _nearest_index(a, b)
    nearest = torch.gather(b, 1, idx.unsqueeze(-1).expand(-1, -1, 3))  # (B, N, 3)
    diff = a - nearest
    return (diff * diff).sum(-1), idx


def nearest_distances(a: torch.Tensor, b: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Distance from every point of ``a`` ``(B, N, 3)`` to its nearest point of ``b`` ``(B, M, 3)``: ``(B, N)``
    (``squared``: the squared distance). Differentiable with respect to both sets."""
    a, b, single = _pair(a, b)
    d2, _ = _nearest_squared(a, b)
    out = d2 if squared else d2.clamp_min(0).sqrt()
    return out[0] if single else out


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric chamfer distance ``(B,)`` (mean squared nearest distance each way, summed; see the module
    docstring) between ``a`` ``(B, N, 3)`` and ``b`` ``(B, M, 3)``; a scalar for single sets."""
    a, b, single = _pair(a, b)
    ab, _ = _nearest_squared(a, b)
    ba, _ = _nearest_squared(b, a)
    out = ab.mean(dim=1) + ba.mean(dim=1)
    return out[0] if single else out


def f_score(pred: torch.Tensor, target: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(f1, precision, recall)``, each ``(B,)`` (scalars for single sets), at threshold ``tau`` (> 0, in the
    units of the points) between predicted points ``pred`` ``(B, N, 3)`` and ``target`` ``(B, M, 3)``.
    A point at exactly ``tau`` counts as within. Not differentiable (a metric)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    pred, target, single = _pair(pred, target)
    with torch.no_grad():
        p2, _ = _nearest_squared(pred, target)
        r2, _ = _nearest_squared(target, pred)
        t2 = float(tau) ** 2
        precision = (p2 <= t2).to(pred.dtype).mean(dim=1)
        recall = (r2 <= t2).to(pred.dtype).mean(dim=1)
        denom = precision + recall
        f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(torch.finfo(pred.dtype).tiny),
                         torch.zeros_like(denom))
    if single:
        return f1[0], precision[0], recall[0]
    return f1, precision, recall


def shape_scores(pred: torch.Tensor, target: torch.Tensor,
                 taus: tuple[float, ...] = SCORE_TAUS) -> dict[str, torch.Tensor]:
    """Every score of a reconstruction, each ``(B,)``: ``chamfer`` and, per ``tau``, ``f1@tau``,
    ``precision@tau``, ``recall@tau`` (keys formatted with ``:g``, e.g. ``"f1@0.05"``)."""
    out = {"chamfer": chamfer_distance(pred, target).detach()}
    for tau in taus:
        f1, p, r = f_score(pred, target, tau)
        out[f"f1@{tau:g}"], out[f"precision@{tau:g}"], out[f"recall@{tau:g}"] = f1, p, r
    return out
