"""``SE3Distribution``: a batch of probability distributions over poses ``(R, t)`` (SpyroPose-style pyramids).

Conventions (rotations as in :mod:`pose_core.so3`; translations as in :mod:`pose_core.translation_grid`):

* A pose ``(R, t)`` maps object-frame points into the camera optical frame, ``p_cam = R @ p_obj + t``;
  ``t`` in metres. Rotations are ``(..., 3, 3)`` matrices.
* **Cells.** An SE(3) cell at level ``r`` is a rotation cell of :mod:`pose_core.grids` (level ``r``,
  ``72 * 8**r`` cells) times a translation cell of the row's :class:`~pose_core.translation_grid.TranslationFrame`
  (level ``r``, ``8**(r+1)`` cells): 576 cells at level 0, 64 children per cell (8 rotation children
  times 8 translation children, child ``a * 8 + b`` for rotation child ``a`` and translation child
  ``b``). The flat index of a cell is ``rot_index * 8**(r+1) + trans_index`` (:func:`num_cells`).
* **Partition.** A distribution holds cells ``cell_level`` ``(C,)`` (shared by the batch),
  ``rot_index`` ``(B, C)``, ``trans_index`` ``(B, C)`` and normalised ``log_mass`` ``(B, C)``, ``-inf``
  for cells refined into their children (and for padding). The cells of finite mass, the *leaves*,
  partition ``SO(3) x box``; inside a leaf the rotation is Haar-uniform in its rotation cell and
  ``xi`` uniform in its translation cell. Outside the box the density is 0.
* **Density** is with respect to the Haar measure of total volume ``pi**2`` (:data:`pose_core.so3.HAAR_VOLUME`)
  times the Lebesgue measure in m³::

      log p(R, t) = log_mass - log V_rot(level) - log V_xi(level) - log|det dt/dxi|(t)

  with ``V_rot = pi**2 / (72 * 8**level)`` and ``V_xi = 8**-level``
  (:func:`pose_core.translation_grid.log_cell_volume_xi`).
* **Covariance** ``(B, 6, 6)`` is in ``geometry_msgs/PoseWithCovariance`` order ``(x, y, z, rot X, rot Y,
  rot Z)``: the second moment about a pose ``(R0, t0)`` (default: the mode) of ``(t - t0, omega)``
  with ``R = exp([omega]x) @ R0`` (the left perturbation, about the camera axes). Each leaf
  contributes its rotation centre's ``omega`` plus ``resolution(level)**2 / 12`` per axis, and the
  exact first and second moments of its translation (``z`` log-uniform, ``x/z``, ``y/z`` uniform);
  rotation and translation are independent within a leaf, so cross terms come from between leaves.

Build one with :meth:`SE3Distribution.from_pyramid` (coarse-to-fine, what the model does) or
:meth:`SE3Distribution.from_grid_logits` (every cell of one level). :meth:`SE3Distribution.rotation_marginal`
gives an :class:`~pose_core.distribution.SO3Distribution`, :meth:`SE3Distribution.translation_marginal`
a :class:`TranslationDistribution`; both are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pose_core import grids, so3
from pose_core import translation_grid as tgrid
from pose_core.distribution import SO3Distribution

__all__ = ["SE3Distribution", "TranslationDistribution", "ScoreFn", "num_cells", "MAX_LEVEL"]

#: ``score_fn(level, rot_index (B, M), trans_index (B, M)) -> logits (B, M)`` of :meth:`SE3Distribution.from_pyramid`.
ScoreFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]

#: Finest SE(3) level: flat cell indices ``rot * 8**(r+1) + trans`` (``72 * 8**(2r+1)`` of them) fit int64.
MAX_LEVEL = 8

_LOG8 = math.log(8.0)
_SENTINEL = torch.iinfo(torch.int64).max


def num_cells(level: int) -> int:
    """Number of SE(3) cells ``72 * 8**level * 8**(level + 1)`` at ``level`` (576 at level 0)."""
    if not isinstance(level, (int, np.integer)) or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"SE(3) level must be an integer in [0, {MAX_LEVEL}], got {level!r}")
    return grids.num_cells(level) * tgrid.num_cells(level)


def _log_rot_volume(level: torch.Tensor) -> torch.Tensor:
    return so3.LOG_HAAR_VOLUME - math.log(72) - level.to(torch.float64) * _LOG8


def _log_xi_volume(level: torch.Tensor) -> torch.Tensor:
    return -level.to(torch.float64) * _LOG8


def _mass(log_mass: torch.Tensor) -> torch.Tensor:
    """``exp(log_mass)`` with masses below ``1e4 * finfo.tiny`` set to 0 (as :meth:`SO3Distribution.mass`)."""
    floor = math.log(torch.finfo(log_mass.dtype).tiny) + math.log(1e4)
    return torch.where(log_mass < floor, 0.0, log_mass.clamp_min(floor).exp())


def _row_selector(rows, B: int, device) -> slice | torch.Tensor:
    if isinstance(rows, (int, np.integer)):
        if not -B <= rows < B:
            raise IndexError(f"row {rows} out of range for a batch of {B}")
        return slice(int(rows) % B, int(rows) % B + 1)
    if isinstance(rows, slice):
        return rows
    rows = torch.as_tensor(rows, device=device)
    if rows.dim() != 1:
        raise IndexError(f"rows must be an int, a slice or a 1-D sequence, got shape {tuple(rows.shape)}")
    return rows if rows.dtype == torch.bool else rows.long()


def _levels(cell_level: torch.Tensor) -> list[int]:
    return sorted(torch.unique(cell_level).tolist())


def _sorted_tables(cell_level: torch.Tensor, keys: torch.Tensor, log_mass: torch.Tensor) -> list:
    """Per level ``(level, keys sorted per row (B, C_l), log_mass in that order (B, C_l))``."""
    out = []
    for lv in _levels(cell_level):
        cols = (cell_level == lv).nonzero()[:, 0]
        k = keys[:, cols]
        s, order = k.sort(dim=1)
        out.append((lv, s.contiguous(), torch.gather(log_mass[:, cols], 1, order)))
    return out


def _lookup(tables: list, query: Callable[[int], torch.Tensor], log_volume: Callable[[int], float]) -> torch.Tensor:
    """``max`` over levels of ``log_mass - log_volume(level)`` of the leaf whose key is ``query(level)`` ``(B, M)``
    (``-inf`` where no cell of that level has the key)."""
    out = None
    for lv, s, lm in tables:
        q = query(lv)
        pos = torch.searchsorted(s, q.contiguous()).clamp_max(s.shape[1] - 1)
        hit = torch.gather(s, 1, pos) == q
        val = torch.where(hit, torch.gather(lm, 1, pos), torch.full_like(lm[:, :1], -math.inf)) - log_volume(lv)
        out = val if out is None else torch.maximum(out, val)
    return out


def _group_logsumexp(x: torch.Tensor, group: torch.Tensor, G: int) -> torch.Tensor:
    """``logsumexp`` ``(B, G)`` of ``x`` ``(B, N)`` within the groups ``group`` ``(B, N)`` (``-inf`` for empty ones)."""
    B = x.shape[0]
    m = torch.full((B, G), -math.inf, dtype=x.dtype, device=x.device).scatter_reduce(
        1, group, x, reduce="amax", include_self=True
    )
    ms = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(x - torch.gather(ms, 1, group))
    s = torch.zeros((B, G), dtype=x.dtype, device=x.device).scatter_add(1, group, e)
    return ms + torch.log(s)


def _marginal(
    cell_level: torch.Tensor,
    component: torch.Tensor,
    log_mass: torch.Tensor,
    ancestor: Callable[[torch.Tensor, int, int], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact marginal of one factor (rotation or translation) of a pyramid partition.

    A factor cell at level ``l`` is present where any SE(3) cell of level ``l`` has it; it collects
    the mass of those leaves and, where its parent factor cell was expanded (has children present),
    ``1/8`` of the parent's own mass (uniform within the parent, equal-volume children). Expanded
    factor cells get ``-inf``. Returns ``cell_level`` ``(C',)``, ``cell_index`` ``(B, C')`` and
    ``log_mass`` ``(B, C')``, each level a block padded with ``-inf`` columns (index 0).
    """
    B, device = component.shape[0], component.device
    out_level, out_index, out_lm = [], [], []
    prev = None
    for lv in _levels(cell_level):
        cols = (cell_level == lv).nonzero()[:, 0]
        s, order = component[:, cols].sort(dim=1)
        lm = torch.gather(log_mass[:, cols], 1, order)
        new = torch.ones_like(s, dtype=torch.bool)
        new[:, 1:] = s[:, 1:] != s[:, :-1]
        gid = new.long().cumsum(1) - 1
        count = gid[:, -1] + 1
        G = int(count.max())
        uniq = torch.full((B, G), _SENTINEL, dtype=torch.int64, device=device).scatter(1, gid, s)
        valid = torch.arange(G, device=device) < count[:, None]
        own = _group_logsumexp(lm, gid, G)
        if prev is not None:
            p_level, p_uniq, p_mass = prev
            parent = ancestor(torch.where(valid, uniq, torch.zeros_like(uniq)), lv, p_level)
            pos = torch.searchsorted(p_uniq, parent).clamp_max(p_uniq.shape[1] - 1)
            hit = (torch.gather(p_uniq, 1, pos) == parent) & valid
            inherited = torch.gather(p_mass, 1, pos) - (lv - p_level) * _LOG8
            own = torch.logaddexp(own, torch.where(hit, inherited, torch.full_like(inherited, -math.inf)))
            expanded = torch.zeros(p_uniq.shape, dtype=torch.int64, device=device).scatter_add(1, pos, hit.long()) > 0
            out_lm[-1] = out_lm[-1].masked_fill(expanded, -math.inf)
        own = own.masked_fill(~valid, -math.inf)
        out_level.append(torch.full((G,), lv, dtype=torch.int64, device=device))
        out_index.append(torch.where(valid, uniq, torch.zeros_like(uniq)))
        out_lm.append(own)
        prev = (lv, uniq, own)
    return torch.cat(out_level), torch.cat(out_index, 1), torch.cat(out_lm, 1)


def _translation_moments(frame: tgrid.TranslationFrame, cell_level: torch.Tensor, trans_index: torch.Tensor):
    """Exact moments of ``t`` uniform in ``xi`` within each translation cell, float64 ``(B, C, ...)``.

    With ``w = (x/z, y/z, 1)`` at the cell centre, ``a`` the cell's half-width in ``log z`` and ``h``
    its half-width in ``x/z``: ``E[t] = E[z] w`` and ``Cov[t] = Var[z] w w^T + E[z^2] diag(h^2/3, h^2/3, 0)``,
    ``E[z] = z_c sinh(a)/a``, ``E[z^2] = z_c^2 sinh(2a)/(2a)``. Returns ``(w, E[z], E[z^2], Var[z], h^2/3)``.
    """
    n = (2 ** (cell_level + 1)).to(torch.float64)  # (C,)
    xi = tgrid._centres_xi(trans_index, 2 ** (cell_level + 1), torch.float64)  # (B, C, 3)
    c = frame.centre.to(torch.float64)
    hxy = frame.half_xy.to(torch.float64)[:, None]
    hlz = frame.half_logz.to(torch.float64)[:, None]
    u = (c[:, 0] / c[:, 2])[:, None] + hxy * xi[..., 0]
    v = (c[:, 1] / c[:, 2])[:, None] + hxy * xi[..., 1]
    z = torch.exp(torch.log(c[:, 2])[:, None] + hlz * xi[..., 2])
    a = hlz / n  # (B, C)
    r1 = torch.sinh(a) / a
    r2 = torch.sinh(2 * a) / (2 * a)
    g = torch.where(a < 1e-3, a * a / 3 + 4 * a**4 / 45, r2 - r1 * r1)  # Var[z] / z_c^2 without cancellation
    w = torch.stack((u, v, torch.ones_like(u)), dim=-1)
    h2 = (hxy / n) ** 2 / 3
    return w, z * r1, z * z * r2, z * z * g, h2


def _translation_second_moment(p: torch.Tensor, moments, t0: torch.Tensor) -> torch.Tensor:
    """``E[(t - t0)(t - t0)^T]`` ``(B, 3, 3)`` of leaves with masses ``p`` ``(B, C)`` (float64)."""
    w, m_z, q_z, var_z, h2 = moments
    dt = m_z[..., None] * w - t0[:, None, :]
    second = (dt * p[..., None]).transpose(1, 2) @ dt
    second = second + (w * (p * var_z)[..., None]).transpose(1, 2) @ w
    dxy = (p * q_z * h2).sum(1)
    second[:, 0, 0] += dxy
    second[:, 1, 1] += dxy
    return second, dt


class _Cells:
    """What both distributions share: a batch of partitions into cells with masses, and a frame."""

    log_mass: torch.Tensor
    cell_level: torch.Tensor
    frame: tgrid.TranslationFrame

    @property
    def batch_size(self) -> int:
        """Number of distributions ``B``."""
        return self.log_mass.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def finest_level(self) -> int:
        """Finest level present."""
        return int(self.cell_level.max())

    @property
    def dtype(self) -> torch.dtype:
        return self.log_mass.dtype

    @property
    def device(self) -> torch.device:
        return self.log_mass.device

    def mass(self) -> torch.Tensor:
        """Probability mass ``(B, C)`` of each cell (0 for expanded cells and padding), computed once and kept."""
        if self._mass_cache is None:
            self._mass_cache = _mass(self.log_mass)
        return self._mass_cache

    def _centres_xi(self, trans_index: torch.Tensor) -> torch.Tensor:
        return tgrid._centres_xi(trans_index, 2 ** (self.cell_level + 1), self.dtype)

    def _sample_columns(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` columns per row drawn by mass ``(B, n)`` (CPU) and their levels ``(B, n)``."""
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        probs = self.mass().to(torch.float64).cpu()
        cols = torch.multinomial(probs, int(n), replacement=True, generator=generator)
        return cols, self.cell_level.cpu()[cols]

    def _sample_xi(self, cols, level, trans_index, generator) -> torch.Tensor:
        index = torch.gather(trans_index.cpu(), 1, cols)
        xi = torch.empty(cols.shape + (3,), dtype=torch.float64)
        for lv in level.unique().tolist():
            sel = level == lv
            xi[sel] = tgrid.sample_xi_in_cells(lv, index[sel], generator=generator, dtype=torch.float64)
        return xi


class SE3Distribution(_Cells):
    """Batch of ``B`` distributions on SE(3), each a probability mass over ``C`` cells (see the module docstring).

    Attributes:
        cell_level: ``(C,)`` int64, level of each cell (shared by the batch).
        rot_index: ``(B, C)`` int64, rotation cell (:mod:`pose_core.grids`) at that level.
        trans_index: ``(B, C)`` int64, translation cell (:mod:`pose_core.translation_grid`) at that level.
        log_mass: ``(B, C)`` normalised log-mass, ``-inf`` for expanded cells and padding; its dtype is the
            distribution's (rotations and translations it returns come in it).
        frame: the :class:`~pose_core.translation_grid.TranslationFrame` of ``B`` boxes.
    """

    def __init__(
        self,
        cell_level: torch.Tensor,
        rot_index: torch.Tensor,
        trans_index: torch.Tensor,
        log_mass: torch.Tensor,
        frame: tgrid.TranslationFrame,
    ):
        if (
            log_mass.dim() != 2
            or rot_index.shape != log_mass.shape
            or trans_index.shape != log_mass.shape
            or cell_level.shape != log_mass.shape[1:]
        ):
            raise ValueError(
                "expected cell_level (C,), rot_index (B, C), trans_index (B, C), log_mass (B, C); got "
                f"{tuple(cell_level.shape)}, {tuple(rot_index.shape)}, {tuple(trans_index.shape)}, "
                f"{tuple(log_mass.shape)}"
            )
        if not isinstance(frame, tgrid.TranslationFrame) or frame.batch_size != log_mass.shape[0]:
            raise ValueError(f"frame must be a TranslationFrame of {log_mass.shape[0]} rows, got {frame!r}")
        if not log_mass.is_floating_point():
            raise ValueError(f"log_mass must be floating point, got {log_mass.dtype}")
        if log_mass.shape[1] and int(cell_level.max()) > MAX_LEVEL:
            raise ValueError(f"levels above {MAX_LEVEL} are not supported, got {int(cell_level.max())}")
        self.cell_level = cell_level
        self.rot_index = rot_index
        self.trans_index = trans_index
        self.log_mass = log_mass
        self.frame = frame
        self._mass_cache: torch.Tensor | None = None
        self._density_cache: torch.Tensor | None = None
        self._tables_cache: list | None = None
        self._quat_cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_grid_logits(
        cls, logits: torch.Tensor, level: int | None, frame: tgrid.TranslationFrame
    ) -> SE3Distribution:
        """Distribution with ``softmax(logits)`` on every SE(3) cell of ``level``.

        Args:
            logits: ``(B, 576 * 64**level)`` unnormalised log-masses in flat-index order
                (``rot_index * 8**(level+1) + trans_index``).
            level: the level; inferred from ``logits.shape[1]`` when ``None``.
            frame: ``B`` translation boxes (moved to ``logits``'s device).
        """
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
            raise ValueError(f"logits must be a floating (B, N) tensor, got {getattr(logits, 'shape', type(logits))}")
        n = logits.shape[1]
        inferred = next((lv for lv in range(MAX_LEVEL + 1) if num_cells(lv) >= n), -1)
        if inferred < 0 or num_cells(inferred) != n:
            raise ValueError(f"logits has {n} columns, not an SE(3) grid size 576 * 64**level")
        if level is not None and level != inferred:
            raise ValueError(f"logits has {n} columns, which is SE(3) level {inferred}, not {level}")
        B, device = logits.shape[0], logits.device
        if frame.batch_size != B:
            raise ValueError(f"frame has {frame.batch_size} rows, logits {B}")
        nt = tgrid.num_cells(inferred)
        flat = torch.arange(n, device=device)
        rot = torch.div(flat, nt, rounding_mode="floor")
        cell_level = torch.full((n,), inferred, dtype=torch.int64, device=device)
        return cls(cell_level, rot.expand(B, n), (flat - rot * nt).expand(B, n), torch.log_softmax(logits, dim=1),
                   frame.to(device))

    @classmethod
    def from_pyramid(
        cls, score_fn: ScoreFn, frame: tgrid.TranslationFrame, levels: int = 4, top_k: int = 32
    ) -> SE3Distribution:
        """Coarse-to-fine distribution (SpyroPose inference) of pyramid levels ``0 .. levels - 1``.

        Level 0: all 576 cells, ``log_mass = log_softmax(score_fn(0, rot, trans))``. Level ``r >= 1``:
        the ``top_k`` level-``(r-1)`` leaves of highest mass per row are replaced by their 64 children,
        each child's log-mass its parent's plus the ``log_softmax`` of the 64 siblings' scores.

        Args:
            score_fn: ``score_fn(level, rot_index (B, M), trans_index (B, M)) -> logits (B, M)``
                (floating; ``-inf`` allowed, NaN and ``+inf`` not), indices on ``frame``'s device.
                The level-0 logits' dtype is the distribution's.
            frame: ``B`` translation boxes.
            levels: number of pyramid levels (1 .. ``MAX_LEVEL + 1``).
            top_k: leaves expanded per level and row (at most the leaves there are).
        """
        if not isinstance(levels, (int, np.integer)) or not 1 <= levels <= MAX_LEVEL + 1:
            raise ValueError(f"levels must be an integer in [1, {MAX_LEVEL + 1}], got {levels!r}")
        if not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if not isinstance(frame, tgrid.TranslationFrame):
            raise TypeError(f"frame must be a TranslationFrame, got {type(frame).__name__}")
        B, device = frame.batch_size, frame.device
        nt0 = tgrid.num_cells(0)
        flat = torch.arange(num_cells(0), device=device)
        rot = torch.div(flat, nt0, rounding_mode="floor").expand(B, -1)
        trans = torch.remainder(flat, nt0).expand(B, -1)
        scores = _call_score(score_fn, 0, rot, trans, None)
        blocks = [[0, rot, trans, torch.log_softmax(scores, dim=1)]]
        for r in range(1, int(levels)):
            _, p_rot, p_trans, p_lm = blocks[-1]
            k = min(int(top_k), p_lm.shape[1])
            top = p_lm.topk(k, dim=1).indices  # (B, k)
            parent_lm = torch.gather(p_lm, 1, top)
            c_rot = grids.children(torch.gather(p_rot, 1, top), r - 1)  # (B, k, 8)
            c_trans = tgrid.children(torch.gather(p_trans, 1, top), r - 1)
            rot = c_rot[:, :, :, None].expand(B, k, 8, 8).reshape(B, 64 * k)
            trans = c_trans[:, :, None, :].expand(B, k, 8, 8).reshape(B, 64 * k)
            s = _call_score(score_fn, r, rot, trans, scores.dtype).reshape(B, k, 64)
            child = parent_lm[..., None] + torch.log_softmax(s, dim=-1)
            child = torch.where(torch.isneginf(parent_lm)[..., None], torch.full_like(child, -math.inf), child)
            if bool(torch.isnan(child).any()):
                raise ValueError(f"score_fn gave -inf to all 64 children of a cell of positive mass at level {r}")
            blocks[-1][3] = p_lm.scatter(1, top, -math.inf)
            blocks.append([r, rot, trans, child.reshape(B, 64 * k)])
        cell_level = torch.cat(
            [torch.full((b[1].shape[1],), b[0], dtype=torch.int64, device=device) for b in blocks]
        )
        cat = [torch.cat([b[i] for b in blocks], dim=1) for i in (1, 2, 3)]
        if bool(torch.isnan(cat[2]).any()):
            raise ValueError("score_fn gave -inf to every level-0 cell of a row")
        return cls(cell_level, cat[0], cat[1], cat[2], frame)

    # ------------------------------------------------------------------ basic properties
    def select(self, rows: int | slice | Sequence[int] | torch.Tensor) -> SE3Distribution:
        """The distributions ``rows`` (an int keeps a batch of one; a slice; a 1-D index or boolean tensor)."""
        rows = _row_selector(rows, self.batch_size, self.device)
        out = SE3Distribution(self.cell_level, self.rot_index[rows], self.trans_index[rows], self.log_mass[rows],
                              self.frame.select(rows))
        if self._mass_cache is not None:
            out._mass_cache = self._mass_cache[rows]
        return out

    __getitem__ = select

    def to(self, device) -> SE3Distribution:
        """Copy on ``device``."""
        return SE3Distribution(self.cell_level.to(device), self.rot_index.to(device), self.trans_index.to(device),
                               self.log_mass.to(device), self.frame.to(device))

    def __repr__(self) -> str:
        return (f"SE3Distribution(batch={self.batch_size}, cells={self.log_mass.shape[1]}, "
                f"levels={_levels(self.cell_level)}, dtype={self.dtype}, device={self.device})")

    # ------------------------------------------------------------------ cells
    def _log_volume(self) -> torch.Tensor:
        """``log V_rot + log V_xi`` ``(C,)`` of each cell."""
        return (_log_rot_volume(self.cell_level) + _log_xi_volume(self.cell_level)).to(self.dtype)

    def cell_log_density(self) -> torch.Tensor:
        """Log-density ``(B, C)`` at each cell's centre (``-inf`` for expanded cells): ``log_mass - log V_rot
        - log V_xi - log|det dt/dxi|`` (the Jacobian at the centre)."""
        if self._density_cache is None:
            log_j = tgrid._log_abs_det_jacobian_xi(self.frame, self._centres_xi(self.trans_index)).to(self.dtype)
            self._density_cache = self.log_mass - self._log_volume() - log_j
        return self._density_cache

    def cell_translations(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Centre translations ``(B, k, 3)`` (m) of ``columns`` ``(B, k)`` (default: all ``C`` cells)."""
        trans = self.trans_index if columns is None else torch.gather(self.trans_index, 1, columns)
        level = self.cell_level if columns is None else self.cell_level[columns]
        xi = tgrid._centres_xi(trans, 2 ** (level + 1), self.dtype)
        return tgrid.xi_to_t(self.frame, xi).to(self.dtype)

    def cell_rotations(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Centre rotations ``(B, k, 3, 3)`` of ``columns`` ``(B, k)`` (default: all ``C`` cells)."""
        if columns is None:
            columns = torch.arange(self.log_mass.shape[1], device=self.device).expand(self.batch_size, -1)
        level = self.cell_level[columns]
        index = torch.gather(self.rot_index, 1, columns)
        out = torch.empty(columns.shape + (3, 3), dtype=self.dtype, device=self.device)
        for lv in level.unique().tolist():
            sel = level == lv
            out[sel] = grids.cell_rotations(lv, index[sel], dtype=self.dtype)
        return out

    def _quaternions64(self) -> torch.Tensor:
        """Centre quaternions ``(B, C, 4)`` float64 of all cells, computed once."""
        if self._quat_cache is None:
            out = torch.empty(self.rot_index.shape + (4,), dtype=torch.float64, device=self.device)
            for lv in _levels(self.cell_level):
                cols = (self.cell_level == lv).nonzero()[:, 0]
                out[:, cols] = grids.cell_quaternions(lv, self.rot_index[:, cols], dtype=torch.float64)
            self._quat_cache = out
        return self._quat_cache

    def _tables(self) -> list:
        if self._tables_cache is None:
            keys = self.rot_index * (8 ** (self.cell_level + 1)) + self.trans_index  # the flat SE(3) index
            self._tables_cache = _sorted_tables(self.cell_level, keys, self.log_mass)
        return self._tables_cache

    # ------------------------------------------------------------------ queries
    def log_prob(self, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Log-density at poses: ``R`` ``(B, 3, 3)``, ``t`` ``(B, 3)`` → ``(B,)``, or ``R`` ``(B, M, 3, 3)``,
        ``t`` ``(B, M, 3)`` → ``(B, M)``; ``-inf`` outside the box (and behind the camera)."""
        B = self.batch_size
        if isinstance(R, torch.Tensor) and R.dim() == 3 and isinstance(t, torch.Tensor) and t.dim() == 2:
            return self.log_prob(R[:, None], t[:, None])[:, 0]
        if not (isinstance(R, torch.Tensor) and isinstance(t, torch.Tensor)):
            raise TypeError("R and t must be torch tensors")
        if R.dim() != 4 or R.shape[0] != B or R.shape[-2:] != (3, 3) or t.shape != R.shape[:2] + (3,):
            raise ValueError(
                f"R must have shape ({B}, M, 3, 3) and t ({B}, M, 3) (or ({B}, 3, 3) and ({B}, 3)), got "
                f"{tuple(R.shape)} and {tuple(t.shape)}"
            )
        L = self.finest_level
        frame = self.frame.to(t.device)
        rot_f = grids.cell_of(R, L).to(self.device)
        trans_f, inside = tgrid.cell_of(frame, t, L)
        trans_f, inside = trans_f.to(self.device), inside.to(self.device)

        def query(lv: int) -> torch.Tensor:
            rot = grids.ancestor(rot_f, L, lv) if lv < L else rot_f
            trans = tgrid.ancestor(trans_f, L, lv) if lv < L else trans_f
            return rot * tgrid.num_cells(lv) + trans

        def log_volume(lv: int) -> float:
            return so3.LOG_HAAR_VOLUME - math.log(72) - 2 * lv * _LOG8

        value = _lookup(self._tables(), query, log_volume)
        log_j = tgrid.log_abs_det_jacobian(frame, t).to(self.device, self.dtype)
        value = value - torch.where(inside, log_j, torch.zeros_like(log_j))
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    def mode_cell(self) -> torch.Tensor:
        """Column ``(B,)`` of the leaf of highest density (at its centre)."""
        return self.cell_log_density().argmax(dim=1)

    def mode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Most probable pose: the centre of the leaf of highest density (the Jacobian at its centre
        included), ``R`` ``(B, 3, 3)`` and ``t`` ``(B, 3)`` (m)."""
        col = self.mode_cell()[:, None]
        return self.cell_rotations(col)[:, 0], self.cell_translations(col)[:, 0]

    def mode_resolution(self) -> float:
        """Rotation size (rad) of the cells the mode is chosen among: :func:`pose_core.grids.resolution` of
        the finest level (its translation cells are ``2 / 2**(level+1)`` of the box per ``xi`` axis)."""
        return grids.resolution(self.finest_level)

    def max_log_density(self) -> torch.Tensor:
        """Highest leaf log-density ``(B,)`` (at the mode)."""
        return self.cell_log_density().max(dim=1).values

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` poses per distribution, ``R`` ``(B, n, 3, 3)`` and ``t`` ``(B, n, 3)``: a leaf drawn by mass,
        then a rotation Haar-uniform in its rotation cell and ``xi`` uniform in its translation cell.
        Random numbers come from ``generator`` (CPU)."""
        cols, level = self._sample_columns(n, generator)
        rot = torch.gather(self.rot_index.cpu(), 1, cols)
        R = torch.empty(cols.shape + (3, 3), dtype=self.dtype)
        for lv in level.unique().tolist():
            sel = level == lv
            R[sel] = grids.sample_in_cells(rot[sel], lv, generator=generator, dtype=self.dtype)
        xi = self._sample_xi(cols, level, self.trans_index, generator).to(self.device)
        t = tgrid.xi_to_t(self.frame, xi).to(self.dtype)
        return R.to(self.device), t

    def covariance(self, about: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Second moment ``(B, 6, 6)`` of ``(t - t0, omega)``, ``R = exp([omega]x) @ R0``, about ``about = (R0
        (B, 3, 3), t0 (B, 3))`` (default :meth:`mode`), in ``PoseWithCovariance`` order (x, y, z, rot X,
        rot Y, rot Z); m², m·rad, rad². See the module docstring for what each leaf contributes."""
        R0, t0 = self.mode() if about is None else about
        B = self.batch_size
        if R0.shape != (B, 3, 3) or t0.shape != (B, 3):
            raise ValueError(f"about must be (R0 ({B}, 3, 3), t0 ({B}, 3)), got {tuple(R0.shape)}, {tuple(t0.shape)}")
        p = self.mass().to(torch.float64)
        q0 = so3.matrix_to_quat(R0.to(self.device, torch.float64))
        omega = so3.quat_to_rotvec(so3.quat_multiply(self._quaternions64(), so3.quat_conjugate(q0)[:, None]))
        moments = _translation_moments(self.frame, self.cell_level, self.trans_index)
        tt, dt = _translation_second_moment(p, moments, t0.to(self.device, torch.float64))
        rot_var = torch.tensor([grids.resolution(lv) ** 2 / 12 for lv in range(self.finest_level + 1)],
                               dtype=torch.float64, device=self.device)
        ww = (omega * p[..., None]).transpose(1, 2) @ omega
        ww = ww + (p @ rot_var[self.cell_level])[:, None, None] * torch.eye(3, dtype=torch.float64, device=self.device)
        tw = (dt * p[..., None]).transpose(1, 2) @ omega  # E[dt omega^T]
        cov = torch.cat((torch.cat((tt, tw), 2), torch.cat((tw.transpose(1, 2), ww), 2)), 1)
        return ((cov + cov.transpose(1, 2)) / 2).to(self.dtype)

    def entropy(self) -> torch.Tensor:
        """Differential entropy ``(B,)`` in nats w.r.t. (Haar measure of volume ``pi**2``) x (m³); exact:
        ``log|det dt/dxi|`` is linear in ``xi2``, so its mean over a leaf is its value at the centre."""
        p = self.mass()
        d = self.cell_log_density()
        return -torch.where(p > 0, p * d, torch.zeros_like(p)).sum(1)

    # ------------------------------------------------------------------ marginals
    def rotation_marginal(self) -> SO3Distribution:
        """The exact marginal over rotations: an :class:`~pose_core.distribution.SO3Distribution` whose cells are
        the rotation cells present at each level; a rotation cell whose SE(3) cells were expanded gives its
        own mass to its 8 rotation children equally (rows padded with ``-inf`` columns)."""
        level, index, lm = _marginal(self.cell_level, self.rot_index, self.log_mass, grids.ancestor)
        return SO3Distribution(level, index, lm)

    def translation_marginal(self) -> TranslationDistribution:
        """The exact marginal over translations (as :meth:`rotation_marginal`, on the translation cells)."""
        level, index, lm = _marginal(self.cell_level, self.trans_index, self.log_mass, tgrid.ancestor)
        return TranslationDistribution(level, index, lm, self.frame)


def _call_score(score_fn: ScoreFn, level: int, rot: torch.Tensor, trans: torch.Tensor, dtype) -> torch.Tensor:
    s = score_fn(level, rot, trans)
    if not isinstance(s, torch.Tensor) or s.shape != rot.shape or not s.is_floating_point():
        raise ValueError(f"score_fn({level}, ...) must return floating logits of shape {tuple(rot.shape)}, got "
                         f"{getattr(s, 'dtype', type(s))} {tuple(getattr(s, 'shape', ()))}")
    if bool((torch.isnan(s) | (s == math.inf)).any()):
        raise ValueError(f"score_fn({level}, ...) returned NaN or +inf logits")
    return s if dtype is None else s.to(dtype)


class TranslationDistribution(_Cells):
    """Batch of ``B`` distributions over translations, each a mass over ``C`` cells of its row's box.

    Attributes:
        cell_level: ``(C,)`` int64; cell_index: ``(B, C)`` int64 translation cells; log_mass: ``(B, C)``
        normalised, ``-inf`` for expanded cells and padding; frame: the ``B`` boxes. Inside a cell ``xi``
        is uniform; densities are w.r.t. the Lebesgue measure in m³, ``log_mass - log V_xi - log|det dt/dxi|``.
    """

    def __init__(self, cell_level: torch.Tensor, cell_index: torch.Tensor, log_mass: torch.Tensor,
                 frame: tgrid.TranslationFrame):
        if log_mass.dim() != 2 or cell_index.shape != log_mass.shape or cell_level.shape != log_mass.shape[1:]:
            raise ValueError(
                "expected cell_level (C,), cell_index (B, C), log_mass (B, C); got "
                f"{tuple(cell_level.shape)}, {tuple(cell_index.shape)}, {tuple(log_mass.shape)}"
            )
        if not isinstance(frame, tgrid.TranslationFrame) or frame.batch_size != log_mass.shape[0]:
            raise ValueError(f"frame must be a TranslationFrame of {log_mass.shape[0]} rows")
        self.cell_level = cell_level
        self.cell_index = cell_index
        self.log_mass = log_mass
        self.frame = frame
        self._mass_cache: torch.Tensor | None = None
        self._tables_cache: list | None = None

    def select(self, rows: int | slice | Sequence[int] | torch.Tensor) -> TranslationDistribution:
        """The distributions ``rows`` of the batch."""
        rows = _row_selector(rows, self.batch_size, self.device)
        return TranslationDistribution(self.cell_level, self.cell_index[rows], self.log_mass[rows],
                                       self.frame.select(rows))

    __getitem__ = select

    def to(self, device) -> TranslationDistribution:
        """Copy on ``device``."""
        return TranslationDistribution(self.cell_level.to(device), self.cell_index.to(device),
                                       self.log_mass.to(device), self.frame.to(device))

    def cell_log_density(self) -> torch.Tensor:
        """Log-density ``(B, C)`` (m⁻³) at each cell's centre (``-inf`` for expanded cells and padding)."""
        log_j = tgrid._log_abs_det_jacobian_xi(self.frame, self._centres_xi(self.cell_index)).to(self.dtype)
        return self.log_mass - _log_xi_volume(self.cell_level).to(self.dtype) - log_j

    def log_prob(self, t: torch.Tensor) -> torch.Tensor:
        """Log-density (m⁻³) at ``t`` ``(B, 3)`` → ``(B,)`` or ``(B, M, 3)`` → ``(B, M)``; ``-inf`` outside the box."""
        B = self.batch_size
        if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape == (B, 3):
            return self.log_prob(t[:, None])[:, 0]
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] != B or t.shape[2] != 3:
            raise ValueError(f"t must have shape ({B}, 3) or ({B}, M, 3), got {tuple(getattr(t, 'shape', ()))}")
        if self._tables_cache is None:
            self._tables_cache = _sorted_tables(self.cell_level, self.cell_index, self.log_mass)
        L = self.finest_level
        frame = self.frame.to(t.device)
        fine, inside = tgrid.cell_of(frame, t, L)
        fine, inside = fine.to(self.device), inside.to(self.device)
        value = _lookup(self._tables_cache, lambda lv: tgrid.ancestor(fine, L, lv) if lv < L else fine,
                        lambda lv: -lv * _LOG8)
        log_j = tgrid.log_abs_det_jacobian(frame, t).to(self.device, self.dtype)
        value = value - torch.where(inside, log_j, torch.zeros_like(log_j))
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    def mode(self) -> torch.Tensor:
        """Centre ``(B, 3)`` (m) of the cell of highest density."""
        col = self.cell_log_density().argmax(dim=1)[:, None]
        trans = torch.gather(self.cell_index, 1, col)
        xi = tgrid._centres_xi(trans, 2 ** (self.cell_level[col] + 1), self.dtype)
        return tgrid.xi_to_t(self.frame, xi)[:, 0].to(self.dtype)

    def mean(self) -> torch.Tensor:
        """Mean translation ``(B, 3)`` (m), exact for the cells' in-cell distributions."""
        w, m_z, _, _, _ = _translation_moments(self.frame, self.cell_level, self.cell_index)
        p = self.mass().to(torch.float64)
        return ((p * m_z)[..., None] * w).sum(1).to(self.dtype)

    def covariance(self, about: torch.Tensor | None = None) -> torch.Tensor:
        """Covariance ``(B, 3, 3)`` (m²) about the mean, or the second moment of ``t - about`` about
        ``about`` ``(B, 3)`` when given; exact for the cells' in-cell distributions."""
        t0 = self.mean() if about is None else about
        if t0.shape != (self.batch_size, 3):
            raise ValueError(f"about must have shape ({self.batch_size}, 3), got {tuple(t0.shape)}")
        moments = _translation_moments(self.frame, self.cell_level, self.cell_index)
        second, _ = _translation_second_moment(self.mass().to(torch.float64), moments,
                                               t0.to(self.device, torch.float64))
        return ((second + second.transpose(1, 2)) / 2).to(self.dtype)

    def entropy(self) -> torch.Tensor:
        """Differential entropy ``(B,)`` in nats w.r.t. the Lebesgue measure in m³ (exact)."""
        p = self.mass()
        return -torch.where(p > 0, p * self.cell_log_density(), torch.zeros_like(p)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` translations per distribution ``(B, n, 3)`` (m): a cell by mass, then ``xi`` uniform in it."""
        cols, level = self._sample_columns(n, generator)
        xi = self._sample_xi(cols, level, self.cell_index, generator).to(self.device)
        return tgrid.xi_to_t(self.frame, xi).to(self.dtype)
