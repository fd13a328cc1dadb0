"""ROS messages ↔ the pipeline's types (no maths: values are copied, never recomputed).

Out: a :class:`pose_core.pipeline.ObjectEstimate` (quaternions ``(x, y, z, w)``, translation,
6x6 covariance, samples, modes, all computed once by the pipeline) becomes
``PoseDistribution``, ``PoseWithCovarianceStamped``, ``PoseArray``, ``TransformStamped``,
``vision_msgs/Detection3D`` and ``visualization_msgs/Marker`` messages (marker geometry from
:mod:`pose_core.markers`). In: a ``vision_msgs/Detection2DArray`` becomes :class:`pose_core.pipeline.Box` es.
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
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker

from pose_core import markers
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
    "detection_class_ids",
    "frame_suffix",
    "detection3d_msg",
    "detection3d_array_msg",
    "MARKER_IDS",
    "marker_msgs",
    "delete_marker_msgs",
]

#: Marker ids within an object's namespace: its mode's axes, its samples' axes, its translation
#: ellipsoid, its label.
MARKER_IDS = {"mode": 0, "samples": 1, "ellipsoid": 2, "label": 3}


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
    if estimate.sample_positions is not None:
        msg.sample_positions = [_point(p) for p in estimate.sample_positions]
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
    """``geometry_msgs/PoseArray`` of the samples (for RViz): each at its own sampled position when the
    model samples translations (``estimate.sample_positions``), else at the estimated translation.

    ``samples``: the samples as messages when already built (e.g. for the PoseDistribution).
    """
    samples = quaternion_msgs(estimate.samples) if samples is None else samples
    positions = estimate.sample_positions
    poses = []
    for i, q in enumerate(samples):
        pose = Pose()
        pose.position = _point(estimate.translation if positions is None else positions[i])
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


def point_cloud_msg(points: np.ndarray, header: Any) -> PointCloud2:
    """``sensor_msgs/PointCloud2`` of ``points`` ``(N, 3)`` (m): one row (``height`` 1), fields x, y, z float32,
    little-endian, ``point_step`` 12, dense (every point finite: a non-finite input raises ValueError)."""
    p = np.ascontiguousarray(points, dtype="<f4")
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points must be finite (the cloud is published dense)")
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    return PointCloud2(header=header, height=1, width=int(p.shape[0]), fields=fields, is_bigendian=False,
                       point_step=12, row_step=12 * int(p.shape[0]), data=p.tobytes(), is_dense=True)


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


def detection_class_ids(msg: Any) -> list[str]:
    """Per detection of a ``vision_msgs/Detection2DArray``: the ``class_id`` of its highest-scoring
    result ("" without results), in message order (the order of :func:`detection_boxes`)."""
    out = []
    for det in msg.detections:
        best = max(det.results, key=lambda r: float(r.hypothesis.score), default=None)
        out.append("" if best is None else str(best.hypothesis.class_id))
    return out


def detection3d_msg(
    estimate: ObjectEstimate, header: Any, class_id: str, size: Sequence[float], detection_id: str
) -> Detection3D:
    """``vision_msgs/Detection3D`` of ``estimate``: one result with ``class_id``, score = the
    probability mass of the published mode (``mode_mass[0]``: within ``mode_radius_deg`` of it),
    pose = the mode with the 6x6 covariance; ``bbox`` centred on the mode, ``size`` (m, object
    axes; zeros when unknown)."""
    msg = Detection3D()
    msg.header = header
    msg.id = detection_id
    result = ObjectHypothesisWithPose()
    result.hypothesis.class_id = class_id
    result.hypothesis.score = float(estimate.mode_mass[0]) if len(estimate.mode_mass) else 0.0
    result.pose.pose = pose_msg(estimate.orientation, estimate.translation)
    result.pose.covariance = np.asarray(estimate.covariance, dtype=np.float64).reshape(36)
    msg.results = [result]
    msg.bbox.center = result.pose.pose
    sx, sy, sz = (float(v) for v in size)
    msg.bbox.size = Vector3(x=sx, y=sy, z=sz)
    return msg


def detection3d_array_msg(header: Any, detections: Sequence[Detection3D]) -> Detection3DArray:
    """``vision_msgs/Detection3DArray`` of the detections of one image."""
    return Detection3DArray(header=header, detections=list(detections))


def _color(rgba: Sequence[float]) -> ColorRGBA:
    r, g, b, a = (float(v) for v in rgba)
    return ColorRGBA(r=r, g=g, b=b, a=a)


def _marker(header: Any, ns: str, kind: str, marker_type: int) -> Marker:
    m = Marker()
    m.header = header
    m.ns = ns
    m.id = MARKER_IDS[kind]
    m.type = marker_type
    m.action = Marker.ADD
    m.pose.orientation.w = 1.0
    return m


def marker_msgs(
    estimate: ObjectEstimate, header: Any, ns: str, axis_length: float, label: str, max_samples: int
) -> list[Marker]:
    """Markers of one object in namespace ``ns`` (ids :data:`MARKER_IDS`): the mode's axes
    (LINE_LIST, RViz colours), the first ``max_samples`` samples as short triads (half
    ``axis_length``, opacity by weight; at their ``sample_positions`` when the model samples
    translations, else at the estimated translation), the translation's 95 % ellipsoid (SPHERE) where the
    covariance has a translation block, and ``label`` above the object (TEXT_VIEW_FACING).
    Markers that do not apply (no ellipsoid) are sent as DELETE so a stale one disappears."""
    width = max(axis_length / 20, 1e-4)
    out = []
    mode = _marker(header, ns, "mode", Marker.LINE_LIST)
    segments = markers.axes_segments(estimate.rotation, estimate.translation, axis_length)
    mode.points = [_point(p) for p in segments.reshape(-1, 3)]
    mode.colors = [_color(c) for c in np.repeat(markers.AXIS_COLORS, 2, axis=0)]
    mode.scale.x = width
    mode.color = _color((1.0, 1.0, 1.0, 1.0))
    out.append(mode)

    samples = _marker(header, ns, "samples", Marker.LINE_LIST)
    n = min(max_samples, len(estimate.samples))
    if estimate.sample_positions is None:  # rotation samples, all at the estimated translation
        points, colors = markers.sample_axes(
            estimate.samples[:n], estimate.sample_weights[:n], estimate.translation, axis_length / 2
        )
    else:  # joint samples (an SE(3) model): each triad at its own sampled position (6 points per sample)
        points, colors = markers.sample_axes(estimate.samples[:n], estimate.sample_weights[:n], np.zeros(3),
                                             axis_length / 2)
        points = points + np.repeat(np.asarray(estimate.sample_positions[:n], dtype=np.float64), 6, axis=0)
    samples.points = [_point(p) for p in points]
    samples.colors = [_color(c) for c in colors]
    samples.scale.x = width / 2
    samples.color = _color((1.0, 1.0, 1.0, 1.0))
    out.append(samples)

    ellipsoid = markers.translation_ellipsoid(estimate.translation, np.asarray(estimate.covariance)[:3, :3])
    if ellipsoid is None:
        out.extend(delete_marker_msgs(header, ns, ("ellipsoid",)))
    else:
        e = _marker(header, ns, "ellipsoid", Marker.SPHERE)
        e.pose = pose_msg(ellipsoid.orientation, ellipsoid.center)
        dx, dy, dz = (float(v) for v in ellipsoid.diameters)
        e.scale = Vector3(x=dx, y=dy, z=dz)
        e.color = _color((0.2, 0.6, 1.0, 0.25))
        out.append(e)

    text = _marker(header, ns, "label", Marker.TEXT_VIEW_FACING)
    text.pose.position = _point(np.asarray(estimate.translation, dtype=np.float64) + [0.0, -1.5 * axis_length, 0.0])
    text.scale.z = axis_length / 2  # text height (m)
    text.color = _color((1.0, 1.0, 1.0, 1.0))
    text.text = label
    out.append(text)
    return out


def delete_marker_msgs(header: Any, ns: str, kinds: Sequence[str] = tuple(MARKER_IDS)) -> list[Marker]:
    """DELETE markers for ``kinds`` (names of :data:`MARKER_IDS`) in namespace ``ns``."""
    out = []
    for kind in kinds:
        m = Marker()
        m.header = header
        m.ns = ns
        m.id = MARKER_IDS[kind]
        m.action = Marker.DELETE
        out.append(m)
    return out
