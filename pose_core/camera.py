"""Viewing geometry: pinhole back-projection, translation estimates, crop rotation correction.

Conventions (on top of those of :mod:`pose_core.so3`):

* **Camera frame**: the optical frame, x right, y down, z forward. Pixel coordinates ``(u, v)``
  are (column, row) with pixel centres at integers (OpenCV / ``sensor_msgs/CameraInfo``), and
  ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` maps a camera-frame point ``p`` to
  ``(u, v, 1) ~ K p``.
* **Depth** is the z coordinate of the surface point (what depth cameras and
  ``sensor_msgs/Image`` ``16UC1`` / ``32FC1`` depth images store), not the distance along the ray.
  A depth of 0, NaN or +-inf means "no measurement".
* **Distance** (``distance=`` arguments) is measured *along the ray* from the camera centre.
* **Crop rotation correction.** A model that sees a crop centred on pixel ``c`` behaves as if it
  looked through a *virtual camera* whose optical axis is the ray ``d`` through ``c``. Let
  ``R_ray`` be the smallest rotation with ``R_ray @ e_z = d`` (:func:`ray_rotation`; its axis is
  ``e_z x d``, so the virtual camera has no extra roll). Virtual-camera coordinates map into the
  real camera frame by ``x_camera = R_ray @ x_virtual``, so a pose rotation ``R_crop`` predicted in
  the virtual camera (object -> virtual camera, :mod:`pose_core.so3`) becomes
  ``R = R_ray @ R_crop`` in the real camera frame: the correction is applied **on the left**, i.e.
  about the fixed camera axes, like the perturbations of :mod:`pose_core.so3`. Consequently a
  rotation-vector covariance ``C`` (left perturbation about the virtual camera axes) becomes
  ``R_ray C R_ray^T``, and entropy and log-densities are unchanged (left translation preserves the
  Haar measure). This is the same convention as :func:`pose_core.data.pascal3d.crop_camera`,
  whose ``R_c`` (old camera -> new) is ``R_ray^T`` up to an in-plane roll. For a plain (not
  re-projected) crop it is an approximation that is exact at the crop centre; fine for the small
  angles of a typical crop.

Everything here is numpy ``float64`` except the rotation functions, which take and return torch
tensors like :mod:`pose_core.so3`. Bad shapes or values raise :class:`ValueError` naming what was
received.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pose_core import so3
from pose_core.distribution import SO3Distribution

__all__ = [
    "TranslationEstimate",
    "PoseEstimate",
    "intrinsics_matrix",
    "pixel_ray",
    "backproject",
    "region_center",
    "valid_depths",
    "median_depth",
    "translation_from_depth",
    "translation_from_nominal",
    "ray_rotation",
    "crop_ray_rotation",
    "correct_crop_rotation",
    "correct_covariance",
    "pose_estimate",
    "square_region",
    "detection_region",
    "crop_input",
    "model_input",
]

#: ``1.4826 * MAD`` estimates the standard deviation of normally distributed values.
_MAD_TO_STD = 1.4826


# ----------------------------------------------------------------------------- pinhole model


def intrinsics_matrix(K: np.ndarray | list[float]) -> np.ndarray:
    """``K`` as a checked ``(3, 3)`` float64 matrix (accepts the 9 row-major values of ``CameraInfo.k``)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (9,):
        K = K.reshape(3, 3)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3) or (9,), got {K.shape}")
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.isfinite(K).all()):
        raise ValueError(f"K must have finite entries and positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def _uv(u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    u, v = np.broadcast_arrays(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))
    return u, v


def pixel_ray(K: np.ndarray, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """Unit direction ``(..., 3)`` of the ray through pixel ``(u, v)`` (broadcast ``(...)``), camera frame."""
    K = intrinsics_matrix(K)
    u, v = _uv(u, v)
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]  # skew-aware inverse of K
    y = (v - K[1, 2]) / K[1, 1]
    d = np.stack((x, y, np.ones_like(x)), axis=-1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def backproject(K: np.ndarray, u: np.ndarray | float, v: np.ndarray | float, depth: np.ndarray | float) -> np.ndarray:
    """Camera-frame point ``(..., 3)`` at pixel ``(u, v)`` with depth (z, m) ``depth``: ``depth * K^-1 (u, v, 1)``.

    Invalid depths (0, NaN, inf) give NaN points.
    """
    K = intrinsics_matrix(K)
    u, v = _uv(u, v)
    z = np.asarray(depth, dtype=np.float64)
    z = np.where(np.isfinite(z) & (z > 0), z, np.nan)
    d = pixel_ray(K, u, v)
    return d / d[..., 2:3] * z[..., None]


# ----------------------------------------------------------------------------- translation


@dataclass(frozen=True)
class TranslationEstimate:
    """Position of the object origin in the camera frame and how well it is known.

    Attributes:
        translation: ``(3,)`` m, camera frame.
        covariance: ``(3, 3)`` m², symmetric positive semi-definite.
        source: ``"depth"`` (measured) or ``"nominal"`` (assumed distance along a ray).
    """

    translation: np.ndarray
    covariance: np.ndarray
    source: str


def _check_region(
    region: tuple[float, float, float, float] | None, width: int, height: int
) -> tuple[int, int, int, int]:
    """Integer pixel box ``(u0, v0, u1, v1)`` (u1, v1 exclusive) clipped to the image; whole image for ``None``."""
    if region is None:
        return 0, 0, width, height
    if len(region) != 4:
        raise ValueError(f"region must be (u_min, v_min, u_max, v_max), got {region!r}")
    u0, v0, u1, v1 = (float(x) for x in region)
    if not (u1 > u0 and v1 > v0):
        raise ValueError(f"region must have u_max > u_min and v_max > v_min, got {region!r}")
    iu0, iv0 = max(0, int(math.floor(u0))), max(0, int(math.floor(v0)))
    iu1, iv1 = min(width, int(math.ceil(u1))), min(height, int(math.ceil(v1)))
    if iu1 <= iu0 or iv1 <= iv0:
        raise ValueError(f"region {region!r} lies outside the {width}x{height} image")
    return iu0, iv0, iu1, iv1


def region_center(region: tuple[float, float, float, float] | None, width: int, height: int) -> tuple[float, float]:
    """Centre pixel of ``region`` (pixel centres at integers), image centre for ``None``."""
    if region is None:
        return (width - 1) / 2, (height - 1) / 2
    u0, v0, u1, v1 = (float(x) for x in region)
    return (u0 + u1 - 1) / 2, (v0 + v1 - 1) / 2


def valid_depths(depth: np.ndarray, region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Valid depths ``(N,)`` float64 inside ``region`` of a depth image ``(H, W)`` (0, NaN, inf dropped)."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"depth must be a non-empty image (H, W), got shape {depth.shape}")
    u0, v0, u1, v1 = _check_region(region, depth.shape[1], depth.shape[0])
    values = depth[v0:v1, u0:u1].astype(np.float64).ravel()
    return values[np.isfinite(values) & (values > 0)]


def median_depth(depth: np.ndarray, region: tuple[float, float, float, float] | None = None) -> float | None:
    """Median of the valid depths (m) in ``region`` of ``depth`` ``(H, W)``; ``None`` when there is none."""
    values = valid_depths(depth, region)
    return float(np.median(values)) if values.size else None


def _ray_frame_covariance(ray: np.ndarray, lateral_std: float, along_std: float) -> np.ndarray:
    """``(3, 3)`` covariance with std ``along_std`` along unit ``ray`` and ``lateral_std`` across it."""
    P = np.outer(ray, ray)
    cov = along_std**2 * P + lateral_std**2 * (np.eye(3) - P)
    return (cov + cov.T) / 2


def translation_from_depth(
    K: np.ndarray,
    depth: np.ndarray,
    region: tuple[float, float, float, float] | None = None,
    min_std: float = 0.01,
) -> TranslationEstimate | None:
    """Object position from the median valid depth inside ``region`` of an aligned depth image.

    The point is the back-projection of the region centre at the median depth (the visible
    surface, so it lies in front of the object's origin by up to the object's radius; not
    corrected). Covariance: along the ray, the spread of the depths (``1.4826 * MAD``, at least
    ``min_std``); across it, a quarter of the region's size at that depth (the region centre is
    only roughly the object's centre).

    Args:
        K: intrinsics ``(3, 3)`` of the depth image (aligned: same as the colour image).
        depth: ``(H, W)`` depth in m; 0, NaN and inf are ignored.
        region: ``(u_min, v_min, u_max, v_max)`` pixel box, ``u_max``/``v_max`` exclusive; whole image if None.
        min_std: floor (m) of the standard deviations.

    Returns:
        ``None`` when the region holds no valid depth.
    """
    K = intrinsics_matrix(K)
    depth = np.asarray(depth)
    values = valid_depths(depth, region)
    if values.size == 0:
        return None
    z = float(np.median(values))
    u, v = region_center(region, depth.shape[1], depth.shape[0])
    point = backproject(K, u, v, z)
    ray = point / np.linalg.norm(point)
    along = max(min_std, _MAD_TO_STD * float(np.median(np.abs(values - z))))
    u0, v0, u1, v1 = _check_region(region, depth.shape[1], depth.shape[0])
    half = 0.25 * max((u1 - u0) / K[0, 0], (v1 - v0) / K[1, 1])  # quarter of the region, in rad
    lateral = max(min_std, z * half)
    return TranslationEstimate(point, _ray_frame_covariance(ray, lateral, along), "depth")


def translation_from_nominal(
    distance: float,
    K: np.ndarray | None = None,
    center: tuple[float, float] | None = None,
    along_std: float | None = None,
    lateral_std: float | None = None,
) -> TranslationEstimate:
    """Object assumed at ``distance`` (m) along the ray through ``center``: a guess, and its covariance says so.

    Args:
        distance: nominal distance along the ray (m), > 0.
        K: intrinsics; with ``center`` (pixel ``(u, v)``, e.g. a region centre) they give the ray.
            Without them the ray is the optical axis.
        along_std: std (m) along the ray; default ``distance`` itself (the range is essentially
            unknown: only "in front of the camera, about this far").
        lateral_std: std (m) across the ray; default ``0.1 * distance`` (the direction is known
            from the image much better than the range), or ``distance`` too when there is no
            ``K`` (the direction is then only assumed).
    """
    if not (distance > 0 and math.isfinite(distance)):
        raise ValueError(f"distance must be a finite number > 0, got {distance!r}")
    if (K is None) != (center is None):
        raise ValueError("give both K and center, or neither")
    if K is None:
        ray = np.array([0.0, 0.0, 1.0])
        lateral = distance if lateral_std is None else lateral_std
    else:
        ray = pixel_ray(K, center[0], center[1])
        lateral = 0.1 * distance if lateral_std is None else lateral_std
    along = distance if along_std is None else along_std
    if along < 0 or lateral < 0:
        raise ValueError(f"standard deviations must be >= 0, got along {along}, lateral {lateral}")
    return TranslationEstimate(distance * ray, _ray_frame_covariance(ray, lateral, along), "nominal")


# ----------------------------------------------------------------------------- rotation correction


def ray_rotation(ray: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Smallest rotation ``(..., 3, 3)`` with ``R @ e_z = ray / |ray|`` for rays ``(..., 3)`` with ``z > 0``.

    Rotation axis ``e_z x ray``, angle ``atan2(|e_z x ray|, ray_z)`` (so no roll about the ray).
    """
    d = torch.as_tensor(ray, dtype=dtype)
    so3._check_trailing(d, (3,), "ray")
    n = d.norm(dim=-1, keepdim=True)
    if not bool((n > 0).all()) or not bool((d[..., 2] > 0).all()):
        raise ValueError(f"rays must point in front of the camera (z > 0), got {d.tolist()}")
    d = d / n
    axis = torch.stack((-d[..., 1], d[..., 0], torch.zeros_like(d[..., 0])), dim=-1)  # e_z x d
    s = axis.norm(dim=-1, keepdim=True)
    angle = torch.atan2(s, d[..., 2:3])
    unit = torch.where(s > 0, axis / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(axis))
    return so3.rotvec_to_matrix(unit * angle)


def crop_ray_rotation(K: np.ndarray, center: tuple[float, float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``R_ray`` ``(3, 3)`` of a crop centred on pixel ``center`` ``(u, v)``: :func:`ray_rotation` of the ray
    through it, the correction :func:`pose_estimate` and :func:`correct_crop_rotation` apply on the left."""
    return ray_rotation(pixel_ray(K, center[0], center[1]), dtype=dtype)


def correct_crop_rotation(R_crop: torch.Tensor, K: np.ndarray, center: tuple[float, float]) -> torch.Tensor:
    """Camera-frame pose rotation(s) ``(..., 3, 3)`` from ``R_crop`` ``(..., 3, 3)`` predicted on a crop.

    ``center``: the crop's centre pixel ``(u, v)``.

    ``R = ray_rotation(ray through center) @ R_crop`` (see the module docstring).
    """
    so3._check_trailing(R_crop, (3, 3), "R_crop")
    R_ray = crop_ray_rotation(K, center, dtype=R_crop.dtype).to(R_crop.device)
    return R_ray @ R_crop


def correct_covariance(cov: torch.Tensor, R_ray: torch.Tensor) -> torch.Tensor:
    """Left-perturbation covariance ``(..., 3, 3)``: virtual-camera axes → camera axes, ``R_ray C R_ray^T``."""
    so3._check_trailing(cov, (3, 3), "cov")
    so3._check_trailing(R_ray, (3, 3), "R_ray")
    R_ray = R_ray.to(cov.dtype)
    return R_ray @ cov @ R_ray.transpose(-1, -2)


# ----------------------------------------------------------------------------- full pose summary


@dataclass(frozen=True)
class PoseEstimate:
    """Everything a pose-distribution message reports about one object, in the camera frame (numpy float64).

    Attributes:
        rotation: ``(3, 3)`` mode of the rotation distribution (object -> camera).
        translation: ``(3,)`` m.
        covariance: ``(6, 6)`` of ``(x, y, z, rot X, rot Y, rot Z)``, m² / rad², ordered like
            ``geometry_msgs/PoseWithCovariance``: translation block from the translation estimate,
            rotation block the left-perturbation covariance about the mode, cross terms 0.
        samples: ``(N, 3, 3)`` rotations drawn from the distribution.
        sample_weights: ``(N,)`` summing to 1 (equal: i.i.d. samples).
        entropy: nats (Haar volume ``pi**2``).
        max_log_density: log-density at the mode (nats).
        mode_resolution: rad.
        modes: ``(M, 3, 3)`` separated local maxima, decreasing density; ``mode_mass`` ``(M,)``
            and ``mode_log_density`` ``(M,)`` go with them.
        translation_source: ``"depth"`` or ``"nominal"``.
    """

    rotation: np.ndarray
    translation: np.ndarray
    covariance: np.ndarray
    samples: np.ndarray
    sample_weights: np.ndarray
    entropy: float
    max_log_density: float
    mode_resolution: float
    modes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    mode_mass: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mode_log_density: np.ndarray = field(default_factory=lambda: np.zeros(0))
    translation_source: str = "nominal"


def pose_estimate(
    dist: SO3Distribution,
    translation: TranslationEstimate,
    index: int = 0,
    num_samples: int = 100,
    num_modes: int = 4,
    mode_radius: float = math.radians(15.0),
    generator: torch.Generator | None = None,
    correction: torch.Tensor | None = None,
) -> PoseEstimate:
    """Summarise distribution ``index`` of ``dist`` and ``translation`` as a :class:`PoseEstimate`.

    Args:
        correction: ``R_ray`` ``(3, 3)`` of the crop the distribution was predicted on
            (:func:`ray_rotation`); applied on the left to the mode, samples and modes, and as
            ``R_ray C R_ray^T`` to the covariance. ``None``: the distribution is already in the
            camera frame.
    """
    if not 0 <= index < dist.batch_size:
        raise ValueError(f"index must be in [0, {dist.batch_size}), got {index}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    one = SO3Distribution(dist.cell_level, dist.cell_index[index : index + 1], dist.log_mass[index : index + 1], None)
    if dist.is_band_limited:
        f = dist._fourier  # noqa: SLF001 - same package
        one._fourier = type(f)(f.coeffs[index : index + 1], f.lmax, f.log_norm[index : index + 1])
    one = one.to("cpu")
    mode = one.mode()  # (1, 3, 3)
    cov = one.covariance(about=mode).to(torch.float64)  # (1, 3, 3)
    mode = mode.to(torch.float64)
    samples = one.sample(num_samples, generator=generator).to(torch.float64)  # (1, N, 3, 3)
    cells, mass = one.top_mode_cells(k=num_modes, radius=mode_radius)  # (1, k), (1, k)
    keep = mass[0] > 0
    cells, mass = cells[:, keep], mass[:, keep]
    # log-density at the modes: that of their cells (for a band-limited distribution, log_prob at the centre)
    mode_logp = one.cell_log_density().gather(1, cells).to(torch.float64)  # (1, M)
    rots = one.rotations_at(cells).to(torch.float64)  # (1, M, 3, 3)
    if correction is not None:
        Rc = torch.as_tensor(correction, dtype=torch.float64).cpu()
        so3._check_trailing(Rc, (3, 3), "correction")
        mode, samples, rots = Rc @ mode, Rc @ samples, Rc @ rots
        cov = correct_covariance(cov, Rc)
    cov6 = np.zeros((6, 6))
    cov6[:3, :3] = np.asarray(translation.covariance, dtype=np.float64)
    cov6[3:, 3:] = cov[0].numpy()
    return PoseEstimate(
        rotation=mode[0].numpy(),
        translation=np.asarray(translation.translation, dtype=np.float64).copy(),
        covariance=cov6,
        samples=samples[0].numpy(),
        sample_weights=np.full(num_samples, 1.0 / num_samples),
        entropy=float(one.entropy()[0]),
        max_log_density=float(one.max_log_density()[0]),
        mode_resolution=float(one.mode_resolution()),
        modes=rots[0].numpy(),
        mode_mass=mass[0].to(torch.float64).numpy(),
        mode_log_density=mode_logp[0].numpy(),
        translation_source=translation.source,
    )


# ----------------------------------------------------------------------------- model input


def square_region(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square ``(u0, v0, u1, v1)`` (exclusive ends) of a ``width x height`` image."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    s = min(width, height)
    u0, v0 = (width - s) // 2, (height - s) // 2
    return u0, v0, u0 + s, v0 + s


def _check_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as an array of shape ``(H, W, 3)`` with ``H, W > 0``; ValueError naming the shape otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape (H, W, 3) with H, W > 0, got {image.shape}")
    return image


def detection_region(
    center: tuple[float, float], box_size: tuple[float, float], scale: float = 1.0
) -> tuple[int, int, int, int]:
    """Square crop ``(u0, v0, u1, v1)`` (exclusive ends) around a detection box; may extend past the image.

    Args:
        center: box centre ``(u, v)`` in pixels (pixel centres at integers, as
            ``vision_msgs/BoundingBox2D.center``).
        box_size: box ``(width, height)`` in pixels, both > 0.
        scale: crop side / the box's longer side (> 0): context kept around the object, to match
            how much of the frame the object filled in training.

    The side is ``max(1, round(scale * max(width, height)))`` and :func:`region_center` of the
    result is ``center`` up to half a pixel, so the crop's viewing ray is the box's.
    """
    cu, cv = (float(x) for x in center)
    w, h = (float(x) for x in box_size)
    if not all(math.isfinite(x) for x in (cu, cv, w, h, float(scale))):
        raise ValueError(f"detection box must be finite, got center {center!r}, size {box_size!r}, scale {scale!r}")
    if w <= 0 or h <= 0 or scale <= 0:
        raise ValueError(f"detection box size and scale must be > 0, got size {box_size!r}, scale {scale!r}")
    side = max(1, round(scale * max(w, h)))
    u0, v0 = round(cu - (side - 1) / 2), round(cv - (side - 1) / 2)
    return u0, v0, u0 + side, v0 + side


def crop_input(image: np.ndarray, region: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """RGB image ``(H, W, 3)`` (uint8, or float in [0, 1]) → the model input ``(1, 3, size, size)`` of ``region``.

    ``region`` ``(u0, v0, u1, v1)`` (integers, exclusive ends) may extend past the image; what lies
    outside is black (0), like the renderer's background, so an object at the border keeps its
    place in the crop. It must overlap the image. The crop is resized with
    ``torch.nn.functional.interpolate`` (bilinear, antialiased) to ``size``; ``size <= 0`` keeps it.
    Float32 in [0, 1].
    """
    image = _check_rgb(image)
    height, width = image.shape[:2]
    u0, v0, u1, v1 = (int(x) for x in region)
    if u1 <= u0 or v1 <= v0:
        raise ValueError(f"region must have u1 > u0 and v1 > v0, got {region!r}")
    cu0, cv0, cu1, cv1 = max(u0, 0), max(v0, 0), min(u1, width), min(v1, height)
    if cu1 <= cu0 or cv1 <= cv0:
        raise ValueError(f"region {region!r} lies outside the {width}x{height} image")
    if (cu0, cv0, cu1, cv1) == (u0, v0, u1, v1):
        crop = image[v0:v1, u0:u1]
    else:
        crop = np.zeros((v1 - v0, u1 - u0, 3), dtype=image.dtype)
        crop[cv0 - v0 : cv1 - v0, cu0 - u0 : cu1 - u0] = image[cv0:cv1, cu0:cu1]
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]  # (1, 3, h, w)
    x = x.float().div(255.0) if image.dtype == np.uint8 else x.float()
    if size > 0 and (x.shape[-2], x.shape[-1]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def model_input(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """RGB image ``(H, W, 3)`` (uint8, or float in [0, 1]) → model input ``(1, 3, size, size)`` float32 in [0, 1].

    The largest centred square (:func:`square_region`, so the aspect ratio is kept) through
    :func:`crop_input`. Returns the tensor and the crop region ``(u0, v0, u1, v1)`` in the input
    image, whose centre gives the crop rotation correction (:func:`correct_crop_rotation`).
    """
    image = _check_rgb(image)
    region = square_region(image.shape[1], image.shape[0])
    return crop_input(image, region, size), region
