"""The node with an SE(3) checkpoint (SpyroPose): detections in, joint rotation-translation distributions out.

Real rclpy, separate processes (see ``test_node.py``; its node helpers and fixtures are reused). The
node runs a tiny *untrained* SpyroPose (the SMALL config of ``test_spyropose.py``: 64 px crops, 2
pyramid levels) written to a temporary directory, with ``use_detections:=true``, on 640x480 images
(a robot camera's size) of noise. An untrained model's distribution is arbitrary, but where it can
be is not: every pose it gives lies in the translation box around the box's initial translation
(``pinhole.translation_from_box``: along the box centre's viewing ray at depth
``f * apparent_size_m / side``; in-plane ``xy_scale * radius_m / z`` of ``x / z``, ``exp(+-logz_half)``
in depth), which is what the translation checks here use; they fail for the nominal-distance
translation of a rotation model (1 m along the ray) and for a box the node would not follow.

Camera: f = 500 px, principal point at the image centre; the object of the checkpoint has
``radius_m = 0.075`` and ``apparent_size_m = 0.1``, so a 100 px box is ~0.5 m away.

The first fixture to run (``without_info``) serves frames before any camera_info has reached the
node (it keeps the last one for good): the estimator then assumes ``f = 640 px`` (the image's longer
side) at the centre, says so in a note that the node logs as an error at most once per
``log_throttle_s`` (5 s in ``config/pose_distribution.yaml``), and the frames are still served.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import collect_messages, recording, require_ros, start_publisher, stop_process  # noqa: E402
from test_node import (  # noqa: E402
    FRAME,
    IMAGE,
    MARKER_ARRAY,
    POSE_DISTRIBUTION,
    START_TIMEOUT_S,
    RunningNode,
    _start_node,
    _wait_for_output,
    env,  # noqa: F401 - fixture
)
from test_node_detections import _detection, _detections, _header, _image_msg  # noqa: E402

require_ros("rclpy", "pose_distribution.msg", "tf2_msgs.msg", "sensor_msgs.msg", "vision_msgs.msg",
            "visualization_msgs.msg")  # fmt: skip

WIDTH, HEIGHT = 640, 480
FOCAL = 500.0
CX, CY = (WIDTH - 1) / 2, (HEIGHT - 1) / 2
OBJECT = "se3_object"
ARRAY = "pose_distribution/msg/PoseDistributionArray"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
NUM_SAMPLES = 20
#: The checkpoint's object and translation box (test_spyropose.SMALL, ObjectModel of its _model).
RADIUS_M, APPARENT_M, XY_SCALE, LOGZ_HALF = 0.075, 0.1, 1.0, 0.4
#: (centre (u, v), side px) of the valid box in two frames: different rays (A left-low, B right-high), depths.
BOX_A, BOX_B = ((200.0, 380.0), 100.0), ((480.0, 100.0), 80.0)
#: The valid box of the frames without camera_info: small (far) and off-centre, so that its translation box
#: with the assumed f = 640 px and the one with the real f = 500 px do not overlap (in x / z).
BOX_FAR = ((40.0, 400.0), 25.0)
#: A detector's garbage: zero size, and the highest score (so it is the first one tried).
JUNK = ((320.0, 240.0), 0.0)
#: Rotation fields of PoseDistribution before sample_positions was added (what existing readers know).
OLD_FIELDS = ["header", "object_frame_id", "mode", "covariance", "samples", "sample_weights", "entropy",
              "mode_resolution", "max_log_density", "modes"]  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def se3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_spyropose import SMALL, _model

    from pose_core.model import save_checkpoint

    model = _model(seed=0)
    assert model.config.levels == SMALL["levels"] == 2 and model.input_size == 64
    assert (model.object.radius_m, model.object.apparent_size_m) == (RADIUS_M, APPARENT_M)
    assert (model.config.xy_scale, model.config.logz_half) == (XY_SCALE, LOGZ_HALF)
    return save_checkpoint(model, tmp_path_factory.mktemp("se3_ckpt") / "spyropose.pt")


@pytest.fixture(scope="module")
def se3_node(env: dict[str, str], se3_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
             ) -> Iterator[RunningNode]:  # fmt: skip
    log = tmp_path_factory.mktemp("se3_node") / "node.log"
    proc, ns = _start_node(
        env, log, f"checkpoint:={se3_checkpoint}", "device:=cpu", "max_rate_hz:=0.0", f"object_frame_id:={OBJECT}",
        "use_detections:=true", "max_detections:=2", f"num_samples:={NUM_SAMPLES}",
    )  # fmt: skip
    running = RunningNode(proc, ns, log)
    try:
        running.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        yield running
    finally:
        rc = stop_process(proc, timeout_s=15.0)
        assert rc == 0, f"node did not shut down cleanly on SIGINT (rc {rc}):\n{running.text()[-4000:]}"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _camera_info(sec: int) -> dict[str, Any]:
    return {"header": _header(sec), "width": WIDTH, "height": HEIGHT, "distortion_model": "plumb_bob",
            "k": [FOCAL, 0.0, CX, 0.0, FOCAL, CY, 0.0, 0.0, 1.0]}  # fmt: skip


def _boxes(sec: int, good: tuple[tuple[float, float], float]) -> dict[str, Any]:
    return _detections(sec, [_detection(JUNK[0], JUNK[1], 0.99, "junk"), _detection(good[0], good[1], 0.5, "good")])


def _publishers(node: RunningNode, env: dict[str, str], image: np.ndarray, sec: int,  # noqa: F811
                good: tuple[tuple[float, float], float], info: bool = True) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if info:
        stack.enter_context(start_publisher("sensor_msgs/msg/CameraInfo", node.topic("camera_info"),
                                            _camera_info(sec), env))  # fmt: skip
    stack.enter_context(start_publisher(IMAGE, node.topic("image"), _image_msg(image, sec), env))
    stack.enter_context(start_publisher(DETECTIONS, node.topic("detections"), _boxes(sec, good), env))
    return stack


def _frame_of(d: dict[str, Any], sec: int) -> bool:
    return d["header"]["stamp"]["sec"] == sec


@pytest.fixture(scope="module")
def without_info(se3_node: RunningNode, env: dict[str, str], image: np.ndarray, tmp_path_factory) -> dict[str, Any]:  # noqa: F811
    """Frames of stamp 600 served before the node has any camera_info (so this runs first: ``outputs`` needs it)."""
    sec, start = 600, len(se3_node.text())
    t0 = time.monotonic()
    with recording(POSE_DISTRIBUTION, se3_node.output("distribution"), env, tmp_path_factory.mktemp("rec")) as dists:
        with _publishers(se3_node, env, image, sec, BOX_FAR, info=False):
            first = _wait_for_output(se3_node, env, sec, timeout_s=90.0)
            time.sleep(4.0)
    log = se3_node.text()[start:]
    return {"first": first, "dists": [d for d in dists if _frame_of(d, sec)], "log": log,
            "elapsed_s": time.monotonic() - t0}  # fmt: skip


@pytest.fixture(scope="module")
def outputs(se3_node: RunningNode, env: dict[str, str], image: np.ndarray, without_info,  # noqa: F811
            tmp_path_factory) -> dict[str, Any]:  # fmt: skip
    """Outputs of frames 610 (valid box A) and 611 (valid box B), both with the junk box and camera_info;
    for 610 the distributions, sample arrays and markers of several frames, recorded together."""
    out: dict[str, Any] = {}
    rec = tmp_path_factory.mktemp("rec")
    sec = 610
    # camera_info first (frames 609): the node keeps the last good one, so every frame of 610 is served with it.
    # Without this, frames of 610 paired before the camera_info arrived (f = 640 assumed) can pass the
    # in-box checks too (the box spans x0.67..x1.49 in depth) and differ from those served with it (seen
    # under a loaded CI machine).
    with _publishers(se3_node, env, image, sec - 1, BOX_A):
        _wait_for_output(se3_node, env, sec - 1, timeout_s=60.0, accept=_uses_info(BOX_A))
        time.sleep(1.0)  # camera_info is published at 10 Hz
    start = len(se3_node.text())
    with contextlib.ExitStack() as recs:
        dists = recs.enter_context(recording(POSE_DISTRIBUTION, se3_node.output("distribution"), env, rec))
        arrays = recs.enter_context(recording("geometry_msgs/msg/PoseArray", se3_node.output("samples"), env, rec))
        marks = recs.enter_context(recording(MARKER_ARRAY, se3_node.output("markers"), env, rec))
        with _publishers(se3_node, env, image, sec, BOX_A):
            # frames paired before the camera_info arrived assume f = 640: take those with f = 500
            out["distribution"] = _wait_for_output(se3_node, env, sec, timeout_s=60.0, accept=_uses_info(BOX_A))
            out["array"] = _wait_for_output(se3_node, env, sec, "distributions", ARRAY, timeout_s=40.0,
                                            accept=lambda a: bool(a["distributions"])
                                            and _uses_info(BOX_A)(a["distributions"][0]))  # fmt: skip
            out["pose"] = _wait_for_output(se3_node, env, sec, "pose", "geometry_msgs/msg/PoseWithCovarianceStamped",
                                           accept=lambda p: _in_box(_position(p["pose"]["pose"]), *BOX_A, FOCAL))
            out["tf"] = collect_messages("tf2_msgs/msg/TFMessage", "/tf", env, count=3, timeout_s=30.0, depth=100)
            time.sleep(2.0)  # a few more frames for the recordings
        out["log"] = se3_node.text()[start:]
    out["dists"] = [d for d in dists if _frame_of(d, sec) and _uses_info(BOX_A)(d)]  # camera_info used
    out["sample_arrays"] = [a for a in arrays if _frame_of(a, sec)]
    out["markers"] = [m for m in marks if m["markers"] and m["markers"][0]["header"]["stamp"]["sec"] == sec]
    with _publishers(se3_node, env, image, sec + 1, BOX_B):
        out["distribution_b"] = _wait_for_output(se3_node, env, sec + 1, timeout_s=40.0, accept=_uses_info(BOX_B))
    return out


# --------------------------------------------------------------------------- geometry


def _position(pose: dict[str, Any]) -> np.ndarray:
    p = pose["position"]
    return np.array([p["x"], p["y"], p["z"]])


def _box_coordinates(t: np.ndarray, center: tuple[float, float], side: float, focal: float) -> np.ndarray:
    """``xi`` ``(..., 3)`` of translations ``t`` ``(..., 3)`` in the translation box of a box (``center``, ``side``)
    seen with focal length ``focal`` at the image centre (the module docstring); the box is ``|xi| <= 1``."""
    t = np.asarray(t, dtype=np.float64)
    z_hat = focal * APPARENT_M / side
    ray = np.array([(center[0] - CX) / focal, (center[1] - CY) / focal])
    half_xy = XY_SCALE * RADIUS_M / z_hat
    xy = (t[..., :2] / t[..., 2:3] - ray) / half_xy
    return np.concatenate([xy, (np.log(t[..., 2:3]) - math.log(z_hat)) / LOGZ_HALF], axis=-1)


def _in_box(t: np.ndarray, center: tuple[float, float], side: float, focal: float, slack: float = 1e-6) -> bool:
    # slack in depth: allows translation_from_box to differ slightly from z = f * apparent / side (e.g. range)
    xi = _box_coordinates(t, center, side, focal)
    return bool(np.all(np.abs(xi[..., :2]) <= 1 + slack) and np.all(np.abs(xi[..., 2]) <= 1 + max(slack, 0.1)))


def _uses_info(box: tuple[tuple[float, float], float]) -> Any:
    return lambda d: _in_box(_position(d["mode"]), *box, FOCAL)


def _norm(q: dict[str, float]) -> float:
    return math.sqrt(sum(q[k] ** 2 for k in "xyzw"))


def _quat(q: dict[str, float]) -> np.ndarray:
    return np.array([q[k] for k in "xyzw"])


def _points(points: list[dict[str, float]]) -> np.ndarray:
    return np.array([[p["x"], p["y"], p["z"]] for p in points]).reshape(-1, 3)


# --------------------------------------------------------------------------- start-up


def test_startup_logs_the_model(se3_node: RunningNode) -> None:
    text = se3_node.text()
    loaded = [line for line in text.splitlines() if "loaded " in line]
    assert len(loaded) == 1, text[-3000:]
    assert "SpyroPose, SE(3)" in loaded[0] and "2 levels" in loaded[0] and "trained on 64 px" in loaded[0], loaded
    assert "lmax" not in loaded[0]  # an Image2Sphere attribute
    # config/pose_distribution.yaml has temporal_filter: true, which an SE(3) model does not use
    assert "temporal filter applies to rotation models only" in text
    assert "input 64 px" in text and "detections on" in text


# --------------------------------------------------------------------------- no camera_info


def test_without_camera_info_frames_are_served_with_an_assumed_focal_length(without_info: dict[str, Any]) -> None:
    first = without_info["first"]
    assert len(without_info["dists"]) >= 2, "the frames after the first one are served too"
    for d in [first, *without_info["dists"]]:
        t = _position(d["mode"])
        assert _in_box(t, *BOX_FAR, focal=float(WIDTH)), _box_coordinates(t, *BOX_FAR, float(WIDTH))
        assert _in_box(_points(d["sample_positions"]), *BOX_FAR, focal=float(WIDTH))
    # negative control: with the real focal length (500 px) the box is elsewhere
    assert not _in_box(_position(first["mode"]), *BOX_FAR, FOCAL)


def test_without_camera_info_the_note_is_logged_throttled(without_info: dict[str, Any]) -> None:
    text = without_info["log"]
    lines = [line for line in text.splitlines() if "no intrinsics K" in line]
    assert lines, text[-3000:]
    assert "assuming f = 640 px" in lines[0]
    # the rotation models' warning (crops not turned, translations without direction) is not said of this one
    assert "translations have no direction" not in text, text[-3000:]
    frames = len(without_info["dists"])
    allowed = 1 + int(without_info["elapsed_s"] // 5.0)  # log_throttle_s = 5
    assert len(lines) <= allowed < frames, (len(lines), allowed, frames)


# --------------------------------------------------------------------------- with camera_info


def test_translation_from_the_box_not_the_nominal_distance(outputs: dict[str, Any]) -> None:
    a, b = _position(outputs["distribution"]["mode"]), _position(outputs["distribution_b"]["mode"])
    for t, box in ((a, BOX_A), (b, BOX_B)):
        assert _in_box(t, *box, FOCAL), _box_coordinates(t, *box, FOCAL)
        assert abs(np.linalg.norm(t) - 1.0) > 0.2, f"{t}: the nominal distance (1 m), not the box's"
    # each box its own translation: A's is outside B's box and vice versa (different rays)
    assert not _in_box(a, *BOX_B, FOCAL) and not _in_box(b, *BOX_A, FOCAL)
    assert a[0] < 0 < b[0] and a[1] > 0 > b[1]  # left-low box A, right-high box B
    np.testing.assert_array_equal(_position(outputs["pose"]["pose"]["pose"]), a)


def test_covariance_symmetric_psd_with_rotation_translation_cross_terms(outputs: dict[str, Any]) -> None:
    d = outputs["distribution"]
    for cov in (d["covariance"], outputs["pose"]["pose"]["covariance"]):
        C = np.asarray(cov, dtype=np.float64).reshape(6, 6)
        np.testing.assert_allclose(C, C.T, rtol=0, atol=1e-12 * np.abs(C).max())
        eig = np.linalg.eigvalsh(C)
        assert eig.min() >= -1e-9 * eig.max(), eig
        assert np.all(np.diag(C) > 0)
        corr = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
        cross = np.abs(corr[:3, 3:]).max()
        assert cross > 1e-3, f"rotation-translation correlations all ~0 (max {cross}): not a joint distribution"
    np.testing.assert_array_equal(d["covariance"], outputs["pose"]["pose"]["covariance"])
    # the translation block is the model's, not the nominal one's (metres along a 1 m ray)
    assert np.sqrt(np.asarray(d["covariance"]).reshape(6, 6)[2, 2]) < 0.5


def test_sample_positions_one_per_sample_spread_in_the_box(outputs: dict[str, Any]) -> None:
    for d in outputs["dists"] + [outputs["distribution"]]:
        assert len(d["samples"]) == len(d["sample_positions"]) == len(d["sample_weights"]) == NUM_SAMPLES
        P = _points(d["sample_positions"])
        assert np.all(np.isfinite(P)) and _in_box(P, *BOX_A, FOCAL)
        assert np.all(P.std(axis=0) > 1e-4), f"positions not spread: {P}"
        assert len(np.unique(P, axis=0)) > NUM_SAMPLES // 2


def test_samples_pose_array_is_at_the_sample_positions(outputs: dict[str, Any]) -> None:
    """~/samples of a frame (matched to its ~/distribution by the sampled rotations): sample i at
    ``sample_positions[i]`` with rotation ``samples[i]``."""
    dists, arrays = outputs["dists"], outputs["sample_arrays"]
    assert dists and arrays, (len(dists), len(arrays))
    matched = 0
    for a in arrays:
        Q = np.array([_quat(p["orientation"]) for p in a["poses"]])
        same = [d for d in dists if np.array_equal(np.array([_quat(q) for q in d["samples"]]), Q)]
        if not same:
            continue
        matched += 1
        P = np.array([_position(p) for p in a["poses"]])
        np.testing.assert_array_equal(P, _points(same[0]["sample_positions"]))
        assert not np.allclose(P, _position(same[0]["mode"])), "all samples at the mode's translation"
    assert matched >= 1, "no ~/samples array matched a recorded ~/distribution"


def test_markers_draw_each_sample_at_its_position(outputs: dict[str, Any]) -> None:
    matched = 0
    for m in outputs["markers"]:
        by_id = {(mk["ns"], mk["id"]): mk for mk in m["markers"]}
        samples = by_id.get((f"{OBJECT}_good", 1))
        if samples is None:
            continue
        starts = _points(samples["points"])[0::2]  # per sample 3 axes (start, end): starts = its position
        for d in outputs["dists"]:
            P = _points(d["sample_positions"])
            if len(starts) == 3 * len(P) and np.allclose(starts, np.repeat(P, 3, axis=0), rtol=0, atol=1e-12):
                matched += 1
                mode = by_id[(f"{OBJECT}_good", 0)]
                np.testing.assert_allclose(_points(mode["points"])[0::2], np.tile(_position(d["mode"]), (3, 1)))
                break
    assert matched >= 1, f"no marker array with sample triads at a recorded frame's sample positions " \
                         f"({len(outputs['markers'])} arrays)"


def test_tf_equals_the_mode(outputs: dict[str, Any]) -> None:
    d = outputs["distribution"]
    transforms = [t for m in outputs["tf"] for t in m["transforms"] if t["header"]["stamp"]["sec"] == 610]
    assert transforms, outputs["tf"]
    for tf in transforms:
        assert tf["header"]["frame_id"] == FRAME and tf["child_frame_id"] == f"{OBJECT}_good"
        tr = tf["transform"]["translation"]
        np.testing.assert_array_equal([tr["x"], tr["y"], tr["z"]], _position(d["mode"]))
        q, m = _quat(tf["transform"]["rotation"]), _quat(d["mode"]["orientation"])
        assert abs(q @ m) == pytest.approx(1.0, abs=1e-9)


def test_junk_box_rejected_the_valid_one_served(outputs: dict[str, Any], se3_node: RunningNode) -> None:
    (only,) = outputs["array"]["distributions"]
    assert only["object_frame_id"] == f"{OBJECT}_good"
    assert outputs["distribution"]["object_frame_id"] == f"{OBJECT}_good"
    text = outputs["log"]
    assert "bad detection: detection 0 (id 'junk') skipped" in text and "positive size" in text, text[-3000:]
    assert "inference failed" not in text, text[-3000:]
    assert se3_node.proc.poll() is None


def test_rotation_fields_read_as_before(outputs: dict[str, Any]) -> None:
    """Readers of the rotation fields see what a rotation model gives them: the field order is
    unchanged (sample_positions is appended), unit quaternions, weights summing to 1, modes with
    masses, an entropy below the uniform one, the finest rotation cells' resolution."""
    from pose_distribution.msg import PoseDistribution

    from pose_core import grids

    fields = list(PoseDistribution.get_fields_and_field_types())
    assert fields == [*OLD_FIELDS, "sample_positions"]
    d = outputs["distribution"]
    assert _norm(d["mode"]["orientation"]) == pytest.approx(1.0, abs=1e-9)
    assert all(_norm(q) == pytest.approx(1.0, abs=1e-9) for q in d["samples"])
    assert min(d["sample_weights"]) > 0 and sum(d["sample_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert d["modes"] and all(_norm(m["orientation"]) == pytest.approx(1.0, abs=1e-6) for m in d["modes"])
    masses = [m["probability_mass"] for m in d["modes"]]
    assert all(0 <= x <= 1 + 1e-6 for x in masses) and sum(masses) <= 1 + 1e-5
    assert masses == sorted(masses, reverse=True)
    assert math.isfinite(d["entropy"]) and d["entropy"] <= math.log(math.pi**2) + 1e-3
    assert math.isfinite(d["max_log_density"])
    assert d["mode_resolution"] == pytest.approx(grids.resolution(1), rel=1e-6)  # levels 2: finest level 1
    assert d["header"] == _header(610)
