"""SYMSOL shapes and mesh objects, with their sets of equivalent rotations.

**Equivalent rotations.** A shape carries its symmetry rotations ``S_k`` ``(K, 3, 3)`` float64,
``S_0 = I``, acting in the *object* frame: ``S_k`` maps the shape onto itself, so the poses
``R @ S_k`` (pose rotations as in :mod:`pose_core.so3`) all render the same image as ``R``. The
equivalent set of a ground-truth pose ``R`` is ``{R @ S_k}``, whose element 0 is ``R`` itself.

SYMSOL I (exact groups, object frames as in the IPDF code, ``compute_symsol_symmetries``):
``tet`` 12 (its vertices on alternate cube corners turned 45 degrees about z), ``cube`` 24 (faces
normal to the axes), ``icosa`` 60, ``cone`` 360 (1 degree steps about z; IPDF uses
``linspace(0, 2 pi, 360)``, i.e. steps of 360/359 degrees with the identity twice; we use exact 1
degree steps), ``cyl`` 720 (the same 360 turns about z, each also composed with the flip
``Rx(pi)``). Shapes are uniformly coloured, fit in the unit sphere, and are tessellated so that
every listed symmetry maps the mesh onto itself (the cone and cylinder have 360 segments).

SYMSOL II (marked shapes; TFDS ``symmetric_solids`` describes them as "a tetrahedron with one
red-colored face, a cylinder with an off-center dot, and a sphere with an X capped by a dot"):

* ``tetX``: the tetrahedron with one red face (a uniformly red face, as in SYMSOL, not a drawn X;
  the name is SYMSOL's).
* ``cylO``: the cylinder with a red dot on its side, off the mid-height so the flip is broken too.
* ``sphereX``: a sphere with a red X, one of whose arms is capped by a dot (no symmetry left).

Their symmetries ``S_k`` are those of the unmarked shape (12, 720, and for the sphere a discrete
set covering SO(3): see :func:`sphere_rotation_set`), and the equivalent set of ``R`` keeps the
``S_k`` under which the image is unchanged: ``S_k`` maps the mark onto itself, or the mark is
fully hidden (every sample point of it faces away from the camera; the shapes are convex, so that
is visibility) at ``R`` and stays fully hidden at ``R @ S_k``. So with the mark visible the set is
the mark's stabiliser (tetX 3, cylO 1, sphereX 1); with it hidden it is larger (tetX 3 per hidden
face; cylO and sphereX many). Visibility uses the perspective camera at ``distance``.
The real SYMSOL II stores only the rendering rotation per image (no equivalent set); these sets
are ours, and match the real images only in kind (colours, sizes and mark shapes differ).
"""

from __future__ import annotations

import functools
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pose_core import so3
from pose_core.data.render import Camera, Mesh

__all__ = [
    "SHAPE_NAMES",
    "SYMSOL_I",
    "SYMSOL_II",
    "DEFAULT_COLOR",
    "MARK_COLOR",
    "Shape",
    "MarkedShape",
    "get_shape",
    "make_shape",
    "symmetry_group_of_points",
    "sphere_rotation_set",
    "load_obj",
    "load_urdf",
    "load_trimesh",
    "mesh_shape",
    "symmetry_rotations",
    "SYMMETRY_SPECS",
]

#: SYMSOL's shape names, in the order of its ``label_shape`` index.
SHAPE_NAMES: tuple[str, ...] = ("tet", "cube", "icosa", "cone", "cyl", "tetX", "cylO", "sphereX")
SYMSOL_I: tuple[str, ...] = SHAPE_NAMES[:5]
SYMSOL_II: tuple[str, ...] = SHAPE_NAMES[5:]
#: Uniform surface colour of the SYMSOL shapes (linear RGB in [0, 1]).
DEFAULT_COLOR: tuple[float, float, float] = (0.85, 0.6, 0.3)
#: Colour of the SYMSOL II marks.
MARK_COLOR: tuple[float, float, float] = (0.8, 0.05, 0.05)

_SEGMENTS = 360  # cone / cylinder tessellation: one segment per degree of the discretised symmetry
_DEFAULT_DISTANCE = Camera().distance


def _rot(axis: Sequence[float], angle: float) -> np.ndarray:
    """``(3, 3)`` float64 rotation by ``angle`` about the unit ``axis`` (via :mod:`pose_core.so3`)."""
    omega = torch.tensor(axis, dtype=torch.float64) * angle
    return so3.rotvec_to_matrix(omega).numpy()


@dataclass(eq=False)
class Shape:
    """A mesh with its symmetry rotations ``symmetries`` ``(K, 3, 3)`` float64, ``symmetries[0] = I``."""

    name: str
    mesh: Mesh
    symmetries: np.ndarray = field(default_factory=lambda: np.eye(3)[None])

    def __post_init__(self) -> None:
        s = np.asarray(self.symmetries, dtype=np.float64)
        if s.ndim != 3 or s.shape[1:] != (3, 3) or len(s) == 0:
            raise ValueError(f"symmetries must have shape (K, 3, 3), K >= 1, got {s.shape}")
        if not np.allclose(s[0], np.eye(3), atol=1e-9):
            raise ValueError("symmetries[0] must be the identity")
        self.symmetries = s

    def equivalent_rotations(self, rotation: np.ndarray, distance: float = _DEFAULT_DISTANCE) -> np.ndarray:
        """Poses ``(K', 3, 3)`` float64 rendering the same image as ``rotation`` ``(3, 3)``; element 0
        is ``rotation``. ``distance`` (camera to object origin) matters for marked shapes only."""
        R = _as_rotation(rotation)
        return R @ self.symmetries


@dataclass(eq=False)
class MarkedShape(Shape):
    """A :class:`Shape` whose mark (sample points ``mark_points`` ``(M, 3)`` on its outline, with
    outward surface normals ``mark_normals`` ``(M, 3)``) breaks the symmetry as the module says."""

    mark_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    mark_normals: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mark_points = np.asarray(self.mark_points, dtype=np.float64)
        self.mark_normals = np.asarray(self.mark_normals, dtype=np.float64)
        m = self.mark_points.shape
        if len(m) != 2 or m[1] != 3 or m[0] == 0 or self.mark_normals.shape != m:
            raise ValueError(f"mark_points and mark_normals must have the same shape (M, 3), got {m}, "
                             f"{self.mark_normals.shape}")
        # Stabiliser of the mark: S maps every mark point onto a mark point.
        moved = np.einsum("kij,mj->kmi", self.symmetries, self.mark_points)  # (K, M, 3)
        d = np.linalg.norm(moved[:, :, None, :] - self.mark_points[None, None], axis=-1).min(-1)  # (K, M)
        self.stabilizer = d.max(-1) < 1e-6  # (K,) bool

    def mark_hidden(self, rotations: np.ndarray, distance: float = _DEFAULT_DISTANCE) -> np.ndarray:
        """``(...)`` bool: the whole mark faces away from the camera at poses ``(..., 3, 3)``."""
        R = np.asarray(rotations, dtype=np.float64)
        p = np.einsum("...ij,mj->...mi", R, self.mark_points)
        p[..., 2] += distance
        n = np.einsum("...ij,mj->...mi", R, self.mark_normals)
        return ((n * p).sum(-1) >= 0.0).all(-1)

    def equivalent_rotations(self, rotation: np.ndarray, distance: float = _DEFAULT_DISTANCE) -> np.ndarray:
        R = _as_rotation(rotation)
        cand = R @ self.symmetries  # (K, 3, 3); cand[0] = R
        hidden = self.mark_hidden(cand, distance)  # (K,)
        keep = self.stabilizer | (hidden & hidden[0])
        return cand[keep]


def _as_rotation(rotation: np.ndarray) -> np.ndarray:
    R = np.asarray(rotation.detach().cpu().numpy() if hasattr(rotation, "detach") else rotation, np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"rotation must have shape (3, 3), got {R.shape}")
    return R


# ----------------------------------------------------------------------------- symmetry groups


def _frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    e1 = a / np.linalg.norm(a)
    e2 = b - (b @ e1) * e1
    e2 /= np.linalg.norm(e2)
    return np.stack((e1, e2, np.cross(e1, e2)), axis=1)  # columns


def symmetry_group_of_points(points: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """All rotations ``(K, 3, 3)`` float64 mapping the point set ``points`` ``(N, 3)`` (centred on the
    origin, not all collinear) onto itself; the identity first, then in a deterministic order."""
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {P.shape}")
    norms = np.linalg.norm(P, axis=1)
    i0 = int(np.argmax(norms))
    cross = np.linalg.norm(np.cross(P[i0], P), axis=1)
    if cross.max() < tol:
        raise ValueError("points are collinear: the symmetry group is infinite")
    i1 = int(np.argmax(cross))
    F0 = _frame(P[i0], P[i1])
    dot01 = P[i0] @ P[i1]
    found = [np.eye(3)]
    for a in np.flatnonzero(np.abs(norms - norms[i0]) < tol):
        for b in np.flatnonzero(np.abs(norms - norms[i1]) < tol):
            if a == b or abs(P[a] @ P[b] - dot01) > tol or np.linalg.norm(np.cross(P[a], P[b])) < tol:
                continue
            Q = _frame(P[a], P[b]) @ F0.T
            moved = P @ Q.T
            if np.linalg.norm(moved[:, None] - P[None], axis=-1).min(1).max() > tol:
                continue
            if all(np.abs(Q - G).max() > tol for G in found):
                found.append(Q)
    return np.stack(found)


def _turns_about_z(n: int) -> np.ndarray:
    return np.stack([_rot((0.0, 0.0, 1.0), 2 * math.pi * k / n) for k in range(n)])


def sphere_rotation_set(
    mark_dir: Sequence[float] = (1.0, 0.0, 0.0), n_dirs: int = 256, n_spins: int = 18
) -> np.ndarray:
    """A deterministic, roughly uniform discrete set of rotations ``(1 + n_dirs * n_spins, 3, 3)``
    covering SO(3), used as the sphere's "symmetries": the identity, then for each of ``n_dirs``
    Fibonacci-sphere directions ``u`` and ``n_spins`` angles ``psi``, ``A_u @ Rot(mark_dir, psi)``
    with ``A_u`` the shortest rotation taking ``mark_dir`` to ``u``. Not a group."""
    m = np.asarray(mark_dir, dtype=np.float64)
    m /= np.linalg.norm(m)
    out = [np.eye(3)]
    golden = math.pi * (3.0 - math.sqrt(5.0))
    spins = [_rot(m, 2 * math.pi * j / n_spins) for j in range(n_spins)]
    for i in range(n_dirs):
        z = 1.0 - 2.0 * (i + 0.5) / n_dirs
        r = math.sqrt(max(0.0, 1.0 - z * z))
        u = np.array([r * math.cos(golden * i), r * math.sin(golden * i), z])
        # Fibonacci directions in the frame where mark_dir is +z.
        u = _frame_z_to(m) @ u
        axis = np.cross(m, u)
        s, c = np.linalg.norm(axis), float(m @ u)
        A = _rot(axis / s, math.atan2(s, c)) if s > 1e-12 else (np.eye(3) if c > 0 else _rot(_perp(m), math.pi))
        out.extend(A @ sp for sp in spins)
    return np.stack(out)


def _perp(m: np.ndarray) -> np.ndarray:
    a = np.array([1.0, 0.0, 0.0]) if abs(m[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    p = np.cross(m, a)
    return p / np.linalg.norm(p)


def _frame_z_to(m: np.ndarray) -> np.ndarray:
    """A rotation ``(3, 3)`` whose third column is ``m``."""
    x = _perp(m)
    return np.stack((x, np.cross(m, x), m), axis=1)


# ----------------------------------------------------------------------------- geometry


def _convex_polyhedron_faces(v: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Outward (counter-clockwise) triangles ``(T, 3)`` of the convex hull of a few points ``(N, 3)``,
    coplanar faces fan-triangulated (brute force, for the Platonic solids)."""
    n = len(v)
    planes: dict[tuple[float, ...], np.ndarray] = {}
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                nrm = np.cross(v[j] - v[i], v[k] - v[i])
                if np.linalg.norm(nrm) < tol:
                    continue
                nrm /= np.linalg.norm(nrm)
                d = (v - v[i]) @ nrm
                if d.max() <= tol:
                    pass
                elif d.min() >= -tol:
                    nrm = -nrm
                else:
                    continue
                key = tuple(np.round(nrm, 6))
                planes[key] = nrm
    faces = []
    for nrm in planes.values():
        offset = v @ nrm
        idx = np.flatnonzero(np.abs(offset - offset.max()) < 1e-6)
        c = v[idx].mean(0)
        u = v[idx[0]] - c
        u /= np.linalg.norm(u)
        w = np.cross(nrm, u)
        order = idx[np.argsort(np.arctan2((v[idx] - c) @ w, (v[idx] - c) @ u))]
        faces.extend([order[0], order[t], order[t + 1]] for t in range(1, len(order) - 1))
    return np.array(sorted(faces), dtype=np.int64)


def _tet_vertices() -> np.ndarray:
    cube_frame = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) / math.sqrt(3)
    return cube_frame @ _rot((0.0, 0.0, 1.0), math.pi / 4).T


def _cube_vertices() -> np.ndarray:
    return np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64) / math.sqrt(3)


def _icosa_vertices() -> np.ndarray:
    phi = (1 + math.sqrt(5)) / 2
    a, b = np.array([1.0, phi]) / math.sqrt(1 + phi**2)
    return np.array([[-a, b, 0], [a, b, 0], [-a, -b, 0], [a, -b, 0], [0, -a, b], [0, a, b],
                     [0, -a, -b], [0, a, -b], [b, 0, -a], [b, 0, a], [-b, 0, -a], [-b, 0, a]])


def _solid_of_revolution(
    profile: Sequence[tuple[float, float]], normals_2d: Sequence[tuple[float, float]], color: Sequence[float],
    segments: int = _SEGMENTS, uv_sides: Sequence[bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Triangle soup of the surface swept by the polyline ``profile`` of ``(radius, z)`` about z.

    ``normals_2d[i]`` ``(radial, z)`` is the smooth normal of profile segment ``i`` (used at both ends).
    Segment angles are ``-pi + 2 pi k / segments``; ``uv_sides[i]`` marks segments whose vertices get
    cylindrical UVs ``(u, v) = ((theta + pi) / 2 pi, (z - z_min) / (z_max - z_min))``.
    Returns positions, normals, colours ``(3T, 3)``, uvs ``(3T, 2)``, textured ``(3T,)``.
    """
    th = -math.pi + 2 * math.pi * np.arange(segments + 1) / segments
    c, s = np.cos(th), np.sin(th)
    z_all = [z for _, z in profile]
    zmin, zmax = min(z_all), max(z_all)
    pos, nrm, uv, tx = [], [], [], []
    for i in range(len(profile) - 1):
        (r0, z0), (r1, z1) = profile[i], profile[i + 1]
        nr, nz = normals_2d[i]
        for k in range(segments):
            quad = []
            for kk, (r, z) in ((k, (r0, z0)), (k + 1, (r0, z0)), (k + 1, (r1, z1)), (k, (r1, z1))):
                quad.append(((r * c[kk], r * s[kk], z), (nr * c[kk], nr * s[kk], nz),
                             (kk / segments, (z - zmin) / (zmax - zmin))))
            tris = []
            if r1 == 0.0:  # apex on the axis: one triangle; apex normal at the segment's mid-angle
                mid = 0.5 * (th[k] + th[k + 1])
                apex = ((0.0, 0.0, z1), (nr * math.cos(mid), nr * math.sin(mid), nz), ((k + 0.5) / segments, 1.0))
                tris.append((quad[0], quad[1], apex))
            elif r0 == 0.0:
                mid = 0.5 * (th[k] + th[k + 1])
                apex = ((0.0, 0.0, z0), (nr * math.cos(mid), nr * math.sin(mid), nz), ((k + 0.5) / segments, 0.0))
                tris.append((apex, quad[2], quad[3]))
            else:
                tris.extend([(quad[0], quad[1], quad[2]), (quad[0], quad[2], quad[3])])
            for tri in tris:
                # orient counter-clockwise seen from outside
                a, b, cc = (np.array(t[0]) for t in tri)
                if np.cross(b - a, cc - a) @ np.array(tri[0][1]) < 0:
                    tri = (tri[0], tri[2], tri[1])
                for p, n, t in tri:
                    pos.append(p)
                    nrm.append(n)
                    uv.append(t)
                    tx.append(bool(uv_sides[i]) if uv_sides is not None else False)
    P = np.array(pos)
    return P, np.array(nrm), np.broadcast_to(np.asarray(color, float), P.shape), np.array(uv), np.array(tx)


def _uv_sphere(color: Sequence[float], n_lon: int = 96, n_lat: int = 48) -> Mesh:
    lon = -math.pi + 2 * math.pi * np.arange(n_lon + 1) / n_lon
    lat = -math.pi / 2 + math.pi * np.arange(n_lat + 1) / n_lat
    L, B = np.meshgrid(lon, lat, indexing="xy")  # (n_lat + 1, n_lon + 1)
    V = np.stack((np.cos(B) * np.cos(L), np.cos(B) * np.sin(L), np.sin(B)), -1)
    UV = np.stack(((L + math.pi) / (2 * math.pi), (B + math.pi / 2) / math.pi), -1)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = np.concatenate((np.stack((a, b, c), -1).reshape(-1, 3), np.stack((a, c, d), -1).reshape(-1, 3)))
    area = np.linalg.norm(np.cross(V.reshape(-1, 3)[faces[:, 1]] - V.reshape(-1, 3)[faces[:, 0]],
                                   V.reshape(-1, 3)[faces[:, 2]] - V.reshape(-1, 3)[faces[:, 0]]), axis=1)
    faces = faces[area > 1e-12]  # drop the degenerate triangles at the poles
    v, uv = V.reshape(-1, 3), UV.reshape(-1, 2)
    pos = v[faces].reshape(-1, 3)
    return Mesh(pos, pos.copy(), np.broadcast_to(np.asarray(color, float), pos.shape), uvs=uv[faces].reshape(-1, 2),
                texture=np.full((4, 4, 3), 255, np.uint8), name="sphere")


def _paint(mask: np.ndarray, base: Sequence[float], mark: Sequence[float]) -> np.ndarray:
    """``(H, W, 3)`` uint8 texture: ``base`` colour blended to ``mark`` by coverage ``mask`` in [0, 1]."""
    b, m = np.asarray(base, float), np.asarray(mark, float)
    col = b + mask[..., None] * (m - b)
    return np.clip(np.rint(col * 255), 0, 255).astype(np.uint8)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


# Mark geometry of sphereX, in the tangent plane (a, b) = (y, z) at the mark centre +x.
_X_ARM, _X_HALF_WIDTH, _X_DOT_AT, _X_DOT_RADIUS = 0.3, 0.035, 0.4, 0.06
_X_DIRS = np.array([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)
# cylO's dot: angle 0 (+x), height and radius (arc length) on the side.
_CYL_RADIUS, _CYL_HALF_HEIGHT, _DOT_Z, _DOT_RADIUS = 0.6, 0.8, 0.35, 0.12


def _sphere_x_coverage(ab: np.ndarray, front: np.ndarray, texel: float) -> np.ndarray:
    d = np.minimum(
        _segment_distance(ab, -_X_ARM * _X_DIRS[0], _X_ARM * _X_DIRS[0]),
        _segment_distance(ab, -_X_ARM * _X_DIRS[1], _X_ARM * _X_DIRS[1]),
    ) - _X_HALF_WIDTH
    d = np.minimum(d, np.linalg.norm(ab - _X_DOT_AT * _X_DIRS[0], axis=-1) - _X_DOT_RADIUS)
    return np.clip(0.5 - d / texel, 0.0, 1.0) * front


def _sphere_x_outline() -> np.ndarray:
    """Points ``(M, 2)`` in the tangent plane on the outline of the X and the dot (slightly enlarged)."""
    pts = []
    w = _X_HALF_WIDTH * 1.1
    for d in _X_DIRS:
        nrm = np.array([-d[1], d[0]])
        for t in np.linspace(-_X_ARM - w, _X_ARM + w, 9):
            pts.extend([t * d + w * nrm, t * d - w * nrm])
    ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    circle = np.stack((np.cos(ang), np.sin(ang)), -1)
    pts.extend(_X_DOT_AT * _X_DIRS[0] + 1.1 * _X_DOT_RADIUS * circle)
    return np.array(pts)


def _make_sphere_x(color: Sequence[float]) -> MarkedShape:
    mesh = _uv_sphere((1.0, 1.0, 1.0))
    H, W = 512, 1024
    v = 1.0 - (np.arange(H) + 0.5) / H
    u = (np.arange(W) + 0.5) / W
    lat, lon = np.meshgrid(math.pi * v - math.pi / 2, 2 * math.pi * u - math.pi, indexing="ij")
    p = np.stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)), -1)
    mask = _sphere_x_coverage(p[..., 1:], (p[..., 0] > 0).astype(float), texel=math.pi / H)
    mesh.texture = _paint(mask, color, MARK_COLOR)
    ab = _sphere_x_outline()
    pts = np.column_stack((np.sqrt(1 - (ab**2).sum(1)), ab))
    return MarkedShape("sphereX", mesh, sphere_rotation_set((1.0, 0.0, 0.0)), mark_points=pts, mark_normals=pts)


def _cylinder_profile() -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    r, h = _CYL_RADIUS, _CYL_HALF_HEIGHT
    return [(0.0, -h), (r, -h), (r, h), (0.0, h)], [(0.0, -1.0), (1.0, 0.0), (0.0, 1.0)]


def _make_cyl(color: Sequence[float], marked: bool) -> Shape:
    prof, nrm = _cylinder_profile()
    pos, n, col, uv, tx = _solid_of_revolution(prof, nrm, color if not marked else (1.0, 1.0, 1.0),
                                               uv_sides=[False, True, False])
    syms = np.stack([T @ F for T in _turns_about_z(_SEGMENTS) for F in (np.eye(3), _rot((1.0, 0.0, 0.0), math.pi))])
    if not marked:
        return Shape("cyl", Mesh(pos, n, col, name="cyl"), syms)
    col = np.where(tx[:, None], 1.0, np.asarray(color, float)[None])
    r, h = _CYL_RADIUS, _CYL_HALF_HEIGHT
    H, W = 512, 1536  # texture over the side: u = (theta + pi) / 2 pi, v = (z + h) / 2h
    z = h - 2 * h * (np.arange(H) + 0.5) / H
    s = r * (2 * math.pi * (np.arange(W) + 0.5) / W - math.pi)  # arc length from theta = 0
    Z, S = np.meshgrid(z, s, indexing="ij")
    d = np.hypot(S, Z - _DOT_Z) - _DOT_RADIUS
    texel = 2 * math.pi * r / W
    tex = _paint(np.clip(0.5 - d / texel, 0.0, 1.0), color, MARK_COLOR)
    mesh = Mesh(pos, n, col, uvs=uv, texture=tex, textured=tx, name="cylO")
    ang = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    rho = 1.1 * _DOT_RADIUS
    phi = np.concatenate(([0.0], rho * np.cos(ang) / r))
    zz = np.concatenate(([_DOT_Z], _DOT_Z + rho * np.sin(ang)))
    pts = np.stack((r * np.cos(phi), r * np.sin(phi), zz), -1)
    normals = np.stack((np.cos(phi), np.sin(phi), np.zeros_like(phi)), -1)
    return MarkedShape("cylO", mesh, syms, mark_points=pts, mark_normals=normals)


def _make_cone(color: Sequence[float]) -> Shape:
    r, z0, z1 = 0.8, -0.6, 1.0
    side = np.array([z1 - z0, r]) / math.hypot(z1 - z0, r)  # (radial, z) normal of the slanted side
    pos, n, col, _, _ = _solid_of_revolution([(0.0, z0), (r, z0), (0.0, z1)], [(0.0, -1.0), tuple(side)], color)
    return Shape("cone", Mesh(pos, n, col, name="cone"), _turns_about_z(_SEGMENTS))


def _make_polyhedron(name: str, v: np.ndarray, color: Sequence[float]) -> Shape:
    faces = _convex_polyhedron_faces(v)
    return Shape(name, Mesh.from_indexed(v, faces, color, name=name), symmetry_group_of_points(v))


def _make_tet_x(color: Sequence[float]) -> MarkedShape:
    v = _tet_vertices()
    faces = _convex_polyhedron_faces(v)
    marked = int(np.flatnonzero((faces != 0).all(1))[0])  # the face opposite vertex 0
    cols = np.tile(np.asarray(color, float), (len(faces), 1))
    cols[marked] = MARK_COLOR
    mesh = Mesh.from_indexed(v, faces, cols, name="tetX", per_face=True)
    pts = np.concatenate((v[faces[marked]], v[faces[marked]].mean(0, keepdims=True)))
    nrm = -v[0] / np.linalg.norm(v[0])  # outward normal of the face opposite vertex 0
    return MarkedShape("tetX", mesh, symmetry_group_of_points(v), mark_points=pts, mark_normals=np.tile(nrm, (4, 1)))


def make_shape(name: str, color: Sequence[float] = DEFAULT_COLOR) -> Shape:
    """A fresh SYMSOL shape ``name`` (one of :data:`SHAPE_NAMES`) in uniform ``color``."""
    if name == "tet":
        return _make_polyhedron("tet", _tet_vertices(), color)
    if name == "cube":
        return _make_polyhedron("cube", _cube_vertices(), color)
    if name == "icosa":
        return _make_polyhedron("icosa", _icosa_vertices(), color)
    if name == "cone":
        return _make_cone(color)
    if name == "cyl":
        return _make_cyl(color, marked=False)
    if name == "tetX":
        return _make_tet_x(color)
    if name == "cylO":
        return _make_cyl(color, marked=True)
    if name == "sphereX":
        return _make_sphere_x(color)
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_NAMES}")


@functools.cache
def get_shape(name: str) -> Shape:
    """The SYMSOL shape ``name`` in :data:`DEFAULT_COLOR`, built once per process (do not mutate)."""
    return make_shape(name)


# ----------------------------------------------------------------------------- mesh files


def _read_mtl(path: Path) -> dict[str, dict[str, object]]:
    mats: dict[str, dict[str, object]] = {}
    cur: dict[str, object] | None = None
    for line in path.read_text(errors="replace").splitlines():
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if tok[0] == "newmtl":
            cur = mats.setdefault(" ".join(tok[1:]), {})
        elif cur is not None and tok[0] == "Kd" and len(tok) >= 4:
            cur["Kd"] = tuple(float(x) for x in tok[1:4])
        elif cur is not None and tok[0] == "map_Kd" and len(tok) >= 2:
            cur["map_Kd"] = path.parent / tok[-1]
    return mats


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read texture image {path}: {e}") from e


def load_obj(path: str | Path, color: Sequence[float] = (0.8, 0.8, 0.8)) -> Mesh:
    """A :class:`Mesh` from a Wavefront OBJ file (polygons fan-triangulated; ``vn`` normals if given,
    else flat; materials' ``Kd`` colours; the first ``map_Kd`` texture of its MTL, replacing ``Kd`` on the faces
    of that material with ``vt`` coordinates; faces without a material get ``color``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OBJ file not found: {path}")
    vs: list[list[float]] = []
    vts: list[list[float]] = []
    vns: list[list[float]] = []
    mats: dict[str, dict[str, object]] = {}
    cur_mat: dict[str, object] = {}
    tri_v, tri_t, tri_n, tri_mat = [], [], [], []
    for line in path.read_text(errors="replace").splitlines():
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if tok[0] == "v":
            vs.append([float(x) for x in tok[1:4]])
        elif tok[0] == "vt":
            vts.append([float(x) for x in tok[1:3]])
        elif tok[0] == "vn":
            vns.append([float(x) for x in tok[1:4]])
        elif tok[0] == "mtllib":
            mtl = path.parent / " ".join(tok[1:])
            if mtl.is_file():
                mats.update(_read_mtl(mtl))
            else:
                warnings.warn(f"{path}: material library {mtl} not found", stacklevel=2)
        elif tok[0] == "usemtl":
            cur_mat = mats.get(" ".join(tok[1:]), {})
        elif tok[0] == "f":
            corners = []
            for c in tok[1:]:
                parts = (c.split("/") + ["", ""])[:3]
                idx = [int(p) if p else 0 for p in parts]
                sizes = (len(vs), len(vts), len(vns))
                corners.append([i - 1 if i > 0 else (n + i if i < 0 else -1) for i, n in zip(idx, sizes)])
            for k in range(1, len(corners) - 1):
                for c in (corners[0], corners[k], corners[k + 1]):
                    tri_v.append(c[0])
                    tri_t.append(c[1])
                    tri_n.append(c[2])
                tri_mat.append(cur_mat)
    if not tri_v:
        raise ValueError(f"OBJ file {path} has no faces")
    V = np.asarray(vs, dtype=np.float64)
    pos = V[np.asarray(tri_v)]
    tri = pos.reshape(-1, 3, 3)
    flat = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flat = np.repeat(flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12), 3, axis=0)
    n_idx = np.asarray(tri_n)
    normals = flat.copy()
    if vns:
        N = np.asarray(vns, dtype=np.float64)
        has = n_idx >= 0
        normals[has] = N[n_idx[has]]
    cols = np.array([m.get("Kd", color) for m in tri_mat for _ in range(3)], dtype=np.float64)
    tex_path = next((m["map_Kd"] for m in tri_mat if "map_Kd" in m), None)
    uvs = texture = textured = None
    if tex_path is not None and vts:
        T = np.asarray(vts, dtype=np.float64)
        t_idx = np.asarray(tri_t)
        textured = np.array([m.get("map_Kd") == tex_path for m in tri_mat for _ in range(3)]) & (t_idx >= 0)
        uvs = np.zeros((len(pos), 2))
        uvs[textured] = T[t_idx[textured]]
        cols[textured] = 1.0  # as pybullet and most viewers: the texture replaces Kd
        texture = _read_image(Path(str(tex_path)))
    return Mesh(pos, normals, cols, uvs=uvs, texture=texture, textured=textured, name=path.stem)


def _rpy_matrix(rpy: Sequence[float]) -> np.ndarray:
    r, p, y = rpy
    return _rot((0.0, 0.0, 1.0), y) @ _rot((0.0, 1.0, 0.0), p) @ _rot((1.0, 0.0, 0.0), r)


def load_urdf(path: str | Path) -> Mesh:
    """The first visual mesh (OBJ) of a URDF file, with its ``scale`` and visual ``origin`` applied,
    in the link frame (e.g. ``pybullet_data/duck_vhacd.urdf``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"URDF file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"cannot parse URDF file {path}: {e}") from e
    for visual in root.iter("visual"):
        mesh_el = visual.find("geometry/mesh")
        if mesh_el is None:
            continue
        fname = mesh_el.get("filename", "").replace("package://", "")
        mesh_path = path.parent / fname
        if mesh_path.suffix.lower() != ".obj":
            raise ValueError(f"{path}: only OBJ visual meshes are supported, got {fname}")
        mesh = load_obj(mesh_path)
        scale = np.array([float(x) for x in mesh_el.get("scale", "1 1 1").split()])
        origin = visual.find("origin")
        xyz = np.zeros(3)
        rot = np.eye(3)
        if origin is not None:
            xyz = np.array([float(x) for x in origin.get("xyz", "0 0 0").split()])
            rot = _rpy_matrix([float(x) for x in origin.get("rpy", "0 0 0").split()])
        pos = (mesh.positions * scale) @ rot.T + xyz
        nrm = (mesh.normals / scale) @ rot.T
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        return Mesh(pos, nrm, mesh.colors, uvs=mesh.uvs, texture=mesh.texture, textured=mesh.textured, name=path.stem)
    raise ValueError(f"URDF file {path} has no visual mesh")


#: Mesh formats read with ``trimesh`` (OBJ and URDF have their own loaders here).
TRIMESH_SUFFIXES = (".glb", ".gltf", ".stl", ".ply", ".off", ".dae")


def load_trimesh(path: str | Path, color: Sequence[float] = (0.8, 0.8, 0.8)) -> Mesh:
    """A :class:`Mesh` from a file ``trimesh`` reads (GLB/glTF, STL, PLY, OFF, DAE): all geometry of the
    scene in its frame, with vertex or face colours where the file has them, else the material's base
    colour, else ``color`` (textures are not read: their mean colour is used when it is a texture)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    try:
        import trimesh
    except ImportError as exc:  # pragma: no cover - trimesh is in requirements.txt
        raise ValueError(f"reading {path.suffix} meshes needs trimesh: {exc}") from exc
    try:
        loaded = trimesh.load(str(path), force="scene")
        geoms = loaded.dump() if hasattr(loaded, "dump") else [loaded]
    except Exception as exc:  # trimesh raises many kinds on a bad file
        raise ValueError(f"could not read mesh {path}: {type(exc).__name__}: {exc}") from exc
    parts_v, parts_f, parts_c = [], [], []
    offset = 0
    for g in geoms:
        if not hasattr(g, "faces") or len(g.faces) == 0:
            continue
        v = np.asarray(g.vertices, dtype=np.float64)
        f = np.asarray(g.faces, dtype=np.int64)
        fc = np.broadcast_to(np.asarray(color, dtype=np.float64), (len(f), 3)).copy()
        visual = getattr(g, "visual", None)
        try:
            if visual is not None and visual.kind == "texture":
                visual = visual.to_color()
            if visual is not None and visual.kind in ("face", "vertex"):
                fc = np.asarray(visual.face_colors, dtype=np.float64)[:, :3] / 255.0
        except Exception:  # noqa: BLE001 - colours are a nicety; geometry is what matters
            pass
        parts_v.append(v)
        parts_f.append(f + offset)
        parts_c.append(fc)
        offset += len(v)
    if not parts_f:
        raise ValueError(f"mesh file {path} has no faces")
    return Mesh.from_indexed(np.concatenate(parts_v), np.concatenate(parts_f), np.concatenate(parts_c),
                             per_face=True, name=path.stem)


def _axis_frame(axis: str) -> np.ndarray:
    """Rotation ``(3, 3)`` taking z onto the object ``axis`` (x, y or z)."""
    if axis == "z":
        return np.eye(3)
    if axis == "x":
        return _rot((0.0, 1.0, 0.0), math.pi / 2)
    if axis == "y":
        return _rot((1.0, 0.0, 0.0), -math.pi / 2)
    raise ValueError(f"symmetry axis must be x, y or z, got {axis!r}")


#: Forms of :func:`symmetry_rotations`'s ``spec``.
SYMMETRY_SPECS = ("none", "cyclic:N[:axis]", "dihedral:N[:axis]", "revolution[:axis]", "revolution+flip[:axis]")


def symmetry_rotations(spec: str | None) -> np.ndarray:
    """Symmetry rotations ``(K, 3, 3)`` float64 (identity first) of an object from a short ``spec``:

    * ``none`` (or ``None``): the identity only;
    * ``cyclic:N[:axis]``: ``N`` turns about ``axis`` (default ``z``) — a square box seen end on;
    * ``dihedral:N[:axis]``: those turns, each also composed with a half turn about a perpendicular
      axis (``dihedral:2``: a box with three different sides, a Jenga block);
    * ``revolution[:axis]``: a solid of revolution (a cone, a cup without handle): 360 one-degree turns
      as SYMSOL's cone; ``revolution+flip[:axis]``: also symmetric end to end (a cylinder, 720).

    Axes are those of the normalised object frame of :func:`mesh_shape` (the mesh file's frame).
    """
    if spec is None or spec == "none":
        return np.eye(3)[None]
    parts = spec.split(":")
    kind = parts[0]
    try:
        if kind in ("cyclic", "dihedral"):
            if len(parts) not in (2, 3):
                raise ValueError
            n, axis = int(parts[1]), parts[2] if len(parts) == 3 else "z"
            if n < 1:
                raise ValueError
        elif kind in ("revolution", "revolution+flip"):
            if len(parts) > 2:
                raise ValueError
            n, axis = _SEGMENTS, parts[1] if len(parts) == 2 else "z"
        else:
            raise ValueError
        frame = _axis_frame(axis)
    except ValueError:
        raise ValueError(f"bad symmetry {spec!r}; expected one of {', '.join(SYMMETRY_SPECS)} "
                         "(N a positive integer, axis x, y or z)") from None
    turns = _turns_about_z(n)
    if kind in ("dihedral", "revolution+flip"):
        flip = _rot((1.0, 0.0, 0.0), math.pi)
        turns = np.stack([T @ F for T in turns for F in (np.eye(3), flip)])
    return np.einsum("ij,kjl,ml->kim", frame, turns, frame)


def mesh_shape(path: str | Path, symmetries: np.ndarray | None = None, name: str | None = None) -> Shape:
    """A :class:`Shape` from an OBJ or URDF file (or a format of :data:`TRIMESH_SUFFIXES`), centred on its
    bounding-box centre and scaled to fit the unit sphere (so it fills the default view like the
    SYMSOL shapes). ``symmetries`` ``(K, 3, 3)`` (identity first; default: the identity only) are in
    that normalised object frame (:func:`symmetry_rotations` makes the common ones)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".urdf":
        mesh = load_urdf(path)
    elif suffix in TRIMESH_SUFFIXES:
        mesh = load_trimesh(path)
    else:
        mesh = load_obj(path)
    centre = 0.5 * (mesh.positions.min(0) + mesh.positions.max(0))
    pos = mesh.positions - centre
    pos = pos / np.linalg.norm(pos, axis=1).max()
    mesh = Mesh(pos, mesh.normals, mesh.colors, uvs=mesh.uvs, texture=mesh.texture, textured=mesh.textured,
                name=name or path.stem)
    return Shape(name or path.stem, mesh, np.eye(3)[None] if symmetries is None else symmetries)
