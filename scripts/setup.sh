#!/usr/bin/env bash
# Sets up a fresh machine for napari-pathviz: the system libraries napari needs for an OpenGL
# context under Xvfb, then a virtual environment (.venv) with the package and its test tools.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
  libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libxkbcommon0)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch is pinned to the CPU wheel: a bare "torch" requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[all,testing]"
# Test-only reference for the Grad-CAM peer-agreement tests: pytorch-grad-cam (`grad-cam`) lists
# torchvision as a requirement, but torchvision does not install beside our pinned CPU torch, and
# GradCAM/GradCAMPlusPlus never call it (tests/test_peer_agreement.py fakes its import). So grad-cam
# and ttach come without dependencies; opencv-python-headless, which its modules import, normally.
.venv/bin/python -m pip install -q --no-deps "grad-cam==1.5.7" "ttach==0.0.3"
.venv/bin/python -m pip install -q opencv-python-headless
