#!/usr/bin/env bash
# Set up everything in ./.venv (idempotent: a second run takes seconds).
#
#   scripts/setup.sh
#
# 1. Debian packages for headless rendering (EGL) and building the ROS 2 interfaces, if missing;
# 2. .venv with the pinned requirements.txt (torch==2.13.0 CPU build; never a bare torch);
# 3. pose_core and pose_distribution_ros installed editable into .venv;
# 4. ROS 2 interfaces (msg/, tf2_msgs) built into .venv by scripts/setup_ros.sh.
set -Eeuo pipefail
log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/.venv
START=$(date +%s)
cd "$REPO"

# --- 1. system packages ----------------------------------------------------------------------
APT_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri cmake g++ python3-dev)
missing_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$p")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
  if ! command -v cmake >/dev/null || [ ${#missing_apt[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing_apt[*]} (run as root or: sudo apt-get install ${missing_apt[*]})"
    log "apt-get install ${missing_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
  fi
fi

# --- 2. venv and pinned requirements ----------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
quiet() { { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
STAMP=$VENV/.pose_distribution_requirements.sha256
HASH=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  log "pip install torch==2.13.0 (CPU build) and requirements.txt"
  "${PIP[@]}" install torch==2.13.0 2>&1 | quiet
  "${PIP[@]}" install -r requirements.txt 2>&1 | quiet
  mapfile -t NODEPS < <(sed -n 's/^# nodeps: //p' requirements.txt)
  "${PIP[@]}" install --no-deps "${NODEPS[@]}" 2>&1 | quiet
  "${PIP[@]}" install --no-deps --no-build-isolation -e . 2>&1 | quiet
  "$VENV/bin/python" -c "import torch, e3nn, healpy, pose_core" || die "imports failed after pip install"
  echo "$HASH" > "$STAMP"
else
  log "Python requirements up to date ($STAMP)"
fi

# --- 3. ROS 2 interfaces -----------------------------------------------------------------------
bash "$REPO/scripts/setup_ros.sh" "$VENV"
log "done in $(( $(date +%s) - START )) s"
