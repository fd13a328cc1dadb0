"""Helpers for tests that exchange ROS 2 messages between separate processes.

Every test run talks on its own DDS domain (random ``ROS_DOMAIN_ID``) with discovery limited
to this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``), so parallel runs on one machine
(CI jobs, pytest-xdist workers) do not hear each other.

Library part, imported by the tests (rclpy is imported lazily, so this module imports without
ROS)::

    with ros_domain(log_dir=tmp_path) as env:          # env for subprocess.Popen(env=...)
        with start_publisher("pkg/msg/Type", "/topic", data, env):   # publishes at 10 Hz
            received = collect_messages("pkg/msg/Type", "/topic", env, count=1)

Messages cross the process boundary as plain JSON-able dicts (:func:`message_to_dict`,
:func:`dict_to_message`); compare them with :func:`assert_message_dicts_close`, which allows
for float32 rounding.

Command-line part, run by those helpers in a child process with ``sys.executable``::

    python ros_helpers.py pub  TYPE TOPIC [--rate HZ] < message.json   # until SIGINT/SIGTERM
    python ros_helpers.py echo TYPE TOPIC [--count N] [--timeout S]    # N JSON lines on stdout
    python ros_helpers.py lifecycle NODE [TRANSITION] [--timeout S]     # JSON {"success", "state"}

Note: the venv's ``ros_wheels_bootstrapper.pth`` re-executes every python of the venv once
with ``LD_LIBRARY_PATH`` set (in place, same pid); children inherit the result through the
environment copied here.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DOMAIN_ID_RANGE",
    "assert_message_dicts_close",
    "collect_messages",
    "dict_to_message",
    "get_message_type",
    "lifecycle",
    "recording",
    "message_to_dict",
    "random_domain_id",
    "require_ros",
    "ros_domain",
    "ros_env",
    "run_python",
    "start_publisher",
    "stop_process",
]

HELPER_SCRIPT = Path(__file__).resolve()
#: The repository root (the parent of test/).
REPO_ROOT = HELPER_SCRIPT.parent.parent


def require_ros(*modules: str) -> None:
    """Skip the calling test module when ``modules`` do not import (no ROS set-up), or raise
    ``ImportError`` when ``POSE_DISTRIBUTION_REQUIRE_ROS=1`` (the project's test command sets it)."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
    if missing:
        reason = f"cannot import {', '.join(missing)}: run scripts/setup_ros.sh .venv"
        if os.environ.get("POSE_DISTRIBUTION_REQUIRE_ROS") == "1":
            raise ImportError(reason)
        import pytest

        pytest.skip(reason, allow_module_level=True)

#: Domain ids safe with the default Linux ephemeral port range (0 is left to real systems).
DOMAIN_ID_RANGE = (1, 101)

#: Variables that would change discovery or the middleware and are dropped from the child env.
_DROPPED_VARS = (
    "ROS_LOCALHOST_ONLY",  # deprecated; conflicts with ROS_AUTOMATIC_DISCOVERY_RANGE
    "ROS_STATIC_PEERS",
    "ROS_DISCOVERY_SERVER",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "ROS_SECURITY_ENABLE",
)


# --------------------------------------------------------------------------- environment


def random_domain_id() -> int:
    """A random ROS_DOMAIN_ID in :data:`DOMAIN_ID_RANGE` (OS entropy, unaffected by seeding)."""
    return random.SystemRandom().randint(*DOMAIN_ID_RANGE)


def ros_env(
    domain_id: int,
    log_dir: str | os.PathLike[str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a ROS 2 child process on domain ``domain_id``, discovery on this host only.

    Args:
        domain_id: ROS_DOMAIN_ID for the child.
        log_dir: where rcl writes its log files (ROS_LOG_DIR); default: rcl's (~/.ros/log).
        base: environment to start from; default ``os.environ``.

    Raises:
        ValueError: if ``domain_id`` is outside :data:`DOMAIN_ID_RANGE` or 0.
    """
    if not (domain_id == 0 or DOMAIN_ID_RANGE[0] <= domain_id <= DOMAIN_ID_RANGE[1]):
        raise ValueError(f"domain_id must be in {DOMAIN_ID_RANGE}, got {domain_id}")
    env = dict(os.environ if base is None else base)
    for name in _DROPPED_VARS:
        env.pop(name, None)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")  # the only RMW on PyPI
    env["PYTHONUNBUFFERED"] = "1"
    if log_dir is not None:
        env["ROS_LOG_DIR"] = os.fspath(log_dir)
    return env


@contextlib.contextmanager
def ros_domain(
    domain_id: int | None = None, log_dir: str | os.PathLike[str] | None = None
) -> Iterator[dict[str, str]]:
    """Context manager yielding a :func:`ros_env` for subprocesses.

    ``domain_id`` defaults to :func:`random_domain_id`; ``log_dir`` to a temporary directory
    removed on exit.
    """
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ros_log_"))
        yield ros_env(random_domain_id() if domain_id is None else domain_id, log_dir)


@contextlib.contextmanager
def node_domain(log_dir: str | os.PathLike[str]) -> Iterator[dict[str, str]]:
    """:func:`ros_domain` for tests that run the node as a child: its log lines unbuffered and uncoloured
    (tests read them), and the repository importable (``python -m pose_distribution_ros.node``)."""
    with ros_domain(log_dir=log_dir) as e:
        e = dict(e)
        e.update(RCUTILS_LOGGING_BUFFERED_STREAM="0", RCUTILS_COLORIZED_OUTPUT="0")
        e["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        yield e


# --------------------------------------------------------------------------- processes


def run_python(
    args: list[str], env: Mapping[str, str], **popen_kwargs: Any
) -> subprocess.Popen[str]:
    """Start ``sys.executable *args`` with ``env`` (text mode, stdout and stderr piped)."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, *args], env=dict(env), text=True, **popen_kwargs
    )


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 5.0) -> int:
    """SIGINT ``proc`` (rclpy shuts down cleanly on it), SIGKILL after ``timeout_s``; its rc."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _qos_args(reliability: str, durability: str, depth: int) -> list[str]:
    return ["--reliability", reliability, "--durability", durability, "--depth", str(depth)]


@contextlib.contextmanager
def start_publisher(
    msg_type: str,
    topic: str,
    data: Mapping[str, Any],
    env: Mapping[str, str],
    rate_hz: float = 10.0,
    reliability: str = "reliable",
    durability: str = "volatile",
    depth: int = 10,
) -> Iterator[subprocess.Popen[str]]:
    """Publish ``data`` (a :func:`message_to_dict`-style dict) as ``msg_type`` from a child process.

    The child publishes at ``rate_hz`` until the context exits, so a subscriber started at
    any time receives it (no discovery race). On exit the child gets SIGINT (SIGKILL after
    5 s). Raises ``RuntimeError`` with the child's stderr if it had died before; an exception
    raised in the body gets the child's stderr attached as a note.
    """
    with tempfile.TemporaryFile(mode="w+") as stderr_file:  # a file: a full pipe would block it
        proc = run_python(
            [str(HELPER_SCRIPT), "pub", msg_type, topic, "--rate", str(rate_hz),
             *_qos_args(reliability, durability, depth)],
            env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )

        def stop_and_read() -> str:
            stop_process(proc)
            stderr_file.seek(0)
            return stderr_file.read()[-8000:]

        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(data))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died already: reported below
        try:
            yield proc
        except BaseException as exc:
            exc.add_note(f"publisher of {topic} (rc {proc.poll()}) stderr:\n{stop_and_read()}")
            raise
        died_early = proc.poll() is not None
        stderr = stop_and_read()
        if died_early:
            raise RuntimeError(
                f"publisher of {topic} exited early (rc {proc.returncode}):\n{stderr}")


def collect_messages(
    msg_type: str,
    topic: str,
    env: Mapping[str, str],
    count: int = 1,
    timeout_s: float = 30.0,
    reliability: str = "reliable",
    durability: str = "volatile",
    depth: int = 10,
) -> list[dict[str, Any]]:
    """Receive ``count`` messages of ``msg_type`` on ``topic`` in a child process.

    Returns them as :func:`message_to_dict` dicts. Raises ``TimeoutError`` (with the child's
    stderr) if they do not arrive within ``timeout_s`` seconds, ``RuntimeError`` if the child
    fails otherwise.
    """
    proc = run_python(
        [str(HELPER_SCRIPT), "echo", msg_type, topic, "--count", str(count),
         "--timeout", str(timeout_s), *_qos_args(reliability, durability, depth)],
        env,
    )
    try:
        # The child enforces timeout_s itself; the margin covers start-up and shutdown.
        out, err = proc.communicate(timeout=timeout_s + 15.0)
    except subprocess.TimeoutExpired:
        stop_process(proc, timeout_s=2.0)
        out, err = proc.communicate()
        raise TimeoutError(f"collector of {topic} hung; stderr:\n{err}") from None
    if proc.returncode == _RC_TIMEOUT:
        raise TimeoutError(f"no {count} message(s) on {topic} within {timeout_s} s:\n{err}")
    if proc.returncode != 0:
        raise RuntimeError(f"collector of {topic} failed (rc {proc.returncode}):\n{err}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@contextlib.contextmanager
def recording(msg_type: str, topic: str, env: Mapping[str, str], directory: Path) -> Iterator[list[dict[str, Any]]]:
    """Subscribe to ``topic`` in a child process for the duration of the block; afterwards the list
    it yields holds every message received, as :func:`message_to_dict` dicts (stopped with SIGINT;
    output through a file in ``directory``, so that no pipe fills up)."""
    out_path = Path(directory) / f"recording_{random.randrange(1 << 30)}.jsonl"
    received: list[dict[str, Any]] = []
    with open(out_path, "w") as out:
        proc = run_python([str(HELPER_SCRIPT), "echo", msg_type, topic, "--count", "1000000000", "--timeout", "3600"],
                          env, stdout=out, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            yield received
        finally:
            stop_process(proc, timeout_s=15.0)
    received.extend(json.loads(line) for line in out_path.read_text().splitlines() if line.strip())


def lifecycle(node: str, transition: str | None, env: Mapping[str, str], timeout_s: float = 60.0) -> dict[str, Any]:
    """Ask the lifecycle node ``node`` (full name) for ``transition`` (``configure``, ``activate``,
    ``deactivate``, ``cleanup``, ``shutdown``; ``None``: none) through its ``change_state`` service,
    then its state through ``get_state``, from a child process: ``{"success": bool | None, "state": label}``."""
    proc = run_python([str(HELPER_SCRIPT), "lifecycle", node, *([transition] if transition else []),
                       "--timeout", str(timeout_s)], env)  # fmt: skip
    out, err = proc.communicate(timeout=timeout_s + 15.0)
    if proc.returncode != 0:
        raise RuntimeError(f"lifecycle {transition} of {node} failed (rc {proc.returncode}):\n{err}")
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- messages


def get_message_type(name: str) -> type:
    """The message class for ``"pkg/msg/Type"`` (or ``"pkg/Type"``); ``ValueError`` if malformed."""
    parts = name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"expected a message type like 'std_msgs/msg/String', got {name!r}")
    package, kind, cls = parts
    return getattr(importlib.import_module(f"{package}.{kind}"), cls)


def _is_message(value: Any) -> bool:
    return hasattr(type(value), "get_fields_and_field_types")


def _to_plain(value: Any) -> Any:
    if _is_message(value):
        return message_to_dict(value)
    if isinstance(value, (bytes, bytearray)):
        return list(value)
    if isinstance(value, array.array) or hasattr(value, "tolist"):  # array.array, numpy
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def message_to_dict(msg: Any) -> dict[str, Any]:
    """Plain, JSON-able dict of a ROS message: nested messages as dicts, arrays as lists."""
    return {name: _to_plain(getattr(msg, name)) for name in msg.get_fields_and_field_types()}


def _slot_types(msg_cls: Any) -> dict[str, Any]:
    """Field name -> rosidl_parser type of a generated message class."""
    return dict(zip(msg_cls.get_fields_and_field_types(), msg_cls.SLOT_TYPES, strict=True))


def _coerce(slot_type: Any, value: Any) -> Any:
    """``value`` (from a dict) as the Python type the generated setter of ``slot_type`` takes."""
    from rosidl_parser.definition import AbstractNestedType, BasicType, NamespacedType

    if isinstance(slot_type, NamespacedType):
        cls = getattr(importlib.import_module(".".join(slot_type.namespaces)), slot_type.name)
        return dict_to_message(cls, value)
    if isinstance(slot_type, AbstractNestedType):
        item = slot_type.value_type
        if isinstance(item, NamespacedType):
            return [_coerce(item, v) for v in value]
        if isinstance(item, BasicType) and item.typename in ("float", "double"):
            return [float(v) for v in value]
        if isinstance(item, BasicType) and item.typename in ("octet", "byte"):
            return [bytes([v]) for v in value]
        return list(value)
    if isinstance(slot_type, BasicType) and slot_type.typename in ("float", "double"):
        return float(value)  # the generated setters reject int for float fields
    if isinstance(slot_type, BasicType) and slot_type.typename in ("octet", "byte"):
        return bytes(value if isinstance(value, (list, bytes)) else [value])
    return value


def dict_to_message(msg_cls: type, data: Mapping[str, Any]) -> Any:
    """Build a ``msg_cls`` from a (possibly partial) :func:`message_to_dict`-style dict.

    Raises ``ValueError`` naming the field for keys that ``msg_cls`` does not have.
    """
    slots = _slot_types(msg_cls)
    msg = msg_cls()
    for name, value in data.items():
        if name not in slots:
            raise ValueError(f"{msg_cls.__name__} has no field {name!r} (fields: {list(slots)})")
        setattr(msg, name, _coerce(slots[name], value))
    return msg


def assert_message_dicts_close(
    actual: Any, expected: Any, rel_tol: float = 1e-6, abs_tol: float = 1e-7, path: str = "msg"
) -> None:
    """Assert nested message dicts are equal, floats up to float32 rounding.

    The default tolerances cover a float32 field that was set from a Python float: the sender
    keeps the double, the receiver gets the rounded float32. Reports the path of the first
    mismatch (e.g. ``msg.modes[1].log_density``).
    """
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping), f"{path}: expected a message, got {actual!r}"
        assert set(actual) == set(expected), (
            f"{path}: fields {sorted(actual)} != {sorted(expected)}")
        for key in expected:
            assert_message_dicts_close(
                actual[key], expected[key], rel_tol, abs_tol, f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)), f"{path}: expected a list, got {actual!r}"
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_message_dicts_close(a, e, rel_tol, abs_tol, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, (int, float)), f"{path}: expected a number, got {actual!r}"
        assert math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=abs_tol), (
            f"{path}: {actual!r} != {expected!r}"
        )
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


# --------------------------------------------------------------------------- child processes

_RC_TIMEOUT = 3


def _qos_profile(args: argparse.Namespace) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=args.depth,
        reliability=ReliabilityPolicy[args.reliability.upper()],
        durability=DurabilityPolicy[args.durability.upper()],
    )


def _main_pub(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    msg_cls = get_message_type(args.type)
    msg = dict_to_message(msg_cls, json.load(sys.stdin))
    rclpy.init()
    try:
        node = rclpy.create_node("test_helper_publisher")
        publisher = node.create_publisher(msg_cls, args.topic, _qos_profile(args))
        node.create_timer(1.0 / args.rate, lambda: publisher.publish(msg))
        publisher.publish(msg)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()
    return 0


def _main_echo(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    msg_cls = get_message_type(args.type)
    received: list[Any] = []
    rclpy.init()
    try:
        node = rclpy.create_node("test_helper_collector")
        node.create_subscription(msg_cls, args.topic, received.append, _qos_profile(args))
        deadline = time.monotonic() + args.timeout
        try:
            while len(received) < args.count and time.monotonic() < deadline:
                rclpy.spin_once(node, timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):  # SIGINT: print what has come
            pass
        for msg in received[: args.count]:
            print(json.dumps(message_to_dict(msg)), flush=True)
    finally:
        rclpy.try_shutdown()
    if len(received) < args.count:
        print(f"received {len(received)} of {args.count} message(s) on {args.topic} "
              f"in {args.timeout} s (ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')})",
              file=sys.stderr)
        return _RC_TIMEOUT
    return 0


def _main_lifecycle(args: argparse.Namespace) -> int:
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    rclpy.init()
    try:
        node = rclpy.create_node("test_helper_lifecycle")
        deadline = time.monotonic() + args.timeout

        def call(srv_type: Any, name: str, request: Any) -> Any:
            client = node.create_client(srv_type, f"{args.node}/{name}")
            if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise TimeoutError(f"service {args.node}/{name} not available in {args.timeout} s")
            future = client.call_async(request)
            rclpy.spin_until_future_complete(node, future, timeout_sec=max(0.1, deadline - time.monotonic()))
            if not future.done():
                raise TimeoutError(f"no answer from {args.node}/{name} in {args.timeout} s")
            return future.result()

        success = None
        if args.transition:
            ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
                   "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
                   "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}  # fmt: skip
            request = ChangeState.Request()
            request.transition.id = ids[args.transition]
            success = bool(call(ChangeState, "change_state", request).success)
        state = call(GetState, "get_state", GetState.Request()).current_state.label
        print(json.dumps({"success": success, "state": state}), flush=True)
    finally:
        rclpy.try_shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lc = sub.add_parser("lifecycle")
    lc.add_argument("node", help="full node name, e.g. /ns/pose_distribution")
    lc.add_argument("transition", nargs="?", help="configure | activate | deactivate | cleanup | shutdown")
    lc.add_argument("--timeout", type=float, default=60.0, help="seconds")
    for name in ("pub", "echo"):
        p = sub.add_parser(name)
        p.add_argument("type", help="message type, e.g. pose_distribution/msg/PoseDistribution")
        p.add_argument("topic")
        p.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
        p.add_argument("--durability", choices=("volatile", "transient_local"), default="volatile")
        p.add_argument("--depth", type=int, default=10)
        if name == "pub":
            p.add_argument("--rate", type=float, default=10.0, help="Hz (message on stdin, JSON)")
        else:
            p.add_argument("--count", type=int, default=1)
            p.add_argument("--timeout", type=float, default=30.0, help="seconds")
    args = parser.parse_args(argv)
    if args.command == "lifecycle":
        return _main_lifecycle(args)
    return _main_pub(args) if args.command == "pub" else _main_echo(args)


if __name__ == "__main__":
    sys.exit(main())
