"""The node's parameters, declared once from one table, and the settings they make.

:data:`PARAMETERS` is the only place a parameter is named, defaulted, described and bounded;
``config/pose_distribution.yaml`` repeats the defaults for users (a test checks they agree).
Read-only parameters are fixed at start-up; the others may change at run time
(``ros2 param set``), and :func:`settings_from` turns them into the node's :class:`NodeSettings`
and the estimator's :class:`~pose_core.pipeline.EstimatorSettings` in one step, so that a bad
value is refused whole and the running settings are swapped atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pose_core.pipeline import EstimatorSettings

__all__ = ["Parameter", "PARAMETERS", "NodeSettings", "declare", "settings_from", "runtime_names"]


@dataclass(frozen=True)
class Parameter:
    """One node parameter: name, default (its type is the parameter's), description, bounds."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    min: float | None = None
    max: float | None = None


#: Defaults of the estimator's settings that are parameters here (one place: pose_core.pipeline).
_DEFAULTS = EstimatorSettings()

PARAMETERS: tuple[Parameter, ...] = (
    Parameter("checkpoint", "checkpoints/demo.pt",
              "Model checkpoint (pose_core.save_checkpoint). Relative paths: working directory, repository, "
              "then the package share directory.", read_only=True),
    Parameter("device", "auto", "auto | cpu | cuda", read_only=True),
    Parameter("backend", "auto",
              "What runs the network: auto (onnxruntime on a CPU when it is installed, else torch), torch, or "
              "onnxruntime (CPU; same coefficients as torch to float32 round-off, about 5x faster here).",
              read_only=True),
    Parameter("image_size", 0,
              "Side (px) each crop is resized to for the model; 0: the size the checkpoint was trained on "
              "(recorded in it), or 224 when it does not say.", read_only=True, min=0, max=4096),
    Parameter("torch_threads", 1,
              "Intra-op threads of the inference (torch.set_num_threads, and ONNX Runtime's); 0: torch's "
              "default (one per core). 1, the default, measured fastest end to end on a 2-core CPU shared with "
              "the camera process (30 Hz camera: p50 27 ms, every frame answered; 2 threads: 54 ms, 94 %).",
              read_only=True, min=0, max=1024),
    Parameter("image_qos", "sensor_data",
              "QoS of the image, depth and camera_info subscriptions: sensor_data (best effort, keep last 5: "
              "matches every publisher, newest frames win) or reliable (keep last 5; only reliable publishers).",
              read_only=True),
    Parameter("log_throttle_s", 5.0,
              "Seconds between two log lines of the same kind of problem (bad input, lost frames); the "
              "lines held back are counted in the next one and every problem in /diagnostics.",
              read_only=True, min=0.0, max=3600.0),
    Parameter("use_detections", False,
              "Subscribe to 'detections' (vision_msgs/Detection2DArray) and publish one distribution per box; "
              "false: the whole image is one object.", read_only=True),
    Parameter("object_frame_id", "object",
              "Child frame of the pose (TF, messages); with detections <object_frame_id>_<box id or index>. Also "
              "the marker namespace of each object."),
    Parameter("class_id", "object",
              "class_id of the ~/detections results when the input detection has none (always without detections)."),
    Parameter("reconstruction_checkpoint", "",
              "A shape reconstruction checkpoint (train/train.py kind: reconstruction): each object's shape is then "
              "published on ~/shape (sensor_msgs/PointCloud2, metres, in the object's TF frame); empty: off. One that "
              "cannot be loaded or holds another kind is logged as an error; poses are served without shapes.",
              read_only=True),
    Parameter("reconstruction_size_m", 0.0,
              "Bounding-box diagonal (m) the reconstructed shape is scaled to without depth (with depth the size "
              "is fitted to the visible points); 0: the diagonal of object_size_m, else an SE(3) model's object "
              "diameter, else 0.2.",
              read_only=True, min=0.0, max=100.0),
    Parameter("object_size_m", [0.0, 0.0, 0.0],
              "Size (m) of the object along its own x, y, z axes: the ~/detections bbox size; zeros: unknown."),
    Parameter("publish_markers", True, "Publish ~/markers (visualization_msgs/MarkerArray) for RViz / Foxglove."),
    Parameter("marker_axis_length_m", 0.1, "Length (m) of the mode's axes in ~/markers (samples: half of it).",
              min=0.001, max=100.0),
    Parameter("marker_samples", 30, "Most rotation samples drawn in ~/markers (short axis triads, opacity by weight).",
              min=0, max=1000),
    Parameter("camera_frame_id", "", "Frame of the outputs; empty: the input image's header.frame_id."),
    Parameter("num_samples", 100, "Rotation samples per message.", min=1, max=100000),
    Parameter("mode_resolution_deg", 1.875,
              "Wanted resolution of the mode (deg): picks the coarse-to-fine target grid level (>= 3).",
              min=0.1, max=60.0),
    Parameter("publish_tf", True, "Publish camera frame -> object frame on /tf."),
    Parameter("nominal_distance_m", 1.0,
              "Assumed distance (m) along the viewing ray when there is no depth image; the published "
              "covariance says it is a guess.", min=0.001, max=1000.0),
    Parameter("max_rate_hz", 0.0,
              "Most inferences per second; newer frames replace older ones meanwhile. 0: as fast as possible.",
              min=0.0, max=1000.0),
    Parameter("detection_crop_scale", 1.2,
              "Crop side / a detection box's longer side (training renders fill about 1/1.2 of the frame).",
              min=0.1, max=10.0),
    Parameter("max_detections", 8, "Most boxes per image (highest score first); the rest are dropped and counted.",
              min=1, max=256),
    Parameter("temporal_filter", _DEFAULTS.temporal_filter,
              "Track each object over frames (by detection id, else box position; keyed by image stamps): the "
              "previous posterior, diffused by the motion model, is the next frame's prior, and among rotations the "
              "distribution cannot tell apart the one continuous with the last published mode is published (no "
              "flips between symmetric poses). false: every frame on its own."),
    Parameter("filter_rotation_std_deg", _DEFAULTS.filter_rotation_std_deg,
              "Motion model: std (deg, per axis) of a tracked object's rotation change over one second (random "
              "walk; over dt seconds std * sqrt(dt)).", min=0.1, max=1000.0),
    Parameter("filter_outlier_weight", _DEFAULTS.filter_outlier_weight,
              "Motion model: the prior's uniform share, the chance per frame of an arbitrary turn (larger follows a "
              "real sudden change sooner, smaller resists flips more).", min=1e-6, max=0.999),
    Parameter("continuity_tie_nats", _DEFAULTS.continuity_tie_nats,
              "Peaks within this log-density (nats) of the densest count as indistinguishable; the one nearest the "
              "previous published mode is published (0: always the densest).", min=0.0, max=100.0),
    Parameter("track_timeout_s", _DEFAULTS.track_timeout_s,
              "A track not seen for longer (s) is reset; a stamp going backwards (a bag loop) or jumping by more "
              "resets all.", min=0.001, max=3600.0),
    Parameter("refine", _DEFAULTS.refine,
              "Refine each object's rotation by render-and-compare against a neural mesh of the object (NeMo-style, "
              "robust to occlusion; pose_core.refine), from the distribution's refine_modes top modes; the samples "
              "are re-weighted by the render-and-compare likelihood. Adds latency (refine_ms in /diagnostics). "
              "Rotation models only."),
    Parameter("refine_checkpoint", "checkpoints/refine_duck.pt",
              "Neural mesh checkpoint of the object (train/train.py, kind neural_mesh), loaded when refine is "
              "first on; paths as for checkpoint.", read_only=True),
    Parameter("refine_modes", _DEFAULTS.refine_modes, "Top modes of the distribution refined in parallel.",
              min=1, max=64),
    Parameter("refine_steps", _DEFAULTS.refine_steps, "Adam steps of the refinement per mode (lr 0.05).",
              min=0, max=1000),
    Parameter("max_crop_factor", 4.0,
              "A detection box whose crop side exceeds this multiple of the image's longer side is rejected "
              "(logged): a garbage box must not cost more than a frame.", min=1.0, max=100.0),
)

_BY_NAME = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class NodeSettings:
    """What the node itself (not the estimator) does with run-time parameters."""

    object_frame_id: str
    camera_frame_id: str
    publish_tf: bool
    max_rate_hz: float
    class_id: str = "object"
    object_size_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    publish_markers: bool = True
    marker_axis_length_m: float = 0.1
    marker_samples: int = 30


def runtime_names() -> tuple[str, ...]:
    """Names of the parameters that may change at run time."""
    return tuple(p.name for p in PARAMETERS if not p.read_only)


def declare(node: Any) -> None:
    """Declare every parameter of :data:`PARAMETERS` on ``node`` (an ``rclpy.node.Node``)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    for p in PARAMETERS:
        ranges: dict[str, Any] = {}
        if p.min is not None and isinstance(p.default, bool):
            raise AssertionError(f"{p.name}: a bool has no range")
        if p.min is not None and isinstance(p.default, int):
            ranges["integer_range"] = [IntegerRange(from_value=int(p.min), to_value=int(p.max), step=1)]
        elif p.min is not None and isinstance(p.default, float):
            ranges["floating_point_range"] = [FloatingPointRange(from_value=p.min, to_value=p.max, step=0.0)]
        node.declare_parameter(
            p.name, p.default, ParameterDescriptor(description=p.description, read_only=p.read_only, **ranges)
        )


def settings_from(values: dict[str, Any]) -> tuple[NodeSettings, EstimatorSettings]:
    """Settings of the run-time parameter ``values`` (name -> value); ValueError naming a bad one."""
    unknown = set(values) - set(_BY_NAME)
    if unknown:
        raise ValueError(f"unknown parameters: {sorted(unknown)}")
    v = {name: values.get(name, _BY_NAME[name].default) for name in runtime_names()}
    if not str(v["object_frame_id"]):
        raise ValueError("object_frame_id must not be empty")
    size = tuple(float(x) for x in v["object_size_m"])
    if len(size) != 3 or not all(math.isfinite(x) and x >= 0 for x in size):
        raise ValueError(f"object_size_m must be 3 finite sizes >= 0 (m), got {list(v['object_size_m'])}")
    node = NodeSettings(
        object_frame_id=str(v["object_frame_id"]),
        camera_frame_id=str(v["camera_frame_id"]),
        publish_tf=bool(v["publish_tf"]),
        max_rate_hz=float(v["max_rate_hz"]),
        class_id=str(v["class_id"]),
        object_size_m=size,  # type: ignore[arg-type]
        publish_markers=bool(v["publish_markers"]),
        marker_axis_length_m=float(v["marker_axis_length_m"]),
        marker_samples=int(v["marker_samples"]),
    )
    estimator = EstimatorSettings(
        target_level=EstimatorSettings.level_for_resolution(float(v["mode_resolution_deg"])),
        num_samples=int(v["num_samples"]),
        nominal_distance_m=float(v["nominal_distance_m"]),
        detection_crop_scale=float(v["detection_crop_scale"]),
        max_detections=int(v["max_detections"]),
        max_crop_factor=float(v["max_crop_factor"]),
        temporal_filter=bool(v["temporal_filter"]),
        filter_rotation_std_deg=float(v["filter_rotation_std_deg"]),
        filter_outlier_weight=float(v["filter_outlier_weight"]),
        continuity_tie_nats=float(v["continuity_tie_nats"]),
        track_timeout_s=float(v["track_timeout_s"]),
        refine=bool(v["refine"]),
        refine_modes=int(v["refine_modes"]),
        refine_steps=int(v["refine_steps"]),
    )
    return node, estimator
