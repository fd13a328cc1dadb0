"""Run the pose estimator over a rosbag2 (MCAP or SQLite3) and write its outputs to a new bag; no ROS install needed.

    python -m pose_distribution_ros.bag IN OUT [--image-topic T] [--camera-info-topic T|none]
        [--depth-topic T] [--detections-topic T|none] [--truth-topic T] [--symmetry SPEC]
        [--params-file YAML] [-p name:=value ...] [--storage mcap|sqlite3] [--no-inputs]
        [--max-frames N] [--overwrite]

``IN`` is a rosbag2 directory (``metadata.yaml``) or a single ``.mcap`` / ``.db3`` file, read with
``rosbags``; ``OUT`` is the bag directory to create (``--storage``: default the input's format).

Inputs, chosen by topic (auto when not given):

* ``--image-topic`` (sensor_msgs/Image): default the bag's only Image topic, or its only one
  whose name does not contain ``depth``;
* ``--camera-info-topic`` (sensor_msgs/CameraInfo): default ``<image topic's namespace>/camera_info``,
  else the bag's only CameraInfo topic; per image the good CameraInfo of the same stamp, else the
  latest before it (log time), else the first after it;
* ``--depth-topic`` (sensor_msgs/Image 16UC1 / 32FC1 aligned with the image): only when given;
  the depth image nearest the image's stamp (within the node's skew);
* ``--detections-topic`` (vision_msgs/Detection2DArray): default the bag's only one; an image is
  served with the array of exactly its stamp (before or after it in the bag), and skipped when
  there is none (the node waits for it). ``none``: the whole image is one object.
  ``-p use_detections:=true`` makes a detections topic required.
* ``--truth-topic`` (geometry_msgs/PoseStamped, matched by stamp): the summary gives the median
  rotation error and Acc@15 of the published mode (``~/distribution``) vs the truth, the
  plain geodesic error or, with ``--symmetry SPEC`` (:func:`pose_core.data.shapes.symmetry_rotations`),
  the error to the nearest symmetric equivalent.

Per image, the same estimator as the node (the node's parameters: ``--params-file``, default
``config/pose_distribution.yaml``, and ``-p name:=value`` overrides;
:func:`pose_distribution_ros.node.build_estimator`) and
the node's messages (:mod:`pose_distribution_ros.outputs`) on the node's topics
(``/pose_distribution/distribution``, ``.../distributions``, ``.../pose``, ``.../samples``,
``.../detections``, ``.../markers``, ``/tf``), header stamp = the image's stamp, log time = the
image's log time. The input topics are copied as they are (``--no-inputs``: not), so that a player
(``ros2 bag play``, Foxglove) shows the image with the results; an input topic of the same name as
an output is not copied (``/tf``: the two are merged on one topic). Every image is processed, in
log-time order (``max_rate_hz`` and ``image_qos`` do not apply); tracking (``temporal_filter``)
follows the image stamps as in the node.

A bad frame (undecodable, wrong encoding, no detections of its stamp, inference error) is
skipped, counted and reported (rate-limited like the node's log, ``log_throttle_s``). The output is
written while processing (SQLite3: committed every few seconds) and closed properly after Ctrl-C /
SIGTERM too (the frame in progress is finished, the inputs read are copied; exit status 130) or a
bag that turns out corrupt part way (exit status 1). A summary (images read, processed, skipped
by reason, output topics and counts, time, truth) ends the run on stdout; progress and problems go
to stderr. Exit status 0: done; 1: bad input (missing or corrupt bag, no or unknown topic, bad
parameter or option, OUT exists without ``--overwrite``), with a one-line message.
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import math
import shutil
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BagError",
    "IMAGE",
    "CAMERA_INFO",
    "DETECTIONS",
    "POSE_STAMPED",
    "typestore",
    "output_topic",
    "load_parameters",
    "rotation_error",
    "main",
]

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
DEFAULT_PARAMS = "config/pose_distribution.yaml"
#: With a depth topic, an image waits until the bag is read this far past it (log time), so that a
#: depth image recorded after it can still be paired.
DEPTH_LOOKAHEAD_NS = 500_000_000
#: The SQLite3 output is committed at least this often (s), so that a killed run keeps its frames.
COMMIT_PERIOD_S = 2.0
PROGRESS_PERIOD_S = 10.0
EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 130
_REPO = Path(__file__).resolve().parent.parent
#: Interface packages the rosbags typestore lacks: (package, the repository's copy of its msg/).
_OWN_INTERFACES = (("pose_distribution", _REPO / "msg"), ("vision_msgs", _REPO / "third_party" / "vision_msgs" / "msg"))


class BagError(Exception):
    """Bad input (bag, topic, parameter, output path): the message says what; exit status 1."""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- type store


def _installed_msg_dir(package: str) -> Path | None:
    """``share/<package>/msg`` of the installed Python interface package (what rclpy serializes with)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).resolve()
        # <prefix>/lib/pythonX.Y/site-packages/<package> -> <prefix>/share/<package>/msg
        if len(path.parents) > 3 and path.parents[2].name == "lib":
            candidate = path.parents[3] / "share" / package / "msg"
            if candidate.is_dir():
                return candidate
    return None


def typestore() -> Any:
    """The rosbags typestore of the ROS 2 types (``Stores.LATEST``) plus this package's messages and the
    vision_msgs ones it lacks, registered from their ``.msg`` files (the installed package's, else the
    repository's ``msg/`` and ``third_party/vision_msgs/msg``), so that the output connections carry
    the message definitions and RIHS01 type hashes ROS 2 computes."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.LATEST)
    missing: dict[str, Any] = {}
    for package, repo_dir in _OWN_INTERFACES:
        msg_dir = _installed_msg_dir(package) or repo_dir
        for path in sorted(msg_dir.glob("*.msg")):
            name = f"{package}/msg/{path.stem}"
            if name not in store.fielddefs:
                missing.update(get_types_from_msg(path.read_text(encoding="utf-8"), name))
    store.register(missing)
    return store


def output_topic(topic: str) -> str:
    """Absolute name of an :data:`~pose_distribution_ros.outputs.OUTPUTS` topic: ``~/x`` -> ``/pose_distribution/x``."""
    from pose_distribution_ros.node import NODE_NAME

    return f"/{NODE_NAME}/{topic[2:]}" if topic.startswith("~/") else topic


def _qos(depth: int) -> Any:
    """Reliable, volatile, keep last ``depth``: the node's publishers' QoS, offered to a player."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, QosDurability.VOLATILE, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)  # fmt: skip


# --------------------------------------------------------------------------- parameters


def _resolve_params_file(path: str, explicit: bool) -> Path | None:
    """The params YAML: as given, else relative to the working directory, the repository or the package share."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, _REPO / p]
    if not p.is_absolute():
        try:
            from pose_distribution_ros.transport import package_share

            share = package_share()
        except ImportError:
            share = None
        if share is not None:
            candidates.append(share / p)
    for c in candidates:
        if c.is_file():
            return c
    if explicit:
        raise BagError(f"params file {path!r} not found (looked at: {', '.join(str(c) for c in candidates)})")
    return None


def _check_value(param: Any, value: Any) -> Any:
    """``value`` as the type of ``param``'s default (an int is accepted for a float), within its bounds."""
    default = param.default
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        value = [float(v) for v in value] if ok else value
    else:
        ok = True
    if not ok:
        raise BagError(f"parameter {param.name} must be a {type(default).__name__} like {default!r}, got {value!r}")
    if param.min is not None and not (param.min <= value <= param.max):
        raise BagError(f"parameter {param.name}={value!r} is out of its range [{param.min}, {param.max}]")
    return value


def load_parameters(params_file: str | None, overrides: Iterable[str]) -> dict[str, Any]:
    """Every node parameter's value: defaults, then the params file (``/**`` and ``pose_distribution``
    sections of ``ros__parameters``), then ``overrides`` (``name:=value``, value parsed as YAML like
    ``--ros-args -p``). ``params_file`` None: :data:`DEFAULT_PARAMS` when it exists.

    Raises:
        BagError: unreadable file, unknown parameter in ``overrides``, wrong type or out of range.
    """
    import yaml

    from pose_distribution_ros.parameters import PARAMETERS

    by_name = {p.name: p for p in PARAMETERS}
    values = {p.name: p.default for p in PARAMETERS}
    path = _resolve_params_file(params_file or DEFAULT_PARAMS, explicit=params_file is not None)
    if path is not None:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BagError(f"cannot read params file {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise BagError(f"params file {path} is not a ROS 2 parameters file (no '/**: ros__parameters:')")
        for key, section in doc.items():
            if str(key).strip("/") not in ("**", "pose_distribution", "**/pose_distribution"):  # node.NODE_NAME
                continue
            params = section.get("ros__parameters") if isinstance(section, dict) else None
            if not isinstance(params, dict):
                raise BagError(f"params file {path}: section {key!r} has no 'ros__parameters' mapping")
            for name, value in params.items():
                if name in by_name:
                    values[name] = _check_value(by_name[name], value)
                else:
                    _say(f"params file {path}: ignoring unknown parameter {name!r}")
    for item in overrides:
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise BagError(f"-p expects name:=value, got {item!r}")
        if name not in by_name:
            raise BagError(f"unknown parameter {name!r} (-p {item}); known: {', '.join(sorted(by_name))}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise BagError(f"-p {item}: cannot parse the value: {exc}") from None
        values[name] = _check_value(by_name[name], value)
    return values


# --------------------------------------------------------------------------- input bag


@dataclass
class Topics:
    """The input topics used (None: not used)."""

    image: str
    camera_info: str | None = None
    depth: str | None = None
    detections: str | None = None
    truth: str | None = None


def _storage_of(path: Path) -> str:
    """``mcap`` or ``sqlite3``: the storage of the input bag at ``path``."""
    if path.is_file():
        return {".mcap": "mcap", ".db3": "sqlite3"}.get(path.suffix, "")
    try:
        import yaml

        info = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        return str(info.get("storage_identifier", ""))
    except Exception:  # the reader reports what is wrong with the bag
        return ""


def _open_reader(path: Path) -> Any:
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise BagError(f"input bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # ReaderError, FileNotFoundError, sqlite3 / struct / yaml errors of a corrupt bag
        raise BagError(f"cannot read input bag {path}: {_describe(exc)}") from None
    return reader


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _choose_topics(types: Mapping[str, str | None], args: argparse.Namespace) -> Topics:
    """Topics for the options of ``args`` in a bag with ``types`` (topic -> type). Raises :class:`BagError`."""
    listing = ", ".join(f"{t} ({m})" for t, m in sorted(types.items())) or "none"

    def of_type(msgtype: str) -> list[str]:
        return sorted(t for t, m in types.items() if m == msgtype)

    def given(option: str, topic: str, msgtype: str) -> str:
        if topic not in types:
            raise BagError(f"{option} {topic}: no such topic in the bag (topics: {listing})")
        if types[topic] != msgtype:
            raise BagError(f"{option} {topic}: the topic is {types[topic]}, not {msgtype}")
        return topic

    images = of_type(IMAGE)
    if args.image_topic:
        image = given("--image-topic", args.image_topic, IMAGE)
    else:
        colour = [t for t in images if "depth" not in t.lower()]
        if len(images) == 1:
            image = images[0]
        elif len(colour) == 1:
            image = colour[0]
        elif not images:
            raise BagError(f"the bag has no {IMAGE} topic (topics: {listing})")
        else:
            raise BagError(f"the bag has several {IMAGE} topics ({', '.join(images)}): choose one with --image-topic")
    topics = Topics(image=image)

    infos = of_type(CAMERA_INFO)
    if args.camera_info_topic == "none":
        pass
    elif args.camera_info_topic:
        topics.camera_info = given("--camera-info-topic", args.camera_info_topic, CAMERA_INFO)
    else:
        sibling = image.rsplit("/", 1)[0] + "/camera_info"
        if sibling in infos:
            topics.camera_info = sibling
        elif len(infos) == 1:
            topics.camera_info = infos[0]
        elif infos:
            raise BagError(f"the bag has several {CAMERA_INFO} topics ({', '.join(infos)}) and none is {sibling}: "
                           "choose one with --camera-info-topic (or none)")  # fmt: skip

    if args.depth_topic:
        topics.depth = given("--depth-topic", args.depth_topic, IMAGE)
        if topics.depth == image:
            raise BagError(f"--depth-topic {topics.depth} is the image topic")

    detections = of_type(DETECTIONS)
    if args.detections_topic == "none":
        pass
    elif args.detections_topic:
        topics.detections = given("--detections-topic", args.detections_topic, DETECTIONS)
    elif len(detections) == 1:
        topics.detections = detections[0]
    elif detections:
        raise BagError(f"the bag has several {DETECTIONS} topics ({', '.join(detections)}): choose one with "
                       "--detections-topic (or none)")  # fmt: skip

    if args.truth_topic:
        topics.truth = given("--truth-topic", args.truth_topic, POSE_STAMPED)
    return topics


@dataclass
class _Intrinsics:
    log_time: int
    stamp: int
    width: int
    height: int
    k: list[float]


@dataclass
class _Index:
    """The small topics of the bag, read before the images: camera infos, detection arrays and truth by stamp."""

    infos: list[_Intrinsics] = field(default_factory=list)  # good ones, by log time
    info_times: list[int] = field(default_factory=list)  # their log times
    info_by_stamp: dict[int, _Intrinsics] = field(default_factory=dict)
    detections: dict[int, Any] = field(default_factory=dict)
    truth: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    rejected_infos: int = 0
    duplicate_detections: int = 0
    bad_messages: Counter = field(default_factory=Counter)

    def camera_info_for(self, log_time: int, stamp: int) -> _Intrinsics | None:
        """The good CameraInfo of ``stamp``, else the latest before ``log_time``, else the first after it."""
        same = self.info_by_stamp.get(stamp)
        if same is not None or not self.infos:
            return same
        return self.infos[max(bisect.bisect_right(self.info_times, log_time) - 1, 0)]


def _stamp_text(stamp: int) -> str:
    """Integer nanoseconds as exact seconds (``1700000000.200001234``)."""
    return f"{stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}"


def _deserialize(raw: bytes | memoryview, msg_type: type) -> Any:
    from rclpy.serialization import deserialize_message

    return deserialize_message(raw if isinstance(raw, bytes) else bytes(raw), msg_type)


# --------------------------------------------------------------------------- the run


def rotation_error(predicted: Iterable[float], truth: Iterable[float], symmetries: Any = None) -> float:
    """Rotation error (rad) of quaternion ``predicted`` vs ``truth`` (x, y, z, w): the geodesic angle, or with
    ``symmetries`` ``(K, 3, 3)`` (object frame, :func:`pose_core.data.shapes.symmetry_rotations`) the angle to
    the nearest of the truth's equivalents ``R_truth @ S_k`` (:func:`pose_core.metrics.nearest_equivalent_error`)."""
    import torch

    from pose_core import metrics, so3

    R_pred = so3.quat_to_matrix(torch.tensor([list(predicted)], dtype=torch.float64))
    R_true = so3.quat_to_matrix(torch.tensor(list(truth), dtype=torch.float64))
    S = torch.eye(3, dtype=torch.float64)[None] if symmetries is None else torch.as_tensor(symmetries).double()
    return float(metrics.nearest_equivalent_error(R_pred, [R_true @ S])[0])


#: usable_depth's kinds -> the summary's problem labels.
_DEPTH_PROBLEMS = {"depth_skew": "depth skew", "depth_no_info": "depth without camera_info", "depth": "bad depth"}


@dataclass
class _Stats:
    images: int = 0
    processed: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    problems: Counter = field(default_factory=Counter)  # not skipped, but reported (depth not used, ...)
    outputs: Counter = field(default_factory=Counter)  # output topic -> messages
    copied: Counter = field(default_factory=Counter)  # input topic -> messages copied
    frame_ms: list[float] = field(default_factory=list)  # per processed frame: decode .. written
    estimate_ms: list[float] = field(default_factory=list)  # the estimator's total
    errors: list[float] = field(default_factory=list)  # rad, vs truth
    truth_unmatched: int = 0  # processed frames with an object but no truth of their stamp


class _StopRequest:
    """SIGINT / SIGTERM handler while the output is written: the first asks the run to stop after the frame in
    progress (so that no message is cut in half); a second raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _say(f"{signal.Signals(signum).name}: stopping after the current frame and closing the output "
             "(again to abort at once)")  # fmt: skip


class _Run:
    """One pass over the input bag: the estimator on each image, the outputs and copies written in log-time order."""

    def __init__(self, reader: Any, writer: Any, store: Any, topics: Topics, args: argparse.Namespace,
                 values: Mapping[str, Any]):  # fmt: skip
        from pose_distribution_ros.node import Throttle

        self.reader, self.writer, self.store, self.topics, self.args = reader, writer, store, topics, args
        self.throttle = Throttle(float(values["log_throttle_s"]))
        self.stats = _Stats()
        self.index = _Index()
        self.out_conns: dict[str, Any] = {}  # output name -> connection
        self.copy_conns: dict[int, Any] = {}  # input connection id -> output connection
        self.symmetries: Any = None
        self.stop = _StopRequest()
        self._last_commit = time.monotonic()
        self._last_progress = time.monotonic()

    # ------------------------------------------------------------------ set-up
    def report(self, kind: str, text: str) -> None:
        """A rate-limited line on stderr (one per ``log_throttle_s`` per ``kind``; the rest counted)."""
        allow, held = self.throttle.allow(kind)
        if allow:
            _say(text + (f" ({held} more like it not shown)" if held else ""))

    def open_outputs(self, node_settings: Any, shapes: bool = False) -> None:
        from pose_distribution_ros.outputs import OPTIONAL_OUTPUTS, OUTPUTS

        for name, (topic, msg_type) in OUTPUTS.items():
            if (name == "tf" and not node_settings.publish_tf) or (name in OPTIONAL_OUTPUTS and not shapes):
                continue
            msgtype = msg_type.__module__.split(".")[0] + "/msg/" + msg_type.__name__
            qos = [_qos(100 if name == "tf" else 10)]  # tf2_ros's /tf depth, the node's publishers'
            self.out_conns[name] = self.writer.add_connection(
                output_topic(topic), msgtype, typestore=self.store, offered_qos_profiles=qos
            )
        if self.args.no_inputs:
            return
        by_topic = {c.topic: c for c in self.out_conns.values()}
        shared: dict[tuple[str, str], Any] = {}
        for conn in self.reader.connections:
            out = by_topic.get(conn.topic)
            if out is not None:
                if out.msgtype == conn.msgtype and conn.topic == "/tf":
                    self.copy_conns[conn.id] = out  # the input's transforms and ours on one /tf
                else:
                    self.report(f"collide {conn.topic}", f"input topic {conn.topic} is not copied: this run writes "
                                                         "its own output there")  # fmt: skip
                continue
            key = (conn.topic, conn.msgtype)
            if key not in shared:
                shared[key] = self._copy_connection(conn)
            if shared[key] is not None:
                self.copy_conns[conn.id] = shared[key]

    def _copy_connection(self, conn: Any) -> Any:
        """An output connection for copying input ``conn`` (its definition and hash), or None (reported)."""
        from rosbags.interfaces import MessageDefinitionFormat

        qos = list(getattr(conn.ext, "offered_qos_profiles", []) or [])
        known = conn.msgtype in self.store.fielddefs
        if known and (not conn.digest or self.store.hash_rihs01(conn.msgtype) == conn.digest):
            return self.writer.add_connection(conn.topic, conn.msgtype, typestore=self.store, offered_qos_profiles=qos)
        msgdef = conn.msgdef
        idl_ok = msgdef.format == MessageDefinitionFormat.IDL and msgdef.data.startswith("=" * 80 + "\nIDL: ")
        if conn.digest and msgdef.data and (msgdef.format == MessageDefinitionFormat.MSG or idl_ok):
            return self.writer.add_connection(conn.topic, conn.msgtype, msgdef=msgdef.data, rihs01=conn.digest,
                                              offered_qos_profiles=qos)  # fmt: skip
        _say(f"input topic {conn.topic} ({conn.msgtype}) is not copied: the bag has no message definition or type "
             "hash for it and the type is unknown here")  # fmt: skip
        return None

    def read_index(self) -> None:
        """Camera infos, detection arrays and truth poses of the whole bag (small messages), by stamp."""
        from pose_distribution_ros.node import camera_info_problem
        from pose_distribution_ros.pairing import stamp_ns

        wanted = {self.topics.camera_info: CAMERA_INFO, self.topics.detections: DETECTIONS,
                  self.topics.truth: POSE_STAMPED}  # fmt: skip
        wanted.pop(None, None)
        conns = [c for c in self.reader.connections if c.topic in wanted]
        if not conns:
            return
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo

        classes: dict[str, Any] = {CAMERA_INFO: CameraInfo, POSE_STAMPED: PoseStamped}
        if self.topics.detections:
            from vision_msgs.msg import Detection2DArray

            classes[DETECTIONS] = Detection2DArray
        index = self.index
        for conn, log_time, raw in self.reader.messages(connections=conns):
            msgtype = wanted[conn.topic]
            try:
                msg = _deserialize(raw, classes[msgtype])
            except Exception as exc:
                index.bad_messages[conn.topic] += 1
                self.report(f"undecodable {conn.topic}",
                            f"{conn.topic}: undecodable message skipped ({_describe(exc)})")
                continue
            stamp = stamp_ns(msg.header.stamp)
            if msgtype == CAMERA_INFO:
                problem = camera_info_problem(msg)
                if problem is not None:
                    index.rejected_infos += 1
                    self.report("camera_info", f"camera_info rejected: {problem}")
                    continue
                info = _Intrinsics(log_time, stamp, int(msg.width), int(msg.height), [float(v) for v in msg.k])
                index.infos.append(info)
                index.info_by_stamp.setdefault(stamp, info)
            elif msgtype == DETECTIONS:
                if stamp in index.detections:
                    index.duplicate_detections += 1
                    self.report("detections_duplicate", f"{conn.topic}: a second detection array stamped "
                                                        f"{_stamp_text(stamp)}: the first is used")  # fmt: skip
                    continue
                index.detections[stamp] = msg
            else:
                o = msg.pose.orientation
                index.truth.setdefault(stamp, (float(o.x), float(o.y), float(o.z), float(o.w)))
        index.infos.sort(key=lambda x: x.log_time)
        index.info_times = [x.log_time for x in index.infos]


    # ------------------------------------------------------------------ the pass
    def run(self, estimator: Any, node_settings: Any, max_frames: int = 0) -> bool:
        """Read the images (and depth and copied topics) in log-time order, estimate, write; until the end of
        the bag, ``max_frames`` images or a stop request (:class:`_StopRequest`: the frame in progress is
        finished, the messages read are copied, their images not processed). Returns whether it was stopped.
        A bag that turns out corrupt raises :class:`BagError` after the frames read before are written."""
        from pose_distribution_ros.outputs import OutputBuilder

        self.estimator, self.node_settings, self.builder = estimator, node_settings, OutputBuilder()
        image_ids = {c.id for c in self.reader.connections if c.topic == self.topics.image}
        depth_ids = {c.id for c in self.reader.connections if c.topic == self.topics.depth}
        conns = [c for c in self.reader.connections
                 if c.id in image_ids or c.id in depth_ids or c.id in self.copy_conns]  # fmt: skip
        self.total_images = sum(c.msgcount for c in self.reader.connections if c.id in image_ids)
        lookahead = DEPTH_LOOKAHEAD_NS if self.topics.depth else 0
        pending: deque[tuple[int, Any, bytes, bool]] = deque()  # (log time, connection, raw, is image)
        self.depths: deque[tuple[int, Any]] = deque()  # (log time, Image) around the pending images
        messages = iter(self.reader.messages(connections=conns))
        broken: BaseException | None = None
        while not self.stop.requested:
            try:
                conn, log_time, raw = next(messages)
            except StopIteration:
                break
            except Exception as exc:  # a corrupt chunk / database part way through
                broken = exc
                break
            if conn.id in depth_ids:
                self._add_depth(conn, log_time, raw)
            if conn.id in image_ids:
                if max_frames and self.stats.images >= max_frames:
                    break
                self.stats.images += 1
                pending.append((log_time, conn, raw, True))
            elif conn.id in self.copy_conns:
                pending.append((log_time, conn, raw, False))
            self._drain(pending, log_time - lookahead)
        self._drain(pending, None)
        if broken is not None:
            raise BagError(f"the input bag is corrupt after {self.stats.images} images ({_describe(broken)}); "
                           "the output holds what was read before")  # fmt: skip
        return self.stop.requested

    def _add_depth(self, conn: Any, log_time: int, raw: bytes) -> None:
        from sensor_msgs.msg import Image

        try:
            self.depths.append((log_time, _deserialize(raw, Image)))
        except Exception as exc:
            self._problem("undecodable depth", f"{conn.topic}: undecodable depth image skipped ({_describe(exc)})")

    def _drain(self, pending: deque, until: int | None) -> None:
        """Write (and process, the images) the pending messages logged at or before ``until`` (None: all)."""
        while pending and (until is None or pending[0][0] <= until):
            log_time, conn, raw, is_image = pending.popleft()
            out = self.copy_conns.get(conn.id)
            if out is not None:  # the input first: a player shows the image, then its results
                self.writer.write(out, log_time, raw)
                self.stats.copied[conn.topic] += 1
            if is_image and self.stop.requested:
                self.stats.skipped["not processed (stopped)"] += 1
            elif is_image:
                self._process(log_time, conn, raw)
                while self.depths and self.depths[0][0] < log_time - DEPTH_LOOKAHEAD_NS:
                    self.depths.popleft()
            self._housekeeping()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_commit >= COMMIT_PERIOD_S:
            self._last_commit = now
            connection = getattr(self.writer.storage, "conn", None)  # the SQLite3 storage plugin's database
            if connection is not None:
                connection.commit()
        if now - self._last_progress >= PROGRESS_PERIOD_S:
            self._last_progress = now
            s = self.stats
            _say(f"{s.images}/{self.total_images} images read, {s.processed} processed, {sum(s.skipped.values())} "
                 "skipped")  # fmt: skip

    def _problem(self, kind: str, text: str) -> None:
        self.stats.problems[kind] += 1
        self.report(kind, text)

    def _skip(self, reason: str, text: str) -> None:
        self.stats.skipped[reason] += 1
        self.report(reason, text)

    def _process(self, log_time: int, conn: Any, raw: bytes) -> None:
        """One image: the node's ``_process`` with the bag's pairing, then the outputs written at ``log_time``."""
        from rclpy.serialization import serialize_message
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from pose_distribution_ros import messages
        from pose_distribution_ros.image_conversion import ImageConversionError, image_to_rgb
        from pose_distribution_ros.pairing import stamp_ns

        t0 = time.perf_counter()
        try:
            image = _deserialize(raw, Image)
        except Exception as exc:
            self._skip("undecodable image", f"{conn.topic}: undecodable image message skipped ({_describe(exc)})")
            return
        stamp = stamp_ns(image.header.stamp)
        label = f"image stamped {_stamp_text(stamp)}"
        detections = None
        if self.topics.detections:
            detections = self.index.detections.get(stamp)
            if detections is None:
                self._skip("no detections of its stamp", f"{label}: skipped, no {self.topics.detections} array of "
                                                         "the same stamp in the bag")  # fmt: skip
                return
        try:
            rgb = image_to_rgb(image)  # (H, W, 3) uint8
        except ImageConversionError as exc:
            self._skip(f"bad image ({exc.kind})", f"{label}: skipped, bad image: {exc}")
            return
        K = self._camera_matrix(image, log_time, stamp)
        depth = self._depth_for(image, K)
        boxes = None if detections is None else messages.detection_boxes(detections)
        # (an SE(3) model: the estimator says what it assumes without K, in a note)
        if boxes and K is None and getattr(self.estimator.model, "pose_space", "so3") != "se3":
            self._problem("detections without camera_info",
                          f"{label}: no camera_info matching the image: detection crops are not corrected for their "
                          "viewing ray and translations have no direction")  # fmt: skip
        ns = self.node_settings
        try:
            frame = self.estimator.estimate(rgb, K, depth, boxes, stamp_s=stamp * 1e-9)
            self._report_frame(frame, len(boxes) if boxes is not None else 0)
            header = Header(stamp=image.header.stamp, frame_id=ns.camera_frame_id or image.header.frame_id)
            out = self.builder.build(frame, header, ns, detections)
            items = [(name, serialize_message(msg)) for name, msg in out.items(publish_tf=ns.publish_tf)]
        except Exception as exc:  # as the node: report, go on with the next frame
            self._skip("inference failed", f"{label}: inference failed: {_describe(exc)}")
            return
        for name, data in items:
            connection = self.out_conns[name]
            self.writer.write(connection, log_time, data)
            self.stats.outputs[connection.topic] += 1
        self.stats.processed += 1
        self.stats.frame_ms.append(1000 * (time.perf_counter() - t0))
        self.stats.estimate_ms.append(float(frame.timings_ms.get("total", math.nan)))
        if self.topics.truth and out.distribution is not None:
            truth = self.index.truth.get(stamp)
            if truth is None:
                self.stats.truth_unmatched += 1
            else:
                o = out.distribution.mode.orientation
                self.stats.errors.append(rotation_error((o.x, o.y, o.z, o.w), truth, self.symmetries))

    def _camera_matrix(self, image: Any, log_time: int, stamp: int) -> list[float] | None:
        """K of the camera info for the image (see :meth:`_Index.camera_info_for`) when its size matches."""
        info = self.index.camera_info_for(log_time, stamp)
        if info is None:
            return None
        if (info.width, info.height) != (image.width, image.height):
            self._problem("camera_info size",
                          f"camera_info is for {info.width}x{info.height} images but the image is "
                          f"{image.width}x{image.height}: not used (no viewing-ray correction, no depth)")  # fmt: skip
            return None
        return info.k

    def _depth_for(self, image: Any, K: list[float] | None) -> Any:
        """The depth image (m) nearest ``image`` in stamp, or None (each reason counted): the node's ``_depth_for``."""
        from pose_distribution_ros.pairing import DepthBuffer, usable_depth

        if not self.depths:
            if self.topics.depth:
                self._problem("no depth image", "no depth image near the image: depth not used")
            return None
        buffer = DepthBuffer(len(self.depths))
        for _, d in self.depths:
            buffer.add(d)
        depth_m, problem = usable_depth(*buffer.closest(image.header.stamp), K)
        if problem is not None:
            kind, text = problem
            self._problem(_DEPTH_PROBLEMS[kind], text)
        return depth_m

    def _report_frame(self, frame: Any, num_boxes: int) -> None:
        """Count and report what the estimator did not serve (the node's ``_report``)."""
        for r in frame.rejected:
            self._problem("rejected boxes", f"bad detection: detection {r.index} (id {r.box.id!r}) skipped: {r.reason}")
        if frame.dropped:
            self.stats.problems["dropped boxes (max_detections)"] += frame.dropped
            self.report("max_detections", f"{num_boxes} detections, keeping the "
                                          f"{self.estimator.settings.max_detections} highest-scoring (max_detections)")
        for kind, text in frame.notes:
            if kind == "stamp":  # tracks reset (the bag's stamps go back or jump): not a bad frame
                self.report(kind, text)
            else:
                self._problem(f"bad {kind}", f"bad {kind}: {text}")


# --------------------------------------------------------------------------- command line


def _median(xs: list[float]) -> float:
    ys = sorted(x for x in xs if math.isfinite(x))
    return ys[len(ys) // 2] if ys else math.nan


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def _summary(run: _Run, out_path: Path, storage: str, elapsed_s: float, setup_s: float, state: str) -> str:
    s, t = run.stats, run.topics
    skipped = sum(s.skipped.values())
    lines = [
        f"{state}: {out_path} ({storage})",
        f"inputs: image {t.image}, camera_info {t.camera_info or '-'}, depth {t.depth or '-'}, "
        f"detections {t.detections or '-'}, truth {t.truth or '-'}",
        f"images: {s.images} read, {s.processed} processed, {skipped} skipped"
        + (f" ({_counts(s.skipped)})" if skipped else ""),
    ]
    if s.problems or run.index.rejected_infos or run.index.bad_messages:
        problems = Counter(s.problems)
        if run.index.rejected_infos:
            problems["rejected camera_info"] += run.index.rejected_infos
        for topic, n in run.index.bad_messages.items():
            problems[f"undecodable {topic}"] += n
        lines.append(f"reported (frames still processed): {_counts(problems)}")
    lines.append("outputs: " + (", ".join(f"{topic} {n}" for topic, n in s.outputs.items()) or "none"))
    if run.args.no_inputs:
        lines.append("input copies: none (--no-inputs)")
    else:
        lines.append(f"input copies: {len(s.copied)} topics, {sum(s.copied.values())} messages")
    per_frame = (f", {_median(s.frame_ms):.1f} ms per processed frame (median; estimator "
                 f"{_median(s.estimate_ms):.1f} ms)")
    lines.append(f"time: {elapsed_s:.1f} s (start-up, model and warm-up {setup_s:.1f} s)"
                 + (per_frame if s.frame_ms else ""))  # fmt: skip
    if t.truth:
        if s.errors:
            import numpy as np

            errors = np.degrees(np.asarray(s.errors))
            kind = f"nearest of {len(run.symmetries)} symmetric equivalents" if len(run.symmetries) > 1 else "geodesic"
            lines.append(
                f"truth {t.truth}: {len(errors)} frames matched by stamp, median rotation error "
                f"{float(np.median(errors)):.1f} deg, Acc@15 {100 * float(np.mean(errors <= 15.0)):.1f} % ({kind})"
                + (f"; {s.truth_unmatched} frames without truth" if s.truth_unmatched else "")
            )
        else:
            lines.append(f"truth {t.truth}: no output frame has a truth pose of its stamp")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # bad usage is bad input: exit status 1, one line after the usage
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pose_distribution_ros.bag",
                description="Run the pose_distribution estimator over a rosbag2 (MCAP or SQLite3) and write the "
                            "node's outputs (and a copy of the inputs) to a new bag.")  # fmt: skip
    p.add_argument("input", metavar="IN", help="input rosbag2: a directory with metadata.yaml, or a .mcap / .db3 file")
    p.add_argument("output", metavar="OUT", help="output bag directory to create")
    topic = {"metavar": "TOPIC"}
    p.add_argument("--image-topic", **topic, help="sensor_msgs/Image topic (default: the bag's only colour one)")
    p.add_argument("--camera-info-topic", **topic,
                   help="sensor_msgs/CameraInfo topic, or none (default: <image ns>/camera_info or the bag's only one)")
    p.add_argument("--depth-topic", **topic,
                   help="aligned depth sensor_msgs/Image topic (16UC1 mm / 32FC1 m; default: none)")
    p.add_argument("--detections-topic", **topic,
                   help="vision_msgs/Detection2DArray topic, or none (default: the bag's only one)")
    p.add_argument("--truth-topic", **topic, help="geometry_msgs/PoseStamped truth, matched by stamp: prints the "
                                                  "median rotation error and Acc@15 of the published mode")
    p.add_argument("--symmetry", metavar="SPEC", help="object symmetry for the truth comparison: none, "
                   "cyclic:N[:axis], dihedral:N[:axis], revolution[:axis], revolution+flip[:axis]")
    p.add_argument("--params-file", metavar="YAML", help=f"the node's ROS 2 params YAML (default: {DEFAULT_PARAMS})")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="override one node parameter (repeatable), e.g. -p num_samples:=50")  # fmt: skip
    p.add_argument("--storage", choices=("mcap", "sqlite3"), help="output storage (default: the input's)")
    p.add_argument("--no-inputs", action="store_true", help="do not copy the input topics to the output bag")
    p.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N images (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an existing bag")
    return p


def _check_output(out_path: Path, in_path: Path, overwrite: bool) -> None:
    """Refuse an existing OUT (unless ``overwrite`` and it is a bag directory that does not hold the input)."""
    if not out_path.exists() and not out_path.is_symlink():
        return
    if not overwrite:
        raise BagError(f"output {out_path} exists; choose another path or pass --overwrite")
    if not out_path.is_dir() or out_path.is_symlink():
        raise BagError(f"output {out_path} exists and is not a bag directory; not replacing it")
    resolved_in, resolved_out = in_path.resolve(), out_path.resolve()
    if resolved_in == resolved_out or resolved_out in resolved_in.parents:
        raise BagError(f"output {out_path} holds the input bag {in_path}; not replacing it")
    entries = list(out_path.iterdir())
    bag_like = any(e.name == "metadata.yaml" or e.suffix in (".mcap", ".db3") for e in entries)
    if entries and (not bag_like or any(e.is_dir() for e in entries)):
        raise BagError(f"output {out_path} exists and does not look like a rosbag2 directory; not replacing it")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The command (see the module docstring); returns the exit status."""
    args = _parser().parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args, started)
    except BagError as exc:
        _say(f"error: {exc}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace, started: float) -> int:
    in_path, out_path = Path(args.input), Path(args.output)
    if args.max_frames < 0:
        raise BagError(f"--max-frames must be >= 0, got {args.max_frames}")
    if args.symmetry and not args.truth_topic:
        raise BagError("--symmetry needs --truth-topic")
    _check_output(out_path, in_path, args.overwrite)
    reader = _open_reader(in_path)
    writer = None
    try:
        storage = args.storage or _storage_of(in_path) or "mcap"
        types = {topic: info.msgtype for topic, info in reader.topics.items()}
        topics = _choose_topics(types, args)  # before the parameters: they import torch (seconds)
        values = load_parameters(args.params_file, args.param)
        if values["use_detections"] and topics.detections is None:
            raise BagError(f"use_detections is true but no {DETECTIONS} topic is used "
                           f"({'--detections-topic none' if args.detections_topic == 'none' else 'the bag has none'})")
        run = _Run(reader, None, None, topics, args, values)
        if args.symmetry:
            from pose_core.data.shapes import symmetry_rotations

            try:
                run.symmetries = symmetry_rotations(args.symmetry)
            except ValueError as exc:
                raise BagError(f"--symmetry: {exc}") from None
        else:
            import numpy as np

            run.symmetries = np.eye(3)[None]
        depth_like = [t for t, m in types.items() if m == IMAGE and "depth" in t.lower() and t != topics.image]
        if depth_like and not topics.depth:
            _say(f"note: depth not used; if {depth_like[0]} is aligned with {topics.image}, pass --depth-topic")
        _say(f"reading {in_path}: image {topics.image}, camera_info {topics.camera_info or '-'}, depth "
             f"{topics.depth or '-'}, detections {topics.detections or '-'}, truth {topics.truth or '-'}")  # fmt: skip
        run.read_index()
        from pose_distribution_ros.node import StartupError, build_estimator

        try:
            estimator, node_settings, _ = build_estimator(values, log=_say)
        except (StartupError, ValueError) as exc:
            raise BagError(str(exc)) from None
        warm_ms = estimator.warm_up()
        _say(f"warm-up frame: {warm_ms:.0f} ms; model on {estimator.model.device} ({estimator.model.backend}), "
             f"input {estimator.input_size} px")  # fmt: skip
        from rosbags.rosbag2 import StoragePlugin, Writer

        if out_path.exists():  # --overwrite, checked by _check_output
            shutil.rmtree(out_path)
        run.store = typestore()
        writer = Writer(out_path, version=Writer.VERSION_LATEST,
                        storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)  # fmt: skip
        writer.open()
        run.writer = writer
        run.open_outputs(node_settings, shapes=estimator.shaper is not None)
        _say(f"writing {out_path} ({storage})")
        setup_s = time.monotonic() - started
        state, failure = "done", None
        run.stop.install()
        try:
            if run.run(estimator, node_settings, args.max_frames):
                state = "interrupted"
        except KeyboardInterrupt:  # a second signal
            state = "interrupted"
        except BagError as exc:  # corrupt part way: what was read is written
            state, failure = "stopped", exc
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bag must be closed whole
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            writer.close()
            writer = None
        print(_summary(run, out_path, storage, time.monotonic() - started, setup_s, state), flush=True)
        if failure is not None:
            raise failure
        return EXIT_INTERRUPTED if state == "interrupted" else EXIT_OK
    finally:
        if writer is not None and writer.storage is not None:  # an error before the run: close what was opened
            writer.close()
        reader.close()


if __name__ == "__main__":
    raise SystemExit(main())
