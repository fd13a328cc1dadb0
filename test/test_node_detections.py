"""The node with ``use_detections``: vision_msgs/Detection2DArray in, one distribution per box out.

Real rclpy, separate processes (see ``test_node.py``). The node runs the shipped checkpoint
(``checkpoints/demo.pt``, or ``$POSE_DISTRIBUTION_CHECKPOINT``). The scene is two renders pasted
side by side into one wide image, each centred 120 px off the optical axis (31 deg of viewing-ray
angle with f = 200 px): a crop centred on such a patch is exactly what a camera turned towards
it sees, so the object's true rotation in the camera frame is ``R_ray @ R_render``. The node
must undo that 31 deg turn (the crop rotation correction) to get within 15 deg of the truth.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # independent of pytest's import mode
from ros_helpers import collect_messages, require_ros, start_publisher  # noqa: E402
from test_node import (  # noqa: E402
    ADD,
    DELETE,
    DETECTION3D_ARRAY,
    FRAME,
    IMAGE,
    START_TIMEOUT_S,
    RunningNode,
    _start_node,
    _wait_for_output,
    env,  # noqa: F401 - fixture
    wait_for_markers,
)

require_ros("rclpy", "pose_distribution.msg", "tf2_msgs.msg", "sensor_msgs.msg", "vision_msgs.msg")

REPO = Path(__file__).resolve().parent.parent
TRAINED = Path(os.environ.get("POSE_DISTRIBUTION_CHECKPOINT", REPO / "checkpoints" / "demo.pt"))
DETECTIONS = "vision_msgs/msg/Detection2DArray"
ARRAY = "pose_distribution/msg/PoseDistributionArray"
PATCH = 160  # side of each pasted render (px)
WIDTH, HEIGHT = 3 * PATCH, PATCH
FOCAL = 200.0
#: Box centres (u, v): the patches span columns 40-199 and 280-439 of the 480 px wide image.
CENTERS = ((119.5, 79.5), (359.5, 79.5))
OBJECT = "det_object"

pytestmark = pytest.mark.skipif(not TRAINED.is_file(), reason=f"needs the trained checkpoint {TRAINED}")


def _k() -> np.ndarray:
    return np.array([[FOCAL, 0.0, (WIDTH - 1) / 2], [0.0, FOCAL, (HEIGHT - 1) / 2], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def scene() -> dict[str, Any]:
    """A 480x160 image with a cube and a tetrahedron, their camera-frame rotations and symmetry sets."""
    import torch

    from pose_core import crops, so3
    from pose_core.data import Camera, Renderer, get_shape

    renderer = Renderer(camera=Camera(width=PATCH, height=PATCH))
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    rotations = so3.random_rotations(2, generator=torch.Generator().manual_seed(11), dtype=torch.float64).numpy()
    truths, equivalents = [], []
    for name, R_render, (cu, cv) in zip(("cube", "tet"), rotations, CENTERS, strict=True):
        shape = get_shape(name)
        u0, v0 = round(cu - (PATCH - 1) / 2), round(cv - (PATCH - 1) / 2)
        image[v0 : v0 + PATCH, u0 : u0 + PATCH] = renderer.render(shape.mesh, R_render)
        R_ray = crops.crop_ray_rotation(_k(), (cu, cv)).numpy()
        truths.append(R_ray @ R_render)
        equivalents.append(R_ray @ shape.equivalent_rotations(R_render))
    return {"image": image, "truths": truths, "equivalents": equivalents}


def _header(sec: int) -> dict[str, Any]:
    return {"stamp": {"sec": sec, "nanosec": 5}, "frame_id": FRAME}


def _image_msg(image: np.ndarray, sec: int) -> dict[str, Any]:
    h, w, _ = image.shape
    return {"header": _header(sec), "height": h, "width": w, "encoding": "rgb8", "is_bigendian": 0,
            "step": 3 * w, "data": image.ravel().tolist()}  # fmt: skip


def _camera_info(sec: int) -> dict[str, Any]:
    return {"header": _header(sec), "width": WIDTH, "height": HEIGHT, "distortion_model": "plumb_bob",
            "k": _k().ravel().tolist()}  # fmt: skip


def _detection(center: tuple[float, float], size: float, score: float, det_id: str) -> dict[str, Any]:
    return {
        "id": det_id,
        "bbox": {"center": {"position": {"x": center[0], "y": center[1]}, "theta": 0.0}, "size_x": size,
                 "size_y": size},
        "results": [{"hypothesis": {"class_id": "thing", "score": score}}],
    }  # fmt: skip


def _detections(sec: int, detections: list[dict[str, Any]]) -> dict[str, Any]:
    return {"header": _header(sec), "detections": detections}


@pytest.fixture(scope="module")
def det_node(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:  # noqa: F811
    from ros_helpers import stop_process

    log = tmp_path_factory.mktemp("det_node") / "node.log"
    proc, ns = _start_node(
        env, log, f"checkpoint:={TRAINED}", "device:=cpu", "max_rate_hz:=0.0", f"object_frame_id:={OBJECT}",
        "use_detections:=true", "detection_crop_scale:=1.2", "max_detections:=2", "num_samples:=20",
    )  # fmt: skip
    running = RunningNode(proc, ns, log)
    try:
        running.wait_for_log("ready:", timeout_s=START_TIMEOUT_S)
        assert "detections on" in running.text()
        yield running
    finally:
        rc = stop_process(proc, timeout_s=15.0)
        assert rc == 0, f"node did not shut down cleanly on SIGINT (rc {rc}):\n{running.text()[-4000:]}"


def _publishers(node: RunningNode, env: dict[str, str], scene: dict[str, Any], sec: int, dets: list) -> Any:  # noqa: F811
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(
        start_publisher("sensor_msgs/msg/CameraInfo", node.topic("camera_info"), _camera_info(sec), env)
    )
    stack.enter_context(start_publisher(IMAGE, node.topic("image"), _image_msg(scene["image"], sec), env))
    stack.enter_context(start_publisher(DETECTIONS, node.topic("detections"), _detections(sec, dets), env))
    return stack


def _error_deg(quaternion: dict[str, float], equivalents: np.ndarray) -> float:
    import torch

    from pose_core import metrics, so3

    q = torch.tensor([[quaternion[k] for k in "xyzw"]], dtype=torch.float64)
    return math.degrees(
        metrics.nearest_equivalent_error(so3.quat_to_matrix(q), [torch.as_tensor(equivalents)])[0].item()
    )


def test_one_corrected_distribution_per_detection(det_node: RunningNode, env: dict[str, str], scene) -> None:  # noqa: F811
    sec = 500
    # The tetrahedron scores higher, so it comes first; 133 px ~ the object's extent in its 160 px render.
    dets = [_detection(CENTERS[0], 133.0, 0.6, "cube 1"), _detection(CENTERS[1], 133.0, 0.9, "")]
    def corrected(m: dict) -> bool:  # computed after camera_info arrived: the translations follow the box rays
        ds = m["distributions"]
        return len(ds) == 2 and all(
            abs(d["mode"]["position"]["x"] / d["mode"]["position"]["z"] - (cu - (WIDTH - 1) / 2) / FOCAL) < 1e-6
            for d, (cu, _) in zip(ds, (CENTERS[1], CENTERS[0]), strict=True))

    with _publishers(det_node, env, scene, sec, dets):
        array = _wait_for_output(det_node, env, sec, "distributions", ARRAY, timeout_s=60.0, accept=corrected)
        tf = collect_messages("tf2_msgs/msg/TFMessage", "/tf", env, count=1, timeout_s=30.0, depth=100)[0]
    dists = array["distributions"]
    assert [d["object_frame_id"] for d in dists] == [f"{OBJECT}_1", f"{OBJECT}_cube_1"]
    assert all(d["header"]["frame_id"] == FRAME and d["header"]["stamp"]["sec"] == sec for d in dists)
    errors = [_error_deg(d["mode"]["orientation"], scene["equivalents"][i]) for d, i in zip(dists, (1, 0), strict=True)]
    assert max(errors) < 15.0, f"symmetry-aware errors {errors} deg"
    # Each translation points along its own box's viewing ray (nominal distance, no depth).
    for d, (cu, cv) in zip(dists, (CENTERS[1], CENTERS[0]), strict=True):
        p = d["mode"]["position"]
        assert p["x"] / p["z"] == pytest.approx((cu - (WIDTH - 1) / 2) / FOCAL, rel=1e-6)
        assert p["y"] / p["z"] == pytest.approx((cv - (HEIGHT - 1) / 2) / FOCAL, abs=1e-9)
    children = {t["child_frame_id"] for t in tf["transforms"]}
    assert children == {f"{OBJECT}_1", f"{OBJECT}_cube_1"}, tf


def test_uncorrected_crop_would_be_wrong(scene) -> None:
    """Guard for the test above: the 31 deg ray turn alone is more than the 15 deg it allows."""
    import torch

    from pose_core import crops, so3

    for (cu, cv), R in zip(CENTERS, scene["truths"], strict=True):
        R_ray = crops.crop_ray_rotation(_k(), (cu, cv))
        angle = math.degrees(so3.geodesic_distance(torch.eye(3, dtype=torch.float64), R_ray).item())
        assert angle > 30.0
        assert math.degrees(so3.geodesic_distance(torch.as_tensor(R), R_ray.T @ torch.as_tensor(R)).item()) > 30.0


def test_detection_outside_the_image_is_logged_and_the_rest_served(
    det_node: RunningNode,
    env: dict[str, str],  # noqa: F811
    scene,
) -> None:
    sec = 510
    start = len(det_node.text())
    dets = [_detection((5000.0, 80.0), 100.0, 0.9, "far"), _detection(CENTERS[0], 133.0, 0.5, "cube")]
    with _publishers(det_node, env, scene, sec, dets):
        text = det_node.wait_for_log("bad detection", timeout_s=40.0, start=start)
        array = _wait_for_output(det_node, env, sec, "distributions", ARRAY, timeout_s=40.0)
    assert "detection 0 (id 'far') skipped" in text and "outside" in text, text[-2000:]
    assert [d["object_frame_id"] for d in array["distributions"]] == [f"{OBJECT}_cube"]
    assert det_node.proc.poll() is None


def test_empty_detections_publish_an_empty_array(det_node: RunningNode, env: dict[str, str], scene) -> None:  # noqa: F811
    sec = 520
    with _publishers(det_node, env, scene, sec, []):
        array = _wait_for_output(det_node, env, sec, "distributions", ARRAY, timeout_s=40.0)
    assert array["distributions"] == []


def test_more_boxes_than_max_detections_keeps_the_best(det_node: RunningNode, env: dict[str, str], scene) -> None:  # noqa: F811
    sec = 530
    dets = [_detection(CENTERS[0], 133.0, s, f"d{i}") for i, s in enumerate((0.1, 0.8, 0.3))]
    start = len(det_node.text())
    with _publishers(det_node, env, scene, sec, dets):
        array = _wait_for_output(det_node, env, sec, "distributions", ARRAY, timeout_s=40.0)
    assert [d["object_frame_id"] for d in array["distributions"]] == [f"{OBJECT}_d1", f"{OBJECT}_d2"]
    assert "keeping the 2 highest-scoring" in det_node.text()[start:]


def test_detections3d_and_markers_per_box_cleared_when_a_box_disappears(
    det_node: RunningNode, env: dict[str, str], scene, tmp_path: Path  # noqa: F811
) -> None:
    from ros_helpers import recording

    both = [_detection(CENTERS[0], 133.0, 0.9, "a"), _detection(CENTERS[1], 133.0, 0.5, "b")]
    # one subscriber all along, as RViz would be (the node draws markers only while someone listens)
    with recording("visualization_msgs/msg/MarkerArray", det_node.output("markers"), env, tmp_path) as arrays:
        with _publishers(det_node, env, scene, 540, both):
            arr = _wait_for_output(det_node, env, 540, "detections", DETECTION3D_ARRAY, timeout_s=40.0)
            wait_for_markers(det_node, env, 540)
        with _publishers(det_node, env, scene, 541, both[:1]):  # b disappears
            wait_for_markers(det_node, env, 541)
    assert [d["id"] for d in arr["detections"]] == ["a", "b"]
    assert {r["hypothesis"]["class_id"] for d in arr["detections"] for r in d["results"]} == {"thing"}

    def stamped(sec: int) -> list[dict[str, Any]]:
        return [m for a in arrays for m in a["markers"] if m["header"]["stamp"]["sec"] == sec]

    assert {(f"{OBJECT}_a", ADD), (f"{OBJECT}_b", ADD)} <= {(m["ns"], m["action"]) for m in stamped(540)}
    later = stamped(541)
    b = [m for m in later if m["ns"] == f"{OBJECT}_b"]
    assert sorted(m["id"] for m in b) == [0, 1, 2, 3] and all(m["action"] == DELETE for m in b)  # deleted once
    assert {m["action"] for m in later if m["ns"] == f"{OBJECT}_a"} == {ADD}


def test_detection_boxes_order_and_frame_suffix() -> None:
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    from pose_distribution_ros.messages import detection_boxes

    def det(score: float | None, det_id: str, x: float) -> Detection2D:
        d = Detection2D(id=det_id)
        d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y = x, 2.0, 3.0, 4.0
        if score is not None:
            h = ObjectHypothesisWithPose()
            h.hypothesis.score = score
            d.results = [h]
        return d

    from pose_distribution_ros.messages import frame_suffix

    boxes = detection_boxes(
        Detection2DArray(detections=[det(None, "", 1.0), det(0.7, "a/b c", 2.0), det(0.7, "", 3.0)])
    )
    assert [b.id for b in boxes] == ["", "a/b c", ""]  # message order; the estimator sorts by score (test_pipeline)
    assert [frame_suffix(b, i) for i, b in enumerate(boxes)] == ["0", "a_b_c", "2"]
    assert boxes[1].center == (2.0, 2.0) and boxes[1].size == (3.0, 4.0) and boxes[0].score == 0.0

