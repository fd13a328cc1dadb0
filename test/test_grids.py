"""The hierarchical HEALPix SO(3) grid: sizes, orthonormality, coverage, equal volumes, nesting."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pose_core import grids, so3


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_grid_size_and_orthonormality(level, dtype):
    G = grids.so3_healpix_grid(level, dtype=dtype)
    assert G.shape == (72 * 8**level, 3, 3) == (grids.num_cells(level), 3, 3)
    eye = torch.eye(3, dtype=dtype).expand_as(G)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(G @ G.transpose(-1, -2), eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.det(G), torch.ones(len(G), dtype=dtype), atol=atol, rtol=0)


def test_grid_points_are_distinct_and_cover_so3(generator):
    level = 2
    G = grids.so3_healpix_grid(level, dtype=torch.float64)
    # coverage: every random rotation has a grid point within the grid resolution
    Q = so3.random_rotations(2000, generator=generator, dtype=torch.float64)
    nearest = so3.geodesic_distance(Q[:, None], G[None]).min(dim=1).values
    assert float(nearest.max()) < grids.resolution(level)
    # distinct: the closest pair is not degenerate
    d = so3.geodesic_distance(G[:500, None], G[None])
    d[torch.arange(500), torch.arange(500)] = math.inf
    assert float(d.min()) > 0.2 * grids.resolution(level)


def test_cells_have_equal_haar_volume(generator):
    """Haar-random rotations fall into the cells uniformly (chi-square), so volumes are equal."""
    level = 1
    R = so3.random_rotations(200_000, generator=generator, dtype=torch.float64)
    counts = np.bincount(grids.cell_of(R, level).numpy(), minlength=grids.num_cells(level))
    assert stats.chisquare(counts).pvalue > 1e-3


def test_cell_of_grid_points_and_children_nesting():
    level = 2
    idx = torch.arange(grids.num_cells(level))
    G = grids.cell_rotations(level, idx, dtype=torch.float64)
    assert torch.equal(grids.cell_of(G, level), idx)
    ch = grids.children(idx, level)  # (N, 8)
    assert ch.shape == (len(idx), 8)
    assert torch.equal(ch.reshape(-1).sort().values, torch.arange(grids.num_cells(level + 1)))  # a partition
    child_R = grids.cell_rotations(level + 1, ch, dtype=torch.float64)
    assert torch.equal(grids.cell_of(child_R, level), idx[:, None].expand(-1, 8))
    assert torch.equal(grids.ancestor(ch, level + 1, level), idx[:, None].expand(-1, 8))
    grandchildren = grids.children(ch, level + 1)
    assert torch.equal(grids.ancestor(grandchildren, level + 2, level), idx[:, None, None].expand(-1, 8, 8))


def test_samples_in_cells_stay_in_their_cell_and_are_not_grid_points(generator):
    level = 3
    idx = torch.randint(0, grids.num_cells(level), (400,), generator=generator)
    S = grids.sample_in_cells(idx, level, generator=generator, dtype=torch.float64)
    assert torch.equal(grids.cell_of(S, level), idx)
    centres = grids.cell_rotations(level, idx, dtype=torch.float64)
    assert float(so3.geodesic_distance(S, centres).min()) > 0


def test_resolution_and_level_for_resolution():
    assert math.isclose(math.degrees(grids.resolution(5)), 1.875)
    assert grids.level_for_resolution(math.radians(2.0)) == 5
    assert grids.level_for_resolution(math.radians(7.5)) == 3
    with pytest.raises(ValueError):
        grids.level_for_resolution(0.0)
    with pytest.raises(ValueError):
        grids.num_cells(-1)
