"""pose_distribution_ros: the ROS 2 adapter around :mod:`pose_core` (messages in, distributions out).

The library holds the maths; this package holds only ROS plumbing.
"""
