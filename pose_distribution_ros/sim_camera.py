"""Simulated camera: rendered images of a demo object at known, smoothly moving rotations.

Publishes, at ``--rate`` Hz, with one stamp per frame:

* ``/sim/image`` (sensor_msgs/Image, rgb8, ``qos_profile_sensor_data``): the object rendered by
  :class:`pose_core.data.Renderer` (object origin at ``(0, 0, distance)`` in the optical frame);
* ``/sim/camera_info`` (sensor_msgs/CameraInfo): the renderer's intrinsics;
* ``/sim/truth`` (geometry_msgs/PoseStamped, reliable): the true pose, same stamp as the image,
  so a listener can match it to the node's output by stamp.

The rotation turns at ``--speed`` deg/s about a fixed tilted axis, then about a second axis, so
every view direction comes by in a minute or so.

    python -m pose_distribution_ros.sim_camera [--shape cube] [--rate 5] [--size 224]

Its SE(3) sibling (the object moving in 3D, with detection boxes): :mod:`pose_distribution_ros.sim_scene`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import rclpy
import torch
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from pose_core import so3
from pose_core.trajectory import rotation_at  # the demo trajectory, pure (also the temporal benchmark's)
from pose_distribution_ros.image_conversion import numpy_to_image

__all__ = ["RELIABLE_50", "SimCamera", "camera_info_msg", "pose_stamped_msg", "rotation_at", "main", "spin"]

FRAME = "sim_camera_optical"
#: QoS of the truth (and, in :mod:`pose_distribution_ros.sim_scene`, the detections).
RELIABLE_50 = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


def camera_info_msg(header: Any, K: np.ndarray, width: int, height: int) -> CameraInfo:
    """``sensor_msgs/CameraInfo`` of a distortion-free pinhole camera ``K`` ``(3, 3)``, ``width x height``."""
    K = np.asarray(K, np.float64)
    info = CameraInfo()
    info.header = header
    info.width, info.height = int(width), int(height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = K.ravel().tolist()
    info.r = np.eye(3).ravel().tolist()
    info.p = np.concatenate([K, np.zeros((3, 1))], axis=1).ravel().tolist()
    return info


def pose_stamped_msg(header: Any, R: np.ndarray, t: np.ndarray) -> PoseStamped:
    """``geometry_msgs/PoseStamped`` of the pose ``(R (3, 3), t (3,) m)`` (object -> camera)."""
    msg = PoseStamped()
    msg.header = header
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = so3.matrix_to_quat(torch.as_tensor(np.asarray(R, np.float64))).tolist()
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in t)
    return msg


class SimCamera(Node):
    """Renders and publishes frames on a timer (see the module docstring)."""

    def __init__(self, shape: str = "cube", rate_hz: float = 5.0, size: int = 224, speed_deg_s: float = 20.0):
        super().__init__("sim_camera")
        from pose_core.data import Camera, Renderer, get_shape  # needs EGL (Mesa)

        self._shape = get_shape(shape)
        self._camera = Camera(width=size, height=size)
        self._renderer = Renderer(camera=self._camera)
        self._speed = speed_deg_s
        self._pub_image = self.create_publisher(Image, "/sim/image", qos_profile_sensor_data)
        self._pub_info = self.create_publisher(CameraInfo, "/sim/camera_info", qos_profile_sensor_data)
        self._pub_truth = self.create_publisher(PoseStamped, "/sim/truth", RELIABLE_50)
        self._t0 = time.monotonic()
        self._renderer.render(self._shape.mesh, np.eye(3))  # create the GL context before the first tick
        self.create_timer(1.0 / rate_hz, self._tick)
        self.get_logger().info(f"rendering {shape} at {size}x{size}, {rate_hz} Hz on /sim/image")

    def _tick(self) -> None:
        R = rotation_at(time.monotonic() - self._t0, self._speed)
        stamp = self.get_clock().now().to_msg()
        image = numpy_to_image(self._renderer.render(self._shape.mesh, R), "rgb8")
        image.header.stamp, image.header.frame_id = stamp, FRAME
        info = camera_info_msg(image.header, self._camera.K, self._camera.width, self._camera.height)
        truth = pose_stamped_msg(image.header, R, (0.0, 0.0, float(self._camera.distance)))
        self._pub_truth.publish(truth)  # first, so the listener knows it before the result
        self._pub_info.publish(info)
        self._pub_image.publish(image)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="cube")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second")
    parser.add_argument("--size", type=int, default=224, help="image side (px)")
    parser.add_argument("--speed", type=float, default=20.0, help="rotation speed (deg/s)")
    argv = rclpy.utilities.remove_ros_args(sys.argv if args is None else args)[1:]
    opts = parser.parse_args(argv)
    return spin(lambda: SimCamera(opts.shape, opts.rate, opts.size, opts.speed), args)


def spin(make: Any, args: list[str] | None = None) -> int:
    """``rclpy.init``, spin the node ``make()`` builds until Ctrl-C or shutdown, clean up; returns 0."""
    rclpy.init(args=args)
    node = None
    try:
        node = make()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
