"""ROS 2 node ``pose_distribution``: camera image in, distribution over the object's pose out.

A thin adapter around :mod:`pose_core` (all geometry lives in :mod:`pose_core.camera`):

Subscriptions (remappable):
    ``image`` (sensor_msgs/Image, ``qos_profile_sensor_data``): rgb8, bgr8, rgba8, bgra8, mono8.
    ``camera_info`` (sensor_msgs/CameraInfo, optional): intrinsics for the viewing ray of the crop
    (rotation correction) and the translation estimate.
    ``depth`` (sensor_msgs/Image, optional, aligned with ``image``): 16UC1 (mm) or 32FC1 (m).
    ``detections`` (vision_msgs/Detection2DArray, when ``use_detections``): boxes in ``image``
    pixels, paired with the image of the same stamp; one distribution per box.

Publications (headers: the input image's stamp; frame ``camera_frame_id`` or the image's frame):
    ``~/distribution`` (pose_distribution/PoseDistribution),
    ``~/distributions`` (pose_distribution/PoseDistributionArray),
    ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped), ``~/samples`` (geometry_msgs/PoseArray),
    ``/tf`` (camera frame -> ``object_frame_id``, when ``publish_tf``; with detections one child
    frame per box, ``<object_frame_id>_<Detection2D.id>``, or ``_<index>`` when the id is empty),
    ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, 1 Hz: latency, rates, drops, errors).

Runtime: the image callback only stores the newest frame in a single slot (an unprocessed frame
that is overwritten is dropped and counted); a worker thread, not the executor's, runs the model
at most ``max_rate_hz`` times a second. Bad input is logged (rate-limited, one limit per kind of
problem) and the node goes on with the next frame. A missing or unreadable checkpoint stops the
node at start-up with exit status 1.

Objects: without detections the whole image (its largest centred square) is one object. With
``use_detections``, every Detection2DArray (at most ``max_detections`` boxes, highest score first)
is paired with the buffered image of the same stamp (either may arrive first); each box becomes a
square crop, ``detection_crop_scale`` times its longer side, run through the model as one batch;
each crop's rotation is corrected for its off-centre viewing ray (needs camera_info) and gets its
own translation. ``~/distributions`` then holds one distribution per box, in that order (empty for
an empty array), and ``~/distribution``, ``~/pose`` and ``~/samples`` carry the first one.
Images without detections are not processed in that mode.

Run: ``python -m pose_distribution_ros.node --ros-args --params-file config/pose_distribution.yaml``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from pose_distribution.msg import PoseDistribution, PoseDistributionArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from pose_distribution_ros.image_conversion import ImageConversionError, depth_image_to_meters, image_to_rgb

NODE_NAME = "pose_distribution"
DEFAULT_CHECKPOINT = "checkpoints/demo.pt"
#: Model input side when neither the parameter nor the checkpoint gives one.
FALLBACK_IMAGE_SIZE = 224
PACKAGE = "pose_distribution"
#: Seconds between two error logs of the same kind of bad input.
ERROR_THROTTLE_S = 5.0
#: Depth images whose stamp is further than this from the colour image's are not used (s).
DEPTH_MAX_SKEW_S = 0.1
#: Depth images kept to pair with colour images by stamp.
DEPTH_BUFFER = 10
#: Colour images / detection arrays kept to pair with each other by stamp (use_detections).
PAIR_BUFFER = 30

_RELIABLE_10 = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: What tf2_ros.TransformBroadcaster uses for /tf.
_TF_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


# Imported by PoseDistributionNode.__init__ once the checkpoint is found (see there).
camera: Any = None
messages: Any = None
torch: Any = None

_RUNTIME_PARAMETERS = (
    "object_frame_id",
    "camera_frame_id",
    "num_samples",
    "mode_resolution_deg",
    "publish_tf",
    "nominal_distance_m",
    "max_rate_hz",
    "detection_crop_scale",
    "max_detections",
)


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, missing or unreadable checkpoint); the message says why."""


def resolve_checkpoint(path: str) -> Path:
    """Absolute checkpoint path: as given if absolute; else relative to the working directory, the
    repository root, or the package share directory (first that exists).

    Raises:
        StartupError: naming every place looked at and how to get a checkpoint.
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [Path.cwd() / p, Path(__file__).resolve().parent.parent / p]
        try:
            from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

            try:
                candidates.append(Path(get_package_share_directory(PACKAGE)) / p)
            except PackageNotFoundError:
                pass
        except ImportError:
            pass
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise StartupError(
        f"checkpoint {path!r} not found (looked at: {looked}). Train one with "
        "'python train/train.py --config config/train/demo.yaml' or set the parameter 'checkpoint'."
    )


@dataclass(frozen=True)
class Settings:
    """Parameters that may change at run time (swapped atomically by the parameter callback)."""

    object_frame_id: str
    camera_frame_id: str
    num_samples: int
    target_level: int
    publish_tf: bool
    nominal_distance_m: float
    max_rate_hz: float
    detection_crop_scale: float
    max_detections: int


class FrameSlot:
    """Single-slot buffer: the newest frame wins; overwritten unprocessed frames are counted as dropped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float) -> Any:
        """The newest frame, or ``None`` after ``timeout`` seconds without one."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class _TfPublisher:
    """/tf publisher: tf2_ros's TransformBroadcaster where importable, else a TFMessage publisher."""

    def __init__(self, node: Node) -> None:
        try:
            from tf2_ros import TransformBroadcaster

            self._broadcaster: Any = TransformBroadcaster(node, qos=_TF_QOS)
            self._publisher: Any = None
        except ImportError:
            from tf2_msgs.msg import TFMessage

            self._broadcaster = None
            self._msg_type = TFMessage
            self._publisher = node.create_publisher(TFMessage, "/tf", _TF_QOS)

    def publish(self, transforms: list[Any]) -> None:
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(transforms)
        else:
            self._publisher.publish(self._msg_type(transforms=transforms))


def _describe(text: str, read_only: bool = False, **ranges: Any) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=read_only, **ranges)


class PoseDistributionNode(Node):
    """See the module docstring. Raises :class:`StartupError` when it cannot start."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.declare_parameter(
            "checkpoint",
            DEFAULT_CHECKPOINT,
            _describe(
                "Model checkpoint (pose_core.save_checkpoint). Relative paths: working directory, repository, "
                "then the package share directory.",
                read_only=True,
            ),
        )
        self.declare_parameter("device", "auto", _describe("auto | cpu | cuda", read_only=True))
        self.declare_parameter(
            "image_size",
            0,
            _describe(
                "Side (px) the largest centred square of the image is resized to; 0: the size the checkpoint "
                f"was trained on (its train config), or {FALLBACK_IMAGE_SIZE} when it does not say.",
                read_only=True,
                integer_range=[IntegerRange(from_value=0, to_value=4096, step=1)],
            ),
        )
        self.declare_parameter("object_frame_id", "object", _describe("Child frame of the pose (TF, messages)."))
        self.declare_parameter(
            "camera_frame_id", "", _describe("Frame of the outputs; empty: the input image's header.frame_id.")
        )
        self.declare_parameter(
            "num_samples",
            100,
            _describe(
                "Rotation samples per message.", integer_range=[IntegerRange(from_value=1, to_value=100000, step=1)]
            ),
        )
        self.declare_parameter(
            "mode_resolution_deg",
            1.875,
            _describe(
                "Wanted resolution of the mode (deg): picks the coarse-to-fine target grid level (>= 3).",
                floating_point_range=[FloatingPointRange(from_value=0.1, to_value=60.0, step=0.0)],
            ),
        )
        self.declare_parameter("publish_tf", True, _describe("Publish camera frame -> object frame on /tf."))
        self.declare_parameter(
            "nominal_distance_m",
            1.0,
            _describe(
                "Assumed distance (m) along the viewing ray when there is no depth image; the published "
                "covariance says it is a guess.",
                floating_point_range=[FloatingPointRange(from_value=0.001, to_value=1000.0, step=0.0)],
            ),
        )
        self.declare_parameter(
            "max_rate_hz",
            0.0,
            _describe(
                "Most inferences per second; newer frames replace older ones meanwhile. 0: as fast as possible.",
                floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1000.0, step=0.0)],
            ),
        )

        self.declare_parameter(
            "torch_threads",
            0,
            _describe(
                "torch intra-op threads of the inference (torch.set_num_threads); 0: torch's default (one per "
                "core). On a CPU shared with other busy processes, fewer threads than cores is often faster.",
                read_only=True,
                integer_range=[IntegerRange(from_value=0, to_value=1024, step=1)],
            ),
        )
        self.declare_parameter(
            "use_detections",
            False,
            _describe(
                "Subscribe to 'detections' (vision_msgs/Detection2DArray) and publish one distribution per box; "
                "false: the whole image is one object.",
                read_only=True,
            ),
        )
        self.declare_parameter(
            "detection_crop_scale",
            1.2,
            _describe(
                "Crop side / a detection box's longer side (training renders fill about 1/1.2 of the frame).",
                floating_point_range=[FloatingPointRange(from_value=0.1, to_value=10.0, step=0.0)],
            ),
        )
        self.declare_parameter(
            "max_detections",
            8,
            _describe(
                "Most boxes per image (highest score first); the rest are dropped and counted.",
                integer_range=[IntegerRange(from_value=1, to_value=256, step=1)],
            ),
        )

        self._detection_type = self._detection_message_type()
        self._checkpoint = resolve_checkpoint(self.get_parameter("checkpoint").value)
        # torch, e3nn and pose_core take seconds to import: only after the checkpoint check, so that
        # a wrong path fails at once.
        global camera, messages, torch
        import torch

        from pose_core import camera
        from pose_distribution_ros import messages

        threads = int(self.get_parameter("torch_threads").value)
        if threads:
            torch.set_num_threads(threads)
        self._settings = self._settings_from(self._parameter_values())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._model, self._image_size = self._load_model()
        self._generator = torch.Generator().manual_seed(0)
        self._warm_up()

        self._pub_distribution = self.create_publisher(PoseDistribution, "~/distribution", _RELIABLE_10)
        self._pub_distributions = self.create_publisher(PoseDistributionArray, "~/distributions", _RELIABLE_10)
        self._pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/pose", _RELIABLE_10)
        self._pub_samples = self.create_publisher(PoseArray, "~/samples", _RELIABLE_10)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", _RELIABLE_10)
        self._tf = _TfPublisher(self)

        self._lock = threading.Lock()
        self._camera_info: CameraInfo | None = None
        self._depths: deque[Image] = deque(maxlen=DEPTH_BUFFER)  # newest last
        self._latencies: deque[float] = deque(maxlen=100)  # image received -> outputs published (s)
        self._compute_times: deque[float] = deque(maxlen=100)  # frame taken from the slot -> published (s)
        self._done_times: deque[float] = deque(maxlen=100)
        self._processed = 0
        self._errors = 0
        self._last_error = ""
        self._slot = FrameSlot()
        self._images: deque[tuple[Image, float]] = deque(maxlen=PAIR_BUFFER)  # use_detections: newest last
        self._pending_detections: deque[Any] = deque()  # arrays that came before their image
        self._unmatched_detections = 0
        self._dropped_boxes = 0
        if self._detection_type is not None:
            self.create_subscription(self._detection_type, "detections", self._on_detections, _RELIABLE_10)
        self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data)
        self.create_subscription(Image, "depth", self._on_depth, qos_profile_sensor_data)
        self.create_timer(1.0, self._publish_diagnostics)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run_worker, name="pose_distribution_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: model on {self._model.device}, input {self._image_size} px, "
            f"grid level {self._settings.target_level}; waiting for images on {self.resolve_topic_name('image')}"
            + (
                f" and detections on {self.resolve_topic_name('detections')}"
                if self._detection_type is not None
                else ""
            )
        )

    # ------------------------------------------------------------------ start-up
    def _detection_message_type(self) -> Any:
        """vision_msgs/Detection2DArray when ``use_detections``, else ``None``; StartupError if not importable."""
        if not self.get_parameter("use_detections").value:
            return None
        try:
            from vision_msgs.msg import Detection2DArray
        except ImportError as exc:
            raise StartupError(
                "use_detections is true but vision_msgs cannot be imported "
                f"({exc}); install ros-<distro>-vision-msgs, or run scripts/setup_ros.sh for the venv"
            ) from exc
        return Detection2DArray

    def _parameter_values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.get_parameters(_RUNTIME_PARAMETERS)}

    def _settings_from(self, values: dict[str, Any]) -> Settings:
        from pose_core import grids

        if not str(values["object_frame_id"]):
            raise ValueError("object_frame_id must not be empty")

        level = max(3, grids.level_for_resolution(math.radians(float(values["mode_resolution_deg"]))))
        return Settings(
            object_frame_id=str(values["object_frame_id"]),
            camera_frame_id=str(values["camera_frame_id"]),
            num_samples=int(values["num_samples"]),
            target_level=level,
            publish_tf=bool(values["publish_tf"]),
            nominal_distance_m=float(values["nominal_distance_m"]),
            max_rate_hz=float(values["max_rate_hz"]),
            detection_crop_scale=float(values["detection_crop_scale"]),
            max_detections=int(values["max_detections"]),
        )

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        values = self._parameter_values()
        values.update({p.name: p.value for p in params if p.name in values})
        try:
            settings = self._settings_from(values)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._settings = settings
        return SetParametersResult(successful=True)

    def _load_model(self) -> tuple[Any, int]:
        path = self._checkpoint
        device = self.get_parameter("device").value
        from pose_core.model import load_model, read_checkpoint, training_image_size

        try:
            model = load_model(path, device=device)
            trained_size = training_image_size(read_checkpoint(path))
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            raise StartupError(f"cannot load checkpoint {path} on device {device!r}: {exc}") from exc
        size = int(self.get_parameter("image_size").value) or trained_size or FALLBACK_IMAGE_SIZE
        self.get_logger().info(
            f"loaded {path} ({model.config.encoder}, lmax {model.lmax}, trained on "
            f"{f'{trained_size} px' if trained_size else 'an unrecorded image size'})"
        )
        return model, size

    def _target_level(self, s: Settings) -> int:
        """Coarse-to-fine target level: ``s.target_level``, never below the model's base level."""
        return max(s.target_level, self._model.inference.base_level)

    def _warm_up(self) -> None:
        """One whole frame's work on a blank image (model, summary, messages), so that the first real
        frame does not pay for building tables and caches."""
        s, size = self._settings, self._image_size
        t0 = time.perf_counter()
        images = torch.zeros((1, 3, size, size), device=self._model.device)
        dist = self._model.predict(images, target_level=self._target_level(s))
        estimate = messages.from_distribution(
            dist, camera.translation_from_nominal(s.nominal_distance_m), num_samples=s.num_samples
        )
        messages.pose_distribution_msg(estimate, Header(), s.object_frame_id)
        self.get_logger().info(
            f"warm-up inference: {1000 * (time.perf_counter() - t0):.0f} ms ({torch.get_num_threads()} torch threads)"
        )

    # ------------------------------------------------------------------ callbacks (executor thread)
    def _on_image(self, msg: Image) -> None:
        received = time.monotonic()
        if self._detection_type is None:
            self._slot.put((msg, received, None))
            return
        with self._lock:
            self._images.append((msg, received))
            detections = self._take_matching(self._pending_detections, msg.header.stamp, lambda d: d.header.stamp)
        if detections is not None:
            self._slot.put((msg, received, detections))

    def _on_detections(self, msg: Any) -> None:
        with self._lock:
            pair = self._take_matching(self._images, msg.header.stamp, lambda item: item[0].header.stamp)
            older_than_images = bool(self._images) and _stamp_ns(msg.header.stamp) < _stamp_ns(
                self._images[0][0].header.stamp
            )
            if pair is None:
                self._pending_detections.append(msg)
                while len(self._pending_detections) > PAIR_BUFFER:
                    self._pending_detections.popleft()
                    self._unmatched_detections += 1
        if pair is None:
            if older_than_images:
                self.get_logger().warning(
                    f"detections stamped {_stamp_ns(msg.header.stamp) * 1e-9:.6f} are older than every buffered "
                    f"image (last {PAIR_BUFFER}); is the detector behind or on another clock?",
                    throttle_duration_sec=ERROR_THROTTLE_S,
                )
            return
        self._slot.put((pair[0], pair[1], msg))

    @staticmethod
    def _take_matching(buffer: deque, stamp: Any, stamp_of: Any) -> Any:
        """Remove and return the item of ``buffer`` stamped exactly ``stamp`` (None if none)."""
        want = _stamp_ns(stamp)
        for item in buffer:
            if _stamp_ns(stamp_of(item)) == want:
                buffer.remove(item)
                return item
        return None

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_depth(self, msg: Image) -> None:
        self._depths.append(msg)

    def _publish_diagnostics(self) -> None:
        with self._lock:
            lat = sorted(self._latencies)
            compute = sorted(self._compute_times)
            done = list(self._done_times)
            processed, errors, last_error = self._processed, self._errors, self._last_error
        now = time.monotonic()
        rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
        status = DiagnosticStatus(name=f"{self.get_name()}: inference", hardware_id=str(self._model.device))
        if not done or now - done[-1] > 5.0:
            status.level, status.message = DiagnosticStatus.WARN, "no distribution published in the last 5 s"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{rate:.1f} Hz"

        def pct(xs: list[float], q: float) -> str:
            return f"{1000 * xs[min(len(xs) - 1, int(q * len(xs)))]:.1f}" if xs else "nan"

        status.values = [
            KeyValue(key="latency_ms_p50", value=pct(lat, 0.5)),  # received -> published, queueing included
            KeyValue(key="latency_ms_p90", value=pct(lat, 0.9)),
            KeyValue(key="compute_ms_p50", value=pct(compute, 0.5)),  # inference + packing + publishing
            KeyValue(key="compute_ms_p90", value=pct(compute, 0.9)),
            KeyValue(key="rate_hz", value=f"{rate:.2f}"),
            KeyValue(key="processed", value=str(processed)),
            KeyValue(key="dropped", value=str(self._slot.dropped)),
            KeyValue(key="unmatched_detections", value=str(self._unmatched_detections)),
            KeyValue(key="dropped_boxes", value=str(self._dropped_boxes)),
            KeyValue(key="bad_inputs", value=str(errors)),
            KeyValue(key="last_error", value=last_error),
        ]
        self._pub_diagnostics.publish(
            DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status])
        )

    # ------------------------------------------------------------------ worker thread
    def _run_worker(self) -> None:
        next_start = 0.0
        while not self._stop.is_set():
            wait = next_start - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            frame = self._slot.take(timeout=0.2)
            if frame is None:
                continue
            rate = self._settings.max_rate_hz
            next_start = time.monotonic() + (1.0 / rate if rate > 0 else 0.0)
            try:
                self._process(*frame, started=time.monotonic())
            except ImageConversionError as exc:
                self._bad_input(exc.kind, str(exc))
            except Exception as exc:  # keep serving; the next frame may be fine
                if self._stop.is_set() or not self.context.ok():
                    break  # shutting down: the publishers are gone
                self._bad_input("other", f"inference failed: {type(exc).__name__}: {exc}")

    def _bad_input(self, kind: str, text: str) -> None:
        """Rate-limited error log, one limit per kind of problem (rclpy throttles per call site)."""
        with self._lock:
            self._errors += 1
            self._last_error = text
        log = self.get_logger()
        if kind == "encoding":
            log.error(f"bad image: {text}", throttle_duration_sec=ERROR_THROTTLE_S)
        elif kind == "size":
            log.error(f"bad image: {text}", throttle_duration_sec=ERROR_THROTTLE_S)
        elif kind == "data":
            log.error(f"bad image: {text}", throttle_duration_sec=ERROR_THROTTLE_S)
        elif kind == "depth":
            log.error(f"bad depth: {text}", throttle_duration_sec=ERROR_THROTTLE_S)
        elif kind == "detection":
            log.error(f"bad detection: {text}", throttle_duration_sec=ERROR_THROTTLE_S)
        else:
            log.error(text, throttle_duration_sec=ERROR_THROTTLE_S)

    def _camera_matrix(self, image: Image) -> Any:
        """K ``(3, 3)`` from the latest CameraInfo when it matches the image size, else ``None``."""
        info = self._camera_info
        if info is None or info.width != image.width or info.height != image.height or info.k[0] <= 0:
            return None
        return list(info.k)

    def _closest_depth(self, image: Image) -> tuple[Image | None, float]:
        """The buffered depth image with the stamp nearest the image's, and that stamp difference (s)."""

        t = _stamp_ns(image.header.stamp)

        def skew(d: Image) -> float:
            return 1e-9 * abs(_stamp_ns(d.header.stamp) - t)

        depths = list(self._depths)
        if not depths:
            return None, math.inf
        best = min(depths, key=skew)
        return best, skew(best)

    def _translation(self, image: Image, K: Any, region: tuple[int, int, int, int], distance: float) -> Any:
        center = camera.region_center(region, image.width, image.height)
        depth, skew = self._closest_depth(image)
        if K is not None and depth is not None and (depth.width, depth.height) == (image.width, image.height):
            if skew <= DEPTH_MAX_SKEW_S:
                try:
                    est = camera.translation_from_depth(K, depth_image_to_meters(depth), region)
                except ImageConversionError as exc:
                    self._bad_input("depth", str(exc))
                    est = None
                else:
                    if est is None:
                        self._bad_input(
                            "depth",
                            f"no valid depth (all NaN / 0) in region {region}; using nominal_distance_m = {distance}",
                        )
                if est is not None:
                    return est
        if K is None:
            return camera.translation_from_nominal(distance)
        return camera.translation_from_nominal(distance, K, center)

    def _crops(self, image: Image, rgb: Any, detections: Any) -> tuple[list[Any], list[Any], list[str]]:
        """Model inputs ``(1, 3, S, S)``, crop regions and child frame ids of the objects in ``image``."""
        s = self._settings
        if detections is None:
            x, region = camera.model_input(rgb, self._image_size)
            return [x], [region], [s.object_frame_id]
        boxes = messages.detection_boxes(detections)
        if len(boxes) > s.max_detections:
            with self._lock:
                self._dropped_boxes += len(boxes) - s.max_detections
            self.get_logger().warning(
                f"{len(boxes)} detections, keeping the {s.max_detections} highest-scoring (max_detections)",
                throttle_duration_sec=ERROR_THROTTLE_S,
            )
            boxes = boxes[: s.max_detections]
        inputs, regions, frames = [], [], []
        for box in boxes:
            try:
                region = camera.detection_region(box.center, box.size, s.detection_crop_scale)
                inputs.append(camera.crop_input(rgb, region, self._image_size))
            except ValueError as exc:
                self._bad_input("detection", f"detection {box.index} (id {box.id!r}) skipped: {exc}")
                continue
            regions.append(region)
            frames.append(f"{s.object_frame_id}_{box.frame_suffix}")
        return inputs, regions, frames

    def _process(self, image: Image, received: float, detections: Any, started: float) -> None:
        s = self._settings
        rgb = image_to_rgb(image)  # (H, W, 3) uint8; raises ImageConversionError
        inputs, regions, frames = self._crops(image, rgb, detections)
        header = Header(stamp=image.header.stamp, frame_id=s.camera_frame_id or image.header.frame_id)
        msgs, estimates = [], []
        if inputs:
            dist = self._model.predict(torch.cat(inputs), target_level=self._target_level(s))  # batch len(inputs)
            K = self._camera_matrix(image)
            if K is None and detections is not None:
                self.get_logger().warning(
                    "no camera_info matching the image: detection crops are not corrected for their viewing ray "
                    "and translations have no direction",
                    throttle_duration_sec=ERROR_THROTTLE_S,
                )
            for i, (region, frame) in enumerate(zip(regions, frames, strict=True)):
                correction = None
                if K is not None:
                    center = camera.region_center(region, image.width, image.height)
                    correction = camera.crop_ray_rotation(K, center)
                translation = self._translation(image, K, region, s.nominal_distance_m)
                estimate = messages.from_distribution(
                    dist,
                    translation,
                    index=i,
                    num_samples=s.num_samples,
                    generator=self._generator,
                    correction=correction,
                )
                estimates.append(estimate)
                msgs.append(messages.pose_distribution_msg(estimate, header, frame))

        self._pub_distributions.publish(messages.pose_distribution_array_msg(header, msgs))
        if msgs:
            self._pub_distribution.publish(msgs[0])
            self._pub_pose.publish(messages.pose_with_covariance_msg(estimates[0], header))
            self._pub_samples.publish(messages.pose_array_msg(estimates[0], header))
            if s.publish_tf:
                self._tf.publish(
                    [messages.transform_msg(e, header, frame) for e, frame in zip(estimates, frames, strict=True)]
                )
        done = time.monotonic()
        with self._lock:
            self._processed += 1
            self._latencies.append(done - received)
            self._compute_times.append(done - started)
            self._done_times.append(done)

    # ------------------------------------------------------------------ shutdown
    def stop(self) -> None:
        """Stop the worker thread (waits for the inference in progress)."""
        self._stop.set()
        self._slot.wake()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=30.0)


def _stamp_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` → integer nanoseconds (exact, for pairing messages by stamp)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node: PoseDistributionNode | None = None
    try:
        node = PoseDistributionNode()
        rclpy.spin(node)
    except (StartupError, ParameterException, ValueError) as exc:
        get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
