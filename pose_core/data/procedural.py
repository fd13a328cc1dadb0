"""Procedural 3D shape classes with real variation inside each class (for shape classifiers and reconstruction).

Each class in :data:`PROCEDURAL_CLASSES` is a small generator of random proportions and part counts:
``box`` (extents from 1:1:1 to about 1:3:0.3), ``cylinder`` (flat discs to tall rods), ``cone`` (flat
to tall, pointed or truncated), ``torus`` (thin to fat tube, round or elliptic section), ``capsule``
(short to long), ``mug`` (open-top or closed body, a handle made of an elliptic torus arc on the +x
side), ``bottle`` (body, shoulder, neck, optional lip), ``table`` (rectangular or round top on four
legs or one pedestal), ``chair`` (seat, four legs, a solid or two-post backrest on the -y side),
``lbracket`` (two boxes in an L), ``bowl`` (a thick spherical shell, shallow to deep) and ``pyramid``
(a 3- to 5-sided irregular base and an apex).

Conventions:

* **Frame.** z is up: tables, chairs, mugs, bottles, bowls, cones and pyramids stand on their base at
  the lowest z, openings (mug, bowl) face +z, and the handle of a mug is on its +x side.
* **Normalisation.** Every mesh is centred so that the centre of its axis-aligned bounding box is at
  the origin, then scaled so that its largest vertex norm is exactly 1 (it fits the unit sphere).
  Coordinates are unitless.
* **Topology.** A shape is a triangle soup of parts: every part is a separate closed, consistently
  wound component with outward-facing triangles (positive signed volume); parts may overlap (no
  boolean operations). Axes of revolution use 32 segments, and every shape has at most 3000 triangles.
* **Determinism.** A shape is a function of ``(name, seed)`` only (the random generator is seeded by
  a CRC32 of the class name and the seed, stable across processes and platforms' hash seeds).

``vertices`` are ``(V, 3)`` float64 and ``faces`` ``(F, 3)`` int64 indices into them, both read-only.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull

from pose_core.data.render import Mesh

__all__ = [
    "PROCEDURAL_CLASSES",
    "PROCEDURAL_SPLITS",
    "ProceduralShape",
    "make_procedural_shape",
    "procedural_split",
    "render_mesh",
]

#: Class names; the position of a name is its label.
PROCEDURAL_CLASSES: tuple[str, ...] = (
    "box", "cylinder", "cone", "torus", "capsule", "mug", "bottle", "table", "chair", "lbracket", "bowl", "pyramid",
)
#: Splits of :func:`procedural_split`; split ``k`` uses the shape seeds ``s`` with ``s % 3 == k``.
PROCEDURAL_SPLITS: tuple[str, ...] = ("train", "val", "test")

_SEG = 32  # segments around every axis of revolution and around every tube
_TUBE_SEG = 12  # segments around the cross-section of a tube
_MAX_FACES = 3000
_SEED_STRIDE = 1_000_003  # split seeds of procedural_split(..., seed=s) start at s * _SEED_STRIDE

Part = tuple[np.ndarray, np.ndarray]  # (vertices (V, 3) float64, faces (F, 3) int64)


@dataclass(frozen=True, eq=False)
class ProceduralShape:
    """One normalised procedural mesh (see the module docstring for the conventions).

    ``name`` is the class, ``label`` its index in :data:`PROCEDURAL_CLASSES`, ``seed`` the shape seed.
    ``vertices`` ``(V, 3)`` float64, ``faces`` ``(F, 3)`` int64. Compared by identity (arrays inside).
    """

    name: str
    label: int
    seed: int
    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        v = np.array(self.vertices, dtype=np.float64)
        f = np.array(self.faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
            raise ValueError(f"vertices must have shape (V, 3) with V >= 1, got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise ValueError(f"faces must have shape (F, 3) with F >= 1, got {f.shape}")
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"faces index vertices 0..{len(v) - 1}, got indices {f.min()}..{f.max()}")
        v.setflags(write=False)
        f.setflags(write=False)
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)


# ---------------------------------------------------------------------------------------------- parts


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0)


def _outward(v: np.ndarray, f: np.ndarray) -> Part:
    """Flip a closed, consistently wound part whose signed volume is negative."""
    return (v, f) if _signed_volume(v, f) > 0 else (v, f[:, ::-1].copy())


def _convex(points: np.ndarray) -> Part:
    """The convex hull of ``points`` ``(N, 3)``, triangles facing away from the centroid."""
    hull = ConvexHull(points)
    v = points[hull.vertices]
    remap = np.full(len(points), -1, np.int64)
    remap[hull.vertices] = np.arange(len(hull.vertices))
    f = remap[hull.simplices]
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    inward = np.einsum("ij,ij->i", n, v[f[:, 0]] - v.mean(axis=0)) < 0
    f[inward] = f[inward][:, ::-1]
    return v, f


def _box(lo: Sequence[float], hi: Sequence[float]) -> Part:
    """Axis-aligned box ``[lo, hi]`` (12 triangles)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return _convex(corners)


def _revolve(profile: Sequence[tuple[float, float]], segments: int = _SEG) -> Part:
    """Closed solid swept by the ``(radius, z)`` polyline ``profile`` about the z axis.

    The profile must start and end on the axis (radius 0) and have no two consecutive points on it.
    """
    if profile[0][0] != 0.0 or profile[-1][0] != 0.0:
        raise ValueError(f"a profile must start and end on the axis, got {profile[0]} ... {profile[-1]}")
    th = 2 * math.pi * np.arange(segments) / segments
    c, s = np.cos(th), np.sin(th)
    verts: list[np.ndarray] = []
    rings: list[np.ndarray] = []  # per profile point: 1 index (axis) or `segments` indices
    n = 0
    for r, z in profile:
        if r == 0.0:
            verts.append(np.array([[0.0, 0.0, z]]))
            rings.append(np.array([n]))
            n += 1
        else:
            verts.append(np.stack([r * c, r * s, np.full(segments, z)], axis=1))
            rings.append(n + np.arange(segments))
            n += segments
    k = np.arange(segments)
    k1 = (k + 1) % segments
    faces = []
    for a, b in zip(rings[:-1], rings[1:]):
        if len(a) == 1 and len(b) == 1:
            raise ValueError("a profile may not have two consecutive points on the axis")
        if len(a) == 1:
            faces.append(np.stack([np.full(segments, a[0]), b[k1], b[k]], axis=1))
        elif len(b) == 1:
            faces.append(np.stack([a[k], a[k1], np.full(segments, b[0])], axis=1))
        else:
            faces.append(np.stack([a[k], a[k1], b[k1]], axis=1))
            faces.append(np.stack([a[k], b[k1], b[k]], axis=1))
    return _outward(np.concatenate(verts), np.concatenate(faces).astype(np.int64))


def _tube(path: np.ndarray, binormal: Sequence[float], radius: float, radius_b: float | None = None,
          closed: bool = False, segments: int = _TUBE_SEG) -> Part:
    """Closed tube swept along the planar polyline ``path`` ``(N, 3)`` lying in the plane normal to ``binormal``.

    The cross-section is an ellipse with semi-axis ``radius`` in the plane and ``radius_b`` along
    ``binormal`` (default ``radius``). An open path gets flat end caps; ``closed`` joins its ends.
    """
    b = np.asarray(binormal, float) / np.linalg.norm(binormal)
    rb = radius if radius_b is None else radius_b
    nxt = np.roll(path, -1, axis=0) if closed else np.concatenate([path[1:], path[-1:]])
    prv = np.roll(path, 1, axis=0) if closed else np.concatenate([path[:1], path[:-1]])
    t = nxt - prv
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    nrm = np.cross(b, t)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    phi = 2 * math.pi * np.arange(segments) / segments
    cos, sin = np.cos(phi)[None, :, None], np.sin(phi)[None, :, None]
    ring = path[:, None, :] + radius * cos * nrm[:, None, :] + rb * sin * b
    m = len(path)
    idx = np.arange(m * segments).reshape(m, segments)
    k = np.arange(segments)
    k1 = (k + 1) % segments
    rows = list(zip(range(m), list(range(1, m)) + ([0] if closed else [])))
    faces = []
    for i, j in rows:
        a, c = idx[i], idx[j]
        faces.append(np.stack([a[k], a[k1], c[k1]], axis=1))
        faces.append(np.stack([a[k], c[k1], c[k]], axis=1))
    verts = [ring.reshape(-1, 3)]
    if not closed:
        start, end = m * segments, m * segments + 1
        verts.append(np.stack([path[0], path[-1]]))
        faces.append(np.stack([np.full(segments, start), idx[0][k1], idx[0][k]], axis=1))
        faces.append(np.stack([idx[-1][k], idx[-1][k1], np.full(segments, end)], axis=1))
    return _outward(np.concatenate(verts), np.concatenate(faces).astype(np.int64))


def _rod(x: float, y: float, z0: float, z1: float, half: float, round_: bool) -> Part:
    """A vertical leg over ``z0..z1`` at ``(x, y)``: a square bar of half-width ``half`` or a cylinder."""
    if round_:
        v, f = _revolve([(0.0, z0), (half, z0), (half, z1), (0.0, z1)], segments=12)
        return v + np.array([x, y, 0.0]), f
    return _box((x - half, y - half, z0), (x + half, y + half, z1))


def _merge(parts: Sequence[Part]) -> Part:
    verts, faces, n = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + n)
        n += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ---------------------------------------------------------------------------------------------- classes


def _make_box(rng: np.random.Generator) -> list[Part]:
    e = np.array([1.0, _log_uniform(rng, 1.0, 3.0), _log_uniform(rng, 0.3, 1.0)])
    e = rng.permutation(e)
    return [_box(-e / 2, e / 2)]


def _make_cylinder(rng: np.random.Generator) -> list[Part]:
    r, h = 1.0, 2.0 * _log_uniform(rng, 0.15, 3.0)  # height / diameter from flat discs to tall rods
    return [_revolve([(0.0, 0.0), (r, 0.0), (r, h), (0.0, h)])]


def _make_cone(rng: np.random.Generator) -> list[Part]:
    r, h = 1.0, 2.0 * _log_uniform(rng, 0.25, 2.0)
    top = 0.0 if rng.random() < 0.5 else rng.uniform(0.08, 0.3) * r
    profile = [(0.0, 0.0), (r, 0.0), (top, h)] + ([(0.0, h)] if top > 0 else [])
    return [_revolve(profile)]


def _make_torus(rng: np.random.Generator) -> list[Part]:
    big, small = 1.0, rng.uniform(0.15, 0.6)
    th = 2 * math.pi * np.arange(_SEG) / _SEG
    path = np.stack([big * np.cos(th), big * np.sin(th), np.zeros(_SEG)], axis=1)
    return [_tube(path, (0, 0, 1), small, small * rng.uniform(0.6, 1.4), closed=True, segments=16)]


def _make_capsule(rng: np.random.Generator) -> list[Part]:
    r, length = 1.0, 2.0 * _log_uniform(rng, 0.2, 3.0)
    a = np.linspace(-math.pi / 2, 0.0, 8)
    bottom = [(r * math.cos(t), r * math.sin(t)) for t in a]
    top = [(r * math.cos(t), length + r * math.sin(t)) for t in -a[::-1]]
    profile = [(0.0, bottom[0][1])] + bottom[1:] + top[:-1] + [(0.0, top[-1][1])]
    return [_revolve(profile)]


def _make_mug(rng: np.random.Generator) -> list[Part]:
    r = 0.5
    h = 2 * r * rng.uniform(0.8, 1.5)
    if rng.random() < 0.7:  # open top: wall and bottom thickness
        wall, floor = r * rng.uniform(0.06, 0.16), h * rng.uniform(0.05, 0.12)
        body = _revolve([(0.0, 0.0), (r, 0.0), (r, h), (r - wall, h), (r - wall, floor), (0.0, floor)])
    else:
        body = _revolve([(0.0, 0.0), (r, 0.0), (r, h), (0.0, h)])
    tube = r * rng.uniform(0.06, 0.12)
    reach = r * rng.uniform(0.3, 0.7)
    half_height = h * rng.uniform(0.22, 0.38)
    zc = h / 2 + h * rng.uniform(-0.08, 0.08)
    t = np.linspace(-math.pi / 2, math.pi / 2, 16)
    x0 = r - tube  # the handle's ends are sunk into the wall
    path = np.stack([x0 + (reach + tube) * np.cos(t), np.zeros_like(t), zc + half_height * np.sin(t)], axis=1)
    handle = _tube(path, (0, 1, 0), tube, tube * rng.uniform(0.8, 1.6))
    return [body, handle]


def _make_bottle(rng: np.random.Generator) -> list[Part]:
    rb = 0.5
    rn = rb * rng.uniform(0.2, 0.45)
    hb = rb * rng.uniform(1.2, 3.5)
    hs = rb * rng.uniform(0.3, 1.2)
    hn = rb * rng.uniform(0.4, 1.5)
    bevel = rb * rng.uniform(0.0, 0.15)
    profile = [(0.0, 0.0)]
    if bevel > 0.02 * rb:
        profile += [(rb - bevel, 0.0), (rb, bevel)]
    else:
        profile += [(rb, 0.0)]
    s = np.linspace(0.0, 1.0, 7)
    profile += [(float(rn + (rb - rn) * (1 + math.cos(math.pi * u)) / 2), float(hb + hs * u)) for u in s]
    top = hb + hs + hn
    if rng.random() < 0.5:  # a lip at the mouth
        lip = rb * rng.uniform(0.06, 0.12)
        profile += [(rn, top - lip), (rn * rng.uniform(1.15, 1.35), top - lip), (rn * 1.15, top)]
    else:
        profile += [(rn, top)]
    profile += [(0.0, top)]
    return [_revolve(profile)]


def _make_table(rng: np.random.Generator) -> list[Part]:
    height = rng.uniform(0.4, 1.0)
    thick = rng.uniform(0.03, 0.08)
    round_top = rng.random() < 0.4
    ztop = height - thick
    if round_top:
        rt = 0.5
        parts = [_revolve([(0.0, ztop), (rt, ztop), (rt, height), (0.0, height)])]
        half_x = half_y = rt / math.sqrt(2)
    else:
        half_x, half_y = 0.5, 0.5 * rng.uniform(0.4, 1.0)
        parts = [_box((-half_x, -half_y, ztop), (half_x, half_y, height))]
    if rng.random() < 0.65:  # four legs
        leg = rng.uniform(0.02, 0.045)
        inset = rng.uniform(0.0, 0.08)
        round_legs = rng.random() < 0.5
        for sx in (-1, 1):
            for sy in (-1, 1):
                x = sx * (half_x - leg - inset * half_x)
                y = sy * (half_y - leg - inset * half_y)
                parts.append(_rod(x, y, 0.0, ztop, leg, round_legs))
    else:  # one pedestal on a round foot
        col = rng.uniform(0.04, 0.1)
        foot_r = min(half_x, half_y, 0.5) * rng.uniform(0.5, 0.9)
        foot_t = rng.uniform(0.02, 0.05)
        parts.append(_revolve([(0.0, 0.0), (foot_r, 0.0), (foot_r, foot_t), (0.0, foot_t)]))
        parts.append(_revolve([(0.0, foot_t), (col, foot_t), (col, ztop), (0.0, ztop)], segments=16))
    return parts


def _make_chair(rng: np.random.Generator) -> list[Part]:
    w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    seat_h = rng.uniform(0.35, 0.55)
    seat_t = rng.uniform(0.03, 0.07)
    back_h = rng.uniform(0.3, 0.65)
    back_t = rng.uniform(0.025, 0.06)
    leg = rng.uniform(0.015, 0.035)
    round_legs = rng.random() < 0.4
    z0 = seat_h - seat_t
    parts = [_box((-w / 2, -d / 2, z0), (w / 2, d / 2, seat_h))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_rod(sx * (w / 2 - leg), sy * (d / 2 - leg), 0.0, z0, leg, round_legs))
    y0, y1 = -d / 2, -d / 2 + back_t
    top = seat_h + back_h
    if rng.random() < 0.5:  # solid panel, maybe narrower than the seat
        bw = w / 2 * rng.uniform(0.75, 1.0)
        parts.append(_box((-bw, y0, seat_h), (bw, y1, top)))
    else:  # two posts and a top rail
        post = rng.uniform(0.02, 0.04)
        rail = back_h * rng.uniform(0.2, 0.45)
        parts.append(_box((-w / 2, y0, seat_h), (-w / 2 + post, y1, top - rail)))
        parts.append(_box((w / 2 - post, y0, seat_h), (w / 2, y1, top - rail)))
        parts.append(_box((-w / 2, y0, top - rail), (w / 2, y1, top)))
    return parts


def _make_lbracket(rng: np.random.Generator) -> list[Part]:
    a, b = rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5)
    t = min(a, b) * rng.uniform(0.08, 0.3)
    w = rng.uniform(0.2, 1.0)
    return [_box((0, 0, 0), (a, w, t)), _box((0, 0, 0), (t, w, b))]


def _make_bowl(rng: np.random.Generator) -> list[Part]:
    r = 1.0
    wall = r * rng.uniform(0.05, 0.14)
    rim = math.radians(rng.uniform(55.0, 90.0))  # polar angle of the rim, from the bottom
    base = math.radians(rng.uniform(5.0, 35.0))  # polar angle of the edge of the flat base
    squash = rng.uniform(0.5, 1.0)  # vertical scale: shallow to hemispherical
    ri = r - wall
    floor = -r * math.cos(base) + wall  # the inner floor is `wall` above the outer base
    outer = [(r * math.sin(t), -r * math.cos(t)) for t in np.linspace(base, rim, 10)]
    inner = [(ri * math.sin(t), max(-ri * math.cos(t), floor)) for t in np.linspace(rim, 0.0, 10)]
    profile = [(0.0, outer[0][1])] + outer + inner
    v, f = _revolve([(float(x), float(z) * squash) for x, z in profile])
    return [(v, f)]


def _make_pyramid(rng: np.random.Generator) -> list[Part]:
    n = int(rng.integers(3, 6))
    ang = 2 * math.pi * (np.arange(n) + rng.uniform(-0.2, 0.2, n)) / n
    rad = rng.uniform(0.8, 1.0, n)
    base = np.stack([rad * np.cos(ang), rad * np.sin(ang) * rng.uniform(0.5, 1.0), np.zeros(n)], axis=1)
    apex = np.array([[rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), _log_uniform(rng, 0.5, 2.5)]])
    return [_convex(np.concatenate([base, apex]))]


_BUILDERS: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "box": _make_box,
    "cylinder": _make_cylinder,
    "cone": _make_cone,
    "torus": _make_torus,
    "capsule": _make_capsule,
    "mug": _make_mug,
    "bottle": _make_bottle,
    "table": _make_table,
    "chair": _make_chair,
    "lbracket": _make_lbracket,
    "bowl": _make_bowl,
    "pyramid": _make_pyramid,
}
assert tuple(_BUILDERS) == PROCEDURAL_CLASSES


# ---------------------------------------------------------------------------------------------- public


def make_procedural_shape(name: str, seed: int) -> ProceduralShape:
    """The shape of class ``name`` for ``seed`` (an integer >= 0), normalised as in the module docstring.

    Raises :class:`ValueError` for an unknown class or a negative / non-integer seed.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown procedural class {name!r}; the classes are {list(PROCEDURAL_CLASSES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng([zlib.crc32(name.encode()), int(seed)])
    v, f = _merge(_BUILDERS[name](rng))
    v = v - (v.min(axis=0) + v.max(axis=0)) / 2
    v = v / np.linalg.norm(v, axis=1).max()
    assert len(f) <= _MAX_FACES, (name, seed, len(f))
    return ProceduralShape(name=name, label=PROCEDURAL_CLASSES.index(name), seed=int(seed), vertices=v, faces=f)


def procedural_split(split: str, per_class: int, seed: int = 0) -> list[ProceduralShape]:
    """``per_class`` shapes of every class, ordered class by class (in :data:`PROCEDURAL_CLASSES` order).

    Shape ``i`` of a class has the shape seed ``3 * (seed * 1_000_003 + i) + k``, ``k`` the index of
    ``split`` in :data:`PROCEDURAL_SPLITS`: the splits use disjoint seed sets whatever ``seed`` and
    ``per_class`` are, so a test shape is never a training shape. Raises :class:`ValueError` for an
    unknown split, ``per_class < 1`` or ``seed < 0``.
    """
    if split not in PROCEDURAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(PROCEDURAL_SPLITS)}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    k = PROCEDURAL_SPLITS.index(split)
    seeds = [len(PROCEDURAL_SPLITS) * (int(seed) * _SEED_STRIDE + i) + k for i in range(int(per_class))]
    return [make_procedural_shape(name, s) for name in PROCEDURAL_CLASSES for s in seeds]


def render_mesh(shape: ProceduralShape, color: Sequence[float] = (0.8, 0.8, 0.8)) -> Mesh:
    """The triangle soup of ``shape`` for :class:`~pose_core.data.render.Renderer`, with flat face normals.

    ``positions``, ``normals`` and ``colors`` are ``(3F, 3)`` float32, three rows per face of ``shape``.
    """
    col = np.asarray(color, dtype=np.float64)
    if col.shape != (3,) or not np.all(np.isfinite(col)):
        raise ValueError(f"color must be 3 finite RGB values, got {color!r}")
    tri = shape.vertices[shape.faces]  # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(norm > 0, n / np.where(norm > 0, norm, 1.0), np.array([0.0, 0.0, 1.0]))
    positions = tri.reshape(-1, 3)
    normals = np.repeat(n, 3, axis=0)
    return Mesh(positions=positions, normals=normals, colors=np.broadcast_to(col, positions.shape),
                name=f"{shape.name}_{shape.seed}")
