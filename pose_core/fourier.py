"""Evaluating band-limited SO(3) signals on grid cells, fast, with cached Wigner-D tables.

An SO(3) signal ``F`` ``(B, so3_dim(lmax))`` (layout in :mod:`pose_core.wigner`) is evaluated at
grid cells without ever building the ``N x so3_dim`` matrix of a fine grid: a grid rotation
factors as ``R = S_pix @ Rz(psi)`` (:mod:`pose_core.grids`), so
``D_l(R) = D_l(S_pix) @ D_l(Rz(psi))``, and both factors come from small per-level tables
(``12 * 4**level`` pixels and ``6 * 2**level`` in-plane angles). Tables are cached in memory and,
when larger than a few MB, on disk under ``$POSE_DISTRIBUTION_CACHE`` (default
``~/.cache/pose_distribution``); a corrupt cache file is rebuilt, never trusted.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path

import torch

from pose_core import grids, so3, wigner

__all__ = [
    "cache_dir",
    "cell_flat_wigner",
    "evaluate_cells",
    "evaluate_children",
    "evaluate_grid",
    "evaluate_rotations",
    "grid_flat_wigner",
    "full_grid_argmax",
]

_DISK_CACHE_MIN_BYTES = 4 * 2**20


def cache_dir() -> Path:
    """Directory for cached Wigner-D tables (``$POSE_DISTRIBUTION_CACHE`` or ``~/.cache/pose_distribution``)."""
    return Path(os.environ.get("POSE_DISTRIBUTION_CACHE", Path.home() / ".cache" / "pose_distribution"))


def _load_or_build(name: str, build, nbytes: int) -> torch.Tensor:
    """Return ``build()`` (a float64 CPU tensor), cached on disk when it is large."""
    if nbytes < _DISK_CACHE_MIN_BYTES:
        return build()
    path = cache_dir() / f"{name}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # corrupt or partial file from an old crash: rebuild it
            pass
    table = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(table, tmp)
        os.replace(tmp, path)  # atomic: readers never see a half-written table
    except OSError:
        pass  # read-only home: keep the in-memory table
    return table


@functools.lru_cache(maxsize=16)
def _tables_cpu(level: int, lmax: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Per ``l``: pixel blocks ``(npix, 2l+1, 2l+1)`` and in-plane blocks ``(n_psi, 2l+1, 2l+1)``, float64."""
    npix, n_psi = 12 * 4**level, grids.num_inplane(level)
    dim = wigner.so3_dim(lmax)

    def build_pixels() -> torch.Tensor:
        S = grids._pixel_rotations(level, torch.float64, "cpu")
        return torch.cat([D.reshape(npix, -1) for D in wigner.wigner_D(S, lmax)], dim=-1)

    flat = _load_or_build(f"wigner_pixels_L{level}_lmax{lmax}", build_pixels, npix * dim * 8)
    psi = (torch.arange(n_psi, dtype=torch.float64) + 0.5) * (2 * math.pi / n_psi)
    zero = torch.zeros_like(psi)
    Z = wigner.wigner_D(so3.zyz_to_matrix(psi, zero, zero), lmax)
    pix_blocks, col = [], 0
    for l in range(lmax + 1):
        d = 2 * l + 1
        pix_blocks.append(flat[:, col : col + d * d].reshape(npix, d, d))
        col += d * d
    return tuple(pix_blocks), tuple(Z)


@functools.lru_cache(maxsize=32)
def _tables(level: int, lmax: int, dtype: torch.dtype, device: str):
    pix, psi = _tables_cpu(level, lmax)
    return (
        tuple(t.to(dtype=dtype, device=device) for t in pix),
        tuple(t.to(dtype=dtype, device=device) for t in psi),
    )


def cell_flat_wigner(level: int, index: torch.Tensor, lmax: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SO(3) Fourier basis (see :func:`pose_core.wigner.flat_wigner`) at cell centres: ``(..., so3_dim)``.

    ``index`` ``(...)`` holds level-``level`` cell indices; computed on ``index.device``.
    """
    pix_t, psi_t = _tables(level, lmax, dtype, str(index.device))
    pix, k = grids.split_cells(index.reshape(-1), level)
    blocks = []
    for l in range(lmax + 1):
        d = 2 * l + 1
        blocks.append(math.sqrt(d) * (pix_t[l][pix] @ psi_t[l][k]).reshape(-1, d * d))
    return torch.cat(blocks, dim=-1).reshape(index.shape + (wigner.so3_dim(lmax),))


@functools.lru_cache(maxsize=4)
def _grid_flat_wigner_cached(level: int, lmax: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    index = torch.arange(grids.num_cells(level), device=device)
    return cell_flat_wigner(level, index, lmax, dtype)


def grid_flat_wigner(level: int, lmax: int, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """The whole grid's Fourier basis ``(72 * 8**level, so3_dim)``, cached in memory.

    Meant for coarse levels (level 3: 36,864 x 455, 67 MB in float32). For fine levels use
    :func:`evaluate_cells` on the cells you need.
    """
    if level > 4:
        raise ValueError(
            f"grid_flat_wigner(level={level}) would hold "
            f"{grids.num_cells(level) * wigner.so3_dim(lmax) * 4 / 2**30:.1f}"
            " GB; evaluate cells in chunks with evaluate_cells() instead"
        )
    return _grid_flat_wigner_cached(level, lmax, dtype, str(torch.device(device)))


@functools.lru_cache(maxsize=32)
def _pixel_flat(level: int, lmax: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``D_l(S_pix)`` of every pixel, flattened row-major per ``l`` and concatenated: ``(npix, so3_dim)``."""
    pix_t, _ = _tables(level, lmax, dtype, device)
    return torch.cat([t.reshape(t.shape[0], -1) for t in pix_t], dim=-1)


@functools.lru_cache(maxsize=32)
def _inplane_tables(level: int, lmax: int, dtype: torch.dtype, device: str):
    """Tables of :func:`_inplane_products`: ``perm`` ``(S, so3_dim)`` and ``value`` ``(S, n_psi, so3_dim)``.

    ``D_l(Rz(psi))`` is sparse: each row ``m`` has at most ``S`` (3 in e3nn's basis) entries ``j``
    that are non-zero for some ``psi``. So ``(F_l D_l(Rz)^T)[a, m] = sum_s F_l[a, j_s(m)] Z[m, j_s(m)]``;
    per flattened entry ``e = (l, a, m)``: ``H[k, e] = sum_s F[perm[s, e]] value[s, k, e]``, with
    ``sqrt(d)`` folded in and unused slots pointing anywhere with value 0.
    """
    _, psi_t = _tables(level, lmax, torch.float64, "cpu")
    n_psi = psi_t[0].shape[0]
    rows = []  # per l: list over m of the non-zero columns
    for Z in psi_t:
        nz = Z.abs().amax(dim=0) > 1e-12  # (d, d)
        rows.append([nz[m].nonzero().squeeze(1).tolist() for m in range(Z.shape[1])])
    slots = max(len(js) for r in rows for js in r)
    perm = torch.zeros(slots, wigner.so3_dim(lmax), dtype=torch.int64)
    value = torch.zeros(slots, n_psi, wigner.so3_dim(lmax), dtype=torch.float64)
    col = 0
    for l, Z in enumerate(psi_t):
        d = 2 * l + 1
        for m, js in enumerate(rows[l]):
            for s, j in enumerate(js):
                e = col + torch.arange(d) * d + m  # entries (a, m) for every row a of F_l
                perm[s, e] = col + torch.arange(d) * d + j
                value[s, :, e] = math.sqrt(d) * Z[:, m, j][:, None]
        col += d * d
    return perm.to(device), value.to(dtype=dtype, device=device)


def _inplane_products(coeffs: torch.Tensor, level: int, lmax: int) -> torch.Tensor:
    """``H[b, k] = concat_l sqrt(d) F_l D_l(Rz(psi_k))^T`` flattened: ``(B, n_psi, so3_dim)``.

    With it, the signal at cell ``(pix, k)`` is ``<D(S_pix), H[b, k]>``: see :func:`evaluate_cells`.
    """
    perm, value = _inplane_tables(level, lmax, coeffs.dtype, str(coeffs.device))
    H = coeffs[:, perm[0]][:, None, :] * value[0]
    for s in range(1, perm.shape[0]):
        H = H + coeffs[:, perm[s]][:, None, :] * value[s]
    return H


def evaluate_cells(coeffs: torch.Tensor, level: int, index: torch.Tensor, lmax: int) -> torch.Tensor:
    """Signal values ``(B, M)`` at cells ``index`` ``(B, M)`` (or ``(M,)``, shared) for ``coeffs`` ``(B, so3_dim)``.

    Shared cells: ``coeffs @ cell_flat_wigner(index).T``. Per-row cells (the coarse-to-fine
    refinement): a cell rotation is ``S_pix @ Rz(psi_k)``, so ``f = sum_l sqrt(d) <F_l, D_l(S_pix)
    D_l(Rz(psi_k))> = <D(S_pix), H[k]>`` with ``H[k] = sqrt(d) F_l D_l(Rz(psi_k))^T`` computed
    once per in-plane angle (:func:`_inplane_products`): one gathered dot product per cell
    instead of ``lmax + 1`` small matrix products.
    """
    if index.dim() == 1:
        return coeffs @ cell_flat_wigner(level, index, lmax, coeffs.dtype).T
    if index.dim() != 2 or index.shape[0] != coeffs.shape[0]:
        raise ValueError(f"index must have shape (M,) or ({coeffs.shape[0]}, M), got {tuple(index.shape)}")
    n_psi = grids.num_inplane(level)
    pix, k = grids.split_cells(index, level)
    P = _pixel_flat(level, lmax, coeffs.dtype, str(coeffs.device))[pix]  # (B, M, so3_dim)
    H = _inplane_products(coeffs, level, lmax)  # (B, n_psi, so3_dim)
    rows = torch.arange(H.shape[0], device=index.device)[:, None] * n_psi
    Hk = H.reshape(-1, H.shape[-1])[k + rows]  # (B, M, so3_dim)
    return (P * Hk).sum(-1)


def evaluate_children(coeffs: torch.Tensor, level: int, parents: torch.Tensor, lmax: int) -> torch.Tensor:
    """Signal values ``(B, 8 k)`` at the children (level ``level + 1``, in :func:`pose_core.grids.children`
    order) of the level-``level`` cells ``parents`` ``(B, k)``.

    The 8 children of a cell are 4 pixels times 2 in-plane angles, so their values are a
    ``(4, so3_dim) @ (so3_dim, 2)`` product of 4 pixel rows and 2 in-plane rows per parent
    (:func:`evaluate_cells` gathers 8 of each): half the memory traffic, one batched product.
    """
    if parents.dim() != 2 or parents.shape[0] != coeffs.shape[0]:
        raise ValueError(f"parents must have shape ({coeffs.shape[0]}, k), got {tuple(parents.shape)}")
    B, k = parents.shape
    n_psi = grids.num_inplane(level)
    pix, kk = grids.split_cells(parents, level)
    child_pix = 4 * pix[..., None] + torch.arange(4, device=parents.device)  # (B, k, 4)
    child_k = 2 * kk[..., None] + torch.arange(2, device=parents.device)  # (B, k, 2)
    P = _pixel_flat(level + 1, lmax, coeffs.dtype, str(coeffs.device)).index_select(0, child_pix.reshape(-1))
    H = _inplane_products(coeffs, level + 1, lmax)  # (B, 2 n_psi, so3_dim)
    rows = torch.arange(B, device=parents.device)[:, None, None] * (2 * n_psi)
    Hk = H.reshape(-1, H.shape[-1]).index_select(0, (child_k + rows).reshape(-1))
    D = H.shape[-1]
    f = torch.bmm(P.reshape(B * k, 4, D), Hk.reshape(B * k, 2, D).transpose(1, 2))  # (B k, 4, 2)
    return f.reshape(B, 8 * k)


@functools.lru_cache(maxsize=32)
def _grid_tables(level: int, lmax: int, dtype: torch.dtype, device: str):
    """Tables of :func:`evaluate_grid`.

    ``D_l(Rz(psi))`` is non-zero only at ``n_l = 2d - 1`` of its ``d * d`` entries ``(k, j)``
    (``m' = +-m``). Per ``l``: the pixel columns ``D_l(S_pix)[:, k]`` of those entries as
    ``(n_l, npix, d)`` and their ``j`` ``(n_l,)``; and the in-plane values ``(n_psi, M = sum_l n_l)``
    at those entries, scaled by ``sqrt(d)``, factored as ``U (n_psi, r) @ V (r, M)``: they are
    ``cos(m psi)`` and ``sin(m psi)`` only, so the rank ``r`` is ``2 lmax + 1``.
    """
    pix_t, psi_t = _tables(level, lmax, torch.float64, "cpu")
    pix_cols, js, z_cols = [], [], []
    for l in range(lmax + 1):
        d = 2 * l + 1
        k, j = (psi_t[l].abs().amax(dim=0) > 1e-12).nonzero().unbind(1)
        pix_cols.append(pix_t[l][:, :, k].permute(2, 0, 1).contiguous().to(dtype=dtype, device=device))
        js.append(j.to(device))
        z_cols.append(math.sqrt(d) * psi_t[l][:, k, j])  # (n_psi, n_l)
    U, S, Vh = torch.linalg.svd(torch.cat(z_cols, dim=1), full_matrices=False)
    r = int((S > 1e-9 * S[0]).sum())
    U, V = (U[:, :r] * S[:r]).to(dtype=dtype, device=device), Vh[:r].to(dtype=dtype, device=device)
    return tuple(pix_cols), tuple(js), U, V


def evaluate_grid(coeffs: torch.Tensor, level: int, lmax: int) -> torch.Tensor:
    """Signal values ``(B, 72 * 8**level)`` on the whole level-``level`` grid (cell-index order).

    Same numbers as ``coeffs @ grid_flat_wigner(level).T`` (to round-off) without that
    ``N x so3_dim`` matrix: with ``D_l(R) = D_l(S_pix) D_l(Rz(psi))``,
    ``f = sum_l sqrt(d) <G_l, D_l(Rz(psi))>`` where ``G_l = D_l(S_pix)^T F_l`` ``(npix, d, d)`` is
    needed only where ``D_l(Rz(psi))`` is non-zero (``m' = +-m``). About 20x fewer operations than
    the matrix product and no 67 MB (level 3) table streamed through memory per call.
    """
    if coeffs.dim() != 2 or coeffs.shape[1] != wigner.so3_dim(lmax):
        raise ValueError(f"coeffs must have shape (B, {wigner.so3_dim(lmax)}), got {tuple(coeffs.shape)}")
    pix_cols, js, U, V = _grid_tables(level, lmax, coeffs.dtype, str(coeffs.device))
    B, npix, n_psi = coeffs.shape[0], pix_cols[0].shape[1], U.shape[0]
    picked, col = [], 0
    for l, j in enumerate(js):
        d = 2 * l + 1
        F = coeffs[:, col : col + d * d].reshape(B, d, d)[:, :, j].permute(2, 1, 0)  # (n_l, d, B): F_l[:, j]
        picked.append(torch.bmm(pix_cols[l], F))  # (n_l, npix, B): G_l[pix, k, j] per entry (k, j)
        col += d * d
    G = torch.cat(picked, dim=0)  # (M, npix, B)
    f = U @ (V @ G.reshape(G.shape[0], npix * B))  # (n_psi, npix * B)
    return f.reshape(n_psi, npix, B).permute(2, 1, 0).reshape(B, npix * n_psi)  # cell = pix * n_psi + k


def evaluate_rotations(coeffs: torch.Tensor, R: torch.Tensor, lmax: int) -> torch.Tensor:
    """Signal values at arbitrary rotations: ``R`` ``(B, M, 3, 3)`` → ``(B, M)``, or ``(M, 3, 3)`` shared."""
    W = wigner.flat_wigner(R.to(coeffs.dtype), lmax)
    if R.dim() == 3:
        return coeffs @ W.T
    return torch.einsum("bd,bmd->bm", coeffs, W)


def full_grid_argmax(
    coeffs: torch.Tensor, level: int, lmax: int, chunk: int = 32768
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exhaustive search: best cell index ``(B,)`` and value ``(B,)`` of ``coeffs`` ``(B, so3_dim)`` over a whole grid.

    The reference way (Image2Sphere evaluates its whole level-5 grid with a flat Wigner-D matrix),
    in chunks of ``chunk`` cells so that memory stays bounded. Slow by design; for tests and benchmarks.
    """
    best_val = torch.full((coeffs.shape[0],), float("-inf"), dtype=coeffs.dtype, device=coeffs.device)
    best_idx = torch.zeros(coeffs.shape[0], dtype=torch.int64, device=coeffs.device)
    for start in range(0, grids.num_cells(level), chunk):
        idx = torch.arange(start, min(start + chunk, grids.num_cells(level)), device=coeffs.device)
        vals = coeffs @ cell_flat_wigner(level, idx, lmax, coeffs.dtype).T  # (B, chunk)
        v, i = vals.max(dim=1)
        better = v > best_val
        best_val = torch.where(better, v, best_val)
        best_idx = torch.where(better, i + start, best_idx)
    return best_idx, best_val
