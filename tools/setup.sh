#!/usr/bin/env bash
# Sets up a fresh machine for htouch: the Debian packages in tools/apt-packages.txt, a virtual
# environment in .venv, and htouch installed into it (editable, with the test, hardware, viewer, URL and ONNX extras).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < tools/apt-packages.txt
if (( ${#missing[@]} )); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.htouch-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setup: installing htouch and its dependencies into .venv (first time: a few minutes)"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,hardware,viewer,url,onnx]' 2>&1 | { grep -v "^WARNING: Location" || true; }
    .venv/bin/python -c "import htouch, torch, torchaudio, zarr, imagecodecs, mujoco, av, rerun, s3fs, onnx, onnxruntime"
    touch "$stamp"
fi
