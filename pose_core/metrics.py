"""Symmetry-aware evaluation metrics, with the IPDF / Image2Sphere definitions.

Conventions are those of :mod:`pose_core.so3`: rotations ``(..., 3, 3)``, angles in radians,
densities with respect to the Haar measure of total volume ``pi**2`` (uniform: ``-log(pi**2)``).

Ground truth is a *set* of equivalent rotations per image (``equivalents``: the poses that render
the same image; one rotation for asymmetric objects). It is given either as a padded tensor
``(B, K, 3, 3)`` or as a list of ``B`` tensors ``(K_b, 3, 3)`` (ragged, as
:func:`pose_core.data.collate_symsol` returns it).

* **Error** (:func:`nearest_equivalent_error`): geodesic angle from the prediction to the nearest
  equivalent, the error Image2Sphere and IPDF report for symmetric objects.
* **Acc@X** (:func:`accuracy_at`): fraction of errors ``<= X`` degrees (IPDF ``errors <= 15``).
* **Median error** (:func:`median_error`), radians.
* **Log-likelihood**: log-density of the ground truth. As IPDF's
  ``eval_spread_and_loglikelihood`` does for SYMSOL, the log-density is evaluated at *every*
  equivalent and averaged (IPDF takes ``np.mean`` over the ``(N, K)`` array of per-equivalent
  log-likelihoods; here the mean over the ``K_b`` equivalents of each image, then over images, which
  is the same number when ``K`` is constant, and well defined when it is ragged). Two versions:

  - :func:`log_likelihood`: ``dist.log_prob`` at the equivalents; for a band-limited
    distribution (``from_fourier``) this is the continuous density.
  - :func:`grid_log_likelihood`: the IPDF / Image2Sphere grid convention, the log of the softmax
    probability (over the whole level-``level`` HEALPix grid) of the cell holding the ground truth,
    times ``N / pi**2``; i.e. ``SO3Distribution.from_grid_logits(model.grid_logits(coeffs, level),
    level).log_prob(gt)``, computed in chunks so that level 5 (the Image2Sphere evaluation grid,
    2,359,296 cells) fits in memory. The level must be reported with the number.

SE(3) (translations in m, camera frame; densities w.r.t. Haar (volume ``pi**2``) x Lebesgue m³):

* :func:`translation_error`: Euclidean distance ``(B,)`` (m) of the predicted translation to the truth.
* :func:`se3_log_likelihood`: the log-density of the true pose, averaged over the equivalent rotations.
* :func:`inside_ellipsoid`: whether the truth lies inside the ``p`` ellipsoid of a translation covariance
  (calibration: over many images, about a fraction ``p`` should).

Per-shape / per-category tables: :func:`summarize` and :func:`aggregate_by`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pose_core import fourier, grids, so3
from pose_core.distribution import SO3Distribution, log_density_of_equal_cells

__all__ = [
    "pad_equivalents",
    "nearest_equivalent_error",
    "accuracy_at",
    "median_error",
    "log_likelihood",
    "grid_log_likelihood",
    "summarize",
    "aggregate_by",
    "FLIP_JUMP",
    "FLIP_STILL",
    "mode_flips",
    "translation_error",
    "se3_log_likelihood",
    "inside_ellipsoid",
]

#: A flip of a published mode: it moves by more than FLIP_JUMP between consecutive frames while the
#: truth moves by less than FLIP_STILL (radians; 30 and 5 deg).
FLIP_JUMP, FLIP_STILL = math.radians(30.0), math.radians(5.0)

Equivalents = torch.Tensor | Sequence[torch.Tensor]


def pad_equivalents(
    equivalents: Equivalents, dtype: torch.dtype | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged or padded ground-truth sets → padded ``(B, K, 3, 3)`` and validity mask ``(B, K)`` bool.

    ``equivalents``: ``(B, 3, 3)`` (one rotation each), ``(B, K, 3, 3)``, or a list of ``B`` tensors
    ``(K_b, 3, 3)`` (``K_b >= 1``). Padding repeats each image's first rotation (so any function of
    the padded tensor stays finite) and is marked ``False`` in the mask.
    """
    if isinstance(equivalents, torch.Tensor):
        eq = equivalents
        if eq.dim() == 3 and eq.shape[-2:] == (3, 3):
            eq = eq[:, None]
        if eq.dim() != 4 or eq.shape[-2:] != (3, 3) or eq.shape[1] < 1:
            raise ValueError(f"equivalents must have shape (B, 3, 3) or (B, K, 3, 3), got {tuple(equivalents.shape)}")
        eq = eq.to(dtype=dtype or eq.dtype, device=device or eq.device)
        return eq, torch.ones(eq.shape[:2], dtype=torch.bool, device=eq.device)
    items = list(equivalents)
    if not items:
        raise ValueError("equivalents is an empty list")
    for i, e in enumerate(items):
        if not isinstance(e, torch.Tensor) or e.dim() != 3 or e.shape[-2:] != (3, 3) or e.shape[0] < 1:
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"equivalents[{i}] must be a tensor (K, 3, 3) with K >= 1, got {shape}")
    dtype = dtype or items[0].dtype
    device = device or items[0].device
    K = max(e.shape[0] for e in items)
    out = torch.empty((len(items), K, 3, 3), dtype=dtype, device=device)
    mask = torch.zeros((len(items), K), dtype=torch.bool, device=device)
    for i, e in enumerate(items):
        e = e.to(dtype=dtype, device=device)
        out[i, : e.shape[0]] = e
        out[i, e.shape[0] :] = e[0]
        mask[i, : e.shape[0]] = True
    return out, mask


def mode_flips(
    modes: torch.Tensor, truths: torch.Tensor, jump: float = FLIP_JUMP, still: float = FLIP_STILL
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips of a published mode over a sequence of frames.

    Args:
        modes, truths: ``(T, 3, 3)`` the published mode and the true rotation per frame.
        jump, still: radians (:data:`FLIP_JUMP`, :data:`FLIP_STILL`).

    Returns:
        ``(flips, still_pairs)``, boolean ``(T - 1,)`` per pair of consecutive frames: the truth moved
        less than ``still`` (``still_pairs``), and, of those, the mode moved more than ``jump``.
    """
    if modes.shape != truths.shape or modes.dim() != 3 or modes.shape[-2:] != (3, 3):
        raise ValueError(f"modes and truths must both be (T, 3, 3), got {tuple(modes.shape)} and {tuple(truths.shape)}")
    moved = so3.geodesic_distance(modes[:-1], modes[1:])
    quiet = so3.geodesic_distance(truths[:-1], truths[1:]) < still
    return quiet & (moved > jump), quiet


def nearest_equivalent_error(pred: torch.Tensor, equivalents: Equivalents) -> torch.Tensor:
    """Geodesic error ``(B,)``, radians in ``[0, pi]``, from ``pred`` ``(B, 3, 3)`` to the nearest equivalent."""
    if not isinstance(pred, torch.Tensor) or pred.dim() != 3 or pred.shape[-2:] != (3, 3):
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"pred must have shape (B, 3, 3), got {shape}")
    eq, _ = pad_equivalents(equivalents, dtype=pred.dtype, device=pred.device)
    if eq.shape[0] != pred.shape[0]:
        raise ValueError(f"pred has batch {pred.shape[0]} but equivalents has {eq.shape[0]}")
    d = so3.geodesic_distance(pred[:, None], eq)  # (B, K); padding repeats a real rotation
    return d.min(dim=1).values


def _as_numpy(errors) -> np.ndarray:
    arr = errors.detach().cpu().double().numpy() if isinstance(errors, torch.Tensor) else np.asarray(errors, float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"errors must be a non-empty 1-D array of angles (radians), got shape {arr.shape}")
    return arr


def accuracy_at(errors, deg: float) -> float:
    """Fraction of ``errors`` ``(N,)`` (radians) that are ``<= deg`` degrees."""
    return float(np.mean(_as_numpy(errors) <= math.radians(deg)))


def median_error(errors) -> float:
    """Median of ``errors`` ``(N,)``, radians."""
    return float(np.median(_as_numpy(errors)))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    values = torch.where(mask, values, torch.zeros_like(values))
    return values.sum(1) / mask.sum(1).to(values.dtype)


def log_likelihood(dist: SO3Distribution, equivalents: Equivalents) -> torch.Tensor:
    """Mean over each image's equivalents of ``dist.log_prob`` ``(B,)`` (IPDF's SYMSOL average).

    For a band-limited ``dist`` (``from_fourier``, ``ImageToSphere.predict``) this is the continuous
    log-density; for a grid distribution, the density of the cell holding each equivalent.
    """
    eq, mask = pad_equivalents(equivalents, dtype=dist.log_mass.dtype, device=dist.log_mass.device)
    if eq.shape[0] != dist.batch_size:
        raise ValueError(f"dist has batch {dist.batch_size} but equivalents has {eq.shape[0]}")
    return _masked_mean(dist.log_prob(eq), mask)


def grid_log_likelihood(
    coeffs: torch.Tensor, lmax: int, equivalents: Equivalents, level: int = 5, chunk: int = 65536
) -> torch.Tensor:
    """IPDF / Image2Sphere grid log-likelihood ``(B,)`` at evaluation grid ``level``.

    ``log(softmax(logits)[cell of gt] * N / pi**2)`` with ``logits`` the signal ``coeffs``
    ``(B, so3_dim(lmax))`` at the ``N = 72 * 8**level`` cell centres, averaged over each image's
    equivalents. Equal to ``SO3Distribution.from_grid_logits(model.grid_logits(coeffs, level),
    level).log_prob(gt)``, without holding the ``(N, so3_dim)`` matrix (chunks of ``chunk`` cells).
    """
    if coeffs.dim() != 2:
        raise ValueError(f"coeffs must have shape (B, so3_dim), got {tuple(coeffs.shape)}")
    eq, mask = pad_equivalents(equivalents, dtype=coeffs.dtype, device=coeffs.device)
    if eq.shape[0] != coeffs.shape[0]:
        raise ValueError(f"coeffs has batch {coeffs.shape[0]} but equivalents has {eq.shape[0]}")
    n = grids.num_cells(level)
    lse = torch.full((coeffs.shape[0],), float("-inf"), dtype=coeffs.dtype, device=coeffs.device)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=coeffs.device)
        lse = torch.logaddexp(lse, torch.logsumexp(fourier.evaluate_cells(coeffs, level, idx, lmax), dim=1))
    cells = grids.cell_of(eq, level)  # (B, K)
    f_gt = fourier.evaluate_cells(coeffs, level, cells, lmax)  # (B, K)
    log_density = log_density_of_equal_cells(f_gt - lse[:, None], n)
    return _masked_mean(log_density, mask)


def summarize(errors, log_likelihoods=None, thresholds_deg: Sequence[float] = (15.0, 30.0)) -> dict[str, float]:
    """Metrics of one group: ``n``, ``acc@15``/``acc@30`` (fractions), ``median_deg``, ``mean_deg``, and
    ``ll`` (mean of ``log_likelihoods`` ``(N,)``) when given."""
    err = _as_numpy(errors)
    out: dict[str, float] = {"n": int(err.size)}
    for t in thresholds_deg:
        out[f"acc@{t:g}"] = accuracy_at(err, t)
    out["median_deg"] = math.degrees(median_error(err))
    out["mean_deg"] = math.degrees(float(err.mean()))
    if log_likelihoods is not None:
        ll = _as_numpy(log_likelihoods)
        if ll.size != err.size:
            raise ValueError(f"{ll.size} log-likelihoods for {err.size} errors")
        out["ll"] = float(ll.mean())
    return out


def aggregate_by(
    groups: Sequence[str],
    errors,
    log_likelihoods=None,
    thresholds_deg: Sequence[float] = (15.0, 30.0),
) -> dict[str, dict[str, float]]:
    """Per-group :func:`summarize` (e.g. per shape or category) plus ``"all"`` (every item) and, with more
    than one group, ``"mean_of_groups"`` (unweighted mean of the groups' numbers, as papers average classes)."""
    err = _as_numpy(errors)
    ll = None if log_likelihoods is None else _as_numpy(log_likelihoods)
    groups = list(groups)
    if len(groups) != err.size:
        raise ValueError(f"{len(groups)} group labels for {err.size} errors")
    names = list(dict.fromkeys(groups))
    labels = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        sel = labels == name
        out[name] = summarize(err[sel], None if ll is None else ll[sel], thresholds_deg)
    out["all"] = summarize(err, ll, thresholds_deg)
    if len(names) > 1:
        keys = [k for k in out["all"] if k != "n"]
        mean: dict[str, float] = {"n": int(err.size)}
        mean.update({k: float(np.mean([out[g][k] for g in names])) for k in keys})
        out["mean_of_groups"] = mean
    return out


def translation_error(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Euclidean error ``(B,)`` (m) of translations ``pred`` against ``truth``, both ``(B, 3)``."""
    pred, truth = torch.as_tensor(pred), torch.as_tensor(truth)
    if pred.shape != truth.shape or pred.dim() != 2 or pred.shape[1] != 3:
        raise ValueError(f"pred and truth must both be (B, 3), got {tuple(pred.shape)} and {tuple(truth.shape)}")
    return torch.linalg.norm(pred.double() - truth.double(), dim=1)


def se3_log_likelihood(dist, equivalents: Equivalents, translation: torch.Tensor) -> torch.Tensor:
    """Mean over each image's equivalent rotations of ``dist.log_prob(R, t)`` ``(B,)`` for an
    :class:`~pose_core.distributions.SE3Distribution` (``-inf`` where the truth is outside its box)."""
    eq, mask = pad_equivalents(equivalents, dtype=torch.float64)
    t = torch.as_tensor(translation, dtype=torch.float64)
    if eq.shape[0] != dist.batch_size or t.shape != (dist.batch_size, 3):
        raise ValueError(f"dist has batch {dist.batch_size}; equivalents {tuple(eq.shape)}, "
                         f"translation {tuple(t.shape)}")
    logp = dist.log_prob(eq, t[:, None].expand(-1, eq.shape[1], -1))  # (B, K)
    return _masked_mean(logp.double(), mask)


def inside_ellipsoid(truth, mean, covariance, probability: float = 0.95) -> np.ndarray:
    """``(B,)`` bool: ``truth`` ``(B, 3)`` inside the ``probability`` ellipsoid of the Gaussian with
    ``mean`` ``(B, 3)`` and ``covariance`` ``(B, 3, 3)`` (squared Mahalanobis distance at most the
    chi-square(3) quantile). A singular covariance holds only its mean."""
    from pose_core.markers import chi_square_3_quantile

    d = np.asarray(truth, np.float64) - np.asarray(mean, np.float64)
    C = np.asarray(covariance, np.float64)
    if d.ndim != 2 or d.shape[1] != 3 or C.shape != (d.shape[0], 3, 3):
        raise ValueError(f"truth, mean (B, 3) and covariance (B, 3, 3) expected, got {d.shape}, {C.shape}")
    m2 = np.einsum("bi,bi->b", d, np.linalg.solve(C + 1e-18 * np.eye(3), d[..., None])[..., 0])
    return m2 <= chi_square_3_quantile(probability)
