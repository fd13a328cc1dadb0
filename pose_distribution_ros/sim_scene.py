"""Simulated SE(3) scene: a camera watching an object move in 3D, with a detector's box per frame.

The SE(3) sibling of :mod:`pose_distribution_ros.sim_camera` (for SpyroPose checkpoints,
``python -m pose_distribution_ros.demo --se3``). Publishes, at ``--rate`` Hz, with one stamp per frame:

* ``/sim/image`` (sensor_msgs/Image, rgb8, ``qos_profile_sensor_data``): the whole camera image
  (``width x height`` of the checkpoint's training scenes, 640x480 by default), the object on black;
* ``/sim/camera_info`` (sensor_msgs/CameraInfo): its intrinsics (``fx = fy`` = the middle of the
  training focal range, the principal point at the image centre, no distortion);
* ``/sim/truth`` (geometry_msgs/PoseStamped, reliable): the true pose, position (m) and orientation;
* ``/sim/detections`` (vision_msgs/Detection2DArray, reliable): one ``Detection2D`` (id and class =
  the object's name, score 1) with a detector's box (below).

The object (:func:`checkpoint_object`) is the one the checkpoint was trained on: its training
config's ``data.shapes`` / ``data.meshes`` (``train.datasets.dataset_shapes``) scaled to
``data.scene.diameter_m`` (:func:`pose_core.data.scenes.scaled_mesh`).

Conventions: those of :mod:`pose_core.pinhole` (optical frame x right, y down, z forward; pixel
centres at integers; metres) and :mod:`pose_core.so3` (``p_cam = R @ p_obj + t``).

Trajectory (:func:`scene_pose_at`, pure): the rotation is :func:`pose_core.trajectory.rotation_at`
(as in the rotation-only demo); the depth oscillates smoothly between ``depth`` (0.4 and 1.2 m,
period 20 s) and the projected centre drifts across the view (periods 13 s and 17 s) over at most
80 % of the room the object's bounding sphere leaves at that depth, so it stays in view.

Detector box (:func:`pose_core.data.scenes.detector_box`): the tight box of the projected mesh
(:func:`pose_core.data.scenes.tight_box`), then the error of the training scenes
(:class:`pose_core.data.scenes.SceneConfig`: the centre moved by ``box_center_std`` times the box size
per axis, each side scaled by ``exp(N(0, box_size_log_std))``, both 3-sigma truncated, clipped to
the image), drawn from a generator seeded by ``(seed, frame number)``: the same boxes every run.

    python -m pose_distribution_ros.sim_scene --checkpoint checkpoints/se3_duck.pt [--rate 5] [--speed 20]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from pose_core import pinhole
from pose_core.data.scenes import detector_box, tight_box
from pose_core.trajectory import rotation_at
from pose_distribution_ros.image_conversion import numpy_to_image
from pose_distribution_ros.sim_camera import RELIABLE_50, camera_info_msg, pose_stamped_msg, spin

__all__ = ["DEPTH_RANGE_M", "SceneObject", "checkpoint_object", "scene_camera", "scene_pose_at",
           "SimScene", "main"]

FRAME = "sim_camera_optical"
#: Near and far depth (m) of the object's centre along the trajectory.
DEPTH_RANGE_M = (0.4, 1.2)
#: Periods (s) of the depth and of the drift across the view (u, v).
_PERIOD_Z, _PERIOD_U, _PERIOD_V = 20.0, 13.0, 17.0
#: Share of the in-view room the drift uses.
_DRIFT = 0.8
#: Renderer clip planes (m): those of the training scenes' renderers.
_NEAR, _FAR = 0.02, 20.0


@dataclass
class SceneObject:
    """The object of a checkpoint, as the simulator renders it.

    Attributes:
        name: its name (the training data's); shape: :class:`pose_core.data.shapes.Shape` (unit
            bounding sphere, with its symmetries); mesh: the mesh scaled to ``scene.diameter_m`` (m);
        vertices: ``(N, 3)`` float64 distinct vertices of ``mesh`` (for the tight box);
        scene: the training scenes' :class:`pose_core.data.scenes.SceneConfig` (camera size, focal
            range, object diameter, detector box error);
        source: where it came from (``"training config"`` or a fallback explanation).
    """

    name: str
    shape: Any
    mesh: Any
    vertices: np.ndarray
    scene: Any
    source: str

    @property
    def radius_m(self) -> float:
        return float(self.scene.diameter_m) / 2


def checkpoint_object(path: str | Path, fallback_shape: str = "cube") -> SceneObject:
    """The object checkpoint ``path`` was trained on (module docstring).

    From ``meta.train_config`` (or ``train_config``) ``data``: its one shape or mesh
    (``train.datasets.dataset_shapes``) and ``data.scene`` (default :class:`SceneConfig` when unset,
    with the diameter of the checkpoint's ``object.radius_m`` if it has one). A checkpoint without a
    training config (one saved directly, e.g. in tests): the SYMSOL shape of its ``object.name``, else
    ``fallback_shape``, at the diameter of its ``object.radius_m`` (0.15 m without one).
    ValueError when the training data holds more or less than one object."""
    import dataclasses

    from pose_core.data.scenes import SceneConfig, scaled_mesh
    from pose_core.data.shapes import SHAPE_NAMES, get_shape
    from pose_core.model import read_checkpoint

    payload = read_checkpoint(path)
    obj = payload.get("object") if isinstance(payload.get("object"), dict) else {}
    radius = obj.get("radius_m")
    raw = (payload.get("meta") or {}).get("train_config") or payload.get("train_config")
    if isinstance(raw, dict):
        from train.config import config_from_dict
        from train.datasets import dataset_shapes, rendered_source

        data = rendered_source(config_from_dict(raw).data)
        shapes = dataset_shapes(data)
        if len(shapes) != 1:
            raise ValueError(f"checkpoint {path} was trained on {len(shapes)} objects "
                             f"({[getattr(s, 'name', s) for s in shapes]}); the SE(3) scene shows one")
        shape = get_shape(shapes[0]) if isinstance(shapes[0], str) else shapes[0]
        scene = data.scene
        if scene is None:
            scene = SceneConfig() if radius is None else SceneConfig(diameter_m=2 * float(radius))
        source = "training config"
    else:
        name = obj.get("name")
        shape = get_shape(name if name in SHAPE_NAMES else fallback_shape)
        scene = SceneConfig() if radius is None else SceneConfig(diameter_m=2 * float(radius))
        source = (f"no training config in the checkpoint: SYMSOL {shape.name!r} at the checkpoint's object size "
                  f"({scene.diameter_m:g} m)")
    scene = dataclasses.replace(scene, randomization=None)
    mesh = scaled_mesh(shape.mesh, scene.diameter_m / 2)
    vertices = np.unique(np.asarray(mesh.positions, np.float64), axis=0)
    return SceneObject(shape.name, shape, mesh, vertices, scene, source)


def scene_camera(scene: Any) -> np.ndarray:
    """Intrinsics ``(3, 3)`` float64 of the simulated camera of ``scene`` (a :class:`SceneConfig`):
    ``fx = fy`` the middle of ``scene.focal``, the principal point at the image centre."""
    f = 0.5 * (float(scene.focal[0]) + float(scene.focal[1]))
    return np.array([[f, 0.0, (scene.width - 1) / 2], [0.0, f, (scene.height - 1) / 2], [0.0, 0.0, 1.0]])


def scene_pose_at(t: float, K: np.ndarray, width: int, height: int, radius_m: float,
                  depth: Sequence[float] = DEPTH_RANGE_M, speed_deg_s: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Pose ``(R (3, 3), t (3,))`` float64 (object -> camera, m) at time ``t`` s of the scene trajectory
    (module docstring) for a ``width x height`` camera ``K`` and an object of bounding radius ``radius_m``."""
    K = np.asarray(K, np.float64)
    lo, hi = (float(d) for d in depth)
    if not (0 < lo <= hi) or not radius_m > 0:
        raise ValueError(f"need 0 < depth low <= high and radius_m > 0, got depth {depth}, radius {radius_m}")
    z = 0.5 * (lo + hi) + 0.5 * (hi - lo) * math.sin(2 * math.pi * t / _PERIOD_Z)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    room_u = max(0.0, min(cx, width - 1 - cx) - fx * radius_m / z)
    room_v = max(0.0, min(cy, height - 1 - cy) - fy * radius_m / z)
    u = cx + _DRIFT * room_u * math.sin(2 * math.pi * t / _PERIOD_U)
    v = cy + _DRIFT * room_v * math.sin(2 * math.pi * t / _PERIOD_V + 1.0)
    return rotation_at(t, speed_deg_s), np.asarray(pinhole.backproject(K, u, v, z), np.float64)


class SimScene(Node):
    """Renders and publishes frames on a timer (see the module docstring)."""

    def __init__(self, checkpoint: str | Path, rate_hz: float = 5.0, speed_deg_s: float = 20.0, seed: int = 0,
                 fallback_shape: str = "cube"):
        super().__init__("sim_scene")
        from pose_core.data.render import Camera, Renderer  # needs EGL (Mesa)

        self.object = checkpoint_object(checkpoint, fallback_shape)
        sc = self.object.scene
        self._K = scene_camera(sc)
        self._width, self._height = int(sc.width), int(sc.height)
        self._renderer = Renderer(Camera(self._width, self._height, focal=float(self._K[0, 0]), near=_NEAR,
                                         distance=1.0, far=_FAR))
        self._speed, self._seed, self._frame = speed_deg_s, int(seed), 0
        self._pub_image = self.create_publisher(Image, "/sim/image", qos_profile_sensor_data)
        self._pub_info = self.create_publisher(CameraInfo, "/sim/camera_info", qos_profile_sensor_data)
        self._pub_truth = self.create_publisher(PoseStamped, "/sim/truth", RELIABLE_50)
        self._pub_det = self.create_publisher(Detection2DArray, "/sim/detections", RELIABLE_50)
        R0, t0 = scene_pose_at(0.0, self._K, self._width, self._height, self.object.radius_m)
        self._render(R0, t0)  # create the GL context before the first tick
        self._t0 = time.monotonic()
        self.create_timer(1.0 / rate_hz, self._tick)
        self.get_logger().info(
            f"rendering {self.object.name} ({sc.diameter_m:g} m; {self.object.source}) at "
            f"{self._width}x{self._height}, f = {self._K[0, 0]:g} px, depth {DEPTH_RANGE_M[0]:g}-"
            f"{DEPTH_RANGE_M[1]:g} m, {rate_hz} Hz on /sim/image with boxes on /sim/detections")

    def _render(self, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self._renderer.render(self.object.mesh, R, intrinsics=self._K, translation=t)

    def _tick(self) -> None:
        R, t = scene_pose_at(time.monotonic() - self._t0, self._K, self._width, self._height,
                             self.object.radius_m, speed_deg_s=self._speed)
        rng = np.random.default_rng([self._seed, self._frame])
        self._frame += 1
        box = detector_box(tight_box(self.object.vertices, R, t, self._K), self.object.scene, rng)
        stamp = self.get_clock().now().to_msg()
        image = numpy_to_image(self._render(R, t), "rgb8")
        image.header.stamp, image.header.frame_id = stamp, FRAME
        det = Detection2D()
        det.header = image.header
        det.id = self.object.name
        det.bbox.center.position.x, det.bbox.center.position.y = float(box[0]), float(box[1])
        det.bbox.size_x, det.bbox.size_y = float(box[2]), float(box[3])
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = self.object.name, 1.0
        det.results = [hyp]
        self._pub_truth.publish(pose_stamped_msg(image.header, R, t))  # first: the listener knows it first
        self._pub_info.publish(camera_info_msg(image.header, self._K, self._width, self._height))
        self._pub_det.publish(Detection2DArray(header=image.header, detections=[det]))
        self._pub_image.publish(image)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the SE(3) checkpoint whose object to show")
    parser.add_argument("--shape", default="cube", help="SYMSOL shape when the checkpoint has no training config")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second")
    parser.add_argument("--speed", type=float, default=20.0, help="rotation speed (deg/s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the detector box errors")
    argv = rclpy.utilities.remove_ros_args(sys.argv if args is None else args)[1:]
    opts = parser.parse_args(argv)
    return spin(lambda: SimScene(opts.checkpoint, opts.rate, opts.speed, opts.seed, opts.shape), args)


if __name__ == "__main__":
    raise SystemExit(main())
