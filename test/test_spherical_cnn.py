"""The spherical CNN (Esteves et al.): exact invariance in the spectral domain, approximate under
re-projection, each layer's equivariance, checkpoints; with non-invariant controls (ReLU, PointNet)."""

from __future__ import annotations

import pytest
import torch

from pose_core import s2, so3
from pose_core.model import load_model, save_checkpoint
from pose_core.models.pointnet import PointNet, PointNetConfig
from pose_core.models.spherical_cnn import (
    SphereActivation,
    SphereBatchNorm,
    SphericalCNN,
    SphericalCNNConfig,
    SphericalConv,
    _interpolation,
)

NAMES = ["a", "b", "c", "d"]


def _rotation(seed: int) -> torch.Tensor:
    q = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return so3.quat_to_matrix(q / q.norm())


def _model(activation: str = "quadratic", dtype=torch.float64, bandwidth: int = 8) -> SphericalCNN:
    torch.manual_seed(0)
    cfg = SphericalCNNConfig(bandwidth=bandwidth, channels=[8, 12, 16], bandlimits=[bandwidth - 1, 4, 2],
                             anchors=4, activation=activation)
    m = SphericalCNN(cfg, class_names=NAMES).to(dtype)
    m.train()
    with torch.no_grad():  # realistic running statistics
        m(torch.rand(16, 6, 2 * bandwidth, 2 * bandwidth, dtype=dtype))
    return m.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_descriptor_invariant_to_spectral_rotation(dtype, tol):
    """Rotating the input coefficients by Wigner-D leaves the descriptor unchanged to float precision."""
    m = _model(dtype=dtype)
    x = torch.rand(5, 6, 16, 16, dtype=dtype)
    c = m.coefficients(x)
    with torch.no_grad():
        d = m.descriptor_from_coefficients(c)
        for seed in range(3):
            dr = m.descriptor_from_coefficients(s2.rotate_coefficients(c, _rotation(seed).to(dtype), m.lmax))
            assert _rel(dr, d) < tol
            logits = m.head(d)
            torch.testing.assert_close(m.head(dr), logits, atol=50 * tol, rtol=50 * tol)


def test_relu_variant_is_not_exactly_invariant():
    """Negative control: the paper's pointwise ReLU on the grid aliases, so the same test fails for it."""
    m = _model("relu")
    x = torch.rand(5, 6, 16, 16, dtype=torch.float64)
    c = m.coefficients(x)
    with torch.no_grad():
        d = m.descriptor_from_coefficients(c)
        dr = m.descriptor_from_coefficients(s2.rotate_coefficients(c, _rotation(0), m.lmax))
    assert _rel(dr, d) > 1e-6


def test_each_layer_commutes_with_rotations():
    torch.manual_seed(1)
    R = _rotation(7)
    L = 6
    x = torch.randn(3, 4, (L + 1) ** 2, dtype=torch.float64)
    xr = s2.rotate_coefficients(x, R, L)
    conv = SphericalConv(4, 5, L, 4, anchors=3).double()
    torch.testing.assert_close(conv(xr), s2.rotate_coefficients(conv(x), R, 4), atol=1e-12, rtol=0)
    bn = SphereBatchNorm(4).double()
    torch.testing.assert_close(bn(xr), s2.rotate_coefficients(bn(x), R, L), atol=1e-12, rtol=0)
    act = SphereActivation(L).double()
    torch.testing.assert_close(act(xr), s2.rotate_coefficients(act(x), R, L), atol=1e-12, rtol=0)
    relu = SphereActivation(L, "relu").double()  # control
    assert (relu(xr) - s2.rotate_coefficients(relu(x), R, L)).abs().max() > 1e-6


def test_spectral_pooling_truncates_degrees():
    conv = SphericalConv(2, 3, 8, 3, anchors=4)
    out = conv(torch.randn(2, 2, 81))
    assert out.shape == (2, 3, 16)


def test_filter_spectrum_interpolates_anchors_linearly():
    M = _interpolation(4, 9)  # anchors at degrees 0, 3, 6, 9
    torch.testing.assert_close(M.sum(0), torch.ones(10, dtype=M.dtype))
    values = torch.tensor([1.0, 4.0, -2.0, 0.0], dtype=M.dtype)
    spectrum = values @ M
    torch.testing.assert_close(spectrum[[0, 3, 6, 9]], values)
    torch.testing.assert_close(spectrum[1], torch.tensor(2.0, dtype=M.dtype))  # a third of the way from 1 to 4


def test_descriptor_of_reprojected_rotated_mesh_close():
    """Rotating the mesh and casting rays again changes the samples, not the shape: the descriptor moves by
    < 6 % (measured 0.3-3.6 %), under half the smallest distance between shapes of other classes; a
    PointNet's descriptor of the same rotated shapes moves by > 10 % (control, measured 14-27 %)."""
    from pose_core.data.procedural import make_procedural_shape
    from pose_core.data.shape_classes import normalize_mesh, random_rotations
    from pose_core.data.sphere_projection import project_mesh
    from pose_core.surface import sample_surface

    shapes = [make_procedural_shape(n, 1) for n in ("chair", "mug", "table", "bottle", "lbracket")]
    torch.manual_seed(0)
    m = SphericalCNN(SphericalCNNConfig(), class_names=NAMES).double()
    pn = PointNet(PointNetConfig(), class_names=NAMES).double()
    sig = torch.stack([project_mesh(s.vertices, s.faces, 16) for s in shapes]).double()
    pts = torch.stack([sample_surface(torch.from_numpy(normalize_mesh(s.vertices)), torch.tensor(s.faces), 1024,
                                      generator=torch.Generator().manual_seed(0)) for s in shapes])
    with torch.no_grad():
        m.train(), pn.train()
        m(sig), pn(pts)
        m.eval(), pn.eval()
        d0, p0 = m.descriptor(sig), pn.descriptor(pts)
        between = torch.cdist(d0, d0) / d0.norm(dim=1, keepdim=True)
        for R in random_rotations("so3", 2, torch.Generator().manual_seed(1)):
            sr = torch.stack([project_mesh(s.vertices, s.faces, 16, rotation=R.numpy()) for s in shapes]).double()
            moved = (m.descriptor(sr) - d0).norm(dim=1) / d0.norm(dim=1)
            assert moved.max() < 0.06
            assert moved.max() < 0.5 * between[between > 0].min()
            p_moved = (pn.descriptor(pts @ R.T) - p0).norm(dim=1) / p0.norm(dim=1)
            assert p_moved.min() > 0.1


@pytest.mark.parametrize("kind", ["spherical_cnn", "pointnet"])
def test_checkpoint_round_trip(tmp_path, kind):
    if kind == "spherical_cnn":
        model = _model(dtype=torch.float32)
        x = torch.rand(3, 6, 16, 16)
    else:
        torch.manual_seed(0)
        model = PointNet(PointNetConfig(widths=[8, 16]), class_names=NAMES)
        model.train()
        model(torch.randn(8, 32, 3))
        model.eval()
        x = torch.randn(3, 32, 3)
    path = save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.class_names == NAMES and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="bandlimits\\[0\\] < bandwidth"):
        SphericalCNNConfig(bandwidth=8, bandlimits=[8, 4, 2])
    with pytest.raises(ValueError, match="non-increasing"):
        SphericalCNNConfig(bandlimits=[7, 9, 2])
    with pytest.raises(ValueError, match="activation"):
        SphericalCNNConfig(activation="tanh")
    with pytest.raises(ValueError, match="at least 2 class names"):
        SphericalCNN(SphericalCNNConfig(), class_names=["one"])
    m = _model(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\(B, 6, 16, 16\)"):
        m(torch.rand(2, 6, 32, 32))
    with pytest.raises(ValueError, match="points must be"):
        PointNet(PointNetConfig(), class_names=NAMES)(torch.rand(2, 3, 10))
