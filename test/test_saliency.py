"""pose_core.saliency: the maps are input gradients (locality controls), of the stated score, for every
decoder; the model is left as it was."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pose_core.models.reconstruction import DECODERS, ReconstructionConfig, ShapeReconstructor
from pose_core.pointsets import chamfer_distance
from pose_core.saliency import grad_cam, saliency, score_name

S = 32


def _tiny(decoder: str = "points", image_size: int = S) -> ShapeReconstructor:
    torch.manual_seed(0)
    config = ReconstructionConfig(decoder=decoder, encoder="resnet18", pretrained=False, image_size=image_size,
                                  n_points=64, embedding=16, hidden=16, voxel_resolution=8, ico_level=1,
                                  implicit_resolution=8)
    model = ShapeReconstructor(config)
    if decoder == "mesh":  # its last layer starts at zero (the sphere): no gradient reaches the image yet
        nn.init.normal_(model.decoder[-1].weight, std=0.1)
    return model


class _HalfToy(nn.Module):
    """Same interface as ShapeReconstructor (points decoder); sees only one half (columns) of the image."""

    def __init__(self, side: str = "left", n: int = 16):
        super().__init__()
        torch.manual_seed(1)
        self.side = side
        self.config = SimpleNamespace(decoder="points", image_size=S, n_points=n)
        self.encoder = nn.Conv2d(3, 4, 3, padding=1)
        self.project = nn.Linear(4 * S * (S // 2), 8)
        self.decoder = nn.Linear(8, 3 * n)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        half = images[..., : S // 2] if self.side == "left" else images[..., S // 2:]
        return torch.tanh(self.project(torch.tanh(self.encoder(half)).flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.embed(images)).view(images.shape[0], -1, 3)


def _images(b: int = 2, size: int = S, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _target(b: int = 2, m: int = 50) -> torch.Tensor:
    return torch.rand((b, m, 3), generator=torch.Generator().manual_seed(5)) - 0.5


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("method", ["gradient", "smoothgrad"])
def test_toy_map_is_the_input_gradient(side, with_target, method):
    toy = _HalfToy(side)
    maps = saliency(toy, _images(), target=_target() if with_target else None, method=method, samples=3,
                    generator=torch.Generator().manual_seed(0))
    seen, unseen = (maps[..., : S // 2], maps[..., S // 2:]) if side == "left" else (maps[..., S // 2:],
                                                                                     maps[..., : S // 2])
    assert torch.all(unseen == 0)
    assert torch.all(seen.flatten(1).amax(1) == 1.0)
    assert (seen > 0).float().mean() > 0.9


def test_gradient_equals_manual_autograd():
    model = _tiny()
    images, target = _images(), _target()
    maps = saliency(model, images, target=target, method="gradient")
    model.eval()
    x = images.clone().requires_grad_(True)
    score = -chamfer_distance(model(x), target).sum()
    (g,) = torch.autograd.grad(score, x)
    manual = g.abs().amax(1)
    manual = manual / manual.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(maps, manual, rtol=1e-5, atol=1e-6)
    # per image: the first map does not depend on the second image (eval mode, no batch coupling)
    alone = saliency(model, images[:1], target=target[:1], method="gradient")
    torch.testing.assert_close(alone[0], maps[0], rtol=1e-4, atol=1e-6)


def test_shape_range_and_determinism():
    model = _tiny()
    images = _images()
    a = saliency(model, images, samples=3, generator=torch.Generator().manual_seed(7))
    b = saliency(model, images, samples=3, generator=torch.Generator().manual_seed(7))
    c = saliency(model, images, samples=3, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, S, S) and a.dtype == torch.float32
    assert a.min() >= 0 and torch.allclose(a.flatten(1).amax(1), torch.ones(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # no noise: SmoothGrad is the plain gradient map
    plain = saliency(model, images, method="gradient")
    torch.testing.assert_close(saliency(model, images, samples=2, noise=0.0), plain)


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder(decoder):
    model = _tiny(decoder)
    images, target = _images(), _target()
    expected = {"points": "chamfer", "parametric": "chamfer", "mesh": "chamfer", "voxels": "embedding",
                "implicit": "embedding"}[decoder]
    assert score_name(model, target) == expected
    gen = torch.Generator().manual_seed(3)
    maps = saliency(model, images, target=target, samples=2, generator=gen)
    assert maps.shape == (2, S, S) and torch.isfinite(maps).all() and maps.min() >= 0
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    if expected == "embedding":  # no differentiable points: the target is not used
        same = saliency(model, images, samples=2, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(maps, same)
    if decoder in ("voxels", "implicit"):
        voxels = (torch.rand((2, 8, 8, 8), generator=torch.Generator().manual_seed(4)) > 0.5).float()
        assert score_name(model, target, voxels) == "voxel_bce"
        bce = saliency(model, images, target_voxels=voxels, method="gradient")
        assert bce.shape == (2, S, S) and torch.allclose(bce.flatten(1).amax(1), torch.ones(2))
        assert not torch.allclose(bce, saliency(model, images, method="gradient"))


def test_mesh_deterministic_with_generator():
    model = _tiny("mesh")
    images, target = _images(), _target()
    a = saliency(model, images, target=target, samples=2, generator=torch.Generator().manual_seed(1))
    b = saliency(model, images, target=target, samples=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_model_left_as_it_was():
    model = _tiny()
    model.train()
    model.encoder.eval()  # a mixed state: frozen encoder statistics
    frozen = model.project[0].weight
    frozen.requires_grad_(False)
    marked = model.decoder[0].weight
    marked.grad = torch.full_like(marked, 3.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    with torch.no_grad():  # works under no_grad too
        saliency(model, _images(), target=_target(), samples=2)
        grad_cam(model, _images())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(marked.grad, torch.full_like(marked, 3.0))
    assert all(p.grad is None for p in model.parameters() if p is not marked)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # BatchNorm statistics untouched


def test_grad_cam_is_grad_cam():
    model = _tiny(image_size=64)  # a 2 x 2 feature map
    images = _images(size=64)
    cam = grad_cam(model, images)
    assert cam.shape == (2, 64, 64) and cam.dtype == torch.float32 and cam.min() >= 0 and cam.max() <= 1
    model.eval()
    A = model.encoder(images).detach().requires_grad_(True)
    score = model.project(A.mean(dim=(2, 3))).pow(2).sum()
    (g,) = torch.autograd.grad(score, A)
    manual = torch.relu((g.mean((2, 3), keepdim=True) * A).sum(1, keepdim=True))
    manual = nn.functional.interpolate(manual, size=(64, 64), mode="bilinear", align_corners=False)[:, 0].detach()
    peak = manual.flatten(1).amax(1).clamp_min(1e-30)
    torch.testing.assert_close(cam, manual / peak[:, None, None], rtol=1e-5, atol=1e-6)


def test_bad_input():
    model = _tiny()
    with pytest.raises(ValueError, match="images"):
        saliency(model, torch.rand(2, 1, S, S))
    with pytest.raises(ValueError, match="method"):
        saliency(model, _images(), method="integrated")
    with pytest.raises(ValueError, match="samples"):
        saliency(model, _images(), samples=0)
    with pytest.raises(ValueError, match="target"):
        saliency(model, _images(), target=torch.rand(3, 10, 3))
    with pytest.raises(ValueError, match="target_voxels"):
        saliency(_tiny("voxels"), _images(), target_voxels=torch.rand(2, 16, 16, 16))
    with pytest.raises(ValueError, match="encoder"):
        grad_cam(nn.Linear(2, 2), _images())


def test_positional_order_and_plain_gradient():
    model = _tiny()
    images, target = _images(), _target()
    # saliency(model, images, target, samples, noise, generator): one noiseless copy is the plain gradient
    plain = saliency(model, images, target, 1, 0.0, None)
    torch.testing.assert_close(plain, saliency(model, images, target=target, method="gradient"))
    with pytest.raises(TypeError):
        saliency(model, images, target, 1, 0.0, None, "gradient")  # method is keyword only


def test_zero_gradient_stays_zero():
    # a freshly built mesh model's last layer is zero: no gradient reaches the image, the map is 0, not NaN
    torch.manual_seed(0)
    model = ShapeReconstructor(ReconstructionConfig(decoder="mesh", encoder="resnet18", pretrained=False,
                                                    image_size=S, n_points=64, embedding=16, hidden=16, ico_level=1))
    maps = saliency(model, _images(), target=_target(), samples=2, generator=torch.Generator().manual_seed(0))
    assert maps.shape == (2, S, S) and maps.dtype == torch.float32
    assert torch.all(maps == 0)
