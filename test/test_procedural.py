"""Procedural shape classes: normalisation, closed outward parts, determinism, variation, splits, shape sanity."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pose_core.data.procedural import (
    PROCEDURAL_CLASSES,
    PROCEDURAL_SPLITS,
    ProceduralShape,
    make_procedural_shape,
    procedural_split,
    render_mesh,
)
from pose_core.data.render import Mesh

SEEDS = range(6)


def _ray_hits(v: np.ndarray, f: np.ndarray, origin, direction) -> np.ndarray:
    """Sorted ray parameters ``t > 0`` where the ray ``origin + t direction`` crosses a triangle (Moller-Trumbore)."""
    o, d = np.asarray(origin, float), np.asarray(direction, float)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e1, e2 = b - a, c - a
    p = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = o - a
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    w = (q @ d) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 1e-9)
    return np.sort(t[hit])


def _components(shape: ProceduralShape) -> list[trimesh.Trimesh]:
    return trimesh.Trimesh(shape.vertices, shape.faces, process=False).split(only_watertight=False)


def test_class_list():
    required = {"box", "cylinder", "cone", "torus", "capsule", "mug", "bottle", "table", "chair", "lbracket"}
    assert required <= set(PROCEDURAL_CLASSES)
    assert len(set(PROCEDURAL_CLASSES)) == len(PROCEDURAL_CLASSES) >= 10


@pytest.mark.parametrize("name", PROCEDURAL_CLASSES)
def test_every_class_builds_normalised(name):
    for seed in SEEDS:
        s = make_procedural_shape(name, seed)
        assert (s.name, s.label, s.seed) == (name, PROCEDURAL_CLASSES.index(name), seed)
        v, f = s.vertices, s.faces
        assert v.dtype == np.float64 and v.ndim == 2 and v.shape[1] == 3
        assert f.dtype == np.int64 and f.ndim == 2 and f.shape[1] == 3
        assert np.isfinite(v).all()
        assert f.min() >= 0 and f.max() < len(v)
        assert len(np.unique(f)) == len(v)  # no unused vertex
        assert 1 <= len(f) <= 3000
        assert np.linalg.norm(v, axis=1).max() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose((v.min(axis=0) + v.max(axis=0)) / 2, 0.0, atol=1e-12)
        # no degenerate triangle
        tri = v[f]
        assert np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).min() > 1e-10
        with pytest.raises(ValueError):
            s.vertices[0, 0] = 5.0  # read-only


@pytest.mark.parametrize("name", PROCEDURAL_CLASSES)
def test_parts_are_closed_and_outward(name):
    for seed in SEEDS:
        for part in _components(make_procedural_shape(name, seed)):
            assert part.is_watertight and part.is_winding_consistent, (name, seed)
            assert part.volume > 0, (name, seed)  # outward-facing triangles


def test_outward_check_can_fail():
    s = make_procedural_shape("box", 0)
    flipped = trimesh.Trimesh(s.vertices, s.faces[:, ::-1], process=False)
    assert flipped.volume < 0


def test_unknown_class_and_bad_seed():
    with pytest.raises(ValueError, match="lbracket"):  # the message lists the classes
        make_procedural_shape("sphere", 0)
    with pytest.raises(ValueError, match="seed"):
        make_procedural_shape("box", -1)
    with pytest.raises(ValueError, match="seed"):
        make_procedural_shape("box", 1.5)


@pytest.mark.parametrize("name", PROCEDURAL_CLASSES)
def test_determinism(name):
    a, b, c = make_procedural_shape(name, 3), make_procedural_shape(name, 3), make_procedural_shape(name, 4)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    assert a.vertices.shape != c.vertices.shape or not np.allclose(a.vertices, c.vertices)


@pytest.mark.parametrize("name", PROCEDURAL_CLASSES)
def test_within_class_variation(name):
    ext = np.array([np.ptp(make_procedural_shape(name, s).vertices, axis=0) for s in range(10)])  # (10, 3)
    spread = (ext.max(axis=0) - ext.min(axis=0)) / ext.mean(axis=0)
    assert spread.max() > 0.1, (name, spread)


def test_splits_disjoint_and_ordered():
    per = 3
    splits = {k: procedural_split(k, per) for k in PROCEDURAL_SPLITS}
    for shapes in splits.values():
        assert len(shapes) == per * len(PROCEDURAL_CLASSES)
        assert [s.name for s in shapes] == [c for c in PROCEDURAL_CLASSES for _ in range(per)]
    keys = {k: {(s.name, s.seed) for s in v} for k, v in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    # disjoint for any data seed and size too, and the shapes themselves differ
    train_big = {(s.name, s.seed) for s in procedural_split("train", 5, seed=1)}
    assert not train_big & {(s.name, s.seed) for s in procedural_split("test", 5, seed=0)}
    test_boxes = [s.vertices for s in splits["test"] if s.name == "box"]
    for s in splits["train"]:
        if s.name == "box":
            assert not any(np.allclose(s.vertices, t) for t in test_boxes)
    # same arguments, same shapes
    again = procedural_split("test", per)
    assert all(np.array_equal(a.vertices, b.vertices) for a, b in zip(again, splits["test"]))


def test_split_errors():
    with pytest.raises(ValueError, match="split"):
        procedural_split("training", 2)
    with pytest.raises(ValueError, match="per_class"):
        procedural_split("train", 0)
    with pytest.raises(ValueError, match="seed"):
        procedural_split("train", 1, seed=-1)


def test_render_mesh():
    for name in PROCEDURAL_CLASSES:
        s = make_procedural_shape(name, 1)
        m = render_mesh(s, color=(0.2, 0.4, 0.6))
        assert isinstance(m, Mesh)
        t = len(s.faces)
        for arr in (m.positions, m.normals, m.colors):
            assert arr.shape == (3 * t, 3) and arr.dtype == np.float32
        np.testing.assert_allclose(m.positions, s.vertices[s.faces].reshape(-1, 3), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(m.normals, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(m.colors, np.broadcast_to([0.2, 0.4, 0.6], m.colors.shape), atol=1e-7)
    box = make_procedural_shape("box", 0)  # convex and centred: face normals point away from the origin
    m = render_mesh(box)
    assert (np.einsum("ij,ij->i", m.normals, m.positions) > 0).all()
    with pytest.raises(ValueError, match="color"):
        render_mesh(box, color=(1.0, 0.0))


# ---------------------------------------------------------------------------------- per-class sanity


def test_torus_has_a_hole():
    for seed in SEEDS:
        s = make_procedural_shape("torus", seed)
        assert len(_ray_hits(s.vertices, s.faces, (0, 0, -2), (0, 0, 1))) == 0
    for name in ("cylinder", "capsule", "bowl", "box"):  # negative controls: solid along the axis
        s = make_procedural_shape(name, 0)
        assert len(_ray_hits(s.vertices, s.faces, (0, 0, -2), (0, 0, 1))) >= 2, name


def _top_spans_footprint(s: ProceduralShape) -> bool:
    """The vertices at the highest z span >= 90 % of the shape's x and y extents (a flat top)."""
    v = s.vertices
    top = v[v[:, 2] > v[:, 2].max() - 1e-9]
    return bool((np.ptp(top[:, :2], axis=0) >= 0.9 * np.ptp(v[:, :2], axis=0)).all())


def _backrest_at_minus_y(s: ProceduralShape) -> bool:
    """The highest 10 % of the shape (by z) lies in the -y third of its footprint."""
    v = s.vertices
    top = v[v[:, 2] > v[:, 2].max() - 0.1 * np.ptp(v[:, 2])]
    return bool(top[:, 1].max() < v[:, 1].min() + np.ptp(v[:, 1]) / 3)


def test_table_top_is_highest_and_chair_backrest_at_minus_y():
    for seed in range(10):
        table, chair = make_procedural_shape("table", seed), make_procedural_shape("chair", seed)
        assert _top_spans_footprint(table) and not _backrest_at_minus_y(table), seed
        assert _backrest_at_minus_y(chair) and not _top_spans_footprint(chair), seed  # each a control of the other


def _axis_hits(s: ProceduralShape, flip: bool = False) -> tuple[float, float, float]:
    """z of the first hit of downward and upward rays along the mug body's axis; and the body height."""
    v = s.vertices * np.array([1.0, 1.0, -1.0 if flip else 1.0])
    radius = np.ptp(v[:, 1]) / 2  # the handle is at +x, so the y extent is the body's diameter
    x = v[:, 0].min() + radius
    down = _ray_hits(v, s.faces, (x, 0, 2), (0, 0, -1))
    up = _ray_hits(v, s.faces, (x, 0, -2), (0, 0, 1))
    return 2 - down[0], -2 + up[0], float(np.ptp(v[:, 2]))


def _opening_faces_up(s: ProceduralShape, flip: bool = False) -> tuple[bool, bool]:
    """(closed bottom and either a closed top or a cavity open to +z, cavity present)."""
    v = s.vertices * np.array([1.0, 1.0, -1.0 if flip else 1.0])
    z_down, z_up, h = _axis_hits(s, flip)
    zmin, zmax = v[:, 2].min(), v[:, 2].max()
    bottom_closed = abs(z_up - zmin) < 1e-9
    open_top = z_down < zmin + 0.25 * h
    closed_top = abs(z_down - zmax) < 1e-9
    return bottom_closed and (open_top or closed_top), open_top


def test_mug_opens_up_with_handle_at_plus_x():
    n_open = 0
    for seed in range(12):
        s = make_procedural_shape("mug", seed)
        ext = np.ptp(s.vertices, axis=0)
        assert ext[0] > 1.1 * ext[1], seed  # the handle sticks out along +x
        ok, is_open = _opening_faces_up(s)
        assert ok, seed
        n_open += is_open
        if is_open:
            assert not _opening_faces_up(s, flip=True)[0], seed  # negative control: upside down fails
    assert 3 <= n_open <= 11  # both variants occur
    cyl = make_procedural_shape("cylinder", 0)  # negative control: no handle
    assert np.ptp(cyl.vertices[:, 0]) < 1.01 * np.ptp(cyl.vertices[:, 1])


def _neck_ratio(s: ProceduralShape) -> float:
    """Radial extent (from the z axis) of the top 15 % of the height over that of the bottom 15 %."""
    v = s.vertices
    z0, h = v[:, 2].min(), np.ptp(v[:, 2])
    r = np.linalg.norm(v[:, :2], axis=1)
    return r[v[:, 2] > z0 + 0.85 * h].max() / r[v[:, 2] < z0 + 0.15 * h].max()


def test_bottle_has_a_narrow_neck():
    for seed in range(10):
        assert _neck_ratio(make_procedural_shape("bottle", seed)) < 0.65, seed
    assert _neck_ratio(make_procedural_shape("cylinder", 0)) > 0.99  # negative control


def _inside(s: ProceduralShape, point) -> bool:
    """``point`` is inside one of the closed parts (odd crossing count along an oblique ray)."""
    d = np.array([0.577, 0.31, 0.755])
    return any(len(_ray_hits(np.asarray(c.vertices), np.asarray(c.faces), point, d)) % 2 == 1 for c in _components(s))


def test_lbracket_is_concave():
    for seed in range(10):
        assert not _inside(make_procedural_shape("lbracket", seed), (0.0, 0.0, 0.0)), seed  # bbox centre is empty
    assert _inside(make_procedural_shape("box", 0), (0.0, 0.0, 0.0))  # negative control
