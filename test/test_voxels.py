"""Tests of pose_core.voxels: winding numbers against a solid-angle twin, voxelize against winding numbers at the
cell centres and exact box counts, overlapping parts, flipped faces, IoU by hand, and boundary-surface samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pose_core.data.procedural import make_procedural_shape
from pose_core.data.reconstruction import unit_diagonal
from pose_core.pointsets import nearest_distances
from pose_core.surface import sample_surface
from pose_core.voxels import (
    VOXEL_HALF_EXTENT,
    occupancy,
    voxel_centers,
    voxel_iou,
    voxel_surface_points,
    voxelize,
    winding_number,
)


def _box(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box ``[lo, hi]`` (12 outward-wound triangles, trimesh's)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    box = trimesh.creation.box(extents=hi - lo)
    return np.asarray(box.vertices) + (lo + hi) / 2, np.asarray(box.faces, dtype=np.int64)


def _union(*parts) -> tuple[np.ndarray, np.ndarray]:
    vs, fs, offset = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + offset)
        offset += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def _shape(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    s = make_procedural_shape(name, seed)
    return unit_diagonal(s.vertices), np.array(s.faces)


def _solid_angle_winding(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding number by the Van Oosterom & Strackee (1983) solid angle of every triangle:
    ``tan(Omega / 2) = a . (b x c) / (|a||b||c| + (a . b)|c| + (a . c)|b| + (b . c)|a|)``, with ``a, b, c`` the
    corners relative to the point; ``w = sum Omega / (4 pi)``. Trigonometric, independent of the ray code."""
    tri = vertices[faces]  # (F, 3, 3)
    d = tri[None] - points[:, None, None, :]  # (P, F, 3, 3)
    a, b, c = d[:, :, 0], d[:, :, 1], d[:, :, 2]
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    num = np.einsum("pfk,pfk->pf", a, np.cross(b, c))
    den = (la * lb * lc + np.einsum("pfk,pfk->pf", a, b) * lc + np.einsum("pfk,pfk->pf", a, c) * lb
           + np.einsum("pfk,pfk->pf", b, c) * la)
    return (2 * np.arctan2(num, den)).sum(-1) / (4 * math.pi)


@pytest.mark.parametrize("name,seed", [("mug", 1), ("lbracket", 1), ("torus", 2)])
def test_winding_number_against_solid_angle_twin(name, seed, dtype):
    v, f = _shape(name, seed)
    rng = np.random.default_rng(seed)
    # uniform in the cube, plus points near the surface (inside and outside of every part)
    surface = trimesh.Trimesh(v, f, process=False).sample(300, seed=seed)
    points = np.concatenate([rng.uniform(-0.5, 0.5, (500, 3)), surface + rng.normal(0, 0.01, surface.shape)])
    if name == "lbracket":  # two overlapping boxes (24 faces): a grid of points reaches into the overlap
        points = np.concatenate([points, voxel_centers(16, dtype=torch.float64).reshape(-1, 3).numpy()])
    twin = _solid_angle_winding(v, f, points)
    np.testing.assert_allclose(twin, np.round(twin), atol=1e-6)  # a closed mesh: integers away from the surface
    w = winding_number(torch.tensor(v), torch.tensor(f), torch.tensor(points, dtype=dtype))
    assert w.dtype == dtype and w.shape == (len(points),)
    np.testing.assert_array_equal(w.numpy(), np.round(twin))
    assert (w > 0.5).any() and (w < 0.5).any()
    np.testing.assert_array_equal(occupancy(v, f, points).numpy(), np.round(twin) > 0.5)
    if name == "lbracket":  # the two boxes of the L overlap: winding 2 there, and it still counts as inside
        assert (w == 2).any() and occupancy(v, f, points[w.numpy() == 2]).all()


def test_voxelize_equals_winding_at_cell_centres():
    v, f = _shape("mug", 1)
    for R in (16, 21):
        grid = voxelize(v, f, R)
        assert grid.shape == (R, R, R) and grid.dtype == torch.bool
        centres = voxel_centers(R, dtype=torch.float64).reshape(-1, 3)
        expected = (winding_number(v, f, centres) > 0.5).reshape(R, R, R)
        assert torch.equal(grid, expected)
        assert 0 < grid.sum() < R ** 3
    # the mug (a body with a handle on +x) is not symmetric under x -> -x, but is under y -> -y: x is the first index
    grid = voxelize(v, f, 16)
    assert not torch.equal(grid, grid.flip(0)) and torch.equal(grid, grid.flip(1))


def test_voxel_centers_convention():
    c = voxel_centers(4)
    assert c.shape == (4, 4, 4, 3) and c.dtype == torch.float32
    # h = 0.5, cell 0.25: centres -0.375, -0.125, 0.125, 0.375
    torch.testing.assert_close(c[1, 2, 3], torch.tensor([-0.125, 0.125, 0.375]))
    torch.testing.assert_close(voxel_centers(2, dtype=torch.float64, half_extent=1.0)[0, 1, 0],
                               torch.tensor([-0.5, 0.5, -0.5], dtype=torch.float64))
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="resolution"):
            voxel_centers(bad)


def test_box_gives_exact_cell_count():
    # R = 20: cell 0.05, centres -0.475 + 0.05 i. Box x in [-0.31, 0.26] holds centres i = 4..14 (-0.275..0.225, 11);
    # y in [-0.2, 0.1] (faces on cell planes) i = 6..11 (-0.175..0.075, 6); z in [0.01, 0.49] i = 10..19
    # (0.025..0.475, 10): 11 * 6 * 10 = 660 cells, exactly that block
    v, f = _box([-0.31, -0.2, 0.01], [0.26, 0.1, 0.49])
    grid = voxelize(v, f, 20)
    assert int(grid.sum()) == 11 * 6 * 10 == 660
    expected = torch.zeros(20, 20, 20, dtype=torch.bool)
    expected[4:15, 6:12, 10:20] = True
    assert torch.equal(grid, expected)
    # a centred cube whose top and bottom diagonals run through cell centres (x = y): 12^3 centres in (-0.3, 0.3);
    # a crossing on the shared diagonal edge counted twice (or never) would break the count
    v, f = _box([-0.3, -0.3, -0.3], [0.3, 0.3, 0.3])
    grid = voxelize(v, f, 20)
    assert int(grid.sum()) == 12 ** 3
    assert torch.equal(grid[4:16, 4:16, 4:16], torch.ones(12, 12, 12, dtype=torch.bool))
    # a box filling the whole cube: every cell
    v, f = _box([-0.5, -0.5, -0.5], [0.5, 0.5, 0.5])
    assert bool(voxelize(v, f, 8).all())


def test_overlapping_parts_are_one_solid():
    a = _box([-0.31, -0.21, -0.21], [0.11, 0.21, 0.21])
    b = _box([-0.11, -0.21, -0.21], [0.31, 0.21, 0.21])
    v, f = _union(a, b)
    points = np.array([[0.0, 0.0, 0.0], [-0.2, 0.05, 0.0], [0.2, 0.0, -0.1], [0.4, 0.0, 0.0], [0.0, 0.3, 0.0]])
    w = winding_number(v, f, points)
    np.testing.assert_array_equal(w.numpy(), [2, 1, 1, 0, 0])
    np.testing.assert_allclose(_solid_angle_winding(v, f, points), [2, 1, 1, 0, 0], atol=1e-9)
    assert occupancy(v, f, points).tolist() == [True, True, True, False, False]
    # the grid of the union is the union of the grids, the overlap included
    grid = voxelize(v, f, 20)
    ga, gb = voxelize(*a, 20), voxelize(*b, 20)
    assert torch.equal(grid, ga | gb) and (ga & gb).any()
    # negative control: ray parity (odd number of crossings = inside) would hollow out the overlap
    centres = voxel_centers(20, dtype=torch.float64).reshape(-1, 3)
    crossings = winding_number(v, f, centres).reshape(20, 20, 20)
    parity = crossings.abs().long() % 2 == 1
    assert not torch.equal(parity, grid) and not parity[ga & gb].any()


def test_flipped_faces_give_negative_winding():
    v, f = _shape("mug", 1)
    flipped = f[:, [0, 2, 1]]
    points = voxel_centers(12, dtype=torch.float64).reshape(-1, 3)
    w, wf = winding_number(v, f, points), winding_number(v, flipped, points)
    assert (w > 0).any()
    assert torch.equal(wf, -w)  # inside an inward-wound surface the winding number is -1
    np.testing.assert_allclose(_solid_angle_winding(v, flipped, points[w > 0][:50].numpy()), -1, atol=1e-6)
    assert not occupancy(v, flipped, points).any() and not voxelize(v, flipped, 12).any()


def test_voxel_iou_hand_values():
    a = torch.zeros(4, 4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, 4, dtype=torch.bool)
    a[0, 0, 0] = a[1, 0, 0] = a[2, 0, 0] = True  # {x, y, z}
    b[1, 0, 0] = b[2, 0, 0] = b[3, 3, 3] = b[0, 1, 2] = True  # {y, z, u, w}
    # intersection {y, z} = 2, union {x, y, z, u, w} = 5
    assert voxel_iou(a, b).item() == pytest.approx(0.4)
    assert voxel_iou(b, a).item() == pytest.approx(0.4)
    assert voxel_iou(a, a).item() == 1.0
    empty = torch.zeros_like(a)
    assert voxel_iou(empty, empty).item() == 1.0  # two empty grids agree
    assert voxel_iou(empty, a).item() == 0.0 and voxel_iou(a, empty).item() == 0.0
    # probabilities: occupied where > threshold (0.5 itself is not); {0, 1} float targets
    prob = a.float() * 0.6 + b.float() * 0.3  # x: 0.6, y, z: 0.9, u, w: 0.3
    prob[0, 0, 1] = 0.5
    assert voxel_iou(prob, b.float()).item() == pytest.approx(2 / 5)  # {x, y, z} vs {y, z, u, w}
    assert voxel_iou(prob, b, threshold=0.7).item() == pytest.approx(2 / 4)  # {y, z} vs {y, z, u, w}
    assert voxel_iou(prob, b, threshold=0.2).item() == pytest.approx(4 / 6)  # {x, y, z, u, w, the 0.5} vs b
    # batched: one IoU per grid
    iou = voxel_iou(torch.stack([a, empty, a]), torch.stack([b, empty, a]))
    assert iou.shape == (3,)
    torch.testing.assert_close(iou, torch.tensor([0.4, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        voxel_iou(a, b[:3])
    with pytest.raises(ValueError, match="same shape"):
        voxel_iou(a[0], b[0])


def _boundary_squares(occ: np.ndarray) -> set[tuple[int, int, int, int, int]]:
    """Brute force: every (i, j, k, axis, sign) with cell (i, j, k) occupied and its neighbour that way empty
    (or outside the grid)."""
    R = occ.shape[0]
    out = set()
    for i, j, k in zip(*np.nonzero(occ)):
        for axis in range(3):
            for sign in (-1, 1):
                n = [i, j, k]
                n[axis] += sign
                if not (0 <= n[axis] < R) or not occ[tuple(n)]:
                    out.add((int(i), int(j), int(k), axis, sign))
    return out


def _square_of(point: np.ndarray, occ: np.ndarray, cell: float, h: float = VOXEL_HALF_EXTENT):
    """The boundary square a point lies on: ``(i, j, k, axis, sign)`` of the occupied cell, or ``None`` when the
    point is not on a face plane between an occupied and an empty (or outside) cell."""
    R = occ.shape[0]
    u = (np.asarray(point, dtype=np.float64) + h) / cell  # in cell units
    off = np.abs(u - np.round(u))
    axis = int(np.argmin(off))  # the plane the point is on (the others: near one only at a square's edge)
    if off[axis] > 1e-5:
        return None
    idx = np.floor(u).astype(int)
    plane = int(np.round(u[axis]))
    below, above = idx.copy(), idx.copy()
    below[axis], above[axis] = plane - 1, plane

    def occupied(c):
        return bool(np.all((c >= 0) & (c < R)) and occ[tuple(c)])

    if occupied(below) and not occupied(above):
        return (*map(int, below), axis, 1)
    if occupied(above) and not occupied(below):
        return (*map(int, above), axis, -1)
    return None


def test_voxel_surface_points_lie_on_boundary_squares():
    R = 6
    occ = torch.rand(R, R, R, generator=torch.Generator().manual_seed(0)) < 0.4
    squares = _boundary_squares(occ.numpy())
    n = 60 * len(squares)
    pts = voxel_surface_points(occ, n, generator=torch.Generator().manual_seed(1))
    assert pts.shape == (n, 3) and pts.dtype == torch.float32
    assert pts.abs().max() <= VOXEL_HALF_EXTENT + 1e-6
    cell = 2 * VOXEL_HALF_EXTENT / R
    hit = [_square_of(p, occ.numpy(), cell) for p in pts.numpy()]
    assert None not in hit  # every point on a face plane between an occupied and an empty cell
    counts = {s: 0 for s in squares}
    for s in hit:
        counts[s] += 1
    assert set(counts) == squares and min(counts.values()) > 0  # every boundary square, and only those
    # uniform over squares (all of equal area): chi-square with len(squares) - 1 degrees of freedom, within
    # 5 standard deviations of its mean
    c = np.array(list(counts.values()), dtype=np.float64)
    chi2 = ((c - c.mean()) ** 2 / c.mean()).sum()
    dof = len(squares) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)
    # negative control: the checker rejects a point on a face between two occupied cells, and a cell centre
    both = np.argwhere(occ.numpy()[:-1] & occ.numpy()[1:])[0]  # cells (i, j, k) and (i + 1, j, k) occupied
    inner = -VOXEL_HALF_EXTENT + (both + np.array([1.0, 0.5, 0.5])) * cell
    assert _square_of(inner, occ.numpy(), cell) is None
    assert _square_of(-VOXEL_HALF_EXTENT + (both + 0.5) * cell, occ.numpy(), cell) is None


def test_voxel_surface_points_edge_cases():
    empty = torch.zeros(5, 5, 5, dtype=torch.bool)
    assert voxel_surface_points(empty, 100).shape == (0, 3)
    full = torch.ones(4, 4, 4)
    pts = voxel_surface_points(full, 500, generator=torch.Generator().manual_seed(0))  # float grids are read as bool
    torch.testing.assert_close(pts.abs().max(dim=1).values, torch.full((500,), 0.5))  # the outer cube only
    assert voxel_surface_points(full, 0).shape == (0, 3)
    one = torch.zeros(3, 3, 3, dtype=torch.bool)
    one[1, 1, 1] = True  # the middle cell [-1/6, 1/6]^3: its 6 faces
    pts = voxel_surface_points(one, 300, generator=torch.Generator().manual_seed(0), half_extent=0.5)
    torch.testing.assert_close(pts.abs().max(dim=1).values, torch.full((300,), 1 / 6))
    # deterministic with a generator
    a = voxel_surface_points(one, 50, generator=torch.Generator().manual_seed(3))
    b = voxel_surface_points(one, 50, generator=torch.Generator().manual_seed(3))
    c = voxel_surface_points(one, 50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="cubic"):
        voxel_surface_points(torch.zeros(3, 3, 4, dtype=torch.bool), 10)
    with pytest.raises(ValueError, match="cubic"):
        voxel_surface_points(torch.zeros(3, 3, dtype=torch.bool), 10)


def test_voxels_of_a_shape_surface_round_trip():
    # a boundary square sits halfway between an inside and an outside centre, so the surface crosses that segment:
    # every point of it is within sqrt(3) / 2 cells of the mesh (plus the spacing of the dense surface samples)
    v, f = _shape("mug", 1)
    grid = voxelize(v, f, 32)
    pts = voxel_surface_points(grid, 2000, generator=torch.Generator().manual_seed(0)).double()
    dense = sample_surface(torch.tensor(v), torch.tensor(f), 40000, torch.Generator().manual_seed(1))
    dist = nearest_distances(pts, dense)
    assert dist.max() < math.sqrt(3) / 2 / 32 + 0.01
    assert dist.mean() < 0.5 / 32


def test_errors():
    v, f = _box([-0.2] * 3, [0.2] * 3)
    with pytest.raises(ValueError, match="points"):
        winding_number(v, f, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="faces"):
        winding_number(v, f[:0], np.zeros((4, 3)))
    with pytest.raises(ValueError, match="vertices"):
        winding_number(v[:, :2], f, np.zeros((4, 3)))
    for bad in (0, -1, 8.0, True):
        with pytest.raises(ValueError, match="resolution"):
            voxelize(v, f, bad)
    # integer points are accepted (float32 out)
    assert winding_number(v, f, torch.zeros(2, 3, dtype=torch.long)).dtype == torch.float32
