"""Launch the pose_distribution node with config/pose_distribution.yaml.

    ros2 launch pose_distribution pose_distribution.launch.py \
        image:=/camera/color/image_raw camera_info:=/camera/color/camera_info \
        depth:=/camera/aligned_depth_to_color/image_raw checkpoint:=/path/to/demo.pt \
        use_detections:=true detections:=/detector/detections

``lifecycle:=true`` starts the managed node instead (pose_distribution_lifecycle_node): with
``autostart:=true`` (the default) launch sends it ``configure`` and, once inactive, ``activate``;
with ``autostart:=false`` it waits for a lifecycle manager or ``ros2 lifecycle set``.

Needs a ROS 2 install (launch and launch_ros are not on PyPI; on the bare-machine venv start the
node directly, see docs/ROS2_BARE_MACHINE.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

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
        DeclareLaunchArgument("lifecycle", default_value="false", description="true: the managed (lifecycle) node"),
        DeclareLaunchArgument(
            "autostart", default_value="true", description="lifecycle: configure and activate it at launch"
        ),
    ]
    lifecycle = LaunchConfiguration("lifecycle")
    common = dict(
        package="pose_distribution",
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
    node = Node(executable="pose_distribution_node", condition=UnlessCondition(lifecycle), **common)
    managed = LifecycleNode(executable="pose_distribution_lifecycle_node", condition=IfCondition(lifecycle), **common)
    autostart = IfCondition(
        PythonExpression(["'", lifecycle, "'.lower() == 'true' and '", LaunchConfiguration("autostart"),
                          "'.lower() == 'true'"])
    )  # fmt: skip
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(managed), transition_id=Transition.TRANSITION_CONFIGURE
        ),
        condition=autostart,
    )
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=managed,
            start_state="configuring",  # only after configure, not after a deactivate
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(managed), transition_id=Transition.TRANSITION_ACTIVATE
                    )
                )
            ],
        ),
        condition=autostart,
    )
    return LaunchDescription([*arguments, node, managed, activate, configure])
