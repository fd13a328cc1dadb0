"""pose_core.metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pose_core import grids, metrics, so3
from pose_core.data import get_shape
from pose_core.distribution import SO3Distribution


def _rot_z(deg: float, dtype=torch.float64) -> torch.Tensor:
    return so3.rotvec_to_matrix(torch.tensor([0.0, 0.0, math.radians(deg)], dtype=dtype))


def test_errors_accuracy_median(dtype):
    gt = torch.eye(3, dtype=dtype).expand(3, 3, 3)
    pred = torch.stack([_rot_z(10, dtype), _rot_z(20, dtype), _rot_z(40, dtype)])
    err = metrics.nearest_equivalent_error(pred, gt)
    assert torch.allclose(err, torch.tensor([10.0, 20.0, 40.0], dtype=dtype).deg2rad(), atol=1e-5)
    assert metrics.accuracy_at(err, 15) == pytest.approx(1 / 3)
    assert metrics.accuracy_at(err, 30) == pytest.approx(2 / 3)
    assert math.degrees(metrics.median_error(err)) == pytest.approx(20.0, abs=1e-3)
    s = metrics.summarize(err)
    assert s["n"] == 3 and s["acc@15"] == pytest.approx(1 / 3) and s["median_deg"] == pytest.approx(20.0, abs=1e-3)


def test_cube_nearest_equivalent(generator):
    sym = torch.as_tensor(get_shape("cube").symmetries)  # (24, 3, 3)
    R = so3.random_rotations(1, generator, dtype=torch.float64)[0]
    eq = (R @ sym)[None]  # (1, 24, 3, 3)
    # A prediction 10 deg (about x) from the 7th equivalent: the nearest is 10 deg away.
    pred = (so3.rotvec_to_matrix(torch.tensor([math.radians(10.0), 0.0, 0.0], dtype=torch.float64)) @ eq[0, 7])[None]
    err = metrics.nearest_equivalent_error(pred, eq)
    assert math.degrees(float(err)) == pytest.approx(10.0, abs=1e-6)
    # Against the rendering rotation alone the error is larger (at least 90 - 10 deg).
    assert math.degrees(float(metrics.nearest_equivalent_error(pred, eq[:, 0]))) > 79.0
    # Ragged list input gives the same result.
    assert torch.allclose(metrics.nearest_equivalent_error(pred, [eq[0]]), err)


def test_uniform_log_likelihood(generator):
    B = 2
    logits = torch.zeros(B, grids.num_cells(1), dtype=torch.float64)
    dist = SO3Distribution.from_grid_logits(logits, 1)
    gt = [so3.random_rotations(k, generator, dtype=torch.float64) for k in (3, 1)]
    ll = metrics.log_likelihood(dist, gt)
    assert torch.allclose(ll, torch.full((B,), -math.log(math.pi**2), dtype=torch.float64))
    # Band-limited constant signal: uniform density too.
    coeffs = torch.zeros(B, 455, dtype=torch.float64)
    assert torch.allclose(metrics.grid_log_likelihood(coeffs, 6, gt, level=2), ll)


def test_grid_log_likelihood_matches_from_grid_logits(generator):
    lmax, level = 6, 2
    coeffs = torch.randn(3, 455, generator=generator, dtype=torch.float64)
    gt = so3.random_rotations(3, generator, dtype=torch.float64)
    from pose_core import fourier

    logits = coeffs @ fourier.grid_flat_wigner(level, lmax, torch.float64).T
    want = SO3Distribution.from_grid_logits(logits, level).log_prob(gt)
    got = metrics.grid_log_likelihood(coeffs, lmax, gt, level=level, chunk=1000)
    assert torch.allclose(got, want, atol=1e-9)


def test_ll_averages_over_equivalents(generator):
    """IPDF's SYMSOL convention: mean over the equivalents of the per-equivalent log-likelihood."""
    level = 1
    logits = torch.randn(1, grids.num_cells(level), generator=generator, dtype=torch.float64)
    dist = SO3Distribution.from_grid_logits(logits, level)
    eq = so3.random_rotations(4, generator, dtype=torch.float64)[None]
    each = dist.log_prob(eq)  # (1, 4)
    assert torch.allclose(metrics.log_likelihood(dist, eq), each.mean(1))
    # Ragged: the padding does not count.
    ragged = [eq[0, :2], eq[0]]
    dist2 = SO3Distribution.from_grid_logits(logits.expand(2, -1), level)
    got = metrics.log_likelihood(dist2, ragged)
    assert torch.allclose(got, torch.stack([each[0, :2].mean(), each[0].mean()]))


def test_aggregate_by():
    err = torch.tensor([5.0, 50.0, 5.0, 5.0]).deg2rad()
    ll = torch.tensor([1.0, 2.0, 3.0, 5.0])
    out = metrics.aggregate_by(["cube", "cube", "cone", "cone"], err, ll)
    assert out["cube"]["acc@15"] == 0.5 and out["cone"]["acc@15"] == 1.0
    assert out["cube"]["ll"] == 1.5 and out["all"]["ll"] == pytest.approx(2.75)
    assert out["all"]["n"] == 4 and out["mean_of_groups"]["acc@15"] == pytest.approx(0.75)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        metrics.nearest_equivalent_error(torch.zeros(4, 3), torch.zeros(4, 3, 3))
    with pytest.raises(ValueError, match="batch"):
        metrics.nearest_equivalent_error(torch.eye(3).expand(2, 3, 3), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match="equivalents"):
        metrics.pad_equivalents([torch.zeros(0, 3, 3)])
    with pytest.raises(ValueError, match="errors"):
        metrics.accuracy_at(torch.zeros(2, 2), 15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mode_flips_count_jumps_of_the_mode_while_the_truth_is_still(dtype: torch.dtype) -> None:
    from pose_core.metrics import mode_flips

    def rz(deg: float) -> torch.Tensor:
        return so3.rotvec_to_matrix(torch.tensor([0.0, 0.0, math.radians(deg)], dtype=dtype))

    truths = torch.stack([rz(2.0 * t) for t in range(6)])  # 2 deg per frame: still
    modes = truths.clone()
    modes[3] = rz(90.0) @ truths[3]  # a 90 deg symmetric jump at frame 3 and back at 4
    flips, still = mode_flips(modes, truths)
    assert still.all() and flips.tolist() == [False, False, True, True, False]
    assert not mode_flips(truths, truths)[0].any()  # negative control: following the truth is no flip
    fast = torch.stack([rz(20.0 * t) for t in range(6)])  # the truth itself moves 20 deg: no still pairs
    assert not mode_flips(fast, fast)[1].any()
    with pytest.raises(ValueError, match="T, 3, 3"):
        mode_flips(modes[:3], truths)
