#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/setup.sh"
cd "$REPO"
# The set-up installs rclpy and builds the interfaces, so ROS tests must run, never skip.
export POSE_DISTRIBUTION_REQUIRE_ROS=1
exec "$REPO/.venv/bin/python" -m pytest test/ "$@"
