"""Temporal filtering of rotation distributions: a tracked object's previous posterior, diffused by a
motion model, is the prior of its next frame.

For a tracked object the estimate of frame ``t`` is the posterior

    p_t(R) ∝ p_model(R | image_t) * prior_t(R),
    prior_t(R) = (1 - eps) * (previous posterior ⊛ motion noise)(R) + eps / pi**2,

all in the camera frame (:mod:`pose_core.so3` conventions; densities w.r.t. the Haar measure of
volume ``pi**2``, so ``eps / pi**2`` is the uniform density of mass ``eps``). The model was
trained with rotations drawn uniformly, so its distribution is proportional to the likelihood
of the image. The pieces:

* **Motion model** (:func:`rotation_noise_log_density`): a random walk of the rotation,
  ``R_t = exp([omega]_x) @ R_{t-1}`` with ``omega ~ N(0, sigma**2 I_3)`` truncated to the ball
  ``|omega| < pi`` (which ``exp`` maps one-to-one onto SO(3)), ``sigma**2 = std**2 * dt``
  (``std``: the rotation change over one second, ``EstimatorSettings.filter_rotation_std_deg``).
  Isotropic, so it is the same about the camera axes and the object's, and a function of the
  angle of ``R_{t-1}^T R_t`` alone. Its density is exactly normalised for every ``sigma``.
* **Outlier weight** ``eps`` (``filter_outlier_weight``): the chance that the object turned
  arbitrarily between two frames (it was put down differently, the detector swapped objects).
  A real sudden change gets through once the model's density at the old rotation falls below
  about ``eps / pi**2``: the new rotation then has more posterior mass, which the next prior follows.
* **Branch**: a symmetric object's posterior has a mode per equivalent rotation, forever (the
  images cannot tell them apart). A track follows one of them, the *branch*: its compact posterior
  keeps the posterior within :data:`BRANCH_RADIUS` of the published mode only, so the next prior
  favours that mode over its equivalents by about ``log(peak prior / (eps / pi**2))`` (10 nats
  and more at the defaults), and the published mode cannot flip to an equivalent one unless the
  image itself turns against it. The branch changes (:func:`choose_branch`) when another
  separated mode holds more than ``exp(continuity_tie_nats)`` times its mass: a real change
  that the outlier weight let through.
* **Compact posterior** (:class:`CompactPosterior`, :func:`compact_posteriors`): the branch's
  most massive cells, cells finer than :data:`PARTICLE_LEVEL` merged into their level-4
  ancestors, at most :data:`MAX_PARTICLES`, renormalised; each a particle with its weight and the
  spread of its cell (variance ``resolution**2 / 12`` per axis, as the covariance of
  :class:`~pose_core.distribution.SO3Distribution` counts it), in the camera frame. Particles
  closer together than the diffusion blurs them are merged (moments matched) when the prior is
  built, and the coarse levels of the search see a branch as one moment-matched particle.
* **Prior** (:class:`DiffusedPrior`): a :class:`~pose_core.distribution.LogPrior` for
  ``ImageToSphere.predict``, one row per object, rows without a previous posterior exactly 0.
  The particles are turned into each crop's frame (``R_crop = R_ray^T R_camera``,
  :mod:`pose_core.crops`) and the prior is added to the model's log-density at every cell before
  the coarse-to-fine search picks cells to refine, so the mode that continues the previous
  frame is refined even when the image alone prefers an equivalent one.
* **Tracks** (:class:`Tracker`): objects keyed by ``Box.id`` when it has one, id-less boxes
  associated greedily to the nearest previous box centre within the box's longer side, the
  whole image (no boxes) one track; reset when not seen for ``track_timeout_s``, and all of them
  when the stamp goes backwards (a rosbag loop) or jumps by more than that.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pose_core import grids, so3
from pose_core.distribution import LogPrior, SO3Distribution

__all__ = [
    "PARTICLE_LEVEL",
    "MAX_PARTICLES",
    "IMAGE_TRACK_ID",
    "BRANCH_RADIUS",
    "rotation_noise_log_density",
    "CompactPosterior",
    "compact_posteriors",
    "mass_within",
    "choose_branch",
    "DiffusedPrior",
    "Track",
    "Tracker",
]

#: Grid level the compact posterior keeps (3.75 deg cells): finer cells are merged into their ancestors.
PARTICLE_LEVEL = 4
#: Most particles (cells) a compact posterior keeps.
MAX_PARTICLES = 256
#: Radius (rad) of a track's branch: the posterior within it of the published mode is what the track keeps.
#: Less than half the 90 deg between a cube's equivalent rotations (72 deg for an icosahedron), wide enough
#: that a nearby look-alike of the published mode stays in the running.
BRANCH_RADIUS = math.radians(30.0)
#: Track id of the whole image (estimates without boxes).
IMAGE_TRACK_ID = "image"
#: Terms of the prior's mixture below this fraction of the outlier density are not evaluated
#: (the log-prior is then off by less than this, relative).
_PRUNE_TOLERANCE = 1e-4
#: Largest noise std (rad) of the motion model: beyond it the truncated Gaussian is about as flat as it gets.
_MAX_NOISE_STD = math.pi
#: Particles are merged into cells whose spread is at most this fraction of the diffusion variance
#: (the prior's std then grows by at most 5 %), at levels from 2 to :data:`PARTICLE_LEVEL`.
_MERGE_RATIO = 0.1
#: Elements of one (cells x particles) block of the dense mixture evaluation.
_CHUNK_ELEMENTS = 1 << 20


# ----------------------------------------------------------------------------- motion model
def _log_ball_mass(variance: torch.Tensor) -> torch.Tensor:
    """``log P(|omega| < pi)`` for ``omega ~ N(0, variance I_3)`` ``(...)`` (chi distribution, 3 dof), float64."""
    x = math.pi / variance.to(torch.float64).sqrt()
    mass = torch.erf(x / math.sqrt(2)) - math.sqrt(2 / math.pi) * x * torch.exp(-x * x / 2)
    return mass.log()


def _log_jacobian(cos_half: torch.Tensor) -> torch.Tensor:
    """``log(2 angle**2 / sin(angle / 2)**2)`` at ``cos(angle / 2)`` ``(...)`` in ``[0, 1]``: the density of
    ``d^3 omega`` w.r.t. the Haar measure (volume ``pi**2``) at a rotation by ``angle``; ``log 8`` at 0.
    (``DiffusedPrior`` computes the same in fewer passes; this is the plain form its tests compare with.)"""
    c = cos_half.clamp(0.0, 1.0)
    half = torch.acos(c)
    sin2 = 1 - c * c
    ratio = torch.where(sin2 > 1e-6, half * half / sin2.clamp_min(1e-30), 1 + sin2 / 3)  # (a/2)^2 / sin(a/2)^2
    return math.log(8.0) + ratio.log()


def rotation_noise_log_density(angle: torch.Tensor, variance: torch.Tensor | float) -> torch.Tensor:
    """Log-density (Haar volume ``pi**2``) of the motion noise at rotations by ``angle`` (rad, ``(...)``).

    The noise is ``exp([omega]_x)`` with ``omega ~ N(0, variance I_3)`` (``variance`` rad², broadcast,
    std capped at ``pi``) restricted to ``|omega| < pi``: density
    ``N(omega) / P(|omega| < pi) * 2 angle**2 / sin(angle / 2)**2`` (the last factor turns ``d^3 omega``
    into the Haar measure), which integrates to 1 over SO(3) for every variance.
    """
    angle = torch.as_tensor(angle)
    var = torch.as_tensor(variance, dtype=torch.float64).clamp(max=_MAX_NOISE_STD**2)
    const = (-_log_ball_mass(var) - 1.5 * torch.log(2 * math.pi * var)).to(angle.dtype)
    return const - angle * angle / (2 * var.to(angle.dtype)) + _log_jacobian(torch.cos(angle / 2))


# ----------------------------------------------------------------------------- compact posterior
@dataclass(frozen=True)
class CompactPosterior:
    """One object's posterior as weighted particles in the camera frame (float64).

    Attributes:
        quaternions: ``(P, 4)`` particle rotations (object -> camera), x, y, z, w.
        log_weight: ``(P,)`` log of the normalised weights (``logsumexp = 0``).
        spread: ``(P,)`` rad², per-axis variance of the cell each particle stands for.
        kept_mass: the posterior mass the particles held before renormalisation.
        branch_mass: the posterior mass near the centre it was taken about (all of it without one).
    """

    quaternions: torch.Tensor
    log_weight: torch.Tensor
    spread: torch.Tensor
    kept_mass: float
    branch_mass: float = 1.0

    def __len__(self) -> int:
        return int(self.quaternions.shape[0])


def _crop_frame(q_camera: torch.Tensor, corrections: torch.Tensor | None) -> torch.Tensor:
    """Camera-frame quaternions ``(B, 4)`` into each row's crop frame, ``R_ray^T R`` (``corrections`` ``(B, 3, 3)``)."""
    q = torch.as_tensor(q_camera, dtype=torch.float64)
    if corrections is None:
        return q
    Rc = torch.as_tensor(corrections, dtype=torch.float64)
    if Rc.shape != (q.shape[0], 3, 3):
        raise ValueError(f"corrections must have shape ({q.shape[0]}, 3, 3), got {tuple(Rc.shape)}")
    return so3.quat_multiply(so3.quat_conjugate(so3.matrix_to_quat(Rc)), q)


def mass_within(
    dist: SO3Distribution, centers: torch.Tensor | np.ndarray, radius: float, corrections: torch.Tensor | None = None
) -> torch.Tensor:
    """Mass ``(B, K)`` (float64) of each row of ``dist`` in the cells whose centre is within ``radius`` (rad)
    of each of ``centers`` ``(B, K, 4)`` (camera frame, x, y, z, w; into the crop frames by ``corrections``)."""
    d = dist if dist.log_mass.device.type == "cpu" else dist.to("cpu")
    c = torch.as_tensor(centers, dtype=torch.float64)
    B, K = c.shape[:2]
    q = _crop_frame(c.reshape(B * K, 4), None if corrections is None else
                    torch.as_tensor(corrections, dtype=torch.float64).repeat_interleave(K, 0)).reshape(B, K, 4)
    q_cells = d._quaternions_by_component()  # (B, 4, C)
    near = torch.bmm(q.to(q_cells.dtype), q_cells).abs() >= math.cos(min(radius, math.pi) / 2)  # (B, K, C)
    return torch.where(near, d.mass()[:, None], 0.0).to(torch.float64).sum(2)


def compact_posteriors(
    dist: SO3Distribution,
    corrections: torch.Tensor | None = None,
    centers: torch.Tensor | np.ndarray | None = None,
    radius: float = math.pi,
    max_particles: int = MAX_PARTICLES,
    level: int = PARTICLE_LEVEL,
) -> list[CompactPosterior]:
    """The ``B`` distributions of ``dist`` as :class:`CompactPosterior` s in the camera frame.

    Only cells whose centre is within ``radius`` (rad) of ``centers`` ``(B, 4)`` (camera frame; a row
    of NaN: everywhere) count: a track keeps the branch it follows, not the equivalent modes of a
    symmetric object. Cells finer than ``level`` are merged into their level-``level`` ancestors
    (summing masses), coarser ones kept; the ``max_particles`` most massive are kept and
    renormalised. ``corrections``: ``(B, 3, 3)`` ``R_ray`` of each row's crop (``None``: already the
    camera frame).
    """
    if max_particles < 1:
        raise ValueError(f"max_particles must be >= 1, got {max_particles}")
    d = dist if dist.log_mass.device.type == "cpu" else dist.to("cpu")  # keeps the caches of a summarised one
    B, C = d.cell_index.shape
    mass = d.mass()  # (B, C)
    if centers is not None:
        q_c = _crop_frame(centers, corrections)  # (B, 4)
        rows = torch.isfinite(q_c).all(1)
        if bool(rows.any()):
            q_cells = d._quaternions_by_component()  # (B, 4, C)
            dots = torch.bmm(q_c.nan_to_num().to(q_cells.dtype)[:, None], q_cells)[:, 0].abs()  # (B, C)
            near = (dots >= math.cos(min(radius, math.pi) / 2)) | ~rows[:, None]
            mass = torch.where(near, mass, 0.0)
    branch = mass.to(torch.float64).sum(1)  # (B,)
    top = mass.topk(min(C, 4 * max_particles), dim=1)  # merge among the heaviest cells only
    q_corr = None
    if corrections is not None:
        q_corr = so3.matrix_to_quat(torch.as_tensor(corrections, dtype=torch.float64))
    offsets = np.cumsum([0] + [grids.num_cells(lv) for lv in range(level + 1)])  # key = offsets[lv] + index
    out = []
    for b in range(B):
        m = top.values[b].to(torch.float64)
        live = m > 0
        if not bool(live.any()):
            raise ValueError(f"row {b} has no mass near its centre")
        cols, m = top.indices[b][live], m[live]
        lv = d.cell_level[cols]
        idx = d.cell_index[b, cols].clone()
        for fine in lv[lv > level].unique().tolist():
            sel = lv == fine
            idx[sel] = grids.ancestor(idx[sel], fine, level)
        lv = lv.clamp(max=level)
        keys, inverse = torch.unique(torch.as_tensor(offsets)[lv] + idx, return_inverse=True)
        merged = torch.zeros(keys.shape, dtype=torch.float64).index_add_(0, inverse, m)
        keep = merged.topk(min(max_particles, merged.numel())).indices
        keys, merged = keys[keep], merged[keep]
        key_level = torch.as_tensor(np.searchsorted(offsets, keys.numpy(), side="right") - 1)
        q = torch.empty((keys.numel(), 4), dtype=torch.float64)
        spread = torch.empty(keys.numel(), dtype=torch.float64)
        for lvl in key_level.unique().tolist():
            sel = key_level == lvl
            q[sel] = grids.cell_quaternions(lvl, keys[sel] - int(offsets[lvl]), dtype=torch.float64)
            spread[sel] = grids.resolution(lvl) ** 2 / 12
        if q_corr is not None:
            q = so3.quat_canonical(so3.quat_multiply(q_corr[b], q))
        total = float(merged.sum())
        out.append(CompactPosterior(q, (merged / total).log(), spread, total, float(branch[b])))
    return out


def choose_branch(
    published: np.ndarray, published_mass: float, modes: np.ndarray, mode_mass: np.ndarray, radius: float,
    tie_nats: float,
) -> tuple[np.ndarray, bool]:
    """The rotation ``(4,)`` whose neighbourhood a track keeps as its posterior, and whether it is not ``published``.

    The published mode ``(4,)`` (camera frame), holding ``published_mass`` within ``radius`` (rad), unless
    one of the separated ``modes`` ``(M, 4)`` farther than ``radius`` from it holds more than
    ``exp(tie_nats)`` times that within ``radius`` (``mode_mass`` ``(M,)``, :func:`mass_within`): then the
    heaviest of those. So a real change of the object whose new rotation has gained the posterior mass
    (through the outlier weight) is followed from the next frame on, while equivalent modes of similar
    mass never take over.
    """
    q = torch.as_tensor(np.asarray(published, dtype=np.float64))
    m = torch.as_tensor(np.asarray(modes, dtype=np.float64)).reshape(-1, 4)
    masses = np.asarray(mode_mass, dtype=np.float64).reshape(-1)
    far = (m @ q).abs().numpy() < math.cos(min(radius, math.pi) / 2)
    if not far.any():
        return np.asarray(published, dtype=np.float64), False
    best = int(np.argmax(np.where(far, masses, -np.inf)))
    if masses[best] > published_mass * math.exp(tie_nats):
        return m[best].numpy(), True
    return np.asarray(published, dtype=np.float64), False


# ----------------------------------------------------------------------------- prior
@functools.lru_cache(maxsize=8)
def _pixel_directions(level: int) -> torch.Tensor:
    """Unit view directions ``R @ e_z`` ``(12 * 4**level, 3)`` float64 shared by the cells of each HEALPix pixel."""
    return grids.s2_healpix_points(level, torch.float64)


def _quat_z_axis(q: torch.Tensor) -> torch.Tensor:
    """``R(q) @ e_z`` ``(..., 3)`` of quaternions ``(..., 4)`` (x, y, z, w): the third column of the matrix."""
    x, y, z, w = q.unbind(-1)
    return torch.stack((2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)), dim=-1)


def _merge_groups(
    q: torch.Tensor, log_w: torch.Tensor, spread: torch.Tensor, group: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Particles ``q`` ``(P, 4)`` with ``log_w`` and ``spread`` ``(P,)`` merged into the ``n`` groups ``group``
    ``(P,)`` (int64 in ``[0, n)``, none empty), moments matched: the weights summed, the rotation the weighted
    mean quaternion (signs aligned to one member), the spread the weighted mean of ``spread + angle**2 / 3``
    (angle to the merged rotation; the per-axis variance of an isotropic spread)."""
    dtype = q.dtype
    q64, top = q.to(torch.float64), log_w.to(torch.float64).max()
    w = (log_w.to(torch.float64) - top).exp()
    anchor = torch.zeros((n, 4), dtype=torch.float64).index_copy_(0, group, q64)  # a member of each group
    sign = torch.where((q64 * anchor[group]).sum(1) < 0, -1.0, 1.0)
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, group, w)
    mean = torch.zeros_like(anchor).index_add_(0, group, (w * sign)[:, None] * q64)
    mean = so3.quat_canonical(torch.nn.functional.normalize(mean, dim=1))
    angle = 2 * torch.acos((q64 * mean[group]).sum(1).abs().clamp(max=1.0))
    second = torch.zeros_like(total).index_add_(0, group, w * (spread.to(torch.float64) + angle * angle / 3))
    return mean.to(dtype), (total.log() + top).to(dtype), (second / total).to(dtype)


def _merge_particles(
    q: torch.Tensor, log_w: torch.Tensor, spread: torch.Tensor, level: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Particles ``q`` ``(P, 4)`` with ``log_w`` and ``spread`` ``(P,)`` merged per level-``level`` cell
    (:func:`_merge_groups`)."""
    cells = grids.cell_of(so3.quat_to_matrix(q.to(torch.float64)), level)  # (P,)
    unique, inverse = torch.unique(cells, return_inverse=True)
    if unique.numel() == q.shape[0]:
        return q, log_w, spread
    return _merge_groups(q, log_w, spread, inverse, unique.numel())


def _coarse_particles(
    q: torch.Tensor, log_w: torch.Tensor, spread: torch.Tensor, level: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The particles as the coarse search levels (``level`` below :data:`PARTICLE_LEVEL`) see them: one
    moment-matched particle when all lie within 4 cells of ``level`` of it (a track's branch), else
    merged per cell two levels coarser (:func:`_merge_groups`)."""
    if q.shape[0] <= 1:
        return q, log_w, spread
    one = _merge_groups(q, log_w, spread, torch.zeros(q.shape[0], dtype=torch.int64), 1)
    far = 2 * torch.acos((q.to(torch.float64) @ one[0][0].to(torch.float64)).abs().clamp(max=1.0)).max()
    if float(far) <= 4 * grids.resolution(level):
        return one
    return _merge_particles(q, log_w, spread, max(level - 2, 0))


class DiffusedPrior(LogPrior):
    """The prior of :mod:`pose_core.tracking` for a batch of ``B`` objects, in each object's crop frame.

    ``prior(R) = (1 - eps) * sum_p w_p k(angle(R_p^T R); v_p) + eps / pi**2`` with ``k`` the motion
    noise (:func:`rotation_noise_log_density`) and ``v_p`` the particle's variance (the diffusion
    ``std**2 * dt`` plus its cell's spread). At a grid cell the prior is averaged over the cell:
    ``v_p`` grows by the cell's own spread (``resolution(level)**2 / 12``), and for cells coarser
    than the particle level the particles are merged first (moment matched: a track's branch becomes
    one particle), so that the coarse levels of the search cost little. Inactive rows (no previous
    posterior) are exactly 0.

    Args:
        quaternions: ``(B, P, 4)`` particles in each row's crop frame (x, y, z, w); padding anywhere.
        log_weight: ``(B, P)`` normalised log-weights, ``-inf`` for padding.
        spread: ``(B, P)`` rad², each particle's cell spread.
        diffusion: ``(B,)`` rad², the motion noise variance ``std**2 * dt`` of each row.
        active: ``(B,)`` bool, rows that carry a prior.
        outlier_weight: ``eps`` in ``(0, 1)``.
    """

    def __init__(
        self,
        quaternions: torch.Tensor,
        log_weight: torch.Tensor,
        spread: torch.Tensor,
        diffusion: torch.Tensor,
        active: torch.Tensor,
        outlier_weight: float,
    ):
        B = active.shape[0]
        if (quaternions.dim() != 3 or quaternions.shape[0] != B or quaternions.shape[2] != 4
                or log_weight.shape != quaternions.shape[:2] or spread.shape != log_weight.shape
                or diffusion.shape != (B,) or active.dim() != 1):
            raise ValueError(
                "expected quaternions (B, P, 4), log_weight (B, P), spread (B, P), diffusion (B,), active (B,); got "
                f"{tuple(quaternions.shape)}, {tuple(log_weight.shape)}, {tuple(spread.shape)}, "
                f"{tuple(diffusion.shape)}, {tuple(active.shape)}"
            )
        if not 0 < outlier_weight < 1:
            raise ValueError(f"outlier_weight must be in (0, 1), got {outlier_weight}")
        self.quaternions, self.log_weight, self.spread = quaternions, log_weight, spread
        self.diffusion, self.active, self.outlier_weight = diffusion, active.to(torch.bool), float(outlier_weight)
        self._kernels: dict[tuple[int, int | None], _Kernel] = {}

    @classmethod
    def from_posteriors(
        cls,
        posteriors: Sequence[CompactPosterior | None],
        elapsed_s: Sequence[float],
        rotation_std: float,
        outlier_weight: float,
        corrections: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> DiffusedPrior:
        """The prior of ``B`` objects from their previous posteriors (camera frame; ``None``: no prior).

        Args:
            elapsed_s: ``B`` seconds since each posterior (``>= 0``).
            rotation_std: rad, std of the rotation change over one second (per axis; random walk).
            corrections: ``(B, 3, 3)`` ``R_ray`` of each crop; the particles become ``R_ray^T R``.
            dtype: of the evaluation.
        """
        B = len(posteriors)
        if len(elapsed_s) != B:
            raise ValueError(f"need one elapsed time per posterior, got {len(elapsed_s)} for {B}")
        if not rotation_std >= 0:
            raise ValueError(f"rotation_std must be >= 0, got {rotation_std}")
        P = max([len(p) for p in posteriors if p is not None], default=1)  # before merging: an upper bound
        q = torch.zeros((B, P, 4), dtype=torch.float64)
        q[..., 3] = 1
        log_w = torch.full((B, P), -math.inf, dtype=torch.float64)
        spread = torch.zeros((B, P), dtype=torch.float64)
        active = torch.tensor([p is not None for p in posteriors], dtype=torch.bool)
        q_inv = None
        if corrections is not None:
            q_inv = so3.quat_conjugate(so3.matrix_to_quat(torch.as_tensor(corrections, dtype=torch.float64)))
        diffusion = torch.zeros(B, dtype=torch.float64)
        for b, post in enumerate(posteriors):
            if post is None:
                continue
            dt = float(elapsed_s[b])
            if not dt >= 0:
                raise ValueError(f"elapsed time must be >= 0 s, got {dt}")
            qb = post.quaternions.to(torch.float64)
            qb = qb if q_inv is None else so3.quat_canonical(so3.quat_multiply(q_inv[b], qb))
            wb, sb = post.log_weight.to(torch.float64), post.spread.to(torch.float64)
            diffusion[b] = rotation_std**2 * dt
            coarse = [lv for lv in range(2, PARTICLE_LEVEL) if grids.resolution(lv) ** 2 / 12 <= _MERGE_RATIO
                      * float(diffusion[b])]
            if coarse:  # many particles closer together than the diffusion blurs them: fewer, merged
                qb, wb, sb = _merge_particles(qb, wb, sb, coarse[0])
            n = qb.shape[0]
            q[b, :n], log_w[b, :n], spread[b, :n] = qb, wb, sb
        return cls(q.to(dtype), log_w.to(dtype), spread.to(dtype), diffusion.to(dtype), active, outlier_weight)

    # ------------------------------------------------------------------ LogPrior
    @property
    def batch_size(self) -> int:
        return int(self.active.shape[0])

    def select(self, rows: slice | torch.Tensor) -> DiffusedPrior:
        return DiffusedPrior(self.quaternions[rows], self.log_weight[rows], self.spread[rows], self.diffusion[rows],
                             self.active[rows], self.outlier_weight)

    def at_rotations(self, R: torch.Tensor) -> torch.Tensor:
        """Point log-density ``(B, M)`` at rotations ``R`` ``(B, M, 3, 3)`` (no cell averaging)."""
        so3._check_trailing(R, (3, 3), "R")
        if R.dim() != 4 or R.shape[0] != self.batch_size:
            raise ValueError(f"R must have shape ({self.batch_size}, M, 3, 3), got {tuple(R.shape)}")
        q = so3.matrix_to_quat(R.to(self.quaternions.dtype).cpu())
        out = torch.zeros(q.shape[:2], dtype=self.quaternions.dtype)
        for b in self.active.nonzero()[:, 0].tolist():
            out[b] = self._mixture(q[b], self._kernel(b, None))
        return out.to(R.device)

    def at_cells(self, level: int, index: torch.Tensor) -> torch.Tensor:
        """Cell-averaged log-density ``(B, M)`` at the level-``level`` cells ``index`` ``(B, M)``."""
        if index.dim() != 2 or index.shape[0] != self.batch_size:
            raise ValueError(f"index must have shape ({self.batch_size}, M), got {tuple(index.shape)}")
        dtype = self.quaternions.dtype
        out = torch.zeros(index.shape, dtype=dtype)
        rows = self.active.nonzero()[:, 0].tolist()
        if not rows:
            return out.to(index.device)
        index = index.cpu()
        pix_dirs = _pixel_directions(level).to(dtype)  # (npix, 3)
        for b in rows:
            kernel = self._kernel(b, level)
            # prune a large set of cells when that saves most of the work (the cutoff within 90 deg): cells whose
            # view direction is farther than the cutoff from every particle's are farther from the particles
            if index.shape[1] > 4 * pix_dirs.shape[0] and kernel.cutoff < math.pi / 2:
                pix, _ = grids.split_cells(index[b], level)
                cos_near = (pix_dirs @ _quat_z_axis(kernel.q).T).amax(1) >= math.cos(kernel.cutoff)  # (npix,)
                cols = cos_near[pix].nonzero()[:, 0]
                out[b] = math.log(self.outlier_weight) - so3.LOG_HAAR_VOLUME
                if cols.numel():
                    out[b, cols] = self._mixture(grids.cell_quaternions(level, index[b, cols], dtype=dtype), kernel)
            else:
                out[b] = self._mixture(grids.cell_quaternions(level, index[b], dtype=dtype), kernel)
        return out.to(index.device)

    # ------------------------------------------------------------------ internals
    def _kernel(self, b: int, level: int | None) -> _Kernel:
        """Row ``b``'s mixture terms for cells of ``level`` (``None``: points), built once.

        For the coarse search levels (below :data:`PARTICLE_LEVEL`) the particles are merged
        (:func:`_coarse_particles`: a track's branch becomes one moment-matched particle), so that the full
        coarse grid costs little; exact from :data:`PARTICLE_LEVEL` on. The variance of particle ``p`` is
        its spread, the diffusion and (cells) the cell's own spread."""
        key = (b, level)
        if key not in self._kernels:
            real = torch.isfinite(self.log_weight[b])
            qp, log_w, spread = self.quaternions[b, real], self.log_weight[b, real], self.spread[b, real]
            if level is not None and level < PARTICLE_LEVEL:
                qp, log_w, spread = _coarse_particles(qp, log_w, spread, level)
            cell_var = 0.0 if level is None else grids.resolution(level) ** 2 / 12
            v = (spread + self.diffusion[b] + cell_var).to(torch.float64).clamp(max=_MAX_NOISE_STD**2)  # (P,)
            eps = self.outlier_weight
            norm = -_log_ball_mass(v) - 1.5 * torch.log(2 * math.pi * v)  # the motion noise's normaliser
            # + log(1 - eps), and log 8 of the Jacobian 2 angle^2 / sin(angle/2)^2 = 8 (h / sin h)^2 (h = angle / 2)
            const = norm + log_w.to(torch.float64) + (math.log(1 - eps) + math.log(8.0))
            # the cutoff: log k(angle) <= norm + log(2 pi^2) - angle^2 / (2 v), below the pruning floor beyond it
            floor = math.log(_PRUNE_TOLERANCE * eps / (1 - eps)) - so3.LOG_HAAR_VOLUME
            r2 = 2 * v * (norm + math.log(2 * math.pi**2) - floor).clamp_min(0)
            dtype = qp.dtype
            self._kernels[key] = _Kernel(qp, const.to(dtype), (-2 / v).to(dtype), float(r2.max().sqrt()))
        return self._kernels[key]

    def _mixture(self, qc: torch.Tensor, kernel: _Kernel) -> torch.Tensor:
        """``log((1 - eps) sum_p w_p k(angle(c, p); var_p) + eps / pi**2)`` ``(M,)`` at quaternions ``qc``
        ``(M, 4)``."""
        out = torch.empty(qc.shape[0], dtype=qc.dtype)
        step = max(1, _CHUNK_ELEMENTS // max(1, kernel.q.shape[0]))
        for a in range(0, qc.shape[0], step):
            c = (qc[a : a + step] @ kernel.q.T).abs().clamp(max=1.0)  # (m, P): cos h, h = angle / 2
            h2 = torch.acos(c).square()
            # log (h / sin h)^2 = log h^2 - log(1 - c^2); its series near 0 (where 1 - c^2 loses digits)
            jac = torch.where(h2 < 4e-3, h2 * (1 / 3 + h2 / 90), h2.clamp_min(4e-3).log() - ((1 - c) * (1 + c)).log())
            terms = kernel.const + h2 * kernel.neg_2_over_v + jac  # -angle^2 / (2 v) = -2 h^2 / v
            out[a : a + step] = terms[:, 0] if terms.shape[1] == 1 else torch.logsumexp(terms, dim=1)
        return torch.logaddexp(out, torch.tensor(math.log(self.outlier_weight) - so3.LOG_HAAR_VOLUME, dtype=qc.dtype))


@dataclass(frozen=True)
class _Kernel:
    """One row's mixture terms: particles ``q`` ``(P, 4)``, ``const`` ``(P,)`` (log weight, normaliser,
    ``log(1 - eps)``, ``log 8``), ``neg_2_over_v`` ``(P,)`` and the pruning ``cutoff`` (rad)."""

    q: torch.Tensor
    const: torch.Tensor
    neg_2_over_v: torch.Tensor
    cutoff: float


# ----------------------------------------------------------------------------- tracks
@dataclass
class Track:
    """One tracked object.

    Attributes:
        track_id: the box's id, ``"#n"`` for an id-less box, :data:`IMAGE_TRACK_ID` for the whole image.
        stamp_s: when it was last seen (s).
        kind: ``"id"``, ``"auto"`` (id-less boxes) or ``"image"``: ids are unique within a kind.
        center, size: its last box's centre ``(u, v)`` and size ``(w, h)`` px (``None`` for the image).
        posterior: its last posterior, compact (camera frame), ``None`` before the first.
        mode: ``(4,)`` the last published mode (x, y, z, w, camera frame), ``None`` before the first.
        frames: frames it has been seen in.
        before: ``(posterior, stamp_s, mode)`` as they were before the last update (see :meth:`basis`).
    """

    track_id: str
    stamp_s: float
    kind: str = "id"
    center: tuple[float, float] | None = None
    size: tuple[float, float] | None = None
    posterior: CompactPosterior | None = None
    mode: np.ndarray | None = None
    frames: int = 0
    before: tuple[CompactPosterior | None, float, np.ndarray | None] = (None, 0.0, None)

    def basis(self, stamp_s: float) -> tuple[CompactPosterior | None, float, np.ndarray | None]:
        """``(posterior, stamp_s, mode)`` the frame stamped ``stamp_s`` builds on: the last update's, or,
        for a frame with the stamp of the last update (the same image again: a camera or a replay
        repeating a frame), the state before it, so that one observation is never fused twice."""
        if self.frames and stamp_s == self.stamp_s:
            return self.before
        return self.posterior, self.stamp_s, self.mode


class Tracker:
    """The tracks of one image stream (see the module docstring); not thread-safe.

    Args:
        timeout_s: a track not seen for longer is dropped; a stamp that goes backwards, or jumps
            forward by more, drops them all.
    """

    def __init__(self, timeout_s: float = 1.0):
        self.timeout_s = float(timeout_s)
        self.tracks: dict[tuple[str, str], Track] = {}  # (kind, track_id)
        self.last_stamp_s: float | None = None
        self._next_auto = 1

    def reset(self) -> None:
        """Forget every track (the next frame starts afresh)."""
        self.tracks.clear()
        self.last_stamp_s = None

    def begin_frame(self, stamp_s: float) -> str | None:
        """Start the frame stamped ``stamp_s`` (s): drop stale tracks; returns why all were reset, or ``None``."""
        if not math.isfinite(stamp_s):
            raise ValueError(f"stamp_s must be finite seconds, got {stamp_s!r}")
        reason = None
        last = self.last_stamp_s
        if last is not None and stamp_s < last:
            reason = f"stamp {stamp_s:.3f} s is before the previous frame's {last:.3f} s (a replay loop?)"
        elif last is not None and stamp_s - last > self.timeout_s:
            reason = f"stamp jumped {stamp_s - last:.3f} s, more than track_timeout_s = {self.timeout_s:g}"
        if reason is not None and self.tracks:
            self.tracks.clear()
        elif reason is not None:
            reason = None  # nothing was tracked: nothing to report
        for key in [k for k, t in self.tracks.items() if stamp_s - t.stamp_s > self.timeout_s]:
            del self.tracks[key]
        self.last_stamp_s = stamp_s
        return reason

    def associate(self, boxes: Sequence[object | None], stamp_s: float) -> list[Track | None]:
        """The track of each object of a frame (``boxes``: a ``pipeline.Box`` each, ``None`` for the whole image).

        A box with an ``id`` gets that id's track (a second box with the same id in the frame gets
        none); an id-less box the nearest unclaimed id-less track whose last centre is within the
        box's longer side, closest pairs first, else a new one (``"#n"``). Tracks are created here,
        stored by :meth:`update`.
        """
        out: list[Track | None] = [None] * len(boxes)
        claimed: set[tuple[str, str]] = set()
        idless: list[int] = []
        for j, box in enumerate(boxes):
            box_id = "" if box is None else str(getattr(box, "id", "") or "")
            if box is not None and not box_id:
                idless.append(j)
                continue
            key = ("image", IMAGE_TRACK_ID) if box is None else ("id", box_id)
            if key in claimed:
                continue
            claimed.add(key)
            out[j] = self.tracks.get(key) or Track(key[1], stamp_s, kind=key[0])
        pairs = []
        for j in idless:
            (u, v), (w, h) = boxes[j].center, boxes[j].size  # type: ignore[union-attr]
            gate = max(float(w), float(h))
            for key, t in self.tracks.items():
                if key[0] == "auto" and t.center is not None:
                    dist = math.hypot(float(u) - t.center[0], float(v) - t.center[1])
                    if dist <= gate:
                        pairs.append((dist, j, key))
        taken: set[int] = set()
        for _, j, key in sorted(pairs):
            if j not in taken and key not in claimed:
                out[j] = self.tracks[key]
                taken.add(j)
                claimed.add(key)
        for j in idless:
            if j not in taken:
                out[j] = Track(f"#{self._next_auto}", stamp_s, kind="auto")
                self._next_auto += 1
        return out

    def update(self, track: Track, stamp_s: float, box: object | None, posterior: CompactPosterior,
               mode: np.ndarray) -> None:
        """Record what ``track`` was seen as at ``stamp_s``: its box, compact posterior and published mode."""
        if not (track.frames and float(stamp_s) == track.stamp_s):  # a repeated frame keeps its basis
            track.before = (track.posterior, track.stamp_s, track.mode)
        track.stamp_s = float(stamp_s)
        if box is not None:
            track.center = (float(box.center[0]), float(box.center[1]))  # type: ignore[attr-defined]
            track.size = (float(box.size[0]), float(box.size[1]))  # type: ignore[attr-defined]
        track.posterior, track.mode = posterior, np.asarray(mode, dtype=np.float64)
        track.frames += 1
        self.tracks[(track.kind, track.track_id)] = track
