"""pip install for the two Python packages of the ``pose_distribution`` ROS 2 package.

On a machine with ROS 2, ``colcon build`` uses ``package.xml`` / ``CMakeLists.txt`` (ament_cmake,
because the interfaces in ``msg/`` need rosidl); this file is what ``scripts/setup.sh`` uses to
put ``pose_core`` and ``pose_distribution_ros`` into the bare-machine venv, and it lays the data
files out the way an ament_python package would (``share/pose_distribution/...``).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "pose_distribution"

setup(
    # Not "pose_distribution": that distribution name belongs to the generated message package.
    name="pose_distribution_python",
    version="0.1.0",
    description="Distributions over 3D rotations from camera images (Image2Sphere), as a ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pose_core", "pose_core.*", "pose_distribution_ros", "pose_distribution_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + PACKAGE + "/msg", glob("msg/*.msg")),
    ],
    entry_points={
        "console_scripts": [
            "pose_distribution_node = pose_distribution_ros.node:main",
            "pose_distribution_lifecycle_node = pose_distribution_ros.node:main_lifecycle",
            "pose_distribution_bag = pose_distribution_ros.bag:main",
            "pose_distribution_demo = pose_core.demo:main",
        ],
    },
)
