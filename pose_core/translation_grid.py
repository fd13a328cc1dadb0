"""The hierarchical translation grid of SE(3) pyramids: a box around a guessed translation, along the viewing ray.

A :class:`TranslationFrame` holds one box per batch row: a centre ``t_hat`` ``(B, 3)`` (m, camera
optical frame of :mod:`pose_core.so3`, ``t_hat_z > 0``), an in-plane half-range ``half_xy`` ``(B,)``
(in normalised image coordinates ``x / z``) and a depth half-range ``half_logz`` ``(B,)`` (in
``log z``). Box coordinates ``xi`` ``(..., 3)`` in ``[-1, 1]**3`` map to translations by::

    x/z   = t_hat_x / t_hat_z + half_xy * xi0
    y/z   = t_hat_y / t_hat_z + half_xy * xi1
    log z = log t_hat_z       + half_logz * xi2,          t = z * (x/z, y/z, 1)

so cells follow the viewing ray and are relative in depth. The Jacobian is exact and simple:
``|det dt/dxi| = z**3 * half_xy**2 * half_logz``; its log is linear in ``xi2``.

Level ``r`` splits every axis into ``n = 2**(r+1)`` equal intervals (width ``2 / n`` in ``xi``):
``8**(r+1)`` cells, flat index ``(i * n + j) * n + k`` (``i`` along ``xi0``, ``j`` along ``xi1``,
``k`` along ``xi2``). The children of cell ``(i, j, k)`` are the level-``r+1`` cells
``(2i + a, 2j + b, 2k + c)`` in the order ``a * 4 + b * 2 + c``; they tile the parent exactly.

Functions that take a frame and points ``(B, ..., 3)`` apply row ``b`` of the frame to the points
``[b]``; they compute in the promoted dtype of the frame and the points, on their device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "TranslationFrame",
    "num_cells",
    "cells_per_axis",
    "children",
    "ancestor",
    "cell_centres_xi",
    "xi_to_t",
    "t_to_xi",
    "cell_of",
    "log_abs_det_jacobian",
    "log_cell_volume_xi",
    "sample_xi_in_cells",
    "sample_in_cells",
]

#: Finest supported level (``8**11`` cells: flat indices fit int64 with room to spare).
MAX_LEVEL = 10


def _check_level(level: int) -> None:
    if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"translation grid level must be an integer in [0, {MAX_LEVEL}], got {level!r}")


def _check_index(index: torch.Tensor) -> torch.Tensor:
    index = torch.as_tensor(index)
    if index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index must be an integer tensor, got {index.dtype}")
    return index.long()


@dataclass(frozen=True, eq=False)
class TranslationFrame:
    """A batch of ``B`` translation boxes (see the module docstring).

    Attributes:
        centre: ``(B, 3)`` the guessed translations ``t_hat`` (m), ``t_hat_z > 0``.
        half_xy: ``(B,)`` in-plane half-range in ``x / z`` (> 0).
        half_logz: ``(B,)`` depth half-range in ``log z`` (> 0).
    """

    centre: torch.Tensor
    half_xy: torch.Tensor
    half_logz: torch.Tensor

    def __post_init__(self) -> None:
        c, h, g = self.centre, self.half_xy, self.half_logz
        if not all(isinstance(x, torch.Tensor) for x in (c, h, g)):
            raise TypeError("centre, half_xy and half_logz must be torch tensors")
        if c.dim() != 2 or c.shape[1] != 3 or h.shape != c.shape[:1] or g.shape != c.shape[:1]:
            raise ValueError(
                "expected centre (B, 3), half_xy (B,), half_logz (B,); got "
                f"{tuple(c.shape)}, {tuple(h.shape)}, {tuple(g.shape)}"
            )
        if not (c.is_floating_point() and h.is_floating_point() and g.is_floating_point()):
            raise ValueError(f"frame tensors must be floating point, got {c.dtype}, {h.dtype}, {g.dtype}")
        if not (c.dtype == h.dtype == g.dtype and c.device == h.device == g.device):
            raise ValueError("centre, half_xy and half_logz must share dtype and device")
        if c.shape[0] == 0:
            raise ValueError("a TranslationFrame needs at least one row")
        if not bool(torch.isfinite(c).all() & (c[:, 2] > 0).all()):
            raise ValueError(f"centre must be finite with z > 0, got {c.tolist()}")
        if not bool((torch.isfinite(h) & (h > 0)).all() & (torch.isfinite(g) & (g > 0)).all()):
            raise ValueError(f"half_xy and half_logz must be finite and > 0, got {h.tolist()}, {g.tolist()}")

    @classmethod
    def from_guess(
        cls,
        t_hat: torch.Tensor,
        radius_m: torch.Tensor | float,
        xy_scale: float = 1.0,
        logz_half: float = 0.4,
    ) -> TranslationFrame:
        """The box around guesses ``t_hat`` ``(B, 3)`` (m) spanning ``xy_scale`` object radii in-plane at the
        guessed depth (``half_xy = xy_scale * radius_m / t_hat_z``) and ``exp(+-logz_half)`` in depth.

        ``radius_m``: the object's radius (m), a float or ``(B,)``. Keeps ``t_hat``'s dtype (float32 or
        float64; integers become float32) and device.
        """
        t_hat = torch.as_tensor(t_hat)
        if not t_hat.is_floating_point():
            t_hat = t_hat.to(torch.float32)
        if t_hat.dim() != 2 or t_hat.shape[1] != 3:
            raise ValueError(f"t_hat must have shape (B, 3), got {tuple(t_hat.shape)}")
        radius = torch.as_tensor(radius_m, dtype=t_hat.dtype, device=t_hat.device)
        if radius.dim() == 0:
            radius = radius.expand(t_hat.shape[0])
        if radius.shape != t_hat.shape[:1]:
            raise ValueError(f"radius_m must be a float or have shape ({t_hat.shape[0]},), got {tuple(radius.shape)}")
        if not bool((radius > 0).all()) or not float(xy_scale) > 0 or not float(logz_half) > 0:
            raise ValueError(
                f"radius_m, xy_scale and logz_half must be > 0, got {radius.tolist()}, {xy_scale!r}, {logz_half!r}"
            )
        if not bool(torch.isfinite(t_hat).all() & (t_hat[:, 2] > 0).all()):
            raise ValueError(f"t_hat must be finite with z > 0, got {t_hat.tolist()}")
        half_xy = float(xy_scale) * radius / t_hat[:, 2]
        half_logz = torch.full_like(half_xy, float(logz_half))
        return cls(t_hat, half_xy, half_logz)

    @property
    def batch_size(self) -> int:
        """Number of boxes ``B``."""
        return self.centre.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def dtype(self) -> torch.dtype:
        return self.centre.dtype

    @property
    def device(self) -> torch.device:
        return self.centre.device

    def select(self, rows: int | slice | Sequence[int] | torch.Tensor) -> TranslationFrame:
        """The boxes ``rows`` (an int keeps a batch of one; a slice; a 1-D index or boolean tensor)."""
        if isinstance(rows, (int, np.integer)):
            B = self.batch_size
            if not -B <= rows < B:
                raise IndexError(f"row {rows} out of range for a batch of {B}")
            rows = slice(int(rows) % B, int(rows) % B + 1)
        elif not isinstance(rows, slice):
            rows = torch.as_tensor(rows, device=self.device)
            if rows.dim() != 1:
                raise IndexError(f"rows must be an int, a slice or a 1-D sequence, got shape {tuple(rows.shape)}")
            if rows.dtype != torch.bool:
                rows = rows.long()
        return TranslationFrame(self.centre[rows], self.half_xy[rows], self.half_logz[rows])

    __getitem__ = select

    def to(self, device=None, dtype: torch.dtype | None = None) -> TranslationFrame:
        """Copy on ``device`` (and in ``dtype``, a floating dtype, when given)."""
        return TranslationFrame(
            self.centre.to(device=device, dtype=dtype),
            self.half_xy.to(device=device, dtype=dtype),
            self.half_logz.to(device=device, dtype=dtype),
        )


def num_cells(level: int) -> int:
    """Number of translation cells ``8**(level + 1)`` at ``level``."""
    _check_level(level)
    return 8 ** (level + 1)


def cells_per_axis(level: int) -> int:
    """Intervals per ``xi`` axis ``n = 2**(level + 1)`` at ``level``."""
    _check_level(level)
    return 2 ** (level + 1)


def _split(index: torch.Tensor, n: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat indices ``(...)`` → ``(i, j, k)`` for ``n`` cells per axis (an int or a broadcastable tensor)."""
    k = torch.remainder(index, n)
    ij = torch.div(index, n, rounding_mode="floor")
    return torch.div(ij, n, rounding_mode="floor"), torch.remainder(ij, n), k


def children(index: torch.Tensor, level: int) -> torch.Tensor:
    """Indices ``(..., 8)`` at ``level + 1`` of the children of cells ``index`` ``(...)`` at ``level``
    (order ``a * 4 + b * 2 + c`` for child ``(2i + a, 2j + b, 2k + c)``)."""
    _check_level(level)
    if level + 1 > MAX_LEVEL:
        raise ValueError(f"level {level} has no children within MAX_LEVEL = {MAX_LEVEL}")
    index = _check_index(index)
    n = cells_per_axis(level)
    i, j, k = _split(index, n)
    off = torch.arange(8, device=index.device)
    a, b, c = off // 4, (off // 2) % 2, off % 2
    m = 2 * n
    ci = 2 * i[..., None] + a
    cj = 2 * j[..., None] + b
    ck = 2 * k[..., None] + c
    return (ci * m + cj) * m + ck


def ancestor(index: torch.Tensor, level: int, to_level: int) -> torch.Tensor:
    """Index ``(...)`` at ``to_level <= level`` of the cell containing level-``level`` cells ``index`` ``(...)``."""
    _check_level(level)
    if not isinstance(to_level, (int, np.integer)) or not 0 <= to_level <= level:
        raise ValueError(f"to_level must be an integer in [0, {level}], got {to_level!r}")
    index = _check_index(index)
    up = 2 ** (level - to_level)
    i, j, k = _split(index, cells_per_axis(level))
    m = cells_per_axis(to_level)
    return (torch.div(i, up, rounding_mode="floor") * m + torch.div(j, up, rounding_mode="floor")) * m + torch.div(
        k, up, rounding_mode="floor"
    )


def _centres_xi(index: torch.Tensor, n: int | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cell centres ``(..., 3)`` of flat indices ``index`` with ``n`` cells per axis (int or broadcastable)."""
    ijk = torch.stack(_split(index, n), dim=-1).to(dtype)
    width = 2.0 / torch.as_tensor(n, device=index.device).to(dtype)
    if width.dim() > 0:
        width = width[..., None]
    return (ijk + 0.5) * width - 1.0


def cell_centres_xi(level: int, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centres ``(..., 3)`` in ``xi`` of the level-``level`` cells ``index`` ``(...)``, on ``index``'s device.

    Exact in float32 too (odd multiples of ``1 / n``).
    """
    _check_level(level)
    return _centres_xi(_check_index(index), cells_per_axis(level), dtype)


def _check_points(frame: TranslationFrame, x: torch.Tensor, name: str) -> None:
    if not isinstance(frame, TranslationFrame):
        raise TypeError(f"frame must be a TranslationFrame, got {type(frame).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[-1] != 3 or x.shape[0] != frame.batch_size:
        raise ValueError(f"{name} must have shape ({frame.batch_size}, ..., 3) for a frame of "
                         f"{frame.batch_size} rows, got {tuple(x.shape)}")


def _rows(v: torch.Tensor, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-row values ``(B,)`` or ``(B, 3)`` shaped to broadcast against ``(B, ...)`` with ``ndim`` dims."""
    extra = ndim - v.dim()
    return v.to(dtype).reshape(v.shape[:1] + (1,) * extra + v.shape[1:])


def _frame_parts(frame: TranslationFrame, ndim: int, dtype: torch.dtype):
    """``(u0, v0, log z0, half_xy, half_logz)`` of the frame, each shaped ``(B, 1, ..., 1)`` with ``ndim`` dims."""
    c = frame.centre.to(dtype)
    parts = (c[:, 0] / c[:, 2], c[:, 1] / c[:, 2], torch.log(c[:, 2]), frame.half_xy, frame.half_logz)
    return tuple(_rows(p, ndim, dtype) for p in parts)


def xi_to_t(frame: TranslationFrame, xi: torch.Tensor) -> torch.Tensor:
    """Box coordinates ``xi`` ``(B, ..., 3)`` → translations ``t`` ``(B, ..., 3)`` (m)."""
    _check_points(frame, xi, "xi")
    dtype = torch.promote_types(frame.dtype, xi.dtype) if xi.is_floating_point() else frame.dtype
    xi = xi.to(dtype)
    u0, v0, s0, hxy, hlz = _frame_parts(frame, xi.dim() - 1, dtype)
    z = torch.exp(s0 + hlz * xi[..., 2])
    return torch.stack((z * (u0 + hxy * xi[..., 0]), z * (v0 + hxy * xi[..., 1]), z), dim=-1)


def t_to_xi(frame: TranslationFrame, t: torch.Tensor) -> torch.Tensor:
    """Translations ``t`` ``(B, ..., 3)`` (m) → box coordinates ``xi`` ``(B, ..., 3)`` (inverse of :func:`xi_to_t`).

    Points with ``z <= 0`` (behind the camera) have no coordinates: their ``xi`` is NaN.
    """
    _check_points(frame, t, "t")
    dtype = torch.promote_types(frame.dtype, t.dtype) if t.is_floating_point() else frame.dtype
    t = t.to(dtype)
    u0, v0, s0, hxy, hlz = _frame_parts(frame, t.dim() - 1, dtype)
    z = t[..., 2]
    ok = z > 0
    zs = torch.where(ok, z, torch.ones_like(z))
    xi = torch.stack(((t[..., 0] / zs - u0) / hxy, (t[..., 1] / zs - v0) / hxy, (torch.log(zs) - s0) / hlz), dim=-1)
    return torch.where(ok[..., None], xi, torch.full_like(xi, math.nan))


def _index_of_xi(xi: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = cells_per_axis(level)
    slack = 1 + 64 * torch.finfo(xi.dtype).eps  # points on the box's faces, up to round-off, are inside
    inside = torch.isfinite(xi).all(-1) & (xi.abs() <= slack).all(-1)
    safe = torch.where(torch.isfinite(xi), xi, torch.zeros_like(xi)).clamp(-1.0, 1.0)
    ijk = torch.floor((safe + 1) * (n / 2)).long().clamp(0, n - 1)
    return (ijk[..., 0] * n + ijk[..., 1]) * n + ijk[..., 2], inside


def cell_of(frame: TranslationFrame, t: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-``level`` cell ``(B, ...)`` (int64) containing translations ``t`` ``(B, ..., 3)``, and whether
    ``t`` lies in the box at all ``(B, ...)`` (bool; its faces count as inside, with a few ulps of
    slack for round-off). Outside the box the index is that of the nearest
    cell along each axis (clamped), and meaningless behind the camera; use it only where ``inside``."""
    _check_level(level)
    return _index_of_xi(t_to_xi(frame, t), level)


def log_abs_det_jacobian(frame: TranslationFrame, t: torch.Tensor) -> torch.Tensor:
    """``log |det dt/dxi|`` ``(B, ...)`` at translations ``t`` ``(B, ..., 3)``:
    ``3 log z + 2 log half_xy + log half_logz``."""
    _check_points(frame, t, "t")
    dtype = torch.promote_types(frame.dtype, t.dtype) if t.is_floating_point() else frame.dtype
    t = t.to(dtype)
    _, _, _, hxy, hlz = _frame_parts(frame, t.dim() - 1, dtype)
    return 3 * torch.log(t[..., 2]) + 2 * torch.log(hxy) + torch.log(hlz)


def _log_abs_det_jacobian_xi(frame: TranslationFrame, xi: torch.Tensor) -> torch.Tensor:
    """:func:`log_abs_det_jacobian` at box coordinates ``xi`` ``(B, ..., 3)`` (linear in ``xi2``)."""
    dtype = torch.promote_types(frame.dtype, xi.dtype)
    _, _, s0, hxy, hlz = _frame_parts(frame, xi.dim() - 1, dtype)
    return 3 * (s0 + hlz * xi[..., 2].to(dtype)) + 2 * torch.log(hxy) + torch.log(hlz)


def log_cell_volume_xi(level: int) -> float:
    """``log`` of a level-``level`` cell's volume in ``xi``: ``3 * log(2 / n) = -3 * level * log 2``
    (all cells together: ``8``)."""
    _check_level(level)
    return -3.0 * level * math.log(2.0)


def sample_xi_in_cells(
    level: int,
    index: torch.Tensor,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One point ``(..., 3)`` in ``xi`` drawn uniformly inside each level-``level`` cell ``index`` ``(...)``.

    Random numbers come from ``generator`` (CPU), so results are reproducible on any device; the
    result is on ``index``'s device.
    """
    _check_level(level)
    index = _check_index(index)
    n = cells_per_axis(level)
    ijk = torch.stack(_split(index.cpu(), n), dim=-1).to(torch.float64)
    u = torch.rand(ijk.shape, generator=generator, dtype=torch.float64)
    xi = (ijk + u) * (2.0 / n) - 1.0
    return xi.to(dtype=dtype, device=index.device)


def sample_in_cells(
    frame: TranslationFrame,
    level: int,
    index: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One translation ``(B, ..., 3)`` (m) per level-``level`` cell ``index`` ``(B, ...)``, uniform in ``xi``
    inside the cell of row ``b``'s box (CPU ``generator``; in the frame's dtype, on its device)."""
    index = _check_index(index)
    if index.dim() < 1 or index.shape[0] != frame.batch_size:
        raise ValueError(f"index must have shape ({frame.batch_size}, ...), got {tuple(index.shape)}")
    xi = sample_xi_in_cells(level, index, generator, dtype=frame.dtype).to(frame.device)
    return xi_to_t(frame, xi)
