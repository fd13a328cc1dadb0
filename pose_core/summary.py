"""What a pose message reports about a batch of rotation distributions, computed once and batched.

:func:`summarize` turns an :class:`~pose_core.distribution.SO3Distribution` of ``B`` objects
into a :class:`RotationSummary`: the mode, the covariance about it, samples, entropy and the
separated top modes, all as numpy ``float64`` with rotations as quaternions ``(x, y, z, w)``,
``w >= 0`` (:mod:`pose_core.so3`). With ``corrections`` (the crops' ``R_ray``,
:mod:`pose_core.crops`) everything is expressed in the real camera frame: rotations are
left-multiplied by ``R_ray`` and the covariance becomes ``R_ray C R_ray^T``.

**Continuity** (``reference`` and ``tie_nats``): the mode is normally the densest cell. Given a
reference rotation (the mode published for the object in the previous frame), the mode is instead
the peak nearest to it among the peaks the distribution cannot tell apart from the densest: the
cells whose log-density is within ``tie_nats`` of the maximum, reduced by the same greedy
separation as the top modes (``mode_radius``) to one peak per basin. So a symmetric object's
published mode stays on the same one of its equal modes from frame to frame, and it is still a
peak (not a cell dragged off it towards the reference). The covariance and the reported
log-density are then about / at that mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pose_core import so3
from pose_core.distribution import SO3Distribution

__all__ = ["RotationSummary", "summarize", "sample_covariance", "with_refinement"]


@dataclass(frozen=True)
class RotationSummary:
    """Rotation part of ``B`` pose estimates (numpy float64, camera frame).

    Attributes:
        orientation: ``(B, 4)`` the mode (object -> camera), quaternion x, y, z, w.
        covariance: ``(B, 3, 3)`` rad², left-perturbation rotation vector about the mode, camera axes.
        samples: ``(B, N, 4)`` rotations drawn from the distribution; ``sample_weights`` ``(B, N)``
            (equal: i.i.d. samples, summing to 1 per row).
        entropy: ``(B,)`` nats (Haar volume ``pi**2``).
        max_log_density: ``(B,)`` log-density at the mode (with a continuity ``reference``, the published
            one: within ``tie_nats`` of the maximum).
        mode_resolution: rad, size of the cells the mode is chosen among.
        modes: ``(B, k, 4)`` separated local maxima, decreasing density; ``mode_mass`` and
            ``mode_log_density`` ``(B, k)`` go with them; row ``b`` has ``mode_count[b]`` of them
            (the rest are identity, mass 0, log-density ``-inf``).
    """

    orientation: np.ndarray
    covariance: np.ndarray
    samples: np.ndarray
    sample_weights: np.ndarray
    entropy: np.ndarray
    max_log_density: np.ndarray
    mode_resolution: float
    modes: np.ndarray
    mode_mass: np.ndarray
    mode_log_density: np.ndarray
    mode_count: np.ndarray


def _left(q_left: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """``q_left (B, 4) * q (B, ..., 4)`` canonicalised (``w >= 0``); ``q`` when ``q_left`` is None."""
    if q_left is not None:
        shape = (q.shape[0],) + (1,) * (q.dim() - 2) + (4,)
        q = so3.quat_multiply(q_left.reshape(shape), q)
    return so3.quat_canonical(q)


def _continuous_mode_cells(
    dist: SO3Distribution, density: torch.Tensor, mode_cell: torch.Tensor, q_ref: torch.Tensor, tie_nats: float,
    radius: float,
) -> torch.Tensor:
    """Columns ``(B,)``: per row with a finite reference ``q_ref`` ``(B, 4)`` (the distribution's frame), the
    peak nearest to it among the finest-level cells within ``tie_nats`` of the maximum ``density`` ``(B, C)``,
    after greedy separation by ``radius`` (rad); other rows keep ``mode_cell`` ``(B,)``."""
    out = mode_cell.clone()
    q_all = dist._quaternions_by_component()  # (B, 4, C)
    min_dot = math.cos(min(radius, math.pi) / 2)
    finest = dist.cell_level == dist.finest_level  # (C,): the mode's resolution is the finest level's
    for b in torch.isfinite(q_ref).all(1).nonzero()[:, 0].tolist():
        near_max = ((density[b] >= density[b, mode_cell[b]] - tie_nats) & finest).nonzero()[:, 0]  # (n,)
        if near_max.numel() < 2:
            continue
        near_max = near_max[density[b, near_max].argsort(descending=True)]
        q = q_all[b][:, near_max].to(torch.float64)  # (4, n), densest first
        free = torch.ones(near_max.numel(), dtype=torch.bool)
        best, best_dot = int(mode_cell[b]), -1.0
        while bool(free.any()):
            i = int(free.nonzero()[0, 0])  # the densest cell left is a peak
            dot = float((q[:, i] @ q_ref[b]).abs())
            if dot > best_dot:
                best, best_dot = int(near_max[i]), dot
            free &= (q[:, i] @ q).abs() < min_dot
        out[b] = best
    return out


def summarize(
    dist: SO3Distribution,
    corrections: torch.Tensor | np.ndarray | None = None,
    num_samples: int = 100,
    num_modes: int = 4,
    mode_radius: float = math.radians(15.0),
    generator: torch.Generator | None = None,
    reference: torch.Tensor | np.ndarray | None = None,
    tie_nats: float = 0.0,
) -> RotationSummary:
    """Summaries of the ``B`` distributions of ``dist`` (see the module docstring).

    Args:
        corrections: ``(B, 3, 3)`` ``R_ray`` of each distribution's crop, or ``None`` (already in
            the camera frame).
        num_samples: samples per distribution (>= 1).
        num_modes: most separated modes reported (>= 1); ``mode_radius`` (rad) separates them
            and is the radius within which a mode's mass is counted.
        generator: for the samples (reproducible with a seeded CPU generator).
        reference: ``(B, 4)`` quaternions (x, y, z, w) in the camera frame, a row of NaN for none:
            the rotation the mode should stay nearest to among near-equal peaks (see the module
            docstring); ``None``: the densest cell.
        tie_nats: how far below the maximum log-density a peak still counts as equal (>= 0; 0
            turns continuity off).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_modes < 1:
        raise ValueError(f"num_modes must be >= 1, got {num_modes}")
    B = dist.batch_size
    if dist.log_mass.device.type != "cpu":
        dist = dist.to("cpu")  # on the CPU already: used as is, its cached cell quaternions and masses kept
    Rc = None
    if corrections is not None:
        Rc = torch.as_tensor(corrections, dtype=torch.float64)
        if Rc.shape != (B, 3, 3):
            raise ValueError(f"corrections must have shape ({B}, 3, 3), got {tuple(Rc.shape)}")
    q_corr = None if Rc is None else so3.matrix_to_quat(Rc)
    if not tie_nats >= 0:
        raise ValueError(f"tie_nats must be >= 0, got {tie_nats}")

    density = dist.cell_log_density()
    mode_cell = density.argmax(dim=1)  # (B,), as dist.mode_cell()
    if reference is not None and tie_nats > 0:
        q_ref = torch.as_tensor(reference, dtype=torch.float64)
        if q_ref.shape != (B, 4):
            raise ValueError(f"reference must have shape ({B}, 4), got {tuple(q_ref.shape)}")
        if q_corr is not None:  # into each crop's frame: R_ray^T R_ref
            q_ref = so3.quat_multiply(so3.quat_conjugate(q_corr), q_ref)
        mode_cell = _continuous_mode_cells(dist, density, mode_cell, q_ref, tie_nats, mode_radius)
    q_mode = dist.quaternions_at(mode_cell)  # (B, 4)
    cov = dist.covariance_about_quaternion(q_mode).to(torch.float64)  # (B, 3, 3)
    max_logp = density.gather(1, mode_cell[:, None])[:, 0]
    samples = so3.matrix_to_quat(dist.sample(num_samples, generator=generator).to(torch.float64))  # (B, N, 4)
    cells, mass = dist.top_mode_cells(k=num_modes, radius=mode_radius)  # (B, k)
    found = cells >= 0
    q_modes = dist.quaternions_at(cells.clamp_min(0)).to(torch.float64)  # (B, k, 4)
    q_modes = torch.where(found[..., None], q_modes, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    modes_logp = torch.where(found, density.gather(1, cells.clamp_min(0)).to(torch.float64), -math.inf)

    if Rc is not None:
        cov = Rc @ cov @ Rc.transpose(-1, -2)
        cov = (cov + cov.transpose(-1, -2)) / 2
    q_modes = torch.where(found[..., None], _left(q_corr, q_modes), q_modes)
    return RotationSummary(
        orientation=_left(q_corr, q_mode.to(torch.float64)).numpy(),
        covariance=cov.numpy(),
        samples=_left(q_corr, samples).numpy(),
        sample_weights=np.full((B, num_samples), 1.0 / num_samples),
        entropy=dist.entropy().to(torch.float64).numpy(),
        max_log_density=max_logp.to(torch.float64).numpy(),
        mode_resolution=float(dist.mode_resolution()),
        modes=q_modes.numpy(),
        mode_mass=mass.to(torch.float64).numpy(),
        mode_log_density=modes_logp.numpy(),
        mode_count=found.sum(1).numpy(),
    )


def sample_covariance(R: torch.Tensor, weights: torch.Tensor, about: torch.Tensor) -> torch.Tensor:
    """Second moment ``(B, 3, 3)`` (rad²) of ``omega`` in ``R_i = exp([omega_i]x) @ about`` over weighted
    rotations ``R`` ``(B, N, 3, 3)`` with ``weights`` ``(B, N)`` (summing to 1 per row), about ``(B, 3, 3)``:
    the weighted-sample twin of :meth:`SO3Distribution.covariance <pose_core.distribution.SO3Distribution.covariance>`
    (left perturbation, the frame ``R`` is in)."""
    omega = so3.matrix_to_rotvec(R @ about[:, None].transpose(-1, -2))  # (B, N, 3)
    cov = torch.einsum("bn,bni,bnj->bij", weights.to(omega.dtype), omega, omega)
    return (cov + cov.transpose(-1, -2)) / 2


def with_refinement(summary: RotationSummary, result, dist: SO3Distribution,
                    corrections: torch.Tensor | np.ndarray | None = None) -> RotationSummary:
    """``summary`` of ``dist`` with the render-and-compare refinement ``result``
    (:class:`pose_core.refine.RefineResult`, one row per distribution, in the crops' frames) put in:

    * ``orientation``: the refined hypothesis of highest posterior weight; ``max_log_density``: ``dist``'s
      log-density there;
    * ``modes``: the refined hypotheses by decreasing posterior weight, ``mode_mass`` those weights,
      ``mode_log_density`` ``dist``'s log-density at them;
    * ``samples`` / ``sample_weights``: the result's re-weighted samples (kept as they were when it has
      none), and ``covariance``: their weighted second moment about the new orientation;
    * ``entropy`` and ``mode_resolution``: still the distribution's (the refinement does not change them).

    ``corrections`` ``(B, 3, 3)``: the crops' ``R_ray``, as given to :func:`summarize`."""
    B = dist.batch_size
    Rc = torch.eye(3, dtype=torch.float64).expand(B, 3, 3) if corrections is None else torch.as_tensor(
        corrections, dtype=torch.float64)
    dist = dist.to("cpu")
    hyps = result.rotations.to(torch.float64)  # (B, M, 3, 3) crop frames
    order = torch.argsort(result.log_weights, dim=1, descending=True)
    hyps = torch.gather(hyps, 1, order[:, :, None, None].expand_as(hyps))
    mass = torch.gather(result.log_weights.to(torch.float64), 1, order).exp()
    logp = dist.log_prob(hyps.to(dist.log_mass.dtype)).to(torch.float64)
    best = hyps[:, 0]
    cam_best = Rc @ best
    cam_hyps = Rc[:, None] @ hyps
    samples, weights = summary.samples, summary.sample_weights
    if result.samples.shape[1] > 0:
        cam_samples = Rc[:, None] @ result.samples.to(torch.float64)
        w = result.sample_weights.to(torch.float64)
        samples, weights = so3.matrix_to_quat(cam_samples).numpy(), w.numpy()
        cov = sample_covariance(cam_samples, w, cam_best)
    else:
        cov = sample_covariance(so3.quat_to_matrix(torch.as_tensor(summary.samples)),
                                torch.as_tensor(summary.sample_weights), cam_best)
    M = hyps.shape[1]
    return RotationSummary(
        orientation=so3.matrix_to_quat(cam_best).numpy(), covariance=cov.numpy(), samples=samples,
        sample_weights=weights, entropy=summary.entropy, max_log_density=logp[:, 0].numpy(),
        mode_resolution=summary.mode_resolution, modes=so3.matrix_to_quat(cam_hyps).numpy(),
        mode_mass=mass.numpy(), mode_log_density=logp.numpy(), mode_count=np.full(B, M),
    )
