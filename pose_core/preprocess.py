"""Pixels → model input: the one place where images become tensors and are resized.

Conventions (on top of those of :mod:`pose_core.pinhole` for pixels and regions):

* An **image** is an RGB array ``(H, W, 3)``, ``uint8`` in ``[0, 255]`` or floating point in
  ``[0, 1]`` (numpy or torch), rows top to bottom (``sensor_msgs/Image`` ``rgb8``).
* A **model input** is a tensor ``(B, 3, S, S)`` float32 in ``[0, 1]``, ``S`` the model's input
  size (``ImageToSphere.input_size``).
* **Resizing** is antialiased bilinear interpolation (``torch.nn.functional.interpolate`` with
  ``antialias=True``, ``align_corners=False``) of the square crop to ``S x S``. Training images
  are rendered at ``S`` directly; a filtered downscale is the closest thing to rendering at that
  size (aliasing, not blur, is what a plain bilinear resize adds). ``uint8`` images are resized in
  ``uint8`` (torch's vectorised path: 0.45 ms for a 1080 px crop here, 14 ms in float) and
  rounded, like the renderer's own output; the two paths differ by less than 1/255.
* Pixels of a crop that lie **outside the image are black** (0), like the renderer's background.

:func:`to_tensor` is the only "HWC → CHW float" conversion in the project; :func:`resize`,
:func:`crop_input` and :func:`model_input` are the only resizes. ``ImageToSphere.predict`` and the
per-frame pipeline (:mod:`pose_core.pipeline`) both use them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pose_core.pinhole import Region, square_region

__all__ = [
    "MAX_CANVAS_FACTOR",
    "check_rgb",
    "to_float",
    "to_tensor",
    "resize",
    "crop_input",
    "model_input",
]

#: A crop that extends past the image is padded with black on a canvas of its size; when that
#: canvas would hold more than this many times the image's pixels (a huge detection box), the part
#: inside the image is first shrunk by an integer factor with area averaging, so that the work and
#: the memory of a crop are bounded by the image's size, never by the box's.
MAX_CANVAS_FACTOR = 4


def check_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``image`` if it has shape ``(H, W, 3)`` with ``H, W > 0``, else ValueError naming what it got."""
    if not isinstance(image, torch.Tensor):
        image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W, 3) with H, W > 0, got {tuple(image.shape)}")
    if image.dtype not in (np.uint8, torch.uint8) and not _is_float(image):
        raise ValueError(f"image must be uint8 or floating point, got dtype {image.dtype}")
    return image


def _is_float(x: np.ndarray | torch.Tensor) -> bool:
    return x.is_floating_point() if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.floating)


def _chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(..., H, W, 3)`` array → ``(..., 3, H, W)`` tensor view, dtype kept (no copy for contiguous numpy)."""
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    return x.movedim(-1, -3)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """A tensor of pixels as float32 in [0, 1]: uint8 divided by 255 (a new tensor), floating point
    converted to float32 (``x`` itself when it is already). ValueError for other dtypes."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise ValueError(f"image must be uint8 or floating point, got dtype {x.dtype}")
    return x.to(torch.float32)


def to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB image(s) ``(H, W, 3)`` or ``(N, H, W, 3)`` (uint8, or float in [0, 1]) → float32 ``(3, H, W)`` /
    ``(N, 3, H, W)`` in [0, 1]: uint8 divided by 255, floats kept."""
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3) or (N, H, W, 3), got {tuple(image.shape)}")
    return to_float(_chw(image))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Model inputs ``(B, 3, size, size)`` float32 from images ``(B, 3, H, W)`` (uint8, or float in [0, 1]).

    A non-square image is cut to its largest centred square first (:func:`~pose_core.pinhole.square_region`),
    as :func:`model_input` does; then antialiased bilinear (module docstring). An image already of
    the size is only converted.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    H, W = images.shape[-2:]
    if H != W:
        u0, v0, u1, v1 = square_region(W, H)
        images = images[..., v0:v1, u0:u1]
    if images.shape[-1] != size:
        images = _interpolate(images, size)
    return to_float(images)


def _interpolate(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``(B, 3, h, w)`` to ``size x size``, uint8 kept uint8 (rounded)."""
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)  # the vectorised uint8 path
    elif not x.is_floating_point():
        x = x.to(torch.float32)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _area_shrink(part: torch.Tensor, f: int, offset: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Average ``f x f`` blocks of ``part`` ``(1, 3, h, w)`` on the block grid of the crop it lies in.

    ``offset``: ``(row, column)`` of ``part`` inside the crop. Returns the shrunk part (float32 in [0, 1])
    and its offset in the shrunk crop. The blocks outside ``part`` count as black, as the crop's
    padding does.
    """
    oy, ox = offset
    top, left = oy % f, ox % f
    h, w = part.shape[-2:]
    bottom, right = (-(top + h)) % f, (-(left + w)) % f
    padded = F.pad(to_float(part), (left, right, top, bottom))
    return F.avg_pool2d(padded, f), (oy // f, ox // f)


def crop_input(image: np.ndarray | torch.Tensor, region: Region, size: int) -> torch.Tensor:
    """Model input ``(1, 3, size, size)`` float32 in [0, 1] of ``region`` of an RGB image ``(H, W, 3)``.

    ``region`` ``(u0, v0, u1, v1)`` (integers, exclusive ends) may extend past the image (black
    there, so an object at the border keeps its place in the crop) but must overlap it. The crop
    is resized as the module docstring says. Work and memory are bounded by the image: only the
    part inside the image is copied, and a padded crop of more than :data:`MAX_CANVAS_FACTOR`
    times the image's pixels is built from that part area-averaged by an integer factor on the
    crop's own pixel grid (a close approximation: the filter is a box before the resize).
    """
    image = check_rgb(image)
    height, width = image.shape[:2]
    u0, v0, u1, v1 = (int(x) for x in region)
    if u1 <= u0 or v1 <= v0:
        raise ValueError(f"region must have u1 > u0 and v1 > v0, got {region!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    cu0, cv0, cu1, cv1 = max(u0, 0), max(v0, 0), min(u1, width), min(v1, height)
    if cu1 <= cu0 or cv1 <= cv0:
        raise ValueError(f"region {region!r} lies outside the {width}x{height} image")
    part = _chw(image[cv0:cv1, cu0:cu1])[None]  # (1, 3, h, w) view
    side_v, side_u = v1 - v0, u1 - u0
    offset = (cv0 - v0, cu0 - u0)
    f = 1
    if (side_v, side_u) != tuple(part.shape[-2:]):  # padded: the canvas is bounded
        limit = max(MAX_CANVAS_FACTOR * height * width, (4 * size) ** 2)
        if side_u * side_v > limit:
            f = math.ceil(math.sqrt(side_u * side_v / limit))
    if f > 1:
        part, offset = _area_shrink(part, f, offset)
        side_v, side_u = math.ceil(side_v / f), math.ceil(side_u / f)
    if (side_v, side_u) != part.shape[-2:]:  # pad with black to the whole crop
        canvas = torch.zeros((1, 3, side_v, side_u), dtype=part.dtype)
        canvas[..., offset[0] : offset[0] + part.shape[-2], offset[1] : offset[1] + part.shape[-1]] = part
        part = canvas
    if (side_v, side_u) != (size, size):
        part = _interpolate(part, size)
    return to_float(part).clamp_(0.0, 1.0).contiguous()


def model_input(image: np.ndarray | torch.Tensor, size: int) -> tuple[torch.Tensor, Region]:
    """RGB image ``(H, W, 3)`` → model input ``(1, 3, size, size)`` of its largest centred square, and that region.

    The region ``(u0, v0, u1, v1)`` gives the crop's centre and so its rotation correction
    (:func:`pose_core.crops.crop_ray_rotation`).
    """
    image = check_rgb(image)
    region = square_region(image.shape[1], image.shape[0])
    return crop_input(image, region, size), region
