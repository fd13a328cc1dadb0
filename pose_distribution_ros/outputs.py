"""Everything the node publishes for one frame, built once: the node publishes it, the bag command
(:mod:`pose_distribution_ros.bag`) writes it.

:data:`OUTPUTS` names each output (topic relative to the node, message type); an
:class:`OutputBuilder` turns a :class:`pose_core.pipeline.FrameEstimate` into
:class:`FrameMessages`, remembering which marker namespaces it drew so that an object that
disappears has its markers deleted in the next frame.

Per object (highest box score first), all stamped with the image's header:

* ``distributions`` / ``distribution`` (the first object) / ``pose`` / ``samples``: as before;
* ``detections`` (``vision_msgs/Detection3DArray``): one ``Detection3D`` per object, id = its
  track id, else its box id, else its index; one result: ``class_id`` (the detection's class,
  else the ``class_id`` parameter), score = the probability mass of the published mode, pose = the
  mode with the 6x6 covariance; bbox centred on the mode, size ``object_size_m`` (0 when unknown);
* ``markers`` (``visualization_msgs/MarkerArray``): namespace = the object's child frame name
  (:func:`child_frame`), ids :data:`~pose_distribution_ros.messages.MARKER_IDS`;
* ``tf``: one ``TransformStamped`` per object, camera frame -> :func:`child_frame`;
* ``shape`` (``sensor_msgs/PointCloud2``, only with a ``reconstruction_checkpoint``): one cloud per object
  whose shape was reconstructed, in metres, ``header.frame_id`` = the object's :func:`child_frame` (so that
  with TF a planner sees it in the camera frame), the image's stamp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from pose_distribution.msg import PoseDistribution, PoseDistributionArray
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from pose_core.pipeline import FrameEstimate, ObjectEstimate
from pose_distribution_ros import messages
from pose_distribution_ros.parameters import NodeSettings

__all__ = ["OUTPUTS", "OPTIONAL_OUTPUTS", "FrameMessages", "OutputBuilder", "child_frame"]

#: output name -> (topic, relative to the node unless absolute; message type).
OUTPUTS: dict[str, tuple[str, type]] = {
    "distribution": ("~/distribution", PoseDistribution),
    "distributions": ("~/distributions", PoseDistributionArray),
    "pose": ("~/pose", PoseWithCovarianceStamped),
    "samples": ("~/samples", PoseArray),
    "detections": ("~/detections", Detection3DArray),
    "markers": ("~/markers", MarkerArray),
    "tf": ("/tf", TFMessage),
    "shape": ("~/shape", PointCloud2),
}

#: Outputs made only when an option is on (the node creates their publishers then, the bag their topics).
OPTIONAL_OUTPUTS = ("shape",)


def child_frame(estimate: ObjectEstimate, object_frame_id: str) -> str:
    """TF child frame (and marker namespace) of an object: ``object_frame_id`` for the whole image,
    ``<object_frame_id>_<box id or index>`` for a detection (:func:`messages.frame_suffix`)."""
    if estimate.box is None:
        return object_frame_id
    return f"{object_frame_id}_{messages.frame_suffix(estimate.box, estimate.index)}"


@dataclass
class FrameMessages:
    """The messages of one frame; ``distribution``, ``pose`` and ``samples`` are ``None`` without objects."""

    distributions: PoseDistributionArray
    detections: Detection3DArray
    markers: MarkerArray
    transforms: list[Any] = field(default_factory=list)
    distribution: PoseDistribution | None = None
    pose: PoseWithCovarianceStamped | None = None
    samples: PoseArray | None = None
    shapes: list[PointCloud2] = field(default_factory=list)

    def items(self, publish_tf: bool = True) -> list[tuple[str, Any]]:
        """``(output name, message)`` in publishing order, skipping what is absent (``tf``: one
        ``TFMessage`` of all transforms, when ``publish_tf`` and there are any)."""
        out: list[tuple[str, Any]] = [("distributions", self.distributions)]
        out += [(k, m) for k, m in (("distribution", self.distribution), ("pose", self.pose),
                                    ("samples", self.samples)) if m is not None]  # fmt: skip
        out += [("detections", self.detections), ("markers", self.markers)]
        out += [("shape", m) for m in self.shapes]
        if publish_tf and self.transforms:
            out.append(("tf", TFMessage(transforms=self.transforms)))
        return out


class OutputBuilder:
    """Builds :class:`FrameMessages`; keeps the marker namespaces drawn last (one builder per output stream)."""

    def __init__(self) -> None:
        self._namespaces: set[str] = set()

    def build(
        self, frame: FrameEstimate, header: Header, settings: NodeSettings, detections: Any = None,
        draw_markers: bool | None = None,
    ) -> FrameMessages:
        """Messages of ``frame``, stamped ``header``.

        Args:
            frame: the estimator's output for one image.
            header: the outputs' header (the image's stamp, the camera frame).
            settings: the node's settings (frames, class, size, markers).
            detections: the ``vision_msgs/Detection2DArray`` the boxes came from (class ids), or ``None``.
            draw_markers: draw this frame's markers; default ``settings.publish_markers`` (the node
                passes ``False`` while nobody subscribes: they cost about 2 ms a frame). Markers drawn
                before are deleted either way.
        """
        draw = settings.publish_markers if draw_markers is None else bool(draw_markers)
        classes = messages.detection_class_ids(detections) if detections is not None else []
        frames = [child_frame(o, settings.object_frame_id) for o in frame.objects]
        dists = [messages.pose_distribution_msg(o, header, f) for o, f in zip(frame.objects, frames, strict=True)]
        out = FrameMessages(
            distributions=messages.pose_distribution_array_msg(header, dists),
            detections=messages.detection3d_array_msg(header, []),
            markers=MarkerArray(),
        )
        for o, f in zip(frame.objects, frames, strict=True):
            class_id = (classes[o.index] if o.index < len(classes) else "") or settings.class_id
            detection_id = o.track_id or (o.box.id if o.box is not None and o.box.id else str(o.index))
            det = messages.detection3d_msg(o, header, class_id, settings.object_size_m, detection_id)
            out.detections.detections.append(det)
            if draw:
                label = f"{class_id} {det.results[0].hypothesis.score:.2f}"
                out.markers.markers.extend(
                    messages.marker_msgs(o, header, f, settings.marker_axis_length_m, label, settings.marker_samples)
                )
            out.transforms.append(messages.transform_msg(o, header, f))
            if o.shape is not None:
                out.shapes.append(messages.point_cloud_msg(o.shape.points, Header(stamp=header.stamp, frame_id=f)))
        if dists:
            out.distribution = dists[0]
            out.pose = messages.pose_with_covariance_msg(frame.objects[0], header)
            out.samples = messages.pose_array_msg(frame.objects[0], header, samples=dists[0].samples)
        drawn = set(frames) if draw else set()
        for ns in sorted(self._namespaces - drawn):
            out.markers.markers.extend(messages.delete_marker_msgs(header, ns))
        self._namespaces = drawn
        return out

    def clear(self, header: Header) -> MarkerArray:
        """DELETE markers for everything drawn so far (e.g. when the node is deactivated)."""
        out = MarkerArray()
        for ns in sorted(self._namespaces):
            out.markers.extend(messages.delete_marker_msgs(header, ns))
        self._namespaces = set()
        return out
