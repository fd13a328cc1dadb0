#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo on the embedded default. Extra arguments go to the demo.
set -Eeuo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/setup.sh"
exec "$REPO/.venv/bin/python" -m pose_core.demo "$@"
