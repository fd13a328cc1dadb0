"""Pack a :class:`pose_core.camera.PoseEstimate` into ROS messages (no maths beyond packing).

The estimate (mode, covariance, samples, modes) is computed by
:func:`pose_core.camera.pose_estimate` from an :class:`~pose_core.distribution.SO3Distribution`
and a :class:`~pose_core.camera.TranslationEstimate`; :func:`from_distribution` does both steps.
Conventions are those of ``msg/PoseDistribution.msg`` and :mod:`pose_core.so3` (quaternions
x, y, z, w; the pose maps object-frame points into the header frame, i.e. it is the transform
``header.frame_id -> object_frame_id``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import (
    Point,
    Pose,
    PoseArray,
    PoseWithCovarianceStamped,
    Quaternion,
    TransformStamped,
    Vector3,
)
from pose_distribution.msg import PoseDistribution, PoseDistributionArray, RotationMode

from pose_core import so3
from pose_core.camera import PoseEstimate, TranslationEstimate, pose_estimate

__all__ = [
    "DetectionBox",
    "detection_boxes",
    "quaternions_xyzw",
    "quaternion_msgs",
    "pose_msg",
    "from_distribution",
    "pose_distribution_msg",
    "pose_distribution_array_msg",
    "pose_with_covariance_msg",
    "pose_array_msg",
    "transform_msg",
]


def quaternions_xyzw(rotations: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` → unit quaternions ``(..., 4)`` ``(x, y, z, w)``, ``w >= 0`` (float64)."""
    return so3.matrix_to_quat(torch.as_tensor(np.asarray(rotations, dtype=np.float64))).numpy()


def quaternion_msgs(rotations: np.ndarray) -> list[Quaternion]:
    """Rotation matrices ``(N, 3, 3)`` → ``geometry_msgs/Quaternion`` list."""
    q = quaternions_xyzw(rotations).reshape(-1, 4)
    return [Quaternion(x=float(a), y=float(b), z=float(c), w=float(d)) for a, b, c, d in q.tolist()]


def pose_msg(rotation: np.ndarray, translation: np.ndarray) -> Pose:
    """``geometry_msgs/Pose`` of rotation ``(3, 3)`` and translation ``(3,)`` (m)."""
    x, y, z = (float(v) for v in np.asarray(translation, dtype=np.float64))
    return Pose(position=Point(x=x, y=y, z=z), orientation=quaternion_msgs(np.asarray(rotation)[None])[0])


def from_distribution(dist: Any, translation: TranslationEstimate, **kwargs: Any) -> PoseEstimate:
    """:func:`pose_core.camera.pose_estimate` (re-exported so callers need one import)."""
    return pose_estimate(dist, translation, **kwargs)


def pose_distribution_msg(estimate: PoseEstimate, header: Any, object_frame_id: str) -> PoseDistribution:
    """``pose_distribution/PoseDistribution`` of ``estimate``, stamped with ``header`` (the image's)."""
    msg = PoseDistribution()
    msg.header = header
    msg.object_frame_id = object_frame_id
    msg.mode = pose_msg(estimate.rotation, estimate.translation)
    msg.covariance = np.asarray(estimate.covariance, dtype=np.float64).reshape(36)
    msg.samples = quaternion_msgs(estimate.samples)
    msg.sample_weights = np.asarray(estimate.sample_weights, dtype=np.float32)
    msg.entropy = float(estimate.entropy)
    msg.mode_resolution = float(estimate.mode_resolution)
    msg.max_log_density = float(estimate.max_log_density)
    msg.modes = [
        RotationMode(orientation=q, probability_mass=float(m), log_density=float(ld))
        for q, m, ld in zip(
            quaternion_msgs(estimate.modes),
            estimate.mode_mass.tolist(),
            estimate.mode_log_density.tolist(),
            strict=True,
        )
    ]
    return msg


def pose_distribution_array_msg(header: Any, distributions: Sequence[PoseDistribution]) -> PoseDistributionArray:
    """``pose_distribution/PoseDistributionArray`` of the distributions of one image."""
    return PoseDistributionArray(header=header, distributions=list(distributions))


def pose_with_covariance_msg(estimate: PoseEstimate, header: Any) -> PoseWithCovarianceStamped:
    """``geometry_msgs/PoseWithCovarianceStamped``: the mode and the 6x6 covariance (row-major)."""
    msg = PoseWithCovarianceStamped()
    msg.header = header
    msg.pose.pose = pose_msg(estimate.rotation, estimate.translation)
    msg.pose.covariance = np.asarray(estimate.covariance, dtype=np.float64).reshape(36)
    return msg


def pose_array_msg(estimate: PoseEstimate, header: Any) -> PoseArray:
    """``geometry_msgs/PoseArray`` of the rotation samples, each at the estimated translation (for RViz)."""
    x, y, z = (float(v) for v in estimate.translation)
    return PoseArray(
        header=header,
        poses=[Pose(position=Point(x=x, y=y, z=z), orientation=q) for q in quaternion_msgs(estimate.samples)],
    )


def transform_msg(estimate: PoseEstimate, header: Any, child_frame_id: str) -> TransformStamped:
    """``geometry_msgs/TransformStamped`` ``header.frame_id -> child_frame_id`` at the mode."""
    msg = TransformStamped()
    msg.header = header
    msg.child_frame_id = child_frame_id
    x, y, z = (float(v) for v in estimate.translation)
    msg.transform.translation = Vector3(x=x, y=y, z=z)
    msg.transform.rotation = quaternion_msgs(estimate.rotation[None])[0]
    return msg


@dataclass(frozen=True)
class DetectionBox:
    """One ``vision_msgs/Detection2D`` box, as the node uses it.

    Attributes:
        index: position in the ``Detection2DArray``.
        center: ``(u, v)`` pixels (``bbox.center.position``; ``bbox.center.theta`` is ignored: the
            crop is axis-aligned around the box).
        size: ``(width, height)`` pixels (``bbox.size_x``, ``bbox.size_y``).
        score: highest ``results[*].hypothesis.score`` (0 without results).
        id: ``Detection2D.id``.
        frame_suffix: ``id`` made a valid frame-name part (``[A-Za-z0-9_]``), or ``str(index)``
            when ``id`` is empty.
    """

    index: int
    center: tuple[float, float]
    size: tuple[float, float]
    score: float
    id: str
    frame_suffix: str


def detection_boxes(msg: Any) -> list[DetectionBox]:
    """The boxes of a ``vision_msgs/Detection2DArray``, highest score first (stable for ties)."""
    boxes = []
    for i, det in enumerate(msg.detections):
        score = max((float(r.hypothesis.score) for r in det.results), default=0.0)
        suffix = re.sub(r"[^A-Za-z0-9_]", "_", det.id) if det.id else str(i)
        boxes.append(
            DetectionBox(
                index=i,
                center=(float(det.bbox.center.position.x), float(det.bbox.center.position.y)),
                size=(float(det.bbox.size_x), float(det.bbox.size_y)),
                score=score,
                id=det.id,
                frame_suffix=suffix,
            )
        )
    return sorted(boxes, key=lambda b: -b.score)
