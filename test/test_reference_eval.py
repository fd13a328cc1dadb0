"""train/reference_eval.py: the grid metrics used to score the Image2Sphere reference side by side."""

from __future__ import annotations

import math

import torch

from pose_core import grids, so3
from train.reference_eval import nearest_grid_log_likelihood, score


def test_uniform_logits_give_minus_log_haar_volume():
    grid = grids.so3_healpix_grid(1)
    rots = so3.random_rotations(5, generator=torch.Generator().manual_seed(0)).float()
    ll = nearest_grid_log_likelihood(torch.log_softmax(torch.zeros(grid.shape[0]), 0), grid, rots, chunk=2)
    assert torch.allclose(ll, torch.full((5,), -math.log(math.pi**2)), atol=1e-5)


def test_peaked_logits_argmax_and_nearest_cell():
    grid = grids.so3_healpix_grid(1)
    j = 123
    logits = torch.zeros(2, grid.shape[0])
    logits[:, j] = 10.0
    tilt = so3.rotvec_to_matrix(torch.tensor([0.0, 0.0, math.radians(2.0)]))
    near = grid[j] @ tilt  # 2 deg from cell centre j: nearest grid rotation is j
    eq_hit = torch.stack([grid[j - 1], near])  # the rendering rotation is not at j, an equivalent is
    eq_miss = grid[j - 1][None]
    out = score(logits, grid, [eq_hit, eq_miss])
    log_p = torch.log_softmax(logits[0].double(), 0).float()
    expect_hit = log_p[j] + math.log(grid.shape[0]) - math.log(math.pi**2)
    expect_other = log_p[j - 1] + math.log(grid.shape[0]) - math.log(math.pi**2)
    assert abs(float(out["error"][0]) - math.radians(2.0)) < 1e-3
    assert float(out["error"][1]) > math.radians(5.0)
    assert torch.allclose(out["ll"][0], (expect_hit + expect_other) / 2, atol=1e-4)
    assert torch.allclose(out["ll_render"][0], expect_other, atol=1e-4)
    assert torch.allclose(out["ll"][1], expect_other, atol=1e-4)
