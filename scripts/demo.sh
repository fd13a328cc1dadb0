#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo on the embedded default: a simulated camera, the node
# with checkpoints/demo.pt and a scoring listener, over real rclpy. Extra arguments go to the demo
# (python -m pose_distribution_ros.demo --help); --se3: the SE(3) demo (checkpoints/se3_duck.pt, the
# object moving in 3D with detection boxes, translation scored too).
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/setup.sh"
cd "$REPO"
exec "$REPO/.venv/bin/python" -m pose_distribution_ros.demo "$@"
