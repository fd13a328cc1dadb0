"""pose_core.preprocess: image → model input (crops, black padding, resize, bounded memory)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pose_core import preprocess


def _direct(img: np.ndarray, region: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """The plain twin of ``crop_input``: the whole padded crop in float, then one antialiased resize."""
    u0, v0, u1, v1 = region
    h, w = img.shape[:2]
    crop = np.zeros((v1 - v0, u1 - u0, 3), np.float32)
    cu0, cv0, cu1, cv1 = max(u0, 0), max(v0, 0), min(u1, w), min(v1, h)
    crop[cv0 - v0 : cv1 - v0, cu0 - u0 : cu1 - u0] = img[cv0:cv1, cu0:cu1] / 255.0
    x = torch.from_numpy(crop).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def test_to_tensor_is_the_one_hwc_to_chw_conversion() -> None:
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = preprocess.to_tensor(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    torch.testing.assert_close(x[1, 2, 3], torch.tensor(img[2, 3, 1] / 255.0, dtype=torch.float32))
    batch = preprocess.to_tensor(np.stack([img, img]))
    assert batch.shape == (2, 3, 5, 7)
    f = preprocess.to_tensor(img.astype(np.float64) / 255.0)  # floats are kept, not divided again
    torch.testing.assert_close(f, x)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess.to_tensor(np.zeros((5, 7), np.uint8))


def test_model_input_square_crop_and_resize() -> None:
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[:, 10:50] = 255  # exactly the centred 40x40 square
    x, region = preprocess.model_input(img, 16)
    assert region == (10, 0, 50, 40)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.ones_like(x))
    y, _ = preprocess.model_input(img, 40)  # the crop's own size: no resize
    assert y.shape == (1, 3, 40, 40)
    torch.testing.assert_close(y, torch.ones_like(y))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess.model_input(np.zeros((0, 4, 3), np.uint8), 16)
    with pytest.raises(ValueError, match="uint8 or floating"):
        preprocess.model_input(np.zeros((4, 4, 3), np.int32), 16)


def test_crop_input_pads_outside_the_image_with_black() -> None:
    img = np.full((20, 30, 3), 200, dtype=np.uint8)
    img[:, :, 1] = np.arange(30, dtype=np.uint8)[None, :]  # green = column index
    x = preprocess.crop_input(img, (-5, 2, 5, 12), 10)  # half outside on the left, no resize
    assert x.shape == (1, 3, 10, 10)
    torch.testing.assert_close(x[0, :, :, :5], torch.zeros(3, 10, 5))
    torch.testing.assert_close(x[0, 1, :, 5:], torch.arange(5.0).div(255).expand(10, 5))
    inside = preprocess.crop_input(img, (3, 4, 13, 14), 10)
    torch.testing.assert_close(inside[0, 1, 0], torch.arange(3.0, 13.0).div(255))
    assert preprocess.crop_input(img, (-5, 2, 5, 12), 8).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="outside the 30x20 image"):
        preprocess.crop_input(img, (40, 0, 50, 10), 8)
    with pytest.raises(ValueError, match="u1 > u0"):
        preprocess.crop_input(img, (5, 0, 5, 10), 8)


@pytest.mark.parametrize("region", [(20, 10, 120, 110), (-30, -20, 70, 80), (150, 60, 250, 160)])
def test_crop_input_equals_the_plain_resize(region) -> None:
    """uint8 resize path against the padded float crop resized once: within 1/255 (rounding)."""
    img = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    got = preprocess.crop_input(img, region, 24)
    want = _direct(img, region, 24)
    assert (got - want).abs().max() <= 1.01 / 255
    floats = preprocess.crop_input(img.astype(np.float32) / 255, region, 24)  # float path: exact
    torch.testing.assert_close(floats, want.clamp(0, 1), atol=1e-5, rtol=0)


def test_huge_crop_is_area_shrunk_first_and_stays_close() -> None:
    """A padded crop of many times the image's pixels goes through the integer area shrink
    (bounded memory); the result stays close to the plain resize of the whole padded crop."""
    yy, xx = np.mgrid[0:300, 0:400]
    img = np.stack([xx % 256, yy % 256, (xx + yy) // 4 % 256], -1).astype(np.uint8)
    region = (-800, -850, 1200, 1150)  # 2000 px crop around the image: 33x its pixels
    assert 2000**2 > preprocess.MAX_CANVAS_FACTOR * 300 * 400
    got = preprocess.crop_input(img, region, 60)
    want = _direct(img, region, 60)
    assert (got - want).abs().mean() < 0.01 and (got - want).abs().max() < 0.15
    # black where the crop lies outside the image (top-left corner), image inside
    assert float(got[0, :, :10, :5].max()) == 0.0 and float(got[0, 0, 28, 28]) > 0.0


def test_enormous_crop_costs_no_more_than_the_image() -> None:
    """A 1e6 px box around a small image: no allocation of the box's size (it would be terabytes)."""
    img = np.full((64, 64, 3), 255, dtype=np.uint8)
    side = 1_000_000
    region = (32 - side // 2, 32 - side // 2, 32 + side // 2, 32 + side // 2)
    x = preprocess.crop_input(img, region, 32)
    assert x.shape == (1, 3, 32, 32)
    assert float(x.max()) < 0.01  # the image is a speck in the middle of a black crop


def test_resize_of_tensors_uint8_and_float() -> None:
    img = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    u8 = preprocess._chw(img)[None]  # (1, 3, 50, 70) uint8
    a = preprocess.resize(u8, 20)
    b = preprocess.resize(u8.float() / 255, 20)
    assert a.shape == b.shape == (1, 3, 20, 20) and a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max() <= 1.01 / 255
    c, _ = preprocess.model_input(img, 20)  # the same centred square as model_input
    assert (a - c).abs().max() <= 1.01 / 255
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        preprocess.resize(torch.zeros(3, 4, 4), 2)
