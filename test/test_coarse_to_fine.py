"""Coarse-to-fine mode search agrees with the exhaustive full-grid argmax on random distributions."""

import pytest
import torch

from pose_core import SO3Distribution, fourier, grids, so3, wigner

LMAX = 6


def _random_distributions(n, generator):
    """Two families: random band-limited log-densities, and sharp multimodal mixtures (like symmetric objects)."""
    dim = wigner.so3_dim(LMAX)
    scale = torch.empty(n // 2, 1, dtype=torch.float64).uniform_(0.05, 0.6, generator=generator)
    smooth = torch.randn(n // 2, dim, generator=generator, dtype=torch.float64) * scale
    # sum of band-limited "delta" kernels at 1..24 random rotations with random weights
    peaks = []
    for i in range(n - n // 2):
        k = int(torch.randint(1, 25, (1,), generator=generator))
        centres = so3.random_rotations(k, generator=generator, dtype=torch.float64)
        weights = torch.rand(k, generator=generator, dtype=torch.float64) * 0.5 + 0.5
        peaks.append((weights[:, None] * wigner.flat_wigner(centres, LMAX)).sum(0) * (0.2 + 0.1 * (i % 5)))
    return torch.cat([smooth, torch.stack(peaks)])


@pytest.mark.parametrize("base_level, target_level, n", [(3, 4, 200), (3, 5, 50)])
def test_mode_matches_full_grid_argmax(base_level, target_level, n, generator):
    """The defaults of ``predict`` (level 3 -> 5, top 64) and a shorter ladder, on many distributions."""
    coeffs = _random_distributions(n, generator).float()
    d = SO3Distribution.from_fourier(coeffs, LMAX, base_level=base_level, target_level=target_level, top_k=64)
    best_idx, best_val = fourier.full_grid_argmax(coeffs, target_level, LMAX)
    full_mode = grids.cell_rotations(target_level, best_idx)
    dist = so3.geodesic_distance(d.mode(), full_mode)
    # same cell, or a neighbouring cell of (numerically) equal value
    ours = fourier.evaluate_rotations(coeffs.double(), d.mode().double()[:, None], LMAX)[:, 0]
    agree = (dist <= 1.01 * grids.resolution(target_level)) | (ours >= best_val.double() - 1e-4)
    assert agree.float().mean() >= 0.99, f"agreement {agree.float().mean():.3f}"
    assert d.finest_level == target_level


def test_refinement_is_cheaper_than_the_full_grid():
    d = SO3Distribution.from_fourier(torch.zeros(1, wigner.so3_dim(LMAX)), LMAX, base_level=3, target_level=5, top_k=64)
    evaluated = int(torch.isfinite(d.log_mass).sum()) + 2 * 64  # live cells + refined parents
    assert evaluated < 0.03 * grids.num_cells(5)
