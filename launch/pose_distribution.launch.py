"""Launch the pose_distribution node with config/pose_distribution.yaml.

    ros2 launch pose_distribution pose_distribution.launch.py \
        image:=/camera/color/image_raw camera_info:=/camera/color/camera_info \
        depth:=/camera/aligned_depth_to_color/image_raw checkpoint:=/path/to/demo.pt \
        use_detections:=true detections:=/detector/detections

Needs a ROS 2 install (launch and launch_ros are not on PyPI; on the bare-machine venv start the
node directly, see docs/ROS2_BARE_MACHINE.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("pose_distribution")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=os.path.join(share, "config", "pose_distribution.yaml"),
            description="Parameters of the node",
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value=os.path.join(share, "checkpoints", "demo.pt"),
            description="Model checkpoint (the node exits if it is missing)",
        ),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("image", default_value="image", description="Input image topic"),
        DeclareLaunchArgument("camera_info", default_value="camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("depth", default_value="depth", description="Aligned depth image topic"),
        DeclareLaunchArgument(
            "use_detections",
            default_value="false",
            description="true: one distribution per vision_msgs/Detection2DArray box on 'detections'",
        ),
        DeclareLaunchArgument("detections", default_value="detections", description="Detection2DArray topic"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
    ]
    node = Node(
        package="pose_distribution",
        executable="pose_distribution_node",
        name="pose_distribution",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "checkpoint": LaunchConfiguration("checkpoint"),
                "device": LaunchConfiguration("device"),
                "use_detections": ParameterValue(LaunchConfiguration("use_detections"), value_type=bool),
            },
        ],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
            ("depth", LaunchConfiguration("depth")),
            ("detections", LaunchConfiguration("detections")),
        ],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
