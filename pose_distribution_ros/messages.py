"""ROS messages ↔ the pipeline's types (no maths: values are copied, never recomputed).

Out: a :class:`pose_core.pipeline.ObjectEstimate` (quaternions ``(x, y, z, w)``, translation,
6x6 covariance, samples, modes, all computed once by the pipeline) becomes
``PoseDistribution``, ``PoseWithCovarianceStamped``, ``PoseArray`` and ``TransformStamped``
messages. In: a ``vision_msgs/Detection2DArray`` becomes :class:`pose_core.pipeline.Box` es.
Conventions are those of ``msg/PoseDistribution.msg`` and :mod:`pose_core.so3`: a pose maps
object-frame points into the header frame, i.e. it is the transform
``header.frame_id -> object_frame_id``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseArray, PoseWithCovarianceStamped, Quaternion, TransformStamped, Vector3
from pose_distribution.msg import PoseDistribution, PoseDistributionArray, RotationMode

from pose_core.pipeline import Box, ObjectEstimate

__all__ = [
    "quaternion_msgs",
    "pose_msg",
    "pose_distribution_msg",
    "pose_distribution_array_msg",
    "pose_with_covariance_msg",
    "pose_array_msg",
    "transform_msg",
    "detection_boxes",
    "frame_suffix",
]


def quaternion_msgs(quaternions: np.ndarray) -> list[Quaternion]:
    """Quaternions ``(N, 4)`` (x, y, z, w) → ``geometry_msgs/Quaternion`` list."""
    out = []
    for x, y, z, w in np.asarray(quaternions, dtype=np.float64).reshape(-1, 4).tolist():
        q = Quaternion()
        q.x, q.y, q.z, q.w = x, y, z, w
        out.append(q)
    return out


def _point(translation: np.ndarray) -> Point:
    p = Point()
    p.x, p.y, p.z = (float(v) for v in translation)
    return p


def pose_msg(orientation: np.ndarray, translation: np.ndarray) -> Pose:
    """``geometry_msgs/Pose`` of a quaternion ``(4,)`` (x, y, z, w) and a translation ``(3,)`` (m)."""
    return Pose(position=_point(translation), orientation=quaternion_msgs(orientation)[0])


def pose_distribution_msg(estimate: ObjectEstimate, header: Any, object_frame_id: str) -> PoseDistribution:
    """``pose_distribution/PoseDistribution`` of ``estimate``, stamped with ``header`` (the image's)."""
    msg = PoseDistribution()
    msg.header = header
    msg.object_frame_id = object_frame_id
    msg.mode = pose_msg(estimate.orientation, estimate.translation)
    msg.covariance = np.asarray(estimate.covariance, dtype=np.float64).reshape(36)
    msg.samples = quaternion_msgs(estimate.samples)
    msg.sample_weights = np.asarray(estimate.sample_weights, dtype=np.float32)
    msg.entropy = float(estimate.entropy)
    msg.mode_resolution = float(estimate.mode_resolution)
    msg.max_log_density = float(estimate.max_log_density)
    msg.modes = [
        RotationMode(orientation=q, probability_mass=float(m), log_density=float(ld))
        for q, m, ld in zip(
            quaternion_msgs(estimate.modes), estimate.mode_mass.tolist(), estimate.mode_log_density.tolist(),
            strict=True,
        )
    ]
    return msg


def pose_distribution_array_msg(header: Any, distributions: Sequence[PoseDistribution]) -> PoseDistributionArray:
    """``pose_distribution/PoseDistributionArray`` of the distributions of one image."""
    return PoseDistributionArray(header=header, distributions=list(distributions))


def pose_with_covariance_msg(estimate: ObjectEstimate, header: Any) -> PoseWithCovarianceStamped:
    """``geometry_msgs/PoseWithCovarianceStamped``: the mode and the 6x6 covariance (row-major)."""
    msg = PoseWithCovarianceStamped()
    msg.header = header
    msg.pose.pose = pose_msg(estimate.orientation, estimate.translation)
    msg.pose.covariance = np.asarray(estimate.covariance, dtype=np.float64).reshape(36)
    return msg


def pose_array_msg(estimate: ObjectEstimate, header: Any, samples: list[Quaternion] | None = None) -> PoseArray:
    """``geometry_msgs/PoseArray`` of the rotation samples, each at the estimated translation (for RViz).

    ``samples``: the samples as messages when already built (e.g. for the PoseDistribution).
    """
    samples = quaternion_msgs(estimate.samples) if samples is None else samples
    poses = []
    for q in samples:
        pose = Pose()
        pose.position = _point(estimate.translation)
        pose.orientation = q
        poses.append(pose)
    return PoseArray(header=header, poses=poses)


def transform_msg(estimate: ObjectEstimate, header: Any, child_frame_id: str) -> TransformStamped:
    """``geometry_msgs/TransformStamped`` ``header.frame_id -> child_frame_id`` at the mode."""
    msg = TransformStamped()
    msg.header = header
    msg.child_frame_id = child_frame_id
    x, y, z = (float(v) for v in estimate.translation)
    msg.transform.translation = Vector3(x=x, y=y, z=z)
    msg.transform.rotation = quaternion_msgs(estimate.orientation)[0]
    return msg


def frame_suffix(box: Box, index: int) -> str:
    """Child-frame suffix of a detection: its id made a valid frame-name part (``[A-Za-z0-9_]``), or
    ``str(index)`` (its position in the array) when the id is empty."""
    return re.sub(r"[^A-Za-z0-9_]", "_", box.id) if box.id else str(index)


def detection_boxes(msg: Any) -> list[Box]:
    """The boxes of a ``vision_msgs/Detection2DArray``, in message order.

    ``center`` is ``bbox.center.position`` (``bbox.center.theta`` is ignored: the crop is
    axis-aligned around the box), ``size`` ``(bbox.size_x, bbox.size_y)``, ``score`` the highest
    ``results[*].hypothesis.score`` (0 without results), ``id`` ``Detection2D.id``. The pipeline
    orders them by score.
    """
    boxes = []
    for det in msg.detections:
        score = max((float(r.hypothesis.score) for r in det.results), default=0.0)
        boxes.append(
            Box(
                center=(float(det.bbox.center.position.x), float(det.bbox.center.position.y)),
                size=(float(det.bbox.size_x), float(det.bbox.size_y)),
                score=score,
                id=det.id,
            )
        )
    return boxes
