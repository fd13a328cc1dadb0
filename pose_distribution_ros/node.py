"""ROS 2 node ``pose_distribution``: camera image in, distribution over the object's pose out.

An adapter: messages → numpy (:mod:`~pose_distribution_ros.image_conversion`), one
:meth:`pose_core.pipeline.PoseEstimator.estimate` call per frame (crops, viewing-ray correction,
depth, translation and batching all live there), estimates → messages
(:mod:`~pose_distribution_ros.messages`) → publishers. Inputs are paired by stamp in
:mod:`~pose_distribution_ros.pairing`; parameters are declared from one table in
:mod:`~pose_distribution_ros.parameters`.

Subscriptions (remappable; QoS of the first three: parameter ``image_qos``):
    ``image`` (sensor_msgs/Image): rgb8, bgr8, rgba8, bgra8, mono8.
    ``camera_info`` (sensor_msgs/CameraInfo, optional): intrinsics for the viewing ray of each crop
    and the translation. A camera_info with non-finite K, focal lengths <= 0 or a zero size is
    rejected (logged) and the last good one kept.
    ``depth`` (sensor_msgs/Image, optional, aligned with ``image``): 16UC1 (mm) or 32FC1 (m).
    ``detections`` (vision_msgs/Detection2DArray, when ``use_detections``): boxes in ``image``
    pixels, paired with the image of the same stamp; one distribution per box.

Publications (headers: the input image's stamp; frame ``camera_frame_id`` or the image's frame;
built per frame by :mod:`~pose_distribution_ros.outputs`, which says what each holds):
    ``~/distribution`` (pose_distribution/PoseDistribution),
    ``~/distributions`` (pose_distribution/PoseDistributionArray),
    ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped), ``~/samples`` (geometry_msgs/PoseArray),
    ``~/detections`` (vision_msgs/Detection3DArray: per object the mode with its 6x6 covariance,
    class and score), ``~/markers`` (visualization_msgs/MarkerArray, when ``publish_markers``),
    ``/tf`` (camera frame -> ``object_frame_id``, when ``publish_tf``; with detections one child
    frame per box, ``<object_frame_id>_<Detection2D.id>``, or ``_<index>`` when the id is empty),
    ``~/shape`` (sensor_msgs/PointCloud2, with a ``reconstruction_checkpoint``: one cloud per object,
    its reconstructed shape in metres in its /tf child frame),
    ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, 1 Hz: latency, rates, drops, errors).

Tracking: frames are filtered over time per object (``temporal_filter``; see
:mod:`pose_core.tracking`), keyed by the image stamps; tracks are reset when the node is
(re)activated.

Runtime: the image callback only stores the newest frame in a single slot (an unprocessed frame
that is overwritten is dropped and counted); a worker thread, not the executor's, runs the
estimator at most ``max_rate_hz`` times a second. Bad input is logged (rate-limited per kind of
problem) and the node goes on with the next frame. When image stamps show that only part of the
camera's frames arrive (lost in transport), the node warns and says what to do. A missing or
unreadable checkpoint stops the node at start-up with exit status 1; a ``reconstruction_checkpoint``
that cannot be used is logged as an error and the node serves poses without shapes.

Run: ``python -m pose_distribution_ros.node --ros-args --params-file config/pose_distribution.yaml``;
the managed (lifecycle) node: ``python -m pose_distribution_ros.node --lifecycle --ros-args ...``
(or ``pose_distribution_lifecycle_node``), then ``configure`` (loads the model) and ``activate``
(subscribes) through ``ros2 lifecycle set`` or the ``~/change_state`` service.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from pose_distribution_ros import parameters, transport
from pose_distribution_ros.image_conversion import ImageConversionError, image_to_rgb
from pose_distribution_ros.pairing import DepthBuffer, FrameSlot, StampPairer, stamp_ns, usable_depth

NODE_NAME = "pose_distribution"
#: Depth images kept to pair with colour images by stamp.
DEPTH_BUFFER = 10
#: Colour images / detection arrays kept to pair with each other by stamp (use_detections).
PAIR_BUFFER = 30

_RELIABLE_10 = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)  # fmt: skip
#: What tf2_ros.TransformBroadcaster uses for /tf.
_TF_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)  # fmt: skip
#: ``image_qos`` → the QoS of the image, depth and camera_info subscriptions.
IMAGE_QOS = {
    "sensor_data": qos_profile_sensor_data,
    "reliable": QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    ),
}  # fmt: skip

# Imported by _PoseDistributionCore._setup once the checkpoint is found (see there).
messages: Any = None
outputs: Any = None
torch: Any = None


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, missing or unreadable checkpoint); the message says why."""


def resolve_checkpoint(path: str) -> Path:
    """Absolute checkpoint path: as given if absolute; else relative to the working directory, the
    repository root, or the package share directory (first that exists). The share directory is
    looked up only where an ament index is set up (a ROS install or a sourced workspace).

    Raises:
        StartupError: naming every place looked at and how to get a checkpoint, or saying that
            the path is a directory.
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [Path.cwd() / p, Path(__file__).resolve().parent.parent / p]
        share = transport.package_share()
        if share is not None:
            candidates.append(share / p)
    for c in candidates:
        if c.is_file():
            return c
    directories = [c for c in candidates if c.is_dir()]
    if directories:
        raise StartupError(f"checkpoint {path!r} is a directory ({directories[0]}), not a checkpoint file")
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise StartupError(
        f"checkpoint {path!r} not found (looked at: {looked}). Train one with "
        "'python train/train.py --config config/train/demo.yaml' or set the parameter 'checkpoint'."
    )


def build_estimator(values: Mapping[str, Any], log: Callable[[str], None],
                    error: Callable[[str], None] | None = None) -> tuple[Any, Any, Path]:
    """The estimator of parameter ``values`` (name -> value, every parameter), as the node and the
    bag command (:mod:`pose_distribution_ros.bag`) run it: checkpoint resolved, torch threads,
    run-time settings, model loaded on ``device``, ``image_size``, ``backend``; ``log`` gets one line.
    A ``reconstruction_checkpoint`` that cannot be used (missing, unreadable, another kind) is said to
    ``error`` (default ``log``) and leaves the shapes off: the poses are served without them.

    Returns:
        ``(PoseEstimator, NodeSettings, checkpoint path)``.

    Raises:
        StartupError: missing or unreadable checkpoint, bad backend.
        ValueError: a bad run-time parameter value (from ``parameters.settings_from``).
    """
    checkpoint = resolve_checkpoint(str(values["checkpoint"]))
    # torch, e3nn and pose_core take seconds to import: only after the checkpoint check, so that
    # a wrong path fails at once.
    import torch

    from pose_core.model import load_model
    from pose_core.pipeline import PoseEstimator

    threads = int(values["torch_threads"])
    if threads:
        torch.set_num_threads(threads)
    node_settings, estimator_settings = parameters.settings_from(
        {name: values[name] for name in parameters.runtime_names()}
    )
    device = values["device"]
    try:
        model = load_model(checkpoint, device=device)
    except (FileNotFoundError, IsADirectoryError, ValueError, RuntimeError) as exc:
        raise StartupError(f"cannot load checkpoint {checkpoint} on device {device!r}: {exc}") from exc
    if not hasattr(model, "pose_space"):  # a refiner's or a shape classifier's checkpoint
        raise StartupError(f"checkpoint {checkpoint} holds a {getattr(model, 'kind', type(model).__name__)} model, "
                           "not a pose model (Image2Sphere or SpyroPose)")
    trained = f"{model.input_size} px" if model.input_size else "an unrecorded image size"
    log(f"loaded {checkpoint} ({model.describe()}, trained on {trained})")
    if model.pose_space == "se3" and estimator_settings.temporal_filter:
        log("the temporal filter applies to rotation models only: this SE(3) model's frames are estimated each "
            "on its own")
    size = int(values["image_size"]) or None
    if size is not None:
        model.input_size = size  # the crops and the exported network agree on it
    backend = str(values["backend"])
    try:
        model.use_backend(backend, threads=threads)
    except (RuntimeError, ValueError) as exc:
        raise StartupError(f"backend {backend!r}: {exc}") from exc
    estimator = PoseEstimator(model, estimator_settings, input_size=size)
    if estimator_settings.refine:
        estimator.refiner = load_refiner(str(values["refine_checkpoint"]), device, log)
    if str(values["reconstruction_checkpoint"]):
        try:
            estimator.shaper = load_shaper(values, node_settings.object_size_m, model, device, log)
        except StartupError as exc:
            (error or log)(f"{exc}: shapes are off (no ~/shape), poses are published")
    return estimator, node_settings, checkpoint


def load_shaper(values: Mapping[str, Any], object_size_m: Any, pose_model: Any, device: str,
                log: Callable[[str], None]) -> Any:
    """The shape estimator of parameter ``reconstruction_checkpoint`` on ``device``. Its size without depth:
    ``reconstruction_size_m``; 0: the diagonal of ``object_size_m``; zeros: the diameter of an SE(3)
    ``pose_model``'s object; else 0.2 m.

    Raises:
        StartupError: missing, unreadable, or not a reconstruction checkpoint.
    """
    from pose_core.model import load_model
    from pose_core.shape_fusion import ShapeEstimator

    checkpoint = resolve_checkpoint(str(values["reconstruction_checkpoint"]))
    try:
        model = load_model(checkpoint, device=device)
    except (FileNotFoundError, IsADirectoryError, ValueError, RuntimeError) as exc:
        raise StartupError(f"cannot load reconstruction_checkpoint {checkpoint} on device {device!r}: {exc}") from exc
    if getattr(model, "kind", None) != "reconstruction":
        raise StartupError(f"reconstruction_checkpoint {checkpoint} holds a {getattr(model, 'kind', '?')} model, not "
                           "a shape reconstruction (train one with train/train.py, kind reconstruction)")
    size = (float(values["reconstruction_size_m"]) or float(sum(x * x for x in object_size_m) ** 0.5)
            or float(getattr(getattr(pose_model, "object", None), "diameter_m", 0.0)) or 0.2)
    log(f"loaded shape reconstruction {checkpoint} ({model.config.decoder} decoder, {model.config.image_size} px); "
        f"shapes on ~/shape, {size:g} m across without depth")
    return ShapeEstimator(model, size_m=size)


def load_refiner(path: str, device: str, log: Callable[[str], None]) -> Any:
    """The neural mesh of checkpoint ``path`` (``refine_checkpoint``) on ``device``.

    Raises:
        StartupError: missing, unreadable, or not a neural mesh checkpoint.
    """
    from pose_core.model import load_model
    from pose_core.refine import NeuralMesh

    checkpoint = resolve_checkpoint(path)
    try:
        refiner = load_model(checkpoint, device=device)
    except (FileNotFoundError, IsADirectoryError, ValueError, RuntimeError) as exc:
        raise StartupError(f"cannot load refine_checkpoint {checkpoint} on device {device!r}: {exc}") from exc
    if not isinstance(refiner, NeuralMesh):
        raise StartupError(f"refine_checkpoint {checkpoint} holds a {getattr(refiner, 'kind', '?')} model, not a "
                           "neural mesh (train one with train/train.py, kind neural_mesh)")
    log(f"loaded refiner {checkpoint} ({refiner.describe()})")
    return refiner


def camera_info_problem(msg: CameraInfo) -> str | None:
    """Why ``msg`` cannot give intrinsics (None when it can): zero size, non-finite K, focal lengths <= 0."""
    if msg.width <= 0 or msg.height <= 0:
        return f"size {msg.width}x{msg.height} is not positive"
    k = list(msg.k)
    if len(k) != 9 or not all(math.isfinite(v) for v in k):
        return f"K has non-finite entries: {k}"
    if not (k[0] > 0 and k[4] > 0):
        return f"focal lengths fx={k[0]}, fy={k[4]} must be > 0"
    if (k[6], k[7], k[8]) != (0.0, 0.0, 1.0):
        return f"last row of K is {k[6:]}, not (0, 0, 1)"
    return None


class Throttle:
    """Per-kind rate limit of log lines (seconds between two lines of one kind); counts what it holds back."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, kind: str) -> tuple[bool, int]:
        """Whether to log now, and how many lines of this kind were held back since the last one."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -float("inf")) >= self.period_s:
                self._last[kind] = now
                return True, self._held.pop(kind, 0)
            self._held[kind] = self._held.get(kind, 0) + 1
            return False, 0


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

    def destroy(self, node: Node) -> None:
        publisher = self._publisher if self._publisher is not None else getattr(self._broadcaster, "pub_tf", None)
        if publisher is not None:
            node.destroy_publisher(publisher)


class _PoseDistributionCore:
    """The node's behaviour (see the module docstring), shared by :class:`PoseDistributionNode` and
    :class:`PoseDistributionLifecycleNode` (mixed into an ``rclpy`` ``Node`` / ``LifecycleNode``).

    ``_setup`` (parameters checked, model loaded, publishers) and ``_teardown`` undo each other, as do
    ``_start`` (subscriptions, diagnostics timer, worker thread) and ``stop``.
    """

    def _setup(self) -> None:
        """Check the parameters, load the model, create the publishers. Raises :class:`StartupError`."""
        qos_name = str(self.get_parameter("image_qos").value)
        if qos_name not in IMAGE_QOS:
            raise StartupError(f"image_qos must be one of {sorted(IMAGE_QOS)}, got {qos_name!r}")
        self._image_qos_name = qos_name
        self._detection_type = self._detection_message_type()
        values = {p.name: self.get_parameter(p.name).value for p in parameters.PARAMETERS}
        self._estimator, self._node_settings, _ = build_estimator(values, log=self.get_logger().info,
                                                                  error=self.get_logger().error)
        global messages, outputs, torch
        import torch

        from pose_distribution_ros import messages, outputs

        if not getattr(self, "_parameter_callback_added", False):
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self._parameter_callback_added = True
        warm_ms = self._estimator.warm_up()
        self.get_logger().info(f"warm-up frame: {warm_ms:.0f} ms ({torch.get_num_threads()} torch threads)")

        self._output_publishers = {
            name: self.create_publisher(msg_type, topic, _RELIABLE_10)
            for name, (topic, msg_type) in outputs.OUTPUTS.items()
            if name != "tf" and (name not in outputs.OPTIONAL_OUTPUTS or self._estimator.shaper is not None)
        }
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", _RELIABLE_10)
        self._tf = _TfPublisher(self)
        self._outputs = outputs.OutputBuilder()
        self._last_header: Header | None = None

        self._lock = threading.Lock()
        self._throttle = Throttle(float(self.get_parameter("log_throttle_s").value))
        self._camera_info: CameraInfo | None = None
        self._depths = DepthBuffer(DEPTH_BUFFER)
        self._pairer = StampPairer(PAIR_BUFFER)
        self._gaps = transport.GapMonitor()
        self._latencies: deque[float] = deque(maxlen=100)  # image received -> outputs published (s)
        self._compute_times: deque[float] = deque(maxlen=100)  # frame taken from the slot -> published (s)
        self._refine_times: deque[float] = deque(maxlen=100)  # the refinement's share of compute (s), when on
        self._done_times: deque[float] = deque(maxlen=100)
        self._counts = {"processed": 0, "bad_inputs": 0, "dropped_boxes": 0, "rejected_boxes": 0,
                        "rejected_camera_info": 0}  # fmt: skip
        self._last_error = ""
        self._subscriptions_made: list[Any] = []
        self._timer: Any = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    def _start(self) -> None:
        """Subscribe, start the diagnostics timer and the inference worker."""
        self._slot = FrameSlot()
        self._stop = threading.Event()
        self._estimator.reset_tracks()
        image_qos = IMAGE_QOS[self._image_qos_name]
        subs = []
        if self._detection_type is not None:
            subs.append(self.create_subscription(self._detection_type, "detections", self._on_detections, _RELIABLE_10))
        subs.append(self.create_subscription(Image, "image", self._on_image, image_qos))
        subs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, image_qos))
        subs.append(self.create_subscription(Image, "depth", self._depths.add, image_qos))
        self._subscriptions_made = subs
        self._timer = self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="pose_distribution_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: model on {self._estimator.model.device} ({self._estimator.model.backend}), input "
            f"{self._estimator.input_size} px, grid level {self._estimator.target_level}, image QoS "
            f"{self._image_qos_name}; waiting for images on {self.resolve_topic_name('image')}"
            + (f" and detections on {self.resolve_topic_name('detections')}" if self._detection_type else "")
        )

    def _teardown(self) -> None:
        """Destroy the publishers and drop the model (the inverse of ``_setup``)."""
        for pub in [*self._output_publishers.values(), self._pub_diagnostics]:
            self.destroy_publisher(pub)
        self._tf.destroy(self)
        self._output_publishers = {}
        self._estimator = None  # type: ignore[assignment]

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

    def _runtime_values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.get_parameters(parameters.runtime_names())}

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        values = self._runtime_values()
        values.update({p.name: p.value for p in params if p.name in values})
        try:
            node_settings, estimator_settings = parameters.settings_from(values)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if estimator_settings.refine and self._estimator.refiner is None:
            try:  # first time on: load the neural mesh now (refused, with the reason, if it cannot be)
                self._estimator.refiner = load_refiner(str(self.get_parameter("refine_checkpoint").value),
                                                       str(self.get_parameter("device").value),
                                                       self.get_logger().info)
            except StartupError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        self._node_settings = node_settings
        self._estimator.settings = estimator_settings
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ callbacks (executor thread)
    def _on_image(self, msg: Image) -> None:
        received = time.monotonic()
        warning = self._gaps.add(stamp_ns(msg.header.stamp), received)
        if warning:
            self._log("transport", "warning", warning)
        if self._detection_type is None:
            self._slot.put((msg, received, None))
            return
        detections = self._pairer.add_image(msg, received)
        if detections is not None:
            self._slot.put((msg, received, detections))

    def _on_detections(self, msg: Any) -> None:
        pair, older = self._pairer.add_detections(msg)
        if pair is not None:
            self._slot.put((pair[0], pair[1], msg))
        elif older:
            self._log(
                "detections_late", "warning",
                f"detections stamped {stamp_ns(msg.header.stamp) * 1e-9:.6f} are older than every buffered "
                f"image (last {PAIR_BUFFER}); is the detector behind or on another clock?",
            )  # fmt: skip

    def _on_camera_info(self, msg: CameraInfo) -> None:
        problem = camera_info_problem(msg)
        if problem is not None:
            with self._lock:
                self._counts["rejected_camera_info"] += 1
            kept = "keeping the last good one" if self._camera_info is not None else "none received yet"
            self._bad_input("camera_info", f"camera_info rejected: {problem} ({kept})")
            return
        self._camera_info = msg

    def _publish_diagnostics(self) -> None:
        with self._lock:
            lat = sorted(self._latencies)
            compute = sorted(self._compute_times)
            refine_times = sorted(self._refine_times)
            done = list(self._done_times)
            counts, last_error = dict(self._counts), self._last_error
        now = time.monotonic()
        rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
        status = DiagnosticStatus(name=f"{self.get_name()}: inference", hardware_id=str(self._estimator.model.device))
        if not done or now - done[-1] > 5.0:
            status.level, status.message = DiagnosticStatus.WARN, "no distribution published in the last 5 s"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{rate:.1f} Hz"
        gaps = self._gaps.summary()
        if gaps["received_fraction"] < transport.GapMonitor.WARN_FRACTION and status.level == DiagnosticStatus.OK:
            status.level = DiagnosticStatus.WARN
            status.message += f"; only {100 * gaps['received_fraction']:.0f} % of the camera's frames arrive"

        def pct(xs: list[float], q: float) -> str:
            return f"{1000 * xs[min(len(xs) - 1, int(q * len(xs)))]:.1f}" if xs else "nan"

        status.values = [
            KeyValue(key="latency_ms_p50", value=pct(lat, 0.5)),  # received -> published, queueing included
            KeyValue(key="latency_ms_p90", value=pct(lat, 0.9)),
            KeyValue(key="compute_ms_p50", value=pct(compute, 0.5)),  # estimate + packing + publishing
            KeyValue(key="compute_ms_p90", value=pct(compute, 0.9)),
            KeyValue(key="refine_ms_p50", value=pct(refine_times, 0.5)),  # the refinement's share (refine on)
            KeyValue(key="refine_ms_p90", value=pct(refine_times, 0.9)),
            KeyValue(key="rate_hz", value=f"{rate:.2f}"),
            KeyValue(key="processed", value=str(counts["processed"])),
            KeyValue(key="dropped", value=str(self._slot.dropped)),
            KeyValue(key="input_rate_hz", value=f"{gaps['input_rate_hz']:.2f}"),
            KeyValue(key="camera_rate_hz", value=f"{gaps['camera_rate_hz']:.2f}"),
            KeyValue(key="received_fraction", value=f"{gaps['received_fraction']:.3f}"),
            KeyValue(key="unmatched_detections", value=str(self._pairer.unmatched)),
            KeyValue(key="dropped_boxes", value=str(counts["dropped_boxes"])),
            KeyValue(key="rejected_boxes", value=str(counts["rejected_boxes"])),
            KeyValue(key="rejected_camera_info", value=str(counts["rejected_camera_info"])),
            KeyValue(key="bad_inputs", value=str(counts["bad_inputs"])),
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
            rate = self._node_settings.max_rate_hz
            next_start = time.monotonic() + (1.0 / rate if rate > 0 else 0.0)
            try:
                self._process(*frame, started=time.monotonic())
            except ImageConversionError as exc:
                self._bad_input(f"image_{exc.kind}", f"bad image: {exc}")
            except Exception as exc:  # keep serving; the next frame may be fine
                if self._stop.is_set() or not self.context.ok():
                    break  # shutting down: the publishers are gone
                self._bad_input("other", f"inference failed: {type(exc).__name__}: {exc}")

    def _log(self, kind: str, level: str, text: str) -> None:
        """A log line at ``level``, at most one per ``log_throttle_s`` per ``kind``."""
        allow, held = self._throttle.allow(kind)
        if not allow:
            return
        text += f" ({held} more like it not shown)" if held else ""
        log = self.get_logger()
        # one call site per severity: rclpy refuses a call site that changes severity
        if level == "error":
            log.error(text)
        elif level == "warning":
            log.warning(text)
        else:
            log.info(text)

    def _bad_input(self, kind: str, text: str) -> None:
        """Count a bad input and log it as an error (rate-limited per kind)."""
        with self._lock:
            self._counts["bad_inputs"] += 1
            self._last_error = text
        self._log(kind, "error", text)

    def _camera_matrix(self, image: Image) -> list[float] | None:
        """K (9 values) of the latest good CameraInfo when it matches the image size, else ``None``."""
        info = self._camera_info
        if info is None:
            return None
        if (info.width, info.height) != (image.width, image.height):
            self._log("camera_info_size", "warning",
                      f"camera_info is for {info.width}x{info.height} images but the image is "
                      f"{image.width}x{image.height}: not used (no viewing-ray correction, no depth)")  # fmt: skip
            return None
        return list(info.k)

    def _depth_for(self, image: Image, K: list[float] | None) -> Any:
        """The aligned depth image (m) nearest ``image`` in time, or None (each reason logged)."""
        depth, skew = self._depths.closest(image.header.stamp)
        depth_m, problem = usable_depth(depth, skew, K)
        if problem is not None:
            kind, text = problem
            if kind == "depth":
                self._bad_input(kind, text)
            else:
                self._log(kind, "warning", text)
        return depth_m

    def _process(self, image: Image, received: float, detections: Any, started: float) -> None:
        ns = self._node_settings
        rgb = image_to_rgb(image)  # (H, W, 3) uint8; raises ImageConversionError
        K = self._camera_matrix(image)
        depth = self._depth_for(image, K)
        boxes = None if detections is None else messages.detection_boxes(detections)
        # (an SE(3) model: the estimator says what it assumes without K, in a note)
        if boxes and K is None and getattr(self._estimator.model, "pose_space", "so3") != "se3":
            self._log("detections_no_info", "warning",
                      "no camera_info matching the image: detection crops are not corrected for their viewing ray "
                      "and translations have no direction")  # fmt: skip
        frame = self._estimator.estimate(rgb, K, depth, boxes, stamp_s=stamp_ns(image.header.stamp) * 1e-9)
        self._report(frame, len(boxes) if boxes is not None else 0)

        header = Header(stamp=image.header.stamp, frame_id=ns.camera_frame_id or image.header.frame_id)
        self._last_header = header
        markers = self._output_publishers["markers"]
        out = self._outputs.build(frame, header, ns, detections,
                                  draw_markers=ns.publish_markers and markers.get_subscription_count() > 0)
        for name, msg in out.items(publish_tf=False):
            self._output_publishers[name].publish(msg)
        if ns.publish_tf and out.transforms:
            self._tf.publish(out.transforms)
        done = time.monotonic()
        with self._lock:
            self._counts["processed"] += 1
            self._latencies.append(done - received)
            self._compute_times.append(done - started)
            if "refine" in frame.timings_ms:
                self._refine_times.append(frame.timings_ms["refine"] / 1000.0)
            self._done_times.append(done)

    def _report(self, frame: Any, num_boxes: int) -> None:
        """Log and count what the estimator did not serve."""
        for r in frame.rejected:
            with self._lock:
                self._counts["rejected_boxes"] += 1
            self._bad_input("detection", f"bad detection: detection {r.index} (id {r.box.id!r}) skipped: {r.reason}")
        if frame.dropped:
            with self._lock:
                self._counts["dropped_boxes"] += frame.dropped
            keep = self._estimator.settings.max_detections
            self._log("max_detections", "warning",
                      f"{num_boxes} detections, keeping the {keep} highest-scoring (max_detections)")  # fmt: skip
        for kind, text in frame.notes:
            if kind in ("stamp", "intrinsics"):  # tracks reset (a replay loop); no camera_info yet: not bad input
                self._log(kind, "warning", text)
            else:
                self._bad_input(kind, f"bad {kind}: {text}")

    def report_transport(self, profile: Path | None) -> None:
        """Say at start which Fast DDS profile the node runs with, and what would cap it."""
        import os

        if profile is not None:
            self.get_logger().info(f"Fast DDS profile {profile} (large camera images over loopback UDP)")
            problem = transport.socket_buffer_problem()
            if problem:
                self.get_logger().warning(problem)
        else:
            chosen = next((os.environ[v] for v in transport.PROFILE_VARIABLES if os.environ.get(v)), None)
            self.get_logger().info(f"Fast DDS profile: {chosen or 'none (POSE_DISTRIBUTION_FASTDDS_PROFILE=0)'}")

    # ------------------------------------------------------------------ shutdown
    def stop(self) -> None:
        """Stop the worker thread (waits for the inference in progress), the subscriptions and the
        diagnostics timer, and delete the markers drawn (the inverse of ``_start``; idempotent)."""
        self._stop.set()
        worker, self._worker = getattr(self, "_worker", None), None
        if worker is not None:
            self._slot.wake()
            if worker.is_alive() and threading.current_thread() is not worker:
                worker.join(timeout=30.0)
        for sub in getattr(self, "_subscriptions_made", []):
            self.destroy_subscription(sub)
        self._subscriptions_made = []
        if getattr(self, "_timer", None) is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        header = getattr(self, "_last_header", None)
        if header is not None and self.context.ok():
            cleared = self._outputs.clear(header)
            if cleared.markers:
                self._output_publishers["markers"].publish(cleared)


class PoseDistributionNode(_PoseDistributionCore, Node):
    """The plain node: configured and active from construction. Raises :class:`StartupError` when it cannot start."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        parameters.declare(self)
        self._setup()
        self._start()


class PoseDistributionLifecycleNode(_PoseDistributionCore, LifecycleNode):
    """The managed node (``ros2 lifecycle set /pose_distribution configure`` ...): ``configure`` checks
    the parameters and loads the model (a failure is logged and the node stays unconfigured),
    ``activate`` subscribes and starts inference, ``deactivate`` stops both (markers are deleted),
    ``cleanup`` releases the model and the publishers, ``shutdown`` does what is needed of those."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        parameters.declare(self)
        self._configured = self._active = False

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._setup()
        except (StartupError, ParameterException, ValueError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._start()
        self._active = True
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        self._active = False
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._configured = False
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self.on_deactivate(state)
        if self._configured:
            self.on_cleanup(state)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in lifecycle state {state.label}; cleaning up")
        return self.on_shutdown(state)

    def stop(self) -> None:
        if self._active:
            super().stop()
            self._active = False


def main(args: list[str] | None = None, lifecycle: bool = False) -> int:
    """Run the node (``lifecycle``: the managed node, which waits for ``configure`` and ``activate``)."""
    profile = transport.apply_default_profile()
    rclpy.init(args=args)
    node: _PoseDistributionCore | None = None
    try:
        node = PoseDistributionLifecycleNode() if lifecycle else PoseDistributionNode()
        node.report_transport(profile)
        if lifecycle:
            node.get_logger().info("lifecycle node: unconfigured; waiting for the configure transition")
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


def main_lifecycle(args: list[str] | None = None) -> int:
    """Entry point of ``pose_distribution_lifecycle_node``."""
    return main(args, lifecycle=True)


if __name__ == "__main__":
    import sys

    if "--lifecycle" in sys.argv[1:]:
        sys.argv.remove("--lifecycle")
        raise SystemExit(main_lifecycle())
    raise SystemExit(main())
