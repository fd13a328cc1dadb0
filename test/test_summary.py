"""pose_core.summary: one batched summary per object, corrections applied on the left, float32 and float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import SO3Distribution, crops, grids, pinhole, so3
from pose_core.summary import summarize

K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])


def _peaked(R_true: torch.Tensor, dtype=torch.float32, std=0.15) -> SO3Distribution:
    level = 2
    cells = grids.so3_healpix_grid(level, dtype=torch.float64)
    logits = -(so3.geodesic_distance(cells, R_true) ** 2) / (2 * std**2)
    return SO3Distribution.from_grid_logits(logits[None].to(dtype), level)


def _q_to_R(q: np.ndarray) -> np.ndarray:
    return so3.quat_to_matrix(torch.as_tensor(q)).numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_summary_packs_and_corrects(dtype) -> None:
    R_true = so3.random_rotations(1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    dist = _peaked(R_true, dtype)
    plain = summarize(dist, num_samples=64, generator=torch.Generator().manual_seed(0))
    assert plain.orientation.shape == (1, 4) and plain.samples.shape == (1, 64, 4)
    assert plain.orientation.dtype == np.float64 and plain.orientation[0, 3] >= 0
    assert plain.sample_weights.sum() == pytest.approx(1.0)
    mode = _q_to_R(plain.orientation[0])
    assert math.degrees(float(so3.geodesic_distance(torch.as_tensor(mode), R_true))) < 15
    np.testing.assert_allclose(mode, dist.mode()[0].double().numpy(), atol=1e-5)
    np.testing.assert_allclose(plain.covariance, plain.covariance.transpose(0, 2, 1), atol=1e-12)
    assert np.linalg.eigvalsh(plain.covariance[0]).min() > 0
    assert plain.mode_count[0] >= 1 and plain.mode_mass[0, 0] > 0.5
    np.testing.assert_allclose(plain.mode_log_density[0, 0], plain.max_log_density[0], atol=1e-5)

    R_ray = crops.crop_ray_rotation(K, (100.0, 50.0))
    fixed = summarize(dist, R_ray[None], num_samples=64, generator=torch.Generator().manual_seed(0))
    Rn = R_ray.numpy()
    np.testing.assert_allclose(_q_to_R(fixed.orientation[0]), Rn @ mode, atol=1e-6)
    np.testing.assert_allclose(_q_to_R(fixed.samples[0]), Rn @ _q_to_R(plain.samples[0]), atol=1e-6)
    np.testing.assert_allclose(fixed.covariance[0], Rn @ plain.covariance[0] @ Rn.T, atol=1e-9)
    assert fixed.entropy[0] == pytest.approx(plain.entropy[0])
    assert fixed.max_log_density[0] == pytest.approx(plain.max_log_density[0])
    assert (fixed.samples[..., 3] >= 0).all() and (fixed.modes[0, : fixed.mode_count[0], 3] >= 0).all()
    # negative control: the correction changes what it should
    assert np.abs(fixed.orientation - plain.orientation).max() > 0.1


def test_batched_summary_equals_one_at_a_time() -> None:
    coeffs = 3 * torch.randn(3, 455, generator=torch.Generator().manual_seed(1))
    dist = SO3Distribution.from_fourier(coeffs, 6, target_level=4, top_k=16)
    Rc = crops.ray_rotation(np.array([[0.1, 0.0, 1.0], [0.0, -0.2, 1.0], [0.3, 0.3, 1.0]]))
    whole = summarize(dist, Rc, num_samples=5)
    for b in range(3):
        one = summarize(dist.select(b), Rc[b : b + 1], num_samples=5)
        np.testing.assert_allclose(one.orientation[0], whole.orientation[b], atol=1e-6)
        np.testing.assert_allclose(one.covariance[0], whole.covariance[b], atol=1e-6)
        np.testing.assert_allclose(one.modes[0], whole.modes[b], atol=1e-6)
        np.testing.assert_allclose(one.mode_mass[0], whole.mode_mass[b], atol=1e-6)
        assert one.entropy[0] == pytest.approx(whole.entropy[b], abs=1e-5)


def test_missing_modes_are_marked_and_bad_arguments_named() -> None:
    logits = torch.full((1, grids.num_cells(0)), float("-inf"))
    logits[0, 5] = 0.0  # all the mass in one cell: one mode only
    s = summarize(SO3Distribution.from_grid_logits(logits, level=0), num_modes=3, num_samples=2)
    assert s.mode_count[0] == 1 and s.mode_mass[0, 1:].sum() == 0 and np.isneginf(s.mode_log_density[0, 1:]).all()
    with pytest.raises(ValueError, match="num_samples"):
        summarize(SO3Distribution.from_grid_logits(logits, level=0), num_samples=0)
    with pytest.raises(ValueError, match=r"corrections must have shape \(1, 3, 3\)"):
        summarize(SO3Distribution.from_grid_logits(logits, level=0), np.eye(3))


def test_nominal_translation_is_along_the_crop_ray() -> None:
    t = pinhole.translation_from_nominal(2.0, K, (100.0, 50.0))
    R_ray = crops.crop_ray_rotation(K, (100.0, 50.0)).numpy()
    np.testing.assert_allclose(t.translation / 2.0, R_ray @ [0.0, 0.0, 1.0], atol=1e-12)
