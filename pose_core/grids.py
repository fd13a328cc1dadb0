"""The hierarchical HEALPix grid on SO(3) (IPDF / Image2Sphere / SpyroPose).

A grid *level* ``L`` has ``N = 72 * 8**L`` cells: the ``12 * 4**L`` equal-area HEALPix pixels
(``nside = 2**L``, NESTED ordering) of the direction ``R @ e_z`` times ``6 * 2**L`` equal intervals
of the in-plane angle. With intrinsic Z-Y-Z Euler angles (see :mod:`pose_core.so3`), the grid
rotation of cell ``i`` is ``Rz(phi) @ Ry(theta) @ Rz(psi)`` where ``(theta, phi)`` is the centre
of HEALPix pixel ``i // n_psi`` and ``psi = 2*pi*(i % n_psi + 0.5) / n_psi``.

Every cell has the same Haar volume ``pi**2 / N`` (the Haar measure is ``sin(beta) da db dg``),
so a probability per cell converts to a density by ``* N / pi**2``.

The grid is *hierarchical*: the 8 children of cell ``i`` at level ``L`` are the level-``L+1``
cells ``(4 * pix + a) * 2 * n_psi + 2 * k + b`` for ``a in 0..3``, ``b in 0..1``, which tile the
parent exactly. That is why the in-plane angles sit at interval centres (``k + 0.5``), half a
step from IPDF's ``linspace``; the cell count and resolution are the same as IPDF's and I2S's.
"""

from __future__ import annotations

import functools
import math

import healpy
import numpy as np
import torch

from pose_core import so3

__all__ = [
    "num_cells",
    "resolution",
    "level_for_resolution",
    "num_inplane",
    "split_cells",
    "so3_healpix_grid",
    "cell_rotations",
    "cell_quaternions",
    "children",
    "ancestor",
    "cell_of",
    "sample_in_cells",
    "s2_healpix_points",
]

#: HEALPix supports nside up to 2**29; keep in-cell jitter well inside that.
_MAX_HEALPIX_ORDER = 29


def _check_level(level: int) -> None:
    if not isinstance(level, (int, np.integer)) or level < 0 or level > 10:
        raise ValueError(f"grid level must be an integer in [0, 10], got {level!r}")


def num_cells(level: int) -> int:
    """Number of cells ``72 * 8**level`` of the SO(3) grid at ``level``."""
    _check_level(level)
    return 72 * 8**level


def resolution(level: int) -> float:
    """Grid spacing at ``level`` in radians: the in-plane step ``2*pi / (6 * 2**level)``.

    Level 3: 7.5 deg, level 4: 3.75 deg, level 5: 1.875 deg, level 6: 0.94 deg.
    """
    _check_level(level)
    return 2 * math.pi / num_inplane(level)


def level_for_resolution(resolution_rad: float, max_level: int = 8) -> int:
    """Smallest level whose :func:`resolution` is at most ``resolution_rad`` (capped at ``max_level``)."""
    if not resolution_rad > 0:
        raise ValueError(f"resolution must be > 0 radians, got {resolution_rad!r}")
    level = 0
    while resolution(level) > resolution_rad * (1 + 1e-9) and level < max_level:
        level += 1
    return level


def num_inplane(level: int) -> int:
    """In-plane angles per HEALPix pixel at ``level``: ``6 * 2**level``."""
    return 6 * 2**level


def split_cells(index: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell indices ``(...)`` at ``level`` → their HEALPix pixel and in-plane bin ``(...)``, ``(...)``.

    The one statement of the cell numbering: ``cell = pixel * num_inplane(level) + k``.
    """
    pix = torch.div(index, num_inplane(level), rounding_mode="floor")
    return pix, index - pix * num_inplane(level)


@functools.lru_cache(maxsize=16)
def _pixel_rotations_np(level: int) -> np.ndarray:
    """``Rz(phi) @ Ry(theta)`` for the HEALPix pixel centres, ``(12 * 4**level, 3, 3)`` float64."""
    nside = 2**level
    theta, phi = healpy.pix2ang(nside, np.arange(12 * nside * nside), nest=True)
    zero = torch.zeros(theta.shape, dtype=torch.float64)
    R = so3.zyz_to_matrix(torch.from_numpy(phi), torch.from_numpy(theta), zero)
    return R.numpy()


def _pixel_rotations(level: int, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    return torch.from_numpy(_pixel_rotations_np(level)).to(dtype=dtype, device=device)


#: Levels whose full table of centre rotations is cached (level 4: 294,912 cells, 10.6 MB in float32).
_TABLE_MAX_LEVEL = 4


@functools.lru_cache(maxsize=16)
def _rotation_table(level: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    index = torch.arange(num_cells(level), device=device)
    return _compute_cell_rotations(level, index).to(dtype)


def _compute_cell_rotations(level: int, index: torch.Tensor) -> torch.Tensor:
    n_psi = num_inplane(level)
    pix, k = split_cells(index, level)
    pixel_R = _pixel_rotations(level, torch.float64, index.device)[pix]
    psi = (k.to(torch.float64) + 0.5) * (2 * math.pi / n_psi)
    zero = torch.zeros_like(psi)
    return pixel_R @ so3.zyz_to_matrix(psi, zero, zero)  # float64


def _check_cell_index(level: int, index: torch.Tensor) -> torch.Tensor:
    """``index`` as an integer tensor, after checking ``level``; ValueError naming the wrong dtype."""
    _check_level(level)
    index = torch.as_tensor(index)
    if index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index must be an integer tensor, got {index.dtype}")
    return index


def cell_rotations(
    level: int,
    index: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Centre rotations ``(..., 3, 3)`` of the cells ``index`` (int64 tensor ``(...)``) at ``level``.

    Runs on ``index.device`` (CPU or CUDA) without leaving it; coarse levels come from a cached table.
    """
    index = _check_cell_index(level, index)
    if level <= _TABLE_MAX_LEVEL:
        return _rotation_table(level, dtype, str(index.device))[index]
    return _compute_cell_rotations(level, index).to(dtype)


@functools.lru_cache(maxsize=16)
def _quaternion_factors(level: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quaternions of the pixel rotations ``(npix, 4)`` and of the in-plane ``Rz(psi_k)`` ``(n_psi, 4)``."""
    pix = so3.matrix_to_quat(_pixel_rotations(level, torch.float64, device))
    n_psi = num_inplane(level)
    half = (torch.arange(n_psi, dtype=torch.float64, device=device) + 0.5) * (math.pi / n_psi)
    zero = torch.zeros_like(half)
    psi = torch.stack((zero, zero, torch.sin(half), torch.cos(half)), dim=-1)
    return pix.to(dtype), psi.to(dtype)


@functools.lru_cache(maxsize=16)
def _quaternion_table(level: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return so3.matrix_to_quat(_rotation_table(level, torch.float64, device)).to(dtype)


def cell_quaternions(
    level: int,
    index: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Centre rotations of the cells ``index`` ``(...)`` at ``level`` as quaternions ``(..., 4)`` (x, y, z, w), w >= 0.

    Same rotations as :func:`cell_rotations`: a cell centre is ``S_pix @ Rz(psi_k)``, so its
    quaternion is the product of a pixel's and an in-plane angle's, from two small cached tables
    (levels above 4), or from the cached table of all cells (coarse levels).
    """
    index = _check_cell_index(level, index)
    if level <= _TABLE_MAX_LEVEL:
        table = _quaternion_table(level, dtype, str(index.device))
        return table.index_select(0, index.reshape(-1)).reshape(index.shape + (4,))
    pix_q, psi_q = _quaternion_factors(level, dtype, str(index.device))
    pix, k = split_cells(index.reshape(-1), level)
    q = so3.quat_multiply(pix_q.index_select(0, pix), psi_q.index_select(0, k))
    return so3.quat_canonical(q).reshape(index.shape + (4,))


def so3_healpix_grid(level: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """All ``72 * 8**level`` grid rotations ``(N, 3, 3)``, in cell-index order."""
    index = torch.arange(num_cells(level), device=device)
    return cell_rotations(level, index, dtype=dtype)


def children(index: torch.Tensor, level: int) -> torch.Tensor:
    """Indices ``(..., 8)`` at ``level + 1`` of the children of cells ``index`` ``(...)`` at ``level``."""
    _check_level(level)
    n_psi = num_inplane(level)
    pix, k = split_cells(index, level)
    a = torch.arange(4, device=index.device)
    b = torch.arange(2, device=index.device)
    child_pix = 4 * pix[..., None, None] + a[:, None]  # (..., 4, 1)
    child_k = 2 * k[..., None, None] + b[None, :]  # (..., 1, 2)
    return (child_pix * (2 * n_psi) + child_k).reshape(index.shape + (8,))


def ancestor(index: torch.Tensor, level: int, to_level: int) -> torch.Tensor:
    """Index ``(...)`` at ``to_level <= level`` of the cell that contains level-``level`` cells ``index`` ``(...)``."""
    _check_level(level)
    if not 0 <= to_level <= level:
        raise ValueError(f"to_level must be in [0, {level}], got {to_level}")
    n_psi = num_inplane(level)
    pix, k = split_cells(index, level)
    up = level - to_level
    return torch.div(pix, 4**up, rounding_mode="floor") * (n_psi // 2**up) + torch.div(k, 2**up, rounding_mode="floor")


def cell_of(R: torch.Tensor, level: int) -> torch.Tensor:
    """Index ``(...)`` (int64, on ``R.device``) of the level-``level`` cell containing rotation ``R`` ``(..., 3, 3)``.

    The HEALPix look-up runs on the CPU (healpy); the result is moved back to ``R``'s device.
    """
    _check_level(level)
    nside, n_psi = 2**level, num_inplane(level)
    alpha, beta, gamma = so3.matrix_to_zyz(R.detach().to(torch.float64))
    pix = healpy.ang2pix(nside, beta.cpu().numpy(), alpha.cpu().numpy(), nest=True)
    k = torch.floor(torch.remainder(gamma, 2 * math.pi) / (2 * math.pi / n_psi)).long().clamp(0, n_psi - 1)
    return torch.as_tensor(pix, dtype=torch.int64, device=R.device).reshape(k.shape) * n_psi + k


def sample_in_cells(
    index: torch.Tensor,
    level: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One rotation ``(..., 3, 3)`` drawn Haar-uniformly inside each cell ``index`` ``(...)`` at ``level``.

    The in-plane angle is continuous-uniform in its interval; the direction is the centre of a
    uniformly chosen HEALPix sub-pixel 8 orders finer (equal areas, so uniform up to
    ``resolution(level) / 256``). Random numbers come from ``generator`` (CPU), so results are
    reproducible for a seeded generator on any device.
    """
    _check_level(level)
    depth = min(8, _MAX_HEALPIX_ORDER - level)
    nside_fine, n_psi = 2 ** (level + depth), num_inplane(level)
    flat = index.reshape(-1).cpu()
    pix, k = split_cells(flat, level)
    sub = torch.randint(0, 4**depth, flat.shape, generator=generator)
    u = torch.rand(flat.shape, generator=generator, dtype=torch.float64)
    theta, phi = healpy.pix2ang(nside_fine, (pix * 4**depth + sub).numpy(), nest=True)
    psi = (k.to(torch.float64) + u) * (2 * math.pi / n_psi)
    R = so3.zyz_to_matrix(torch.from_numpy(phi), torch.from_numpy(theta), psi)
    return R.reshape(index.shape + (3, 3)).to(dtype=dtype, device=index.device)


def s2_healpix_points(level: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit vectors ``(12 * 4**level, 3)`` of the HEALPix pixel centres (NESTED), equal areas."""
    _check_level(level)
    nside = 2**level
    xyz = np.stack(healpy.pix2vec(nside, np.arange(12 * nside * nside), nest=True), axis=-1)
    return torch.from_numpy(xyz).to(dtype)
