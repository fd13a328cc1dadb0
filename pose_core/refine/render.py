"""Differentiable rendering of per-vertex features: depth-ordered Gaussian splatting (after VoGE).

Plain PyTorch (no PyTorch3D, no nvdiffrast), batched over poses, float32 or float64, CPU or CUDA.
Conventions: a pose ``(R, t)`` maps object points into the camera optical frame
(:mod:`pose_core.so3`); ``K`` ``(3, 3)`` are the intrinsics *of the map being rendered*, in its
own pixels, pixel centres at integers (:func:`map_intrinsics` makes them from an image's ``K``).

**Model.** Vertex ``k`` (object point ``X_k``, feature ``f_k``) is a ball of radius ``sigma``
(object units) whose image is an isotropic 2D Gaussian at its projection ``u_k``, of std
``s_k = f sigma / z_k`` pixels (``f = sqrt(fx fy)``, ``z_k`` its depth). At pixel ``q`` its opacity
is ``a_kq = opacity * exp(-|q - u_k|^2 / (2 s_k^2))`` (0 for a vertex behind ``near``).

**Visibility** is by compositing front to back: with the vertices sorted by depth (nearest first),
the transmittance ``T_kq = prod_{j nearer than k} (1 - a_jq)``, the weight ``w_kq = T_kq a_kq``, the
rendered feature ``F_q = sum_k w_kq f_k`` and the coverage ``A_q = sum_k w_kq = 1 - prod_k (1 - a_kq)``
in ``[0, 1)``. A vertex behind the visible surface is covered by the surface's own Gaussians
(vertex spacing below ``sigma``), so its weight vanishes: the far side of the object does not bleed
through. The depth order is piecewise constant in the pose (not differentiated); the weights are
smooth in ``R``, ``t``, ``K`` and the features, which the tests check against finite differences.

Cost: each Gaussian is evaluated only on the pixels within :data:`TRUNCATION` std of its centre,
``N x V x (2r + 1)^2`` (vertex, pixel) pairs, composited by one segmented cumulative sum; the tests
compare it with the dense definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Splats", "splat", "map_intrinsics", "project", "vertex_visibility", "pixel_grid"]

#: Opacities are clamped below 1 so that ``log(1 - a)`` stays finite.
MAX_OPACITY = 0.995
#: Each Gaussian is evaluated out to this many of its standard deviations (opacity ``< 0.002`` of its peak beyond).
TRUNCATION = 3.5
#: ... and at most this many pixels from its centre (a vertex very near the camera is truncated there).
MAX_REACH_PX = 8


@dataclass
class Splats:
    """What :func:`splat` renders for ``N`` poses on an ``h x w`` map.

    Attributes:
        features: ``(N, D, h, w)`` composited features ``F`` (not normalised: ``|F| <= A``).
        coverage: ``(N, h, w)`` ``A`` in ``[0, 1)``, the share of each pixel the object covers.
    """

    features: torch.Tensor
    coverage: torch.Tensor


def map_intrinsics(K: torch.Tensor, stride: float) -> torch.Tensor:
    """Intrinsics ``(..., 3, 3)`` of a feature map at ``stride`` image pixels per map pixel, from the
    image's ``K`` ``(..., 3, 3)`` (pixel centres at integers in both: image ``u`` is map
    ``(u + 0.5) / stride - 0.5``)."""
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"K must have shape (..., 3, 3), got {tuple(K.shape)}")
    s = 1.0 / float(stride)
    A = torch.tensor([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]], dtype=K.dtype,
                     device=K.device)
    return A @ K


def project(vertices: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
            near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vertices ``(V, 3)`` under poses ``R`` ``(N, 3, 3)``, ``t`` ``(N, 3)``, intrinsics ``K`` ``(N, 3, 3)``
    or ``(3, 3)``: pixels ``(N, V, 2)`` ``(u, v)``, depths ``(N, V)``, and ``(N, V)`` bool in front of ``near``
    (behind it the pixel is that of depth ``near``: finite, and unused)."""
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {tuple(vertices.shape)}")
    if R.ndim != 3 or R.shape[1:] != (3, 3) or t.shape != (R.shape[0], 3):
        raise ValueError(f"R must be (N, 3, 3) and t (N, 3), got {tuple(R.shape)} and {tuple(t.shape)}")
    Kb = K.expand(R.shape[0], 3, 3) if K.ndim == 2 else K
    p = torch.einsum("nij,vj->nvi", R, vertices) + t[:, None, :]  # (N, V, 3)
    z = p[..., 2]
    front = z > near
    zs = torch.where(front, z, torch.full_like(z, near))
    uvw = torch.einsum("nij,nvj->nvi", Kb, p)
    uv = uvw[..., :2] / zs[..., None]
    return uv, zs, front


def pixel_grid(h: int, w: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel centres ``(h * w, 2)`` ``(u, v)`` of an ``h x w`` map, row-major (u = column)."""
    v, u = torch.meshgrid(torch.arange(h, dtype=dtype, device=device), torch.arange(w, dtype=dtype, device=device),
                          indexing="ij")
    return torch.stack((u.reshape(-1), v.reshape(-1)), -1)


def _composite(alpha: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Weights ``(N, V, P)`` of opacities ``alpha`` ``(N, V, P)`` composited in ``order`` ``(N, V)`` (nearest
    first); the weights are in that sorted order."""
    a = torch.gather(alpha, 1, order[:, :, None].expand_as(alpha))  # (N, V, P), nearest first
    log_keep = torch.log1p(-a)
    log_T = torch.cumsum(log_keep, dim=1) - log_keep  # exclusive: the vertices nearer than each
    return torch.exp(log_T) * a


def _opacity(uv: torch.Tensor, z: torch.Tensor, front: torch.Tensor, points: torch.Tensor, focal: torch.Tensor,
             sigma: float, opacity: float) -> torch.Tensor:
    """``(N, V, P)`` opacities of the vertices at ``points`` ``(N, P, 2)`` or ``(P, 2)``."""
    s = focal[:, None] * sigma / z  # (N, V) px
    pts = points.expand(uv.shape[0], -1, 2) if points.ndim == 2 else points  # (N, P, 2)
    # |q - u|^2 = |q|^2 + |u|^2 - 2 q.u: one batched matrix product instead of an (N, V, P, 2) difference
    d2 = ((uv * uv).sum(-1)[..., None] + (pts * pts).sum(-1)[:, None, :] - 2.0 * uv @ pts.transpose(1, 2))
    d2 = d2.clamp(min=0.0)
    a = min(float(opacity), MAX_OPACITY) * torch.exp(-0.5 * d2 / (s * s)[..., None])
    return a * front[..., None].to(a.dtype)


def _check(vertices: torch.Tensor, sigma: float, opacity: float) -> None:
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0 < opacity <= 1:
        raise ValueError(f"opacity must be in (0, 1], got {opacity}")
    if vertices.shape[0] < 1:
        raise ValueError("no vertices")


def splat(vertices: torch.Tensor, features: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
          size: tuple[int, int], sigma: float, opacity: float = 0.9, near: float = 1e-3,
          chunk: int = 64, reach: float = TRUNCATION) -> Splats:
    """Render vertex ``features`` ``(V, D)`` of ``vertices`` ``(V, 3)`` under ``N`` poses (module docstring).

    Args:
        R, t: ``(N, 3, 3)``, ``(N, 3)`` poses (object -> camera), same units as ``vertices`` and ``sigma``.
        K: ``(3, 3)`` or ``(N, 3, 3)`` intrinsics of the map (:func:`map_intrinsics`).
        size: ``(h, w)`` of the map.
        sigma: radius of each vertex's ball (object units); opacity: its peak opacity.
        chunk: poses rendered at once.
        reach: each Gaussian is evaluated on the pixels within ``reach`` of its std around its centre
            (at most :data:`MAX_REACH_PX` px; beyond 3.5 std its opacity is below 0.002 of its peak).

    Returns:
        :class:`Splats` with ``features`` ``(N, D, h, w)`` and ``coverage`` ``(N, h, w)``.
    """
    _check(vertices, sigma, opacity)
    if features.ndim != 2 or features.shape[0] != vertices.shape[0]:
        raise ValueError(f"features must be (V, D) with V = {vertices.shape[0]}, got {tuple(features.shape)}")
    h, w = (int(x) for x in size)
    feats, covs = [], []
    for s in range(0, R.shape[0], max(1, int(chunk))):
        Kc = K if K.ndim == 2 else K[s : s + chunk]
        f, c = _splat_sparse(vertices, features, R[s : s + chunk], t[s : s + chunk], Kc, h, w, sigma, opacity,
                             near, reach)
        feats.append(f)
        covs.append(c)
    return Splats(torch.cat(feats), torch.cat(covs))


def _splat_sparse(vertices: torch.Tensor, features: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                  h: int, w: int, sigma: float, opacity: float, near: float, reach: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`splat` of one chunk of ``n`` poses on (vertex, pixel) pairs within each Gaussian's reach.

    The pairs are sorted by (pose, pixel, depth rank) and composited with one segmented cumulative sum
    of ``log(1 - a)`` (in float64: sums over many pairs), then scattered into the maps."""
    n, V = R.shape[0], vertices.shape[0]
    uv, z, front = project(vertices, R, t, K, near)
    Kb = K.expand(n, 3, 3) if K.ndim == 2 else K
    focal = torch.sqrt(Kb[:, 0, 0] * Kb[:, 1, 1])
    std = focal[:, None] * sigma / z  # (n, V) px
    r = int(min(MAX_REACH_PX, max(1, math.ceil(reach * float(std.detach().max())))))
    off = torch.arange(-r, r + 1, device=uv.device)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    offsets = torch.stack((ox.reshape(-1), oy.reshape(-1)), -1)  # (Q, 2) (du, dv)
    centre = uv.detach().round().long()  # (n, V, 2)
    pix = centre[:, :, None, :] + offsets[None, None]  # (n, V, Q, 2)
    inside = (pix[..., 0] >= 0) & (pix[..., 0] < w) & (pix[..., 1] >= 0) & (pix[..., 1] < h) & front[..., None]
    d2 = ((pix.to(uv.dtype) - uv[:, :, None, :]) ** 2).sum(-1)  # (n, V, Q)
    a = min(float(opacity), MAX_OPACITY) * torch.exp(-0.5 * d2 / (std * std)[..., None]) * inside.to(uv.dtype)
    P = h * w
    flat_pix = (pix[..., 1].clamp(0, h - 1) * w + pix[..., 0].clamp(0, w - 1))  # (n, V, Q)
    rank = torch.empty_like(z, dtype=torch.long)
    order = torch.argsort(z.detach(), dim=1)
    rank.scatter_(1, order, torch.arange(V, device=z.device).expand(n, V))
    pose = torch.arange(n, device=z.device)[:, None, None]
    segment = (pose * P + flat_pix)  # (n, V, Q): one segment per (pose, pixel)
    key = (segment * V + rank[:, :, None]).reshape(-1)
    keep = inside.reshape(-1)
    idx = torch.nonzero(keep).squeeze(1)
    idx = idx[torch.argsort(key[idx])]
    a_s = a.reshape(-1)[idx]
    seg_s = segment.reshape(-1)[idx]
    log_keep = torch.log1p(-a_s.to(torch.float64))
    incl = torch.cumsum(log_keep, 0)
    excl = incl - log_keep  # the sum over all earlier pairs
    m = idx.numel()
    start = torch.ones(m, dtype=torch.bool, device=idx.device)
    if m > 1:
        start[1:] = seg_s[1:] != seg_s[:-1]
    first = torch.cummax(torch.where(start, torch.arange(m, device=idx.device), torch.zeros_like(idx)), 0).values
    T = torch.exp(excl - excl[first])  # transmittance through the nearer pairs of the same pixel
    wts = (T.to(a_s.dtype) * a_s)  # (m,)
    vert = torch.div(idx, offsets.shape[0], rounding_mode="floor") % V  # the pair's vertex
    # the (pixel, vertex) weights as a dense matrix (each pair is one entry), then one product with the features
    W = torch.zeros(n * P * V, dtype=wts.dtype, device=wts.device).index_put((seg_s * V + vert,), wts, accumulate=True)
    W = W.reshape(n, P, V)
    out = W @ features.to(W.dtype)  # (n, P, D)
    return out.transpose(1, 2).reshape(n, -1, h, w), W.sum(-1).reshape(n, h, w)


def vertex_visibility(vertices: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, sigma: float,
                      opacity: float = 0.9, near: float = 1e-3, margin: float = 3.0) -> torch.Tensor:
    """``(N, V)`` in ``[0, 1]``: the transmittance at each vertex's own projection through the vertices more
    than ``margin * sigma`` in front of it, i.e. how much of it is seen past the rest of the object (1: in
    front, 0: hidden by a nearer part of the surface; behind the camera: 0). The vertex's own neighbours on
    its surface, slightly nearer on a slanted surface, are within the margin and do not count."""
    _check(vertices, sigma, opacity)
    uv, z, front = project(vertices, R, t, K, near)
    Kb = K.expand(R.shape[0], 3, 3) if K.ndim == 2 else K
    focal = torch.sqrt(Kb[:, 0, 0] * Kb[:, 1, 1])
    alpha = _opacity(uv, z, front, uv, focal, sigma, opacity)  # (N, V_occluder, V_point)
    # occluder j nearer than point k by more than the vertex's own ball: the surface a vertex lies on
    # does not hide it, another sheet of the object in front of it does
    nearer = z[:, :, None] < z[:, None, :] - margin * sigma
    log_keep = torch.log1p(-alpha) * nearer.to(alpha.dtype)
    return torch.exp(log_keep.sum(1)) * front.to(alpha.dtype)
