"""pose_distribution_ros.image_conversion: sensor_msgs/Image <-> numpy (no ROS traffic, needs sensor_msgs)."""

from __future__ import annotations

import array
import sys

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not importable: run scripts/setup_ros.sh .venv")
from sensor_msgs.msg import Image  # noqa: E402

from pose_distribution_ros.image_conversion import (  # noqa: E402
    ENCODINGS,
    ImageConversionError,
    depth_image_to_meters,
    image_to_numpy,
    image_to_rgb,
    numpy_to_image,
)

RNG = np.random.default_rng(0)


def _random(encoding: str, h: int = 5, w: int = 7) -> np.ndarray:
    dtype, c = ENCODINGS[encoding]
    shape = (h, w) if c == 1 else (h, w, c)
    if dtype == np.float32:
        return RNG.normal(size=shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _raw(a: np.ndarray, encoding: str, pad: int = 0, big: bool = False) -> Image:
    """A message built by hand: rows padded with ``pad`` bytes, data in the byte order asked for."""
    h, w = a.shape[:2]
    wire = a.astype(a.dtype.newbyteorder(">" if big else "<"))
    rows = wire.reshape(h, -1).view(np.uint8).reshape(h, -1)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(big), step=rows.shape[1] + pad)
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip(encoding: str) -> None:
    a = _random(encoding)
    msg = numpy_to_image(a, encoding)
    assert msg.is_bigendian == int(sys.byteorder == "big")
    b = image_to_numpy(msg)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("big", [False, True])
def test_step_padding_and_byte_order(encoding: str, big: bool) -> None:
    a = _random(encoding)
    b = image_to_numpy(_raw(a, encoding, pad=3, big=big))
    assert b.dtype.isnative
    np.testing.assert_array_equal(b, a)


def test_received_data_is_array_array() -> None:
    a = _random("rgb8")
    msg = numpy_to_image(a, "rgb8")
    msg.data = array.array("B", msg.data.tobytes())  # what a subscriber receives
    np.testing.assert_array_equal(image_to_numpy(msg), a)


def test_colour_to_rgb() -> None:
    rgb = _random("rgb8")
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(rgb, "rgb8")), rgb)
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8")), rgb)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(rgba, "rgba8")), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(bgra, "bgra8")), rgb)
    mono = _random("mono8")
    out = image_to_rgb(numpy_to_image(mono, "mono8"))
    assert out.shape == mono.shape + (3,)
    np.testing.assert_array_equal(out[:, :, 1], mono)
    with pytest.raises(ImageConversionError, match="colour image.*16UC1"):
        image_to_rgb(numpy_to_image(_random("16UC1"), "16UC1"))


def test_depth_to_meters() -> None:
    mm = np.array([[0, 1000], [1500, 65535]], np.uint16)
    m = depth_image_to_meters(numpy_to_image(mm, "16UC1"))
    assert m[0, 0] == 0.0  # no measurement, kept: pose_core.pinhole.valid_depths drops it
    np.testing.assert_allclose(m[0, 1:], [1.0])
    np.testing.assert_allclose(m[1], [1.5, 65.535], rtol=1e-6)
    f = np.array([[np.nan, 2.0], [0.0, np.inf]], np.float32)
    out = depth_image_to_meters(_raw(f, "32FC1", pad=2, big=True))
    assert out[0, 1] == 2.0 and np.isnan(out[0, 0]) and out[1, 0] == 0.0 and np.isinf(out[1, 1])
    from pose_core.pinhole import valid_depths

    assert valid_depths(out).tolist() == [2.0]
    with pytest.raises(ImageConversionError, match="16UC1 .*32FC1.*'rgb8'"):
        depth_image_to_meters(numpy_to_image(_random("rgb8"), "rgb8"))


def test_errors_name_the_problem() -> None:
    good = numpy_to_image(_random("rgb8"), "rgb8")
    bad = Image(height=good.height, width=good.width, step=good.step, encoding="yuv422_yuy2", data=good.data)
    with pytest.raises(ImageConversionError, match="unsupported image encoding 'yuv422_yuy2'"):
        image_to_numpy(bad)
    short = Image(height=good.height, width=good.width, step=good.step, encoding="rgb8")
    short.data = bytes(good.data)[:-1]
    with pytest.raises(ImageConversionError, match="too short"):
        image_to_numpy(short)
    with pytest.raises(ImageConversionError, match="zero-sized"):
        image_to_numpy(Image(height=0, width=4, step=12, encoding="rgb8"))
    with pytest.raises(ImageConversionError, match="step 5 is shorter than one row"):
        image_to_numpy(Image(height=1, width=4, step=5, encoding="rgb8", data=bytes(12)))
    with pytest.raises(ImageConversionError, match="needs an array"):
        numpy_to_image(np.zeros((2, 2), np.float64), "32FC1")
    with pytest.raises(ImageConversionError, match="zero-sized"):
        numpy_to_image(np.zeros((0, 2, 3), np.uint8), "rgb8")
    assert issubclass(ImageConversionError, ValueError)
