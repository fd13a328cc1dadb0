#!/usr/bin/env bash
# Prepare, where pip reaches the index, what bench/gpu_check.sh installs offline on a GPU machine:
# the wheels its python (3.12, with a CUDA torch, e3nn, numpy, scipy, onnx...) lacks, into ./.whl,
# and the EGL libraries for headless rendering into ./.gl (Debian packages, unpacked there).
#   bash bench/gpu_wheels.sh            # then carry .whl and .gl with the working tree
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p .whl .gl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .whl healpy==1.20.1 moderngl==5.13.0 glcontext==3.0.0 astropy pyerfa astropy-iers-data
mkdir -p /tmp/amd64/partial
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${o[@]}" update -qq
(cd .gl && apt-get "${o[@]}" download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 libegl-mesa0 \
    libgl1-mesa-dri libgbm1 libwayland-server0 libxcb-randr0 libdrm2 libexpat1 >/dev/null)
du -sh .whl .gl
