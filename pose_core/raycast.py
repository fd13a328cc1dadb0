"""Ray casting against triangle meshes, vectorised in torch (no BVH library, no embree).

Conventions, stated once:

* A mesh is ``vertices`` ``(V, 3)`` float and ``faces`` ``(F, 3)`` integer vertex indices. A face's
  **normal** is the unit vector ``(b - a) x (c - a) / |...|`` of its corners ``(a, b, c)`` in the
  order given (counter-clockwise seen from the side it points to). Zero-area faces are never hit.
* A ray is an origin ``o`` ``(3,)`` and a direction ``d`` ``(3,)`` of any non-zero length; the
  direction is normalised first, so the ray parameter ``t`` of a point ``o + t d / |d|`` is a
  **length** in the units of the vertices.
* A ray hits a face at ``t`` when ``eps < t <= max_distance`` and the point lies in the closed
  triangle, widened by a bound on the round-off of its barycentric coordinates (a few ulps of
  ``(|o| + t) / (triangle height * |cos|)``), so that a ray through a shared edge or vertex hits at
  least one of its faces (no cracks in a closed mesh). The first hit is the one of smallest ``t``;
  ties go to the lowest face index, whatever the chunking.
* Inputs may be numpy arrays or torch tensors; the computation runs in the floating dtype of the
  inputs (float32 or float64; promoted if they differ, float32 for integer-only input), on the
  device of the torch inputs (all torch inputs must share one device).

Method: each triangle is reduced to its plane ``n . p = c`` and two affine barycentric functions
``u(p) = p . a_u + b_u``, ``v(p) = p . a_v + b_v`` (the precomputed-triangle form of the
Moeller-Trumbore test, Shevtsov et al. 2007), so that a ray against a cluster of faces is one
small batched matrix product and a few elementwise operations. Faces are grouped into spatial
clusters of 32 (Morton order of their centroids); each ray tests only the clusters whose bounding
boxes it meets, nearest box first, in waves of 2, 4, 8, ... clusters, and stops once its best hit
is nearer than the next box. Rays go in chunks of at most ``chunk``, and every temporary tensor
stays under ``2**21`` elements, so memory is bounded whatever the sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["RayHits", "cast_rays"]

#: Faces per spatial cluster (bounding-box culling unit).
_CLUSTER = 32
#: Barycentric slack in units of the round-off scale (see :func:`cast_rays`); 0 would leave cracks.
_SLACK_ULPS = 8
#: Bound on the elements of the temporary tensors of one block (rays x clusters, pairs x faces).
_MAX_ELEMENTS = 1 << 21


@dataclass
class RayHits:
    """First hits of ``N`` rays (see the module docstring for the conventions).

    Attributes:
        distance: ``(N,)`` float, distance along the unit ray direction to the first hit; ``inf``
            where the ray hits nothing.
        face: ``(N,)`` int64 index of the hit face; ``-1`` where the ray hits nothing.
        normal: ``(N, 3)`` float, unit geometric normal of the hit face (orientation from the
            winding, not flipped towards the ray); ``0`` where the ray hits nothing.
    """

    distance: torch.Tensor
    face: torch.Tensor
    normal: torch.Tensor

    @property
    def hit(self) -> torch.Tensor:
        """``(N,)`` bool, whether each ray hits the mesh."""
        return self.face >= 0


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _check_shape(x: torch.Tensor, name: str, last: int) -> None:
    if x.dim() != 2 or x.shape[1] != last:
        raise ValueError(f"{name} must have shape (N, {last}), got {tuple(x.shape)}")


def _face_coefficients(tri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precomputed planes of triangles ``(F, 3, 3)``.

    Returns ``G`` ``(4, 3, F)`` and the unit normals ``(F, 3)``. For a ray ``(o, d)``,
    ``[o, 1] @ G`` is ``(n.o - c, u(o), v(o))`` and ``[d, 0] @ G`` is ``(n.d, du, dv)`` per face, with
    ``n . p = c`` the face's plane (``n`` unit) and ``u, v`` the affine barycentric coordinates of
    corners ``b`` and ``c`` in that plane; so the ray meets the plane at ``t = -(n.o - c) / n.d``,
    where its barycentrics are ``u(o) + t du`` and ``v(o) + t dv``. Degenerate faces get ``n = 0``
    and ``u = -1`` everywhere, so they never hit. Also returns ``(2, F)``: ``g = max(|a_u|, |a_v|)``
    and ``g |a|``, the scales of the round-off in ``u`` and ``v`` (see :func:`cast_rays`).
    """
    a, b, c = tri.unbind(1)
    e1, e2 = b - a, c - a
    n = torch.linalg.cross(e1, e2)
    n2 = (n * n).sum(-1)
    scale2 = torch.maximum(torch.maximum((e1 * e1).sum(-1), (e2 * e2).sum(-1)), ((e2 - e1) ** 2).sum(-1))
    good = (n2 > (64 * torch.finfo(tri.dtype).eps * scale2) ** 2) & torch.isfinite(n2)
    safe = torch.where(good, n2, torch.ones_like(n2))[:, None]
    g = good[:, None]
    zero = torch.zeros_like(n)
    unit = torch.where(g, n / safe.sqrt(), zero)
    au = torch.where(g, torch.linalg.cross(e2, n) / safe, zero)
    av = torch.where(g, torch.linalg.cross(n, e1) / safe, zero)
    minus_one = torch.full_like(n2, -1.0)
    bu = torch.where(good, -(a * au).sum(-1), minus_one)
    bv = torch.where(good, -(a * av).sum(-1), minus_one)
    rows = torch.stack((unit, au, av), 0)  # (3 kinds, F, 3 xyz)
    const = torch.stack((-(unit * a).sum(-1), bu, bv), 0)  # (3 kinds, F)
    G = torch.cat((rows.permute(2, 0, 1), const[None]), 0)  # (4, 3 kinds, F)
    g = torch.maximum(au.norm(dim=-1), av.norm(dim=-1))
    return G, unit, torch.stack((g, g * a.norm(dim=-1)))


def _clusters(tri: torch.Tensor, size: int) -> torch.Tensor:
    """Face order ``(C * size,)`` grouping faces into spatially compact clusters of ``size``: faces
    sorted by the Morton code of their centroid, cut into runs of ``size``, each run sorted by face
    index (so a first minimum within a cluster is the lowest face index); ``-1`` pads the last one."""
    F = tri.shape[0]
    cen = tri.mean(1)
    lo, hi = cen.min(0).values, cen.max(0).values
    q = ((cen - lo) / torch.clamp(hi - lo, min=torch.finfo(tri.dtype).tiny) * 1023).clamp(0, 1023).long()
    code = torch.zeros(F, dtype=torch.int64, device=tri.device)
    for bit in range(10):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    order = torch.argsort(code, stable=True)
    C = -(-F // size)
    big = torch.full((C * size - F,), F, dtype=torch.int64, device=tri.device)
    order = torch.cat((order, big)).view(C, size).sort(1).values.flatten()
    return torch.where(order < F, order, torch.full_like(order, -1))


def _box_entry(
    o: torch.Tensor, inv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tmin: float, tmax: float
) -> torch.Tensor:
    """``(n, C)`` ray parameter at which each ray ``(n, 3)`` (inverse unit directions ``inv``) enters
    box ``c`` (``lo``, ``hi`` ``(C, 3)``), clamped to ``>= 0``; ``inf`` where it misses the box within
    ``(tmin, tmax]`` (slab test)."""
    t1 = (lo[None] - o[:, None]) * inv[:, None]
    t2 = (hi[None] - o[:, None]) * inv[:, None]
    # 0 * inf = nan where a ray is parallel to a slab and starts on its plane: count as inside
    near = torch.minimum(t1, t2).nan_to_num(nan=-math.inf).amax(-1).clamp(min=0)
    far = torch.maximum(t1, t2).nan_to_num(nan=math.inf).amin(-1)
    ok = (near <= far) & (far > tmin) & (near <= tmax)
    return torch.where(ok, near, torch.full_like(near, math.inf))


def cast_rays(
    vertices: Any,
    faces: Any,
    origins: Any,
    directions: Any,
    max_distance: float = float("inf"),
    chunk: int = 4096,
    eps: float = 1e-6,
) -> RayHits:
    """First hits of rays on a triangle mesh (conventions in the module docstring).

    Args:
        vertices: ``(V, 3)`` float mesh vertices.
        faces: ``(F, 3)`` integer vertex indices.
        origins: ``(N, 3)`` ray origins.
        directions: ``(N, 3)`` ray directions, any non-zero length (normalised here).
        max_distance: farthest hit counted (inclusive), same units as the vertices.
        chunk: rays per block (fewer for large meshes, so that a block's temporaries stay under
            ``2**21`` elements each); results do not depend on it.
        eps: hits at ``t <= eps`` (at or behind the origin) are ignored, so a ray leaving a surface
            does not hit it again.

    Returns:
        :class:`RayHits` with ``distance`` ``(N,)``, ``face`` ``(N,)`` int64, ``normal`` ``(N, 3)``,
        in the computation dtype, on the inputs' device.
    """
    V = _as_tensor(vertices, "vertices")
    Fi = _as_tensor(faces, "faces")
    O = _as_tensor(origins, "origins")
    D = _as_tensor(directions, "directions")
    _check_shape(V, "vertices", 3)
    _check_shape(Fi, "faces", 3)
    _check_shape(O, "origins", 3)
    _check_shape(D, "directions", 3)
    if O.shape[0] != D.shape[0]:
        raise ValueError(f"origins and directions must have the same length, got {O.shape[0]} and {D.shape[0]}")
    if Fi.dtype.is_floating_point or Fi.dtype == torch.bool or Fi.is_complex():
        raise ValueError(f"faces must be integer indices, got dtype {Fi.dtype}")
    devices = {x.device for x in (vertices, faces, origins, directions) if isinstance(x, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"torch inputs must be on one device, got {sorted(str(d) for d in devices)}")
    device = devices.pop() if devices else torch.device("cpu")
    floats = [x.dtype for x in (V, O, D) if x.dtype.is_floating_point]
    dtype = floats[0] if floats else torch.float32
    for f in floats[1:]:
        dtype = torch.promote_types(dtype, f)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"inputs must be float32 or float64 (or integer), got {dtype}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be a positive number of rays, got {chunk}")
    max_distance = float(max_distance)
    if not max_distance > 0:
        raise ValueError(f"max_distance must be positive, got {max_distance}")
    V = V.to(device=device, dtype=dtype)
    O = O.to(device=device, dtype=dtype)
    D = D.to(device=device, dtype=dtype)
    Fi = Fi.to(device=device, dtype=torch.int64)
    N = O.shape[0]
    nf = Fi.shape[0]
    if nf and (int(Fi.min()) < 0 or int(Fi.max()) >= V.shape[0]):
        raise ValueError(f"faces index vertices 0..{V.shape[0] - 1}, got indices {int(Fi.min())}..{int(Fi.max())}")
    length = D.norm(dim=-1, keepdim=True)
    if N and not bool((length > 0).all() and torch.isfinite(length).all()):
        raise ValueError("directions must be finite and non-zero")
    D = D / length

    distance = torch.full((N,), math.inf, dtype=dtype, device=device)
    face = torch.full((N,), -1, dtype=torch.int64, device=device)
    if N == 0 or nf == 0:
        return RayHits(distance, face, torch.zeros((N, 3), dtype=dtype, device=device))

    # work relative to the mesh's box centre: smaller coordinates, better float32 conditioning
    centre = (V.min(0).values + V.max(0).values) / 2
    tri = (V - centre)[Fi]  # (F, 3, 3)
    O = O - centre
    S = _CLUSTER if nf > _CLUSTER else nf
    order = _clusters(tri, S)  # (C * S,)
    C = order.numel() // S
    real = order >= 0
    G_all, unit, scales = _face_coefficients(tri)
    pad_col = torch.zeros((4, 3, 1), dtype=dtype, device=device)
    pad_col[3, 1:] = -1.0  # a padding face: u = v = -1, never hit
    G = torch.cat((G_all, pad_col), 2)[:, :, torch.where(real, order, nf)]  # (4, 3, C*S)
    G = G.view(4, 3, C, S).permute(2, 0, 1, 3).reshape(C, 4, 3 * S).contiguous()  # (C, 4, [n|u|v] x S)
    cluster_face = order.view(C, S)
    # barycentric slack per face, s_o |o| + s_t t + s_a: a bound on the round-off of u and v (the
    # terms o.a_u + b_u and t du are each ~ |a_u| (|o| + |a|, t) large and cancel), so that a ray through
    # a shared edge or vertex hits at least one of its faces; divided by |n.d| for the error of t
    rel = _SLACK_ULPS * torch.finfo(dtype).eps
    scales = torch.cat((scales, scales.new_zeros(2, 1)), 1)[:, torch.where(real, order, nf)].view(2, C, S) * rel
    cl_tri = tri[torch.where(real, order, order[0])].view(C, S * 3, 3)
    lo, hi = cl_tri.min(1).values, cl_tri.max(1).values
    inflate = (hi - lo).amax() * 1e-3 + torch.finfo(dtype).eps * (1 + tri.abs().max())
    lo, hi = lo - inflate, hi + inflate

    tmax = min(max_distance, torch.finfo(dtype).max)
    ray_chunk = max(1, min(int(chunk), _MAX_ELEMENTS // C))
    pair_block = max(1, _MAX_ELEMENTS // (3 * S))
    big = torch.iinfo(torch.int64).max
    with torch.no_grad():
        for r0 in range(0, N, ray_chunk):
            r1 = min(N, r0 + ray_chunk)
            o, d = O[r0:r1], D[r0:r1]
            n = r1 - r0
            entry = _box_entry(o, 1.0 / d, lo, hi, eps, tmax)
            entry, cl_sorted = entry.sort(1)
            rows = torch.stack((torch.cat((o, o.new_ones(n, 1)), 1), torch.cat((d, d.new_zeros(n, 1)), 1)), 1)
            o_len = o.norm(dim=1, keepdim=True)
            best_t = torch.full((n,), math.inf, dtype=dtype, device=device)
            best_f = torch.full((n,), big, dtype=torch.int64, device=device)
            pos, width = 0, 2
            while pos < C:
                # clusters entered no later than the best hit so far may still hold a nearer (or tied) hit
                E = entry[:, pos : pos + width]
                cand = (E <= best_t[:, None]) & torch.isfinite(E)
                ray_idx, k = torch.nonzero(cand, as_tuple=True)
                if ray_idx.numel() == 0:
                    break
                cl = cl_sorted[ray_idx, pos + k]
                for p0 in range(0, ray_idx.numel(), pair_block):
                    ri, ci = ray_idx[p0 : p0 + pair_block], cl[p0 : p0 + pair_block]
                    out = torch.bmm(rows[ri], G[ci])  # (P, 2, 3S): origin and direction terms
                    t = -out[:, 0, :S] / out[:, 1, :S]
                    u = torch.addcmul(out[:, 0, S : 2 * S], t, out[:, 1, S : 2 * S])
                    v = torch.addcmul(out[:, 0, 2 * S :], t, out[:, 1, 2 * S :])
                    slack = torch.addcmul(scales[1, ci], o_len[ri] + t.abs(), scales[0, ci]) / out[:, 1, :S].abs()
                    inside = torch.minimum(torch.minimum(u, v), 1 - u - v) >= -slack
                    t = torch.where(inside & (t > eps) & (t <= tmax), t, torch.full_like(t, math.inf))
                    tb, jb = t.min(1)
                    fb = cluster_face[ci, jb]
                    wave_t = torch.full((n,), math.inf, dtype=dtype, device=device)
                    wave_t.scatter_reduce_(0, ri, tb, "amin")
                    win = (tb == wave_t[ri]) & torch.isfinite(tb)
                    wave_f = torch.full((n,), big, dtype=torch.int64, device=device)
                    wave_f.scatter_reduce_(0, ri, torch.where(win, fb, torch.full_like(fb, big)), "amin")
                    tied = torch.where(wave_t == best_t, torch.minimum(best_f, wave_f), best_f)
                    best_f = torch.where(wave_t < best_t, wave_f, tied)
                    best_t = torch.minimum(best_t, wave_t)
                pos += width
                width *= 2
            found = best_f != big
            distance[r0:r1] = best_t
            face[r0:r1] = torch.where(found, best_f, torch.full_like(best_f, -1))
    hit = face >= 0
    normal = torch.zeros((N, 3), dtype=dtype, device=device)
    normal[hit] = unit[face[hit]]
    return RayHits(distance, face, normal)
