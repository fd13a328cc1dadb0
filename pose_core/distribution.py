"""``SO3Distribution``: a batch of probability distributions over rotations.

A distribution is held as a *partition of SO(3) into grid cells* (:mod:`pose_core.grids`), each
cell with a probability mass, possibly mixing levels (coarse cells far from the modes, fine cells
near them, as coarse-to-fine refinement leaves them). Probability **mass** belongs to a cell;
**density** is mass divided by the cell's Haar volume ``pi**2 / (72 * 8**level)``
(:data:`pose_core.so3.HAAR_VOLUME` convention). :func:`log_density_from_log_mass` is the one
conversion between the two.

Two ways to build one:

* :meth:`SO3Distribution.from_grid_logits`: logits on the level-``L`` grid; exact on its grid
  (the density at ``R`` is that of the cell containing ``R``).
* :meth:`SO3Distribution.from_fourier`: a band-limited log-density ``f(R) = F . basis(R)``
  (the Image2Sphere output), refined coarse-to-fine (SpyroPose): evaluate ``f`` on a coarse grid,
  keep the ``top_k`` cells, replace each by its 8 children, repeat to the target level.
  It keeps ``F``, so :meth:`log_prob` evaluates the continuous density at any rotation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pose_core import fourier, grids, so3

__all__ = ["SO3Distribution", "log_density_from_log_mass"]


def _log_cell_volume(level: torch.Tensor) -> torch.Tensor:
    """``log(pi**2 / (72 * 8**level))`` for integer levels ``(...)``."""
    return so3.LOG_HAAR_VOLUME - math.log(72) - level.to(torch.float64) * math.log(8)


def log_density_from_log_mass(log_mass: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Log-density (Haar volume ``pi**2``) of cells with log-mass ``log_mass`` at grid ``level`` (broadcast)."""
    return log_mass - _log_cell_volume(level).to(log_mass.dtype)


@dataclass(frozen=True)
class _Fourier:
    coeffs: torch.Tensor  # (B, so3_dim)
    lmax: int
    log_norm: torch.Tensor  # (B,): log of the integral of exp(f) over SO(3), Haar volume pi^2


class SO3Distribution:
    """Batch of ``B`` distributions on SO(3), each a probability mass over ``C`` grid cells.

    Attributes:
        cell_level: ``(C,)`` int64, grid level of each cell (shared by the batch).
        cell_index: ``(B, C)`` int64, cell index at that level.
        log_mass: ``(B, C)``, normalised log probability mass (``logsumexp = 0`` per row);
            ``-inf`` for cells that were refined into children.

    Build with :meth:`from_grid_logits` or :meth:`from_fourier` (or ``ImageToSphere.predict``).
    """

    def __init__(
        self,
        cell_level: torch.Tensor,
        cell_index: torch.Tensor,
        log_mass: torch.Tensor,
        fourier_form: _Fourier | None = None,
    ):
        if cell_index.dim() != 2 or log_mass.shape != cell_index.shape or cell_level.shape != cell_index.shape[1:]:
            raise ValueError(
                "expected cell_level (C,), cell_index (B, C), log_mass (B, C); got "
                f"{tuple(cell_level.shape)}, {tuple(cell_index.shape)}, {tuple(log_mass.shape)}"
            )
        self.cell_level = cell_level
        self.cell_index = cell_index
        self.log_mass = log_mass
        self._fourier = fourier_form
        self._support_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_grid_logits(cls, logits: torch.Tensor, level: int | None = None) -> SO3Distribution:
        """Distribution with ``softmax(logits)`` on the cells of grid ``level``.

        Args:
            logits: ``(B, 72 * 8**level)`` unnormalised log-probabilities, one per grid cell, in
                :func:`pose_core.grids.so3_healpix_grid` order.
            level: grid level; inferred from ``logits.shape[-1]`` when ``None``.
        """
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (B, N), got {tuple(logits.shape)}")
        n = logits.shape[1]
        inferred = round(math.log(n / 72, 8)) if n >= 72 else -1
        if inferred < 0 or grids.num_cells(inferred) != n:
            raise ValueError(f"logits has {n} columns, not a grid size 72 * 8**level")
        if level is not None and level != inferred:
            raise ValueError(f"logits has {n} columns, which is grid level {inferred}, not {level}")
        B = logits.shape[0]
        index = torch.arange(n, device=logits.device).expand(B, n)
        cell_level = torch.full((n,), inferred, dtype=torch.int64, device=logits.device)
        return cls(cell_level, index, torch.log_softmax(logits, dim=-1))

    @classmethod
    def from_fourier(
        cls,
        coeffs: torch.Tensor,
        lmax: int,
        base_level: int = 3,
        target_level: int = 5,
        top_k: int = 64,
    ) -> SO3Distribution:
        """Coarse-to-fine distribution of the log-density ``f(R) = coeffs . basis(R)`` (+ a constant).

        Args:
            coeffs: ``(B, so3_dim(lmax))`` SO(3) Fourier coefficients (:mod:`pose_core.wigner`).
            lmax: band limit.
            base_level: level evaluated in full (level 3: 36,864 cells, the training grid).
            target_level: finest level; the mode is the centre of a cell of this level
                (resolution :func:`pose_core.grids.resolution`).
            top_k: cells refined per level and batch element.
        """
        if coeffs.dim() != 2:
            raise ValueError(f"coeffs must have shape (B, so3_dim), got {tuple(coeffs.shape)}")
        if not 0 <= base_level <= target_level:
            raise ValueError(f"need 0 <= base_level <= target_level, got {base_level}, {target_level}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        B, device = coeffs.shape[0], coeffs.device
        values = [fourier.evaluate_grid(coeffs, base_level, lmax)]  # (B, N0) log-density up to a constant, per level
        indices = [torch.arange(values[0].shape[1], device=device).expand(B, -1)]
        levels = [base_level]
        for level in range(base_level, target_level):
            k = min(top_k, values[-1].shape[1])
            top = values[-1].topk(k, dim=1).indices  # (B, k) positions in the last block
            parents = torch.gather(indices[-1], 1, top)
            values[-1] = values[-1].scatter(1, top, float("-inf"))  # replaced by the children
            child = grids.children(parents, level).reshape(B, 8 * k)
            values.append(fourier.evaluate_cells(coeffs, level + 1, child, lmax))
            indices.append(child)
            levels.append(level + 1)
        cell_level = torch.cat(
            [torch.full((v.shape[1],), lv, dtype=torch.int64, device=device) for v, lv in zip(values, levels)]
        )
        f = torch.cat(values, dim=1)
        log_weight = f + _log_cell_volume(cell_level).to(f.dtype)  # f + log(volume)
        log_norm = torch.logsumexp(log_weight, dim=1)
        dist = cls(cell_level, torch.cat(indices, dim=1), log_weight - log_norm[:, None])
        dist._fourier = _Fourier(coeffs, lmax, log_norm)
        return dist

    # ------------------------------------------------------------------ basic properties
    @property
    def batch_size(self) -> int:
        """Number of distributions ``B``."""
        return self.cell_index.shape[0]

    @property
    def finest_level(self) -> int:
        """Finest grid level present."""
        return int(self.cell_level.max())

    @property
    def is_band_limited(self) -> bool:
        """True when built from Fourier coefficients (continuous :meth:`log_prob`)."""
        return self._fourier is not None

    def _per_cell(
        self, table: Callable[..., torch.Tensor], trailing: tuple[int, ...], columns: torch.Tensor | None
    ) -> torch.Tensor:
        """``table(level, index, dtype=...)`` (a :mod:`pose_core.grids` look-up) of the cells in
        ``columns`` ``(C',)`` (default: all), level by level: ``(B, C', *trailing)``."""
        level = self.cell_level if columns is None else self.cell_level[columns]
        index = self.cell_index if columns is None else self.cell_index[:, columns]
        out = torch.empty(index.shape + trailing, dtype=self.log_mass.dtype, device=self.log_mass.device)
        for lv in level.unique().tolist():
            cols = (level == lv).nonzero().squeeze(1)
            out[:, cols] = table(lv, index[:, cols], dtype=out.dtype)
        return out

    def cell_rotations(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Centre rotations ``(B, C', 3, 3)`` of the cells in ``columns`` ``(C',)`` (default: all ``C``).

        Refined-away cells are included (with zero mass).
        """
        return self._per_cell(grids.cell_rotations, (3, 3), columns)

    def cell_quaternions(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Centre rotations of the cells in ``columns`` ``(C',)`` (default: all) as quaternions ``(B, C', 4)``.

        ``(x, y, z, w)``, ``w >= 0`` (:mod:`pose_core.so3`); the rotations of :meth:`cell_rotations`.
        """
        return self._per_cell(grids.cell_quaternions, (4,), columns)

    def _support(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Columns ``(C',)`` holding more than 1e-12 mass in some row, and their quaternions ``(B, C', 4)``.

        Cells below that mass cannot change a covariance or a mode's mass at float precision.
        Computed once per distribution (covariance and top_modes share it). Quaternions, not
        matrices: a flat distribution has tens of thousands of cells in its support, and
        quaternion products and dot products are several times cheaper than 3x3 matrix work.
        """
        if self._support_cache is None:
            cols = (self.log_mass > math.log(1e-12)).any(dim=0).nonzero().squeeze(1)
            self._support_cache = (cols, self.cell_quaternions(cols))
        return self._support_cache

    def rotations_at(self, columns: torch.Tensor) -> torch.Tensor:
        """Centre rotations ``(B, k, 3, 3)`` of ``k`` columns per row, ``columns`` ``(B, k)`` (of
        :attr:`cell_index`, e.g. from :meth:`top_mode_cells`); or ``(B, 3, 3)`` for ``columns`` ``(B,)``."""
        if columns.dim() == 1:
            return self.rotations_at(columns[:, None])[:, 0]
        level = self.cell_level[columns]  # (B, k)
        index = torch.gather(self.cell_index, 1, columns)
        out = torch.empty(columns.shape + (3, 3), dtype=self.log_mass.dtype, device=self.log_mass.device)
        for lv in level.unique().tolist():
            sel = level == lv
            out[sel] = grids.cell_rotations(lv, index[sel], dtype=out.dtype)
        return out

    def cell_log_density(self) -> torch.Tensor:
        """Log-density ``(B, C)`` of each cell (``-inf`` for refined-away cells)."""
        return log_density_from_log_mass(self.log_mass, self.cell_level)

    def to(self, device) -> SO3Distribution:
        """Copy on ``device``."""
        f = self._fourier
        moved = None if f is None else _Fourier(f.coeffs.to(device), f.lmax, f.log_norm.to(device))
        return SO3Distribution(self.cell_level.to(device), self.cell_index.to(device), self.log_mass.to(device), moved)

    # ------------------------------------------------------------------ queries
    def log_prob(self, R: torch.Tensor) -> torch.Tensor:
        """Log-density at rotations: ``R`` ``(B, 3, 3)`` → ``(B,)`` or ``(B, M, 3, 3)`` → ``(B, M)``.

        Band-limited distributions are evaluated exactly at ``R``; grid distributions return the
        density of the cell containing ``R``.
        """
        B = self.batch_size
        if R.dim() == 3 and R.shape == (B, 3, 3):
            return self.log_prob(R[:, None])[:, 0]
        if R.dim() != 4 or R.shape[0] != B or R.shape[-2:] != (3, 3):
            raise ValueError(f"R must have shape ({B}, 3, 3) or ({B}, M, 3, 3), got {tuple(R.shape)}")
        if self._fourier is not None:
            f = fourier.evaluate_rotations(self._fourier.coeffs, R, self._fourier.lmax)
            return (f - self._fourier.log_norm[:, None]).to(self.log_mass.dtype)
        if self.cell_level.unique().numel() != 1:
            raise ValueError("log_prob of a multi-level grid distribution needs its Fourier form")
        level = int(self.cell_level[0])
        idx = grids.cell_of(R, level)  # (B, M), equal to the column for a full grid
        if self.cell_index.shape[1] != grids.num_cells(level):
            raise ValueError("grid distribution does not cover the whole grid")
        return log_density_from_log_mass(torch.gather(self.log_mass, 1, idx), self.cell_level[0])

    def mode(self) -> torch.Tensor:
        """Most probable rotation ``(B, 3, 3)``: centre of the cell of highest density."""
        return self.rotations_at(self.cell_log_density().argmax(dim=1))

    def mode_resolution(self) -> float:
        """Size (rad) of the cells the mode is chosen among: :func:`pose_core.grids.resolution` of the finest level."""
        return grids.resolution(self.finest_level)

    def max_log_density(self) -> torch.Tensor:
        """Highest cell log-density ``(B,)``."""
        return self.cell_log_density().max(dim=1).values

    def covariance(self, about: torch.Tensor | None = None) -> torch.Tensor:
        """Covariance ``(B, 3, 3)``, rad², of the rotation vector ``omega`` in ``R = exp([omega]x) @ about``.

        ``about`` ``(B, 3, 3)`` defaults to :meth:`mode`; the result is the second moment
        ``E[omega omega^T]`` about it (the covariance of the error of reporting ``about``, as
        ``geometry_msgs/PoseWithCovariance`` means it). Each cell contributes its centre's
        ``omega`` plus the spread of a uniform cell (``resolution(level)**2 / 12`` per axis).
        Multimodal distributions get the large covariance they have; nothing is clipped.
        """
        center = self.mode() if about is None else about
        cols, q = self._support()  # (C',), (B, C', 4)
        q_center = so3.matrix_to_quat(center.to(q.dtype))  # (B, 4)
        # (B, C', 3): rotation vectors of R @ center^T
        omega = so3.quat_to_rotvec(so3.quat_multiply(q, so3.quat_conjugate(q_center)[:, None]))
        p = self.log_mass[:, cols].exp()  # (B, C'); 0 for refined-away cells
        second = torch.einsum("bc,bci,bcj->bij", p, omega, omega)
        cell_var = torch.tensor(
            [grids.resolution(lv) ** 2 / 12 for lv in range(self.finest_level + 1)], dtype=p.dtype, device=p.device
        )
        within = (p * cell_var[self.cell_level[cols]]).sum(1)  # (B,)
        cov = second + within[:, None, None] * torch.eye(3, dtype=p.dtype, device=p.device)
        return (cov + cov.transpose(-1, -2)) / 2

    def entropy(self) -> torch.Tensor:
        """Differential entropy ``(B,)`` in nats w.r.t. the Haar measure of volume ``pi**2``.

        The uniform distribution has entropy ``log(pi**2)``; concentrated ones go negative.
        """
        p = self.log_mass.exp()
        return -torch.where(p > 0, p * self.cell_log_density(), torch.zeros_like(p)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` rotations per distribution ``(B, n, 3, 3)``: a cell drawn by mass, then a point uniform in it."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        probs = self.log_mass.exp().to(torch.float64).cpu()
        cols = torch.multinomial(probs, n, replacement=True, generator=generator)  # (B, n)
        level = self.cell_level.cpu()[cols]
        index = torch.gather(self.cell_index.cpu(), 1, cols)
        out = torch.empty((self.batch_size, n, 3, 3), dtype=self.log_mass.dtype)
        for lv in level.unique().tolist():
            sel = level == lv
            out[sel] = grids.sample_in_cells(index[sel], lv, generator=generator, dtype=out.dtype)
        return out.to(self.log_mass.device)

    def top_mode_cells(self, k: int = 4, radius: float = math.radians(15.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``k`` separated modes per distribution, as cells, and the mass within ``radius`` of each.

        Greedy non-maximum suppression over cells by density: the densest cell is a mode, cells
        within ``radius`` (rad) of it are assigned to it, repeat. Returns the modes' columns
        ``(B, k)`` (of :attr:`cell_index`; -1 where fewer modes exist) and masses ``(B, k)``
        (descending by density; 0 where there is no mode). The centre of a mode's cell is its
        rotation and :meth:`cell_log_density` there its log-density (for a band-limited
        distribution equal to :meth:`log_prob` at that centre).
        """
        B = self.batch_size
        cols, q = self._support()  # (C',), (B, C', 4)
        density = self.cell_log_density()[:, cols]
        p = self.log_mass[:, cols].exp()
        modes = torch.full((B, k), -1, dtype=torch.int64, device=p.device)
        mass = torch.zeros((B, k), dtype=p.dtype, device=p.device)
        free = torch.isfinite(density)
        # angle(R1^T R2) <= radius  <=>  |<q1, q2>| >= cos(radius / 2)  (q and -q are one rotation)
        min_dot = math.cos(min(radius, math.pi) / 2)
        for j in range(k):
            d = torch.where(free, density, torch.full_like(density, float("-inf")))
            best = d.argmax(dim=1)
            ok = torch.isfinite(d.gather(1, best[:, None]))[:, 0]
            q_center = q[torch.arange(B), best]  # (B, 4)
            near = ((q * q_center[:, None]).sum(-1).abs() >= min_dot) & free
            modes[ok, j] = cols[best][ok]
            mass[ok, j] = (p * near).sum(1)[ok]
            free = free & ~near
        return modes, mass

    def top_modes(self, k: int = 4, radius: float = math.radians(15.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`top_mode_cells` as rotations ``(B, k, 3, 3)`` (identity where there is no mode), masses ``(B, k)``."""
        modes, mass = self.top_mode_cells(k, radius)
        rots = self.rotations_at(modes.clamp_min(0))
        rots[modes < 0] = torch.eye(3, dtype=rots.dtype, device=rots.device)
        return rots, mass
