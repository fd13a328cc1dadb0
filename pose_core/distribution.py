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
  With a :class:`LogPrior` ``p`` it builds the posterior ``exp(f) * p`` instead (a temporal
  filter's prior, :mod:`pose_core.tracking`): the prior is added to ``f`` at every cell *before*
  the cells to refine are chosen, so the refinement follows the posterior, not the likelihood.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pose_core import fourier, grids, so3

__all__ = ["SO3Distribution", "LogPrior", "log_density_from_log_mass", "log_density_of_equal_cells"]


def _log_cell_volume(level: torch.Tensor) -> torch.Tensor:
    """``log(pi**2 / (72 * 8**level))`` for integer levels ``(...)``."""
    return so3.LOG_HAAR_VOLUME - math.log(72) - level.to(torch.float64) * math.log(8)


def log_density_from_log_mass(log_mass: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Log-density (Haar volume ``pi**2``) of cells with log-mass ``log_mass`` at grid ``level`` (broadcast)."""
    return log_mass - _log_cell_volume(level).to(log_mass.dtype)


def log_density_of_equal_cells(log_mass: torch.Tensor, num_cells: int) -> torch.Tensor:
    """Log-density of ``num_cells`` equal-volume cells (any grid, e.g. another project's) with log-mass ``log_mass``:
    ``log_mass + log(num_cells) - log(pi**2)``."""
    return log_mass + math.log(num_cells) - so3.LOG_HAAR_VOLUME


class LogPrior(abc.ABC):
    """A batch of ``B`` log-densities on SO(3) that :meth:`SO3Distribution.from_fourier` multiplies
    into the band-limited one (w.r.t. the Haar measure of volume ``pi**2``; an additive constant
    per row does not matter, the product is renormalised). Evaluated in the frame of the
    distribution it multiplies (for a crop, the crop's virtual camera, :mod:`pose_core.crops`).
    A row may carry no information: it then returns exactly 0, so its cells keep their values
    bit for bit.
    """

    @property
    @abc.abstractmethod
    def batch_size(self) -> int:
        """Number of rows ``B``."""

    @abc.abstractmethod
    def at_cells(self, level: int, index: torch.Tensor) -> torch.Tensor:
        """Log-density ``(B, M)`` at the centres of the level-``level`` cells ``index`` ``(B, M)`` (int64),
        on ``index``'s device."""

    @abc.abstractmethod
    def at_rotations(self, R: torch.Tensor) -> torch.Tensor:
        """Log-density ``(B, M)`` at rotations ``R`` ``(B, M, 3, 3)``, on ``R``'s device."""

    @abc.abstractmethod
    def select(self, rows: slice | torch.Tensor) -> LogPrior:
        """The rows ``rows`` (a slice or a 1-D int64 tensor) of the batch."""


@dataclass(frozen=True)
class _Fourier:
    coeffs: torch.Tensor  # (B, so3_dim)
    lmax: int
    log_norm: torch.Tensor  # (B,): log of the integral of exp(f) (times the prior) over SO(3), Haar volume pi^2
    log_prior: LogPrior | None = None  # the prior multiplied in, if any

    def select(self, rows: slice | torch.Tensor) -> _Fourier:
        prior = None if self.log_prior is None else self.log_prior.select(rows)
        return _Fourier(self.coeffs[rows], self.lmax, self.log_norm[rows], prior)

    def to(self, device) -> _Fourier:
        return _Fourier(self.coeffs.to(device), self.lmax, self.log_norm.to(device), self.log_prior)


class SO3Distribution:
    """Batch of ``B`` distributions on SO(3), each a probability mass over ``C`` grid cells.

    Attributes:
        cell_level: ``(C,)`` int64, grid level of each cell (shared by the batch).
        cell_index: ``(B, C)`` int64, cell index at that level.
        log_mass: ``(B, C)``, normalised log probability mass (``logsumexp = 0`` per row);
            ``-inf`` for cells that were refined into children (and for padding columns, which
            coarse-to-fine may add so that every row has the same columns).

    Build with :meth:`from_grid_logits` or :meth:`from_fourier` (or ``ImageToSphere.predict``);
    ``dist.select(rows)`` / ``dist[rows]`` keeps some of the batch, ``len(dist)`` is ``B``.
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
        self._runs_cache: list[tuple[int, int, int]] | None = None
        self._quat_cache: torch.Tensor | None = None
        self._mass_cache: torch.Tensor | None = None

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
        climb: int = 3,
        log_prior: LogPrior | None = None,
    ) -> SO3Distribution:
        """Coarse-to-fine distribution of the log-density ``f(R) = coeffs . basis(R)`` (+ a constant).

        Args:
            coeffs: ``(B, so3_dim(lmax))`` SO(3) Fourier coefficients (:mod:`pose_core.wigner`).
            lmax: band limit.
            base_level: level evaluated in full (level 3: 36,864 cells, the training grid).
            target_level: finest level; the mode is the centre of a cell of this level
                (resolution :func:`pose_core.grids.resolution`).
            top_k: cells refined per level and batch element.
            climb: rounds of hill climbing at the target level: the cells around the densest one
                (its neighbours within about one cell, found in rotation space) that are denser
                and not yet refined are refined to the target level, their coarser ancestors
                included, until none is left (or ``climb`` rounds). The top-``k`` search alone
                misses, on symmetric objects, a denser cell next to the one it finds; this step
                closes that gap. 0 turns it off.
            log_prior: ``None``, or a :class:`LogPrior` of ``B`` rows: the distribution is then the
                posterior ``exp(f) * prior`` (normalised), the prior added to ``f`` at every cell
                evaluated (base grid, refined children, hill-climbing probes) before cells are
                chosen; :meth:`log_prob` includes it. ``None`` runs exactly the plain code path.
        """
        if coeffs.dim() != 2:
            raise ValueError(f"coeffs must have shape (B, so3_dim), got {tuple(coeffs.shape)}")
        if not 0 <= base_level <= target_level:
            raise ValueError(f"need 0 <= base_level <= target_level, got {base_level}, {target_level}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        B, device = coeffs.shape[0], coeffs.device
        if log_prior is not None and log_prior.batch_size != B:
            raise ValueError(f"log_prior has {log_prior.batch_size} rows, coeffs {B}")
        blocks = _Blocks(coeffs, lmax, log_prior)
        base_index = torch.arange(grids.num_cells(base_level), device=device).expand(B, -1)
        blocks.add(base_level, base_index, blocks.with_prior(base_level, base_index,
                                                             fourier.evaluate_grid(coeffs, base_level, lmax)))
        for _ in range(base_level, target_level):
            values = blocks.values[-1]
            k = min(top_k, values.shape[1])
            top = values.topk(k, dim=1).indices  # (B, k) positions in the last block
            blocks.refine_last(top)
        for _ in range(climb if target_level > base_level else 0):
            if not blocks.climb(target_level):
                break
        cell_level, index, f = blocks.cat()
        log_weight = f + _log_cell_volume(cell_level).to(f.dtype)  # f + log(volume)
        log_norm = torch.logsumexp(log_weight, dim=1)
        dist = cls(cell_level, index, log_weight - log_norm[:, None])
        dist._fourier = _Fourier(coeffs, lmax, log_norm, log_prior)
        return dist

    # ------------------------------------------------------------------ basic properties
    @property
    def batch_size(self) -> int:
        """Number of distributions ``B``."""
        return self.cell_index.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def finest_level(self) -> int:
        """Finest grid level present."""
        return int(self.cell_level.max())

    @property
    def is_band_limited(self) -> bool:
        """True when built from Fourier coefficients (continuous :meth:`log_prob`)."""
        return self._fourier is not None

    @property
    def log_prior(self) -> LogPrior | None:
        """The prior multiplied into the band-limited density (``from_fourier(log_prior=...)``), or ``None``."""
        return None if self._fourier is None else self._fourier.log_prior

    def select(self, rows: int | slice | Sequence[int] | torch.Tensor) -> SO3Distribution:
        """The distributions ``rows`` of the batch (an int keeps a batch of one), Fourier form included."""
        if isinstance(rows, int):
            if not -self.batch_size <= rows < self.batch_size:
                raise IndexError(f"row {rows} out of range for a batch of {self.batch_size}")
            rows = slice(rows % self.batch_size, rows % self.batch_size + 1)
        elif not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.int64, device=self.log_mass.device)
            if rows.dim() != 1:
                raise IndexError(f"rows must be an int, a slice or a 1-D sequence, got shape {tuple(rows.shape)}")
        picked = None if self._fourier is None else self._fourier.select(rows)
        out = SO3Distribution(self.cell_level, self.cell_index[rows], self.log_mass[rows], picked)
        out._runs_cache = self._runs_cache
        if self._quat_cache is not None:
            out._quat_cache = self._quat_cache[rows]
        if self._mass_cache is not None:
            out._mass_cache = self._mass_cache[rows]
        return out

    __getitem__ = select

    def _runs(self) -> list[tuple[int, int, int]]:
        """Contiguous runs ``(level, start, stop)`` of :attr:`cell_level` (coarse-to-fine: one per block)."""
        if self._runs_cache is None:
            levels, counts = torch.unique_consecutive(self.cell_level.cpu(), return_counts=True)
            stops = counts.cumsum(0).tolist()
            starts = [0] + stops[:-1]
            self._runs_cache = list(zip(levels.tolist(), starts, stops))
        return self._runs_cache

    def _per_cell(
        self, table: Callable[..., torch.Tensor], trailing: tuple[int, ...], columns: torch.Tensor | None
    ) -> torch.Tensor:
        """``table(level, index, dtype=...)`` (a :mod:`pose_core.grids` look-up) of the cells in
        ``columns`` ``(C',)`` (default: all, run by run), level by level: ``(B, C', *trailing)``."""
        dtype, device = self.log_mass.dtype, self.log_mass.device
        if columns is None:
            parts = [table(lv, self.cell_index[:, a:b], dtype=dtype) for lv, a, b in self._runs()]
            return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        level = self.cell_level[columns]
        index = self.cell_index[:, columns]
        out = torch.empty(index.shape + trailing, dtype=dtype, device=device)
        for lv in level.unique().tolist():
            cols = (level == lv).nonzero().squeeze(1)
            out[:, cols] = table(lv, index[:, cols], dtype=dtype)
        return out

    def cell_rotations(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Centre rotations ``(B, C', 3, 3)`` of the cells in ``columns`` ``(C',)`` (default: all ``C``).

        Refined-away cells are included (with zero mass).
        """
        return self._per_cell(grids.cell_rotations, (3, 3), columns)

    def cell_quaternions(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Centre rotations of the cells in ``columns`` ``(C',)`` (default: all) as quaternions ``(B, C', 4)``.

        ``(x, y, z, w)``, ``w >= 0`` (:mod:`pose_core.so3`); the rotations of :meth:`cell_rotations`.
        All of them are computed once per distribution and kept, component by component
        (:meth:`_quaternions_by_component`), which covariance and modes use.
        """
        if columns is not None:
            return self._per_cell(grids.cell_quaternions, (4,), columns)
        return self._quaternions_by_component().transpose(1, 2)

    def _quaternions_by_component(self) -> torch.Tensor:
        """All cell quaternions as ``(B, 4, C)`` (contiguous): products and dot products with one
        quaternion per row are several times faster in this layout than in ``(B, C, 4)``."""
        if self._quat_cache is None:
            q = self._per_cell(grids.cell_quaternions, (4,), None)  # (B, C, 4)
            self._quat_cache = q.transpose(1, 2).contiguous()
        return self._quat_cache

    def rotations_at(self, columns: torch.Tensor) -> torch.Tensor:
        """Centre rotations ``(B, k, 3, 3)`` of ``k`` columns per row, ``columns`` ``(B, k)`` (of
        :attr:`cell_index`, e.g. from :meth:`top_mode_cells`); or ``(B, 3, 3)`` for ``columns`` ``(B,)``."""
        if columns.dim() == 1:
            return self.rotations_at(columns[:, None])[:, 0]
        return so3.quat_to_matrix(self.quaternions_at(columns))

    def quaternions_at(self, columns: torch.Tensor) -> torch.Tensor:
        """Centre rotations of ``columns`` ``(B, k)`` as quaternions ``(B, k, 4)`` (``(B, 4)`` for ``(B,)``)."""
        if columns.dim() == 1:
            return self.quaternions_at(columns[:, None])[:, 0]
        if self._quat_cache is not None:
            return torch.gather(self._quat_cache, 2, columns[:, None, :].expand(-1, 4, -1)).transpose(1, 2)
        level = self.cell_level[columns]  # (B, k)
        index = torch.gather(self.cell_index, 1, columns)
        out = torch.empty(columns.shape + (4,), dtype=self.log_mass.dtype, device=self.log_mass.device)
        for lv in level.unique().tolist():
            sel = level == lv
            out[sel] = grids.cell_quaternions(lv, index[sel], dtype=out.dtype)
        return out

    def mass(self) -> torch.Tensor:
        """Probability mass ``(B, C)`` of each cell (0 for refined-away cells), computed once and kept.

        Masses below ``1e4`` times the smallest normal number of the dtype (``torch.finfo.tiny``:
        1e-34 in float32) are 0: ``exp`` near and below that yields subnormal numbers, about 30x
        slower to compute, and such masses cannot change any sum here.
        """
        if self._mass_cache is None:
            floor = math.log(torch.finfo(self.log_mass.dtype).tiny) + math.log(1e4)
            lm = self.log_mass
            self._mass_cache = torch.where(lm < floor, 0.0, lm.clamp_min(floor).exp())
        return self._mass_cache

    def cell_log_density(self) -> torch.Tensor:
        """Log-density ``(B, C)`` of each cell (``-inf`` for refined-away cells)."""
        return log_density_from_log_mass(self.log_mass, self.cell_level)

    def to(self, device) -> SO3Distribution:
        """Copy on ``device``."""
        moved = None if self._fourier is None else self._fourier.to(device)
        out = SO3Distribution(self.cell_level.to(device), self.cell_index.to(device), self.log_mass.to(device), moved)
        out._runs_cache = self._runs_cache
        return out

    # ------------------------------------------------------------------ queries
    def log_prob(self, R: torch.Tensor) -> torch.Tensor:
        """Log-density at rotations: ``R`` ``(B, 3, 3)`` → ``(B,)`` or ``(B, M, 3, 3)`` → ``(B, M)``.

        Band-limited distributions are evaluated exactly at ``R`` (with their :attr:`log_prior`,
        if any); grid distributions return the density of the cell containing ``R``.
        """
        B = self.batch_size
        if R.dim() == 3 and R.shape == (B, 3, 3):
            return self.log_prob(R[:, None])[:, 0]
        if R.dim() != 4 or R.shape[0] != B or R.shape[-2:] != (3, 3):
            raise ValueError(f"R must have shape ({B}, 3, 3) or ({B}, M, 3, 3), got {tuple(R.shape)}")
        if self._fourier is not None:
            f = fourier.evaluate_rotations(self._fourier.coeffs, R, self._fourier.lmax)
            if self._fourier.log_prior is not None:
                f = f + self._fourier.log_prior.at_rotations(R).to(f.dtype)
            return (f - self._fourier.log_norm[:, None]).to(self.log_mass.dtype)
        if self.cell_level.unique().numel() != 1:
            raise ValueError("log_prob of a multi-level grid distribution needs its Fourier form")
        level = int(self.cell_level[0])
        idx = grids.cell_of(R, level)  # (B, M), equal to the column for a full grid
        if self.cell_index.shape[1] != grids.num_cells(level):
            raise ValueError("grid distribution does not cover the whole grid")
        return log_density_from_log_mass(torch.gather(self.log_mass, 1, idx), self.cell_level[0])

    def mode_cell(self) -> torch.Tensor:
        """Column ``(B,)`` of the cell of highest density (the mode's cell)."""
        return self.cell_log_density().argmax(dim=1)

    def mode(self) -> torch.Tensor:
        """Most probable rotation ``(B, 3, 3)``: centre of the cell of highest density."""
        return self.rotations_at(self.mode_cell())

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
        return self.covariance_about_quaternion(so3.matrix_to_quat(center.to(self.log_mass.dtype)))

    def covariance_about_quaternion(self, q_center: torch.Tensor) -> torch.Tensor:
        """:meth:`covariance` about rotations given as quaternions ``(B, 4)`` (x, y, z, w)."""
        q = self._quaternions_by_component()  # (B, 4, C)
        # omega of R @ center^T: the quaternion q * conj(q_center), one (4, 4) product per row
        M = so3.quat_right_matrix(so3.quat_conjugate(q_center.to(q.dtype)))  # (B, 4, 4): q_row @ M
        omega = so3.quat_to_rotvec(torch.bmm(M.transpose(1, 2), q), dim=1)  # (B, 3, C)
        p = self.mass()  # (B, C); 0 for refined-away cells
        second = (omega * p[:, None]) @ omega.transpose(1, 2)  # (B, 3, 3)
        cell_var = torch.tensor(
            [grids.resolution(lv) ** 2 / 12 for lv in range(self.finest_level + 1)], dtype=p.dtype, device=p.device
        )
        within = p @ cell_var[self.cell_level]  # (B,)
        cov = second + within[:, None, None] * torch.eye(3, dtype=p.dtype, device=p.device)
        return (cov + cov.transpose(-1, -2)) / 2

    def entropy(self) -> torch.Tensor:
        """Differential entropy ``(B,)`` in nats w.r.t. the Haar measure of volume ``pi**2``.

        The uniform distribution has entropy ``log(pi**2)``; concentrated ones go negative.
        """
        p = self.mass()
        return -torch.where(p > 0, p * self.cell_log_density(), torch.zeros_like(p)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` rotations per distribution ``(B, n, 3, 3)``: a cell drawn by mass, then a point uniform in it."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        probs = self.mass().to(torch.float64).cpu()
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
        q = self._quaternions_by_component()  # (B, 4, C)
        density = self.cell_log_density()
        p = self.mass()
        modes = torch.full((B, k), -1, dtype=torch.int64, device=p.device)
        mass = torch.zeros((B, k), dtype=p.dtype, device=p.device)
        d = density.clone()  # -inf where taken (refined-away cells are -inf already)
        free = torch.isfinite(d)
        rows = torch.arange(B, device=p.device)
        # angle(R1^T R2) <= radius  <=>  |<q1, q2>| >= cos(radius / 2)  (q and -q are one rotation)
        min_dot = math.cos(min(radius, math.pi) / 2)
        for j in range(k):
            best = d.argmax(dim=1)
            ok = free[rows, best]
            if not bool(ok.any()):
                break
            q_best = torch.gather(q, 2, best[:, None, None].expand(-1, 4, 1))  # (B, 4, 1)
            near = ((q * q_best).sum(1).abs() >= min_dot) & free
            modes[:, j] = torch.where(ok, best, modes[:, j])
            mass[:, j] = torch.where(ok, torch.where(near, p, 0.0).sum(1), mass[:, j])
            d = d.masked_fill(near, float("-inf"))
            free &= ~near
        return modes, mass

    def top_modes(self, k: int = 4, radius: float = math.radians(15.0)) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`top_mode_cells` as rotations ``(B, k, 3, 3)`` (identity where there is no mode), masses ``(B, k)``."""
        modes, mass = self.top_mode_cells(k, radius)
        rots = self.rotations_at(modes.clamp_min(0))
        rots[modes < 0] = torch.eye(3, dtype=rots.dtype, device=rots.device)
        return rots, mass


#: Directions (unit rotation vectors, ``(26, 3)``) of the neighbour probes of :meth:`_Blocks.climb`:
#: the centres of the faces, edges and corners of a cube.
_PROBE_DIRECTIONS = torch.nn.functional.normalize(
    torch.tensor([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)],
                 dtype=torch.float64),
    dim=1,
)
#: Probe distances, in cells (``grids.resolution``): the nearest neighbours and the diagonal ones.
_PROBE_RADII = (1.0, 1.6)


@functools.lru_cache(maxsize=16)
def _probe_rotations(level: int, device: str | torch.device) -> torch.Tensor:
    """Small rotations ``(P, 3, 3)`` (float64) that move a level-``level`` cell centre onto its neighbours."""
    res = grids.resolution(level)
    step = torch.cat([_PROBE_DIRECTIONS * (r * res) for r in _PROBE_RADII])
    return so3.rotvec_to_matrix(step).to(device)


class _Blocks:
    """Cells of a coarse-to-fine refinement, block by block: every row of a block has the same level.

    ``values[i]`` ``(B, n_i)`` holds ``f`` at the cells ``indices[i]`` ``(B, n_i)`` of level
    ``levels[i]``; a refined cell's value is ``-inf`` (its 8 children are in a later block), and
    so is a padding column (rows that refine fewer cells than others in one step). With a
    ``log_prior`` every value is ``f`` plus the prior at the cell (:meth:`with_prior`).
    """

    def __init__(self, coeffs: torch.Tensor, lmax: int, log_prior: LogPrior | None = None):
        self.coeffs, self.lmax, self.log_prior = coeffs, lmax, log_prior
        self.values: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []
        self.levels: list[int] = []

    def add(self, level: int, index: torch.Tensor, values: torch.Tensor) -> None:
        self.values.append(values)
        self.indices.append(index)
        self.levels.append(level)

    def with_prior(self, level: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``(B, M)`` of ``f`` at the level-``level`` cells ``index`` ``(B, M)`` plus the log-prior there."""
        if self.log_prior is None:
            return values
        return values + self.log_prior.at_cells(level, index).to(values.dtype)

    def add_children(self, level: int, parents: torch.Tensor, real: torch.Tensor | None = None) -> None:
        """A block of the children of the level-``level`` cells ``parents`` ``(B, k)``; where ``real``
        ``(B, k)`` is False the parent is padding and its children get ``-inf``."""
        B, k = parents.shape
        values = fourier.evaluate_children(self.coeffs, level, parents, self.lmax)
        index = grids.children(parents, level).reshape(B, 8 * k)
        values = self.with_prior(level + 1, index, values)
        if real is not None:
            values = values.masked_fill(~real.repeat_interleave(8, dim=1), float("-inf"))
        self.add(level + 1, index, values)

    def refine_last(self, positions: torch.Tensor) -> None:
        """Replace the cells at ``positions`` ``(B, k)`` of the last block by their children (a new block)."""
        parents = torch.gather(self.indices[-1], 1, positions)
        self.values[-1] = self.values[-1].scatter(1, positions, float("-inf"))
        self.add_children(self.levels[-1], parents)

    def cat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``cell_level`` ``(C,)``, ``cell_index`` ``(B, C)`` and ``f`` ``(B, C)`` of all blocks."""
        device = self.coeffs.device
        cell_level = torch.cat(
            [torch.full((v.shape[1],), lv, dtype=torch.int64, device=device) for v, lv in zip(self.values, self.levels)]
        )
        return cell_level, torch.cat(self.indices, dim=1), torch.cat(self.values, dim=1)

    def climb(self, target: int) -> bool:
        """One round of hill climbing at level ``target`` (see ``from_fourier``); False when nothing changed."""
        B, device = self.coeffs.shape[0], self.coeffs.device
        rows = torch.arange(B, device=device)
        target_blocks = [i for i, lv in enumerate(self.levels) if lv == target]
        coarse_max = torch.stack([self.values[i].max(1).values for i, lv in enumerate(self.levels) if lv != target])
        f_t = torch.cat([self.values[i] for i in target_blocks], dim=1)  # (B, M)
        i_t = torch.cat([self.indices[i] for i in target_blocks], dim=1)
        f_best, best = f_t.max(dim=1)
        if bool((coarse_max.max(0).values > f_best).any()):
            return False  # the densest cell is a coarse one: nothing near it to climb to
        centre = grids.cell_rotations(target, i_t[rows, best], dtype=torch.float64)  # (B, 3, 3)
        probes = _probe_rotations(target, device) @ centre[:, None]  # (B, P, 3, 3)
        cand = grids.cell_of(probes, target)  # (B, P)
        f_cand = self.with_prior(target, cand, fourier.evaluate_cells(self.coeffs, target, cand, self.lmax))
        present = (i_t[:, :, None] == cand[:, None, :]) & torch.isfinite(f_t)[:, :, None]  # (B, M, P)
        better = (f_cand > f_best[:, None]) & ~present.any(1)
        if not bool(better.any()):
            return False
        wanted = [sorted(set(cand[b][better[b]].tolist())) for b in range(B)]
        base = self.levels[0]
        for level in range(base, target):
            # level-`level` ancestors of the wanted cells that are still unrefined cells of a block
            need = [sorted({int(a) for a in grids.ancestor(torch.tensor(w, dtype=torch.int64), target, level)})
                    if w else [] for w in wanted]
            parents: list[list[int]] = []
            for b in range(B):
                mine = []
                for a in need[b]:
                    for i, lv in enumerate(self.levels):
                        if lv != level:
                            continue
                        hit = ((self.indices[i][b] == a) & torch.isfinite(self.values[i][b])).nonzero()
                        if hit.numel():
                            self.values[i][b, hit[0, 0]] = float("-inf")  # refined: children follow
                            mine.append(a)
                            break
                parents.append(mine)
            width = max(len(m) for m in parents)
            if width == 0:
                continue
            padded = torch.zeros((B, width), dtype=torch.int64, device=device)
            real = torch.zeros((B, width), dtype=torch.bool, device=device)
            for b, mine in enumerate(parents):
                padded[b, : len(mine)] = torch.tensor(mine, dtype=torch.int64, device=device)
                real[b, : len(mine)] = True
            self.add_children(level, padded, real)
        return True
