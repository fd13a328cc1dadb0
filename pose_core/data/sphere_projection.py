"""Spherical signals of 3D shapes by ray casting (Esteves et al., "Learning SO(3) equivariant
representations with spherical CNNs", ECCV 2018), from a mesh or from a single depth image.

Definition, stated once. A shape (a triangle mesh) is first **centred** at a point ``c``, optionally
**rotated** (``x -> R (x - c)``) and, if normalised, **scaled** so that its farthest vertex from
``c`` is at distance 1. For every direction ``x`` of the equiangular grid of bandwidth ``b``
(:func:`pose_core.s2.equiangular_directions`: row ``j`` colatitude, column ``k`` longitude) a ray
starts at the point ``1 * x`` of the unit sphere and runs towards the centre (direction ``-x``) for
a length of at most 2. Six channels, ``(6, 2b, 2b)`` float32 (:data:`SIGNAL_CHANNELS`):

* ``distance``: distance from the sphere point ``x`` to the first hit, in ``[0, 2]``; 2 where the ray
  hits nothing. (Rays start a hair outside the sphere, at radius ``1 + 1e-6``, and that margin is
  subtracted, so a vertex on the unit sphere is hit at distance 0.) Geometry outside the unit
  sphere (possible only with ``normalize=False``) is ignored where a ray starts inside it.
* ``cos``: ``|cos|`` of the angle between the ray and the normal of the hit face (unsigned, so the
  winding does not matter); ``sin``: ``sqrt(1 - cos^2)``. Both 0 where nothing is hit.
* ``hull_distance``, ``hull_cos``, ``hull_sin``: the same for the convex hull of the (centred,
  rotated, scaled) vertices (``scipy.spatial.ConvexHull``).

Rotating the shape rotates the signal: with the default centre (the centre of the shape's own
axis-aligned bounding box, taken before rotating), ``project_mesh(.., rotation=R)`` at ``x`` equals
``project_mesh(..)`` at ``R^T x``. A rotation about z by a whole number ``k`` of grid columns,
``2 pi k / (2b)``, is a symmetry of the grid: its signal is the unrotated one rolled by ``k``
columns (``torch.roll(signal, k, -1)``).

Depth images follow :mod:`pose_core.pinhole` (optical camera frame x right, y down, z forward; pixel
centres at integer ``(u, v)``; depth is z in metres, 0 / NaN / inf mean no measurement) and poses
:mod:`pose_core.so3` (``x_camera = R x_object + t``). A depth image becomes a mesh by
:func:`depth_to_mesh` and is then projected like a mesh (:func:`project_depth`), centred at the
centroid of its valid points.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError

from pose_core import pinhole, s2
from pose_core.raycast import cast_rays

__all__ = [
    "SIGNAL_CHANNELS",
    "MIN_DEPTH_PIXELS",
    "project_mesh",
    "project_points_and_mesh",
    "render_depth",
    "depth_to_mesh",
    "project_depth",
    "depth_points",
]

#: Channel names of the ``(6, 2b, 2b)`` signals, in order.
SIGNAL_CHANNELS = ("distance", "cos", "sin", "hull_distance", "hull_cos", "hull_sin")

#: Ray origins lie this far outside the unit sphere (the margin is subtracted from the distances).
_MARGIN = 1e-6
#: Fewest valid depth pixels :func:`project_depth` accepts.
MIN_DEPTH_PIXELS = 10


def _array(x: Any, name: str, shape: tuple[int | None, ...], integer: bool = False) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be array-like, got {type(x).__name__}") from err
    want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
    if a.ndim != len(shape) or any(s is not None and a.shape[i] != s for i, s in enumerate(shape)):
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if integer:
        if a.dtype.kind not in "iu" and a.size:
            raise ValueError(f"{name} must hold integer indices, got dtype {a.dtype}")
        return a.astype(np.int64)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def _rotation(R: Any, name: str) -> np.ndarray:
    R = _array(R, name, (3, 3))
    if not (np.allclose(R.T @ R, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0):
        raise ValueError(f"{name} must be a rotation matrix (orthonormal, det +1), got {R.tolist()}")
    return R


def _hull_faces(points: np.ndarray) -> np.ndarray:
    """Triangles ``(F, 3)`` of the convex hull of ``points`` ``(N, 3)`` (joggled when the points are
    flat or otherwise degenerate; empty when there is no hull at all)."""
    if len(points) < 4:
        return np.zeros((0, 3), dtype=np.int64)
    try:
        return ConvexHull(points).simplices.astype(np.int64)
    except QhullError:
        try:
            return ConvexHull(points, qhull_options="QJ").simplices.astype(np.int64)
        except QhullError:
            return np.zeros((0, 3), dtype=np.int64)


def _cast_signals(vertices: np.ndarray, faces: np.ndarray, directions: torch.Tensor) -> torch.Tensor:
    """``(3, M)`` float64 distance, |cos|, sin of rays from ``(1 + margin) x`` towards the centre."""
    x = directions
    hits = cast_rays(
        torch.from_numpy(vertices), torch.from_numpy(faces), x * (1 + _MARGIN), -x, max_distance=2 + _MARGIN, eps=0.0
    )
    dist = torch.where(hits.hit, (hits.distance - _MARGIN).clamp(0, 2), torch.full_like(hits.distance, 2.0))
    cos = (hits.normal * x).sum(-1).abs().clamp(max=1)  # normal is 0 where nothing is hit
    sin = torch.where(hits.hit, (1 - cos * cos).clamp(min=0).sqrt(), torch.zeros_like(cos))
    return torch.stack((dist, cos, sin))


def project_points_and_mesh(
    vertices: np.ndarray, faces: np.ndarray, hull_points: np.ndarray, bandwidth: int
) -> torch.Tensor:
    """The six channels for an already centred, rotated and scaled mesh ``(V, 3)``/``(F, 3)``,
    with the hull channels from the convex hull of ``hull_points`` ``(P, 3)``; ``(6, 2b, 2b)`` float32."""
    x = s2.equiangular_directions(bandwidth).reshape(-1, 3)
    n = 2 * int(bandwidth)
    shape = _cast_signals(np.ascontiguousarray(vertices, dtype=np.float64), np.asarray(faces, np.int64), x)
    hull_points = np.ascontiguousarray(hull_points, dtype=np.float64)
    hull = _cast_signals(hull_points, _hull_faces(hull_points), x)
    return torch.cat((shape, hull)).reshape(6, n, n).to(torch.float32)


def _place(V: np.ndarray, center: np.ndarray, R: np.ndarray | None, normalize: bool) -> np.ndarray:
    """``R (V - center) / scale``, scale the largest ``|V - center|`` (1 without ``normalize``)."""
    V = V - center
    if normalize:
        scale = np.linalg.norm(V, axis=1).max()
        if not scale > 0:
            raise ValueError("cannot normalise a shape whose points all lie at the centre")
        V = V / scale
    return V if R is None else V @ R.T


def project_mesh(
    vertices: Any,
    faces: Any,
    bandwidth: int,
    rotation: Any = None,
    center: Any = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Spherical signals ``(6, 2b, 2b)`` float32 of a mesh (channels and definition in the module docstring).

    Args:
        vertices: ``(V, 3)`` mesh vertices (numpy or torch, any float dtype; computed in float64).
        faces: ``(F, 3)`` integer vertex indices.
        bandwidth: ``b`` of the equiangular grid.
        rotation: ``(3, 3)`` rotation applied after centring, ``x -> R (x - center)``.
        center: ``(3,)`` centre; default the centre of the vertices' axis-aligned bounding box
            (before rotation: the object's own centre).
        normalize: scale so that the farthest vertex from the centre is at distance 1; with
            ``False`` the mesh keeps its units (and should fit in the unit sphere).
    """
    V = _array(vertices, "vertices", (None, 3))
    F = _array(faces, "faces", (None, 3), integer=True)
    if len(V) == 0:
        raise ValueError("vertices must not be empty")
    if F.size and (F.min() < 0 or F.max() >= len(V)):
        raise ValueError(f"faces index vertices 0..{len(V) - 1}, got indices {F.min()}..{F.max()}")
    c = (V.min(0) + V.max(0)) / 2 if center is None else _array(center, "center", (3,))
    V = _place(V, c, None if rotation is None else _rotation(rotation, "rotation"), normalize)
    return project_points_and_mesh(V, F, V, bandwidth)


def render_depth(
    vertices: Any, faces: Any, K: Any, rotation: Any, translation: Any, width: int, height: int
) -> np.ndarray:
    """Depth image ``(H, W)`` float32 (metres along the optical axis z; 0 where nothing is hit) of a
    mesh placed at ``x_cam = R x_obj + t``, one ray per pixel centre from the camera origin.

    Args:
        vertices: ``(V, 3)`` object-frame vertices (m). faces: ``(F, 3)`` integer indices.
        K: ``(3, 3)`` intrinsics (:func:`pose_core.pinhole.intrinsics_matrix`).
        rotation: ``(3, 3)`` pose rotation; translation: ``(3,)`` metres, camera frame.
        width, height: image size in pixels.
    """
    V = _array(vertices, "vertices", (None, 3))
    F = _array(faces, "faces", (None, 3), integer=True)
    K = pinhole.intrinsics_matrix(K)
    R = _rotation(rotation, "rotation")
    t = _array(translation, "translation", (3,))
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        raise ValueError(f"width and height must be positive integers, got {width!r} and {height!r}")
    W, H = int(width), int(height)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    d = pinhole.pixel_ray(K, u, v).reshape(-1, 3)
    hits = cast_rays(V @ R.T + t, F, np.zeros_like(d), d)
    depth = np.where(hits.hit.numpy(), hits.distance.numpy() * d[:, 2], 0.0)
    return depth.reshape(H, W).astype(np.float32)


def _depth_image(depth: Any) -> np.ndarray:
    if isinstance(depth, torch.Tensor):
        depth = depth.detach().cpu().numpy()
    depth = np.asarray(depth)
    if depth.ndim != 2 or min(depth.shape) < 2:
        raise ValueError(f"depth must be an image (H, W) with H, W >= 2, got shape {depth.shape}")
    if depth.dtype.kind != "f":
        raise ValueError(
            f"depth must be floating point metres, got dtype {depth.dtype} (convert 16UC1 millimetres: depth / 1000.0)"
        )
    return depth.astype(np.float64)


def _mesh_of_depth(
    depth: np.ndarray, K: np.ndarray, valid: np.ndarray, max_jump: float
) -> tuple[np.ndarray, np.ndarray]:
    H, W = depth.shape
    index = np.full((H, W), -1, dtype=np.int64)
    index[valid] = np.arange(int(valid.sum()))
    v, u = np.nonzero(valid)
    points = pinhole.backproject(K, u, v, depth[v, u])
    z = np.where(valid, depth, np.nan)
    a, b = index[:-1, :-1], index[:-1, 1:]  # (v, u), (v, u + 1)
    c, d = index[1:, :-1], index[1:, 1:]  # (v + 1, u), (v + 1, u + 1)
    za, zb, zc, zd = z[:-1, :-1], z[:-1, 1:], z[1:, :-1], z[1:, 1:]
    faces = []
    # wound so that the normals of a fronto-parallel patch point at the camera (-z)
    for tri, zs in (((a, c, b), (za, zc, zb)), ((b, c, d), (zb, zc, zd))):
        lo = np.minimum(np.minimum(zs[0], zs[1]), zs[2])
        hi = np.maximum(np.maximum(zs[0], zs[1]), zs[2])
        with np.errstate(invalid="ignore"):
            keep = (tri[0] >= 0) & (tri[1] >= 0) & (tri[2] >= 0) & (hi - lo <= max_jump * lo)
        faces.append(np.stack([t[keep] for t in tri], 1))
    return points, np.concatenate(faces).astype(np.int64)


def depth_to_mesh(depth: Any, K: Any, max_jump: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Triangle mesh of a depth image ``(H, W)`` (metres; 0 / NaN / inf invalid), camera frame.

    Every valid pixel becomes a vertex (row-major order of the valid pixels), at
    ``depth * K^-1 (u, v, 1)``; every 2x2 pixel block gives up to two triangles, ``(v,u) (v+1,u)
    (v,u+1)`` and ``(v,u+1) (v+1,u) (v+1,u+1)``, each kept when its three corners are valid and
    their depths differ by at most ``max_jump`` relative, ``max z - min z <= max_jump * min z``
    (so no triangle spans a depth discontinuity). Returns vertices ``(V, 3)`` float64 and faces
    ``(F, 3)`` int64; normals of a surface facing the camera point towards it.
    """
    depth = _depth_image(depth)
    K = pinhole.intrinsics_matrix(K)
    if not max_jump >= 0:
        raise ValueError(f"max_jump must be >= 0, got {max_jump}")
    valid = np.isfinite(depth) & (depth > 0)
    return _mesh_of_depth(depth, K, valid, float(max_jump))


def _depth_cloud(depth: Any, K: Any, frame_rotation: Any, mask: Any, max_jump: float) -> tuple[np.ndarray, np.ndarray]:
    """The depth mesh of the valid pixels (vertices rotated, centred at their centroid, farthest at 1) and its
    faces: what :func:`project_depth` and :func:`depth_points` see."""
    depth = _depth_image(depth)
    K = pinhole.intrinsics_matrix(K)
    valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask)
        if mask.shape != depth.shape or mask.dtype != np.bool_:
            raise ValueError(f"mask must be a bool image of shape {depth.shape}, got {mask.dtype} {mask.shape}")
        valid &= mask
    count = int(valid.sum())
    if count < MIN_DEPTH_PIXELS:
        raise ValueError(f"depth has {count} valid pixels (finite, > 0, in mask); at least {MIN_DEPTH_PIXELS} needed")
    if not max_jump >= 0:
        raise ValueError(f"max_jump must be >= 0, got {max_jump}")
    points, faces = _mesh_of_depth(depth, K, valid, float(max_jump))
    R = None if frame_rotation is None else _rotation(frame_rotation, "frame_rotation")
    return _place(points, points.mean(0), R, normalize=True), faces  # the centroid commutes with R


def depth_points(depth: Any, K: Any, frame_rotation: Any = None, mask: Any = None) -> np.ndarray:
    """The valid pixels of ``depth`` ``(H, W)`` as points ``(N, 3)`` float64 in the frame of
    :func:`project_depth` (rotated by ``frame_rotation``, centred at their centroid, farthest at 1):
    a point-set model's view of the same crop. Same checks and errors as :func:`project_depth`."""
    return _depth_cloud(depth, K, frame_rotation, mask, 0.0)[0]


def project_depth(
    depth: Any,
    K: Any,
    bandwidth: int,
    frame_rotation: Any = None,
    mask: Any = None,
    max_jump: float = 0.05,
) -> torch.Tensor:
    """Spherical signals ``(6, 2b, 2b)`` float32 of what a depth camera sees of an object.

    The valid pixels of ``depth`` ``(H, W)`` (finite, > 0, and ``mask`` ``(H, W)`` bool where given)
    become a mesh (:func:`depth_to_mesh` with ``max_jump``) and a point set; both are rotated by
    ``frame_rotation`` ``(3, 3)`` (e.g. camera -> gravity-aligned frame, so that a z-up object stays
    z-up), centred at the centroid of the points and scaled so that the farthest point is at 1.
    Channels 0-2 are cast onto the depth mesh, 3-5 onto the convex hull of the points (module
    docstring). Raises :class:`ValueError` with fewer than :data:`MIN_DEPTH_PIXELS` valid pixels.
    """
    points, faces = _depth_cloud(depth, K, frame_rotation, mask, max_jump)
    return project_points_and_mesh(points, faces, points, bandwidth)
