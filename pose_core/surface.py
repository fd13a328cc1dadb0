"""Area-uniform sampling of points on triangle meshes, differentiable with respect to the vertices.

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

__all__ = ["sample_surface", "triangle_areas"]


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
