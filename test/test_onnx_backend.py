"""The onnxruntime backend of ImageToSphere.predict gives what the torch path gives (float32 round-off)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pose_core import ImageToSphere, grids, load_model, onnx_backend, so3

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "checkpoints" / "demo.pt"

pytestmark = pytest.mark.skipif(not onnx_backend.available(), reason="onnx / onnxruntime not installed")


def _renders(n: int, size: int) -> torch.Tensor:
    from pose_core import preprocess
    from pose_core.data import Camera, Renderer, get_shape

    renderer = Renderer(camera=Camera(width=size, height=size))
    R = so3.random_rotations(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64).numpy()
    names = ("tet", "cube", "icosa", "cone", "cyl")
    images = [renderer.render(get_shape(names[i % 5]).mesh, R[i]) for i in range(n)]
    renderer.close()
    return preprocess.to_tensor(np.stack(images))


@pytest.mark.skipif(not TRAINED.is_file(), reason="needs the shipped checkpoint")
def test_shipped_model_same_coefficients_and_modes(tmp_path) -> None:
    images = _renders(20, 224)
    torch_model = load_model(TRAINED)
    onnx_model = load_model(TRAINED)
    onnx_backend.OnnxRuntimeNetwork(onnx_model, cache=tmp_path)  # export once into tmp_path
    onnx_model.network_backend = onnx_backend.OnnxRuntimeNetwork(onnx_model, cache=tmp_path)  # read back
    assert onnx_model.backend == "onnxruntime" and len(list(tmp_path.glob("*.onnx"))) == 1
    from pose_core import preprocess

    x = preprocess.resize(images, torch_model.input_size)
    with torch.inference_mode():
        want = torch_model(x)
    got = onnx_model.network_backend(x)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)
    a, b = torch_model.predict(images), onnx_model.predict(images)
    apart = so3.geodesic_distance(a.mode(), b.mode())
    assert bool((apart <= grids.resolution(5) * 1.001).all()), apart
    # equal coefficients to round-off; where two cells tie at the top-k boundary the refined set may
    # differ by a cell, which moves the entropy by a few thousandths of a nat
    torch.testing.assert_close(b.entropy(), a.entropy(), atol=1e-2, rtol=0)


def test_backend_switching_and_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POSE_DISTRIBUTION_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = ImageToSphere(encoder="resnet18", sphere_channels=16, hidden_channels=4).eval()
    assert model.use_backend("auto").backend == "torch"  # no input size recorded: torch
    model.input_size = 32
    assert model.use_backend("auto").backend == "onnxruntime"
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model.network_backend(x), model(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model.network_backend(torch.rand(1, 3, 16, 16))
    assert model.use_backend("torch").backend == "torch"
    with pytest.raises(ValueError, match="backend must be"):
        model.use_backend("tensorrt")
