"""CUDA paths against the CPU ones (skipped, with the reason, where torch sees no GPU: CI and this
project's machine; bench/gpu_check.sh runs them on a GPU machine)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose_core import SO3Distribution, fourier, grids, so3
from pose_core.model import ImageToSphere
from pose_core.pipeline import Box, EstimatorSettings, PoseEstimator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (torch.cuda.is_available() is False)")
CUDA = torch.device("cuda")


def test_fourier_evaluation_on_cuda_matches_cpu() -> None:
    coeffs = torch.randn(4, 455, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for level in (3,):
        torch.testing.assert_close(fourier.evaluate_grid(coeffs.to(CUDA), level, 6).cpu(),
                                   fourier.evaluate_grid(coeffs, level, 6), atol=1e-9, rtol=0)
    parents = torch.randint(0, grids.num_cells(4), (4, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fourier.evaluate_children(coeffs.to(CUDA), 4, parents.to(CUDA), 6).cpu(),
                               fourier.evaluate_children(coeffs, 4, parents, 6), atol=1e-9, rtol=0)


def test_distribution_on_cuda_matches_cpu() -> None:
    coeffs = 3 * torch.randn(3, 455, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cpu = SO3Distribution.from_fourier(coeffs, 6)
    gpu = SO3Distribution.from_fourier(coeffs.to(CUDA), 6)
    torch.testing.assert_close(gpu.mode().cpu(), cpu.mode(), atol=1e-9, rtol=0)
    torch.testing.assert_close(gpu.covariance().cpu(), cpu.covariance(), atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(gpu.entropy().cpu(), cpu.entropy(), atol=1e-9, rtol=0)
    torch.testing.assert_close(gpu.top_mode_cells()[1].cpu(), cpu.top_mode_cells()[1], atol=1e-9, rtol=0)


def test_model_and_estimator_on_cuda_match_cpu() -> None:
    torch.manual_seed(0)
    model = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4).eval()
    model.input_size = 64
    rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    K = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])
    boxes = [Box((100.0, 120.0), (80.0, 80.0)), Box((220.0, 100.0), (60.0, 90.0))]
    settings = EstimatorSettings(target_level=4, num_samples=5)
    cpu = PoseEstimator(model, settings).estimate(rgb, K, boxes=boxes)
    gpu = PoseEstimator(model.to(CUDA), settings).estimate(rgb, K, boxes=boxes)
    model.cpu()
    for a, b in zip(cpu.objects, gpu.objects, strict=True):
        qa, qb = torch.as_tensor(a.orientation), torch.as_tensor(b.orientation)
        angle = so3.geodesic_distance(so3.quat_to_matrix(qa), so3.quat_to_matrix(qb))
        assert math.degrees(float(angle)) <= math.degrees(grids.resolution(4)) + 1e-6
        np.testing.assert_allclose(a.translation, b.translation, atol=1e-12)
        assert abs(a.entropy - b.entropy) < 1e-2


def test_tracked_estimator_on_cuda_matches_cpu() -> None:
    """The temporal filter's prior (evaluated on the CPU, added on the model's device) and the tracks on CUDA."""
    torch.manual_seed(0)
    model = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4).eval()
    model.input_size = 64
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]
    K = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])
    boxes = [Box((100.0, 120.0), (80.0, 80.0), id="a"), Box((220.0, 100.0), (60.0, 90.0))]
    settings = EstimatorSettings(target_level=4, num_samples=5)
    cpu_est = PoseEstimator(model, settings)
    cpu = [cpu_est.estimate(f, K, boxes=boxes, stamp_s=0.1 * i) for i, f in enumerate(frames)]
    gpu_est = PoseEstimator(model.to(CUDA), settings)
    gpu = [gpu_est.estimate(f, K, boxes=boxes, stamp_s=0.1 * i) for i, f in enumerate(frames)]
    model.cpu()
    for fa, fb in zip(cpu, gpu, strict=True):
        for a, b in zip(fa.objects, fb.objects, strict=True):
            assert (a.track_id, a.filtered) == (b.track_id, b.filtered)
            qa, qb = torch.as_tensor(a.orientation), torch.as_tensor(b.orientation)
            angle = so3.geodesic_distance(so3.quat_to_matrix(qa), so3.quat_to_matrix(qb))
            assert math.degrees(float(angle)) <= math.degrees(grids.resolution(4)) + 1e-6
    assert [o.filtered for o in gpu[-1].objects] == [True, True]


def test_amp_training_step_on_cuda() -> None:
    from train.train import _loss

    model = ImageToSphere(encoder="resnet18", sphere_channels=32, hidden_channels=4).to(CUDA).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(8, 3, 64, 64, device=CUDA)
    R = so3.random_rotations(8, device=CUDA)
    for amp in (None, torch.bfloat16):
        loss = _loss(model, model, x, R, amp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
