"""Triangle-mesh surfaces: area-uniform point sampling (differentiable with respect to the vertices),
the ico-sphere a deformed mesh starts from, and Laplacian smoothing.

Conventions: ``vertices`` are ``(V, 3)`` floating point (float32 or float64, CPU or CUDA) and
``faces`` ``(F, 3)`` integer indices into them; numpy arrays are accepted and converted (numpy
vertices keep their float dtype, other dtypes become float32). Outputs have the dtype and device of
``vertices``. Face normals follow the right-hand rule of the face's vertex order
``n = (v1 - v0) x (v2 - v0) / |...|``. Random draws use ``generator`` (a ``torch.Generator`` on the
device of ``vertices``), so the same generator state gives the same samples.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["sample_surface", "sample_surfaces", "triangle_areas", "ico_sphere", "mesh_edges", "laplacian_smoothing"]


def _as_mesh(vertices, faces) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(vertices, np.ndarray):
        vertices = torch.from_numpy(vertices if vertices.dtype.kind == "f" else vertices.astype(np.float32))
    if not isinstance(vertices, torch.Tensor):
        raise ValueError(f"vertices must be a torch.Tensor or numpy array, got {type(vertices).__name__}")
    if not vertices.is_floating_point():
        vertices = vertices.to(torch.float32)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {tuple(vertices.shape)}")
    if isinstance(faces, np.ndarray):
        faces = torch.from_numpy(faces)
    if not isinstance(faces, torch.Tensor):
        raise ValueError(f"faces must be a torch.Tensor or numpy array, got {type(faces).__name__}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be integer indices, got dtype {faces.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"faces must have shape (F, 3) with F >= 1, got {tuple(faces.shape)}")
    faces = faces.to(device=vertices.device, dtype=torch.long)
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= vertices.shape[0]:
        raise ValueError(f"faces index vertices 0..{vertices.shape[0] - 1}, got indices {lo}..{hi}")
    return vertices, faces


def _cross(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return torch.linalg.cross(v1 - v0, v2 - v0)


def triangle_areas(vertices, faces) -> torch.Tensor:
    """Areas ``(F,)`` of the triangles ``faces`` ``(F, 3)`` of ``vertices`` ``(V, 3)`` (differentiable)."""
    vertices, faces = _as_mesh(vertices, faces)
    return 0.5 * torch.linalg.vector_norm(_cross(vertices, faces), dim=-1)


def sample_surface(vertices, faces, n: int, generator: torch.Generator | None = None,
                   return_normals: bool = False):
    """``n`` points uniformly distributed (by area) on the mesh surface.

    Args:
        vertices: ``(V, 3)`` float tensor (or numpy array).
        faces: ``(F, 3)`` integer tensor (or numpy array); at least one face of positive area.
        n: number of points, ``>= 0``.
        generator: random source (on the device of ``vertices``); ``None`` uses torch's global one.
        return_normals: also return the unit normal of the face each point lies on.

    Returns:
        ``points`` ``(n, 3)``, or ``(points, normals)`` with ``normals`` ``(n, 3)``; dtype and device of
        ``vertices``. Faces are drawn with probability proportional to their area
        (``torch.multinomial``, with replacement) and barycentric coordinates uniformly in the
        triangle, ``(1 - sqrt(r1), sqrt(r1) (1 - r2), sqrt(r1) r2)`` for ``r1, r2 ~ U[0, 1)``. The face
        choice and the barycentric coordinates are not differentiated; the points (and normals) are
        differentiable functions of ``vertices``.
    """
    vertices, faces = _as_mesh(vertices, faces)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    n = int(n)
    cross = _cross(vertices, faces)
    double_area = torch.linalg.vector_norm(cross, dim=-1)
    weights = double_area.detach()
    if not bool(torch.isfinite(weights).all()) or float(weights.sum()) <= 0:
        raise ValueError("the mesh has no face of positive finite area to sample from")
    if n == 0:
        empty = vertices.new_zeros((0, 3))
        return (empty, empty.clone()) if return_normals else empty
    idx = torch.multinomial(weights, n, replacement=True, generator=generator)
    r = torch.rand((n, 2), generator=generator, device=vertices.device, dtype=vertices.dtype)
    s1 = r[:, :1].sqrt()
    u, v, w = 1.0 - s1, s1 * (1.0 - r[:, 1:]), s1 * r[:, 1:]
    tri = faces[idx]
    points = u * vertices[tri[:, 0]] + v * vertices[tri[:, 1]] + w * vertices[tri[:, 2]]
    if not return_normals:
        return points
    normals = cross[idx] / double_area[idx].unsqueeze(-1)
    return points, normals


def sample_surfaces(vertices: torch.Tensor, faces, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`sample_surface` for a batch of meshes that share ``faces`` ``(F, 3)``: ``vertices`` ``(B, V, 3)``
    -> points ``(B, n, 3)`` (each mesh's faces drawn by its own areas); differentiable in ``vertices``."""
    if not isinstance(vertices, torch.Tensor) or vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be a (B, V, 3) tensor, got {getattr(vertices, 'shape', type(vertices))}")
    _, faces = _as_mesh(vertices[0], faces)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    B = vertices.shape[0]
    v0, v1, v2 = vertices[:, faces[:, 0]], vertices[:, faces[:, 1]], vertices[:, faces[:, 2]]  # (B, F, 3)
    weights = torch.linalg.vector_norm(torch.linalg.cross(v1 - v0, v2 - v0), dim=-1).detach()  # (B, F)
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("the meshes have non-finite vertices")
    weights = weights + (weights.sum(-1, keepdim=True) <= 0)  # a collapsed mesh: faces drawn uniformly
    idx = torch.multinomial(weights, int(n), replacement=True, generator=generator)  # (B, n)
    r = torch.rand((B, int(n), 2), generator=generator, device=vertices.device, dtype=vertices.dtype)
    s1 = r[..., :1].sqrt()
    u, v, w = 1.0 - s1, s1 * (1.0 - r[..., 1:]), s1 * r[..., 1:]
    take = idx.unsqueeze(-1).expand(-1, -1, 3)
    return (u * torch.gather(v0, 1, take) + v * torch.gather(v1, 1, take) + w * torch.gather(v2, 1, take))


def ico_sphere(level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ico-sphere: ``vertices`` ``(V, 3)`` float64 on the unit sphere, ``faces`` ``(F, 3)`` int64 wound
    outward; ``level`` 0 is the icosahedron (12 vertices, 20 faces), each level splits every face in four
    (``V = 10 * 4**level + 2``, ``F = 20 * 4**level``), new vertices pushed onto the sphere."""
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 7:
        raise ValueError(f"level must be an integer in 0..7, got {level!r}")
    t = (1.0 + 5.0 ** 0.5) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = np.asarray(verts, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = np.asarray(faces, dtype=np.int64)
    for _ in range(level):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid = v[unique].mean(axis=1)
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = len(v) + inverse.reshape(3, -1)  # midpoint vertex of edges (01, 12, 20) of every face
        v = np.concatenate([v, mid])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = np.concatenate([np.stack([a, m[0], m[2]], 1), np.stack([b, m[1], m[0]], 1),
                            np.stack([c, m[2], m[1]], 1), np.stack([m[0], m[1], m[2]], 1)])
    return torch.from_numpy(v), torch.from_numpy(f)


def mesh_edges(faces) -> torch.Tensor:
    """The undirected edges ``(E, 2)`` int64 of ``faces`` ``(F, 3)``, each once, smaller index first."""
    f = torch.as_tensor(faces).long()
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(f.shape)}")
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(e, dim=0)


def laplacian_smoothing(vertices: torch.Tensor, faces) -> torch.Tensor:
    """Uniform Laplacian smoothing loss ``(B,)`` of meshes ``vertices`` ``(B, V, 3)`` (or ``(V, 3)`` -> a
    scalar) sharing ``faces``: the mean over vertices of ``|v_i - mean of its neighbours|`` (PyTorch3D's
    ``mesh_laplacian_smoothing(method="uniform")``, the seed's ``w_smooth`` term). Vertices on no edge
    count 0."""
    single = vertices.ndim == 2
    v = vertices[None] if single else vertices
    if v.ndim != 3 or v.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3) or (V, 3), got {tuple(vertices.shape)}")
    e = mesh_edges(faces).to(v.device)
    V = v.shape[1]
    i = torch.cat([e[:, 0], e[:, 1]])
    j = torch.cat([e[:, 1], e[:, 0]])
    deg = torch.zeros(V, dtype=v.dtype, device=v.device).index_add_(0, i, torch.ones_like(i, dtype=v.dtype))
    neighbour_sum = torch.zeros_like(v).index_add_(1, i, v[:, j])
    has = deg > 0
    lap = torch.where(has[None, :, None], v - neighbour_sum / deg.clamp_min(1)[None, :, None], torch.zeros_like(v))
    out = torch.linalg.vector_norm(lap, dim=-1).mean(dim=1)
    return out[0] if single else out
