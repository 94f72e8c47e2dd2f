#!/usr/bin/env bash
# Download into .whl/ (at the repository root, ignored by git) the wheels that
# scripts/device_check.sh installs on a bare GPU machine: what its image lacks of our
# dependencies (the image has torch, numpy, scipy, numba, scikit-learn, safetensors, typer, rich,
# requests, filelock, anyio, h11, click, prometheus-client, ...; see the device README's
# KINDS.md).  Python 3.12, manylinux x86-64, no dependencies resolved: each one is named.
#
#   bash scripts/fetch_device_wheels.sh
#
# Then carry it: the device `run` names `.whl` in `carry` (device_check.sh installs what does
# not import already).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl

# The versions this project is tested with (pip list here, 2026-11-30).
WHEELS=(
    soundfile==0.14.0 cffi==2.0.0 pycparser==3.0          # WAV/FLAC I/O (libsndfile inside)
    librosa==0.11.0 audioread==3.1.0 pooch==1.9.0 decorator==5.2.1 soxr==1.1.0
    platformdirs==4.14.8                                    # settings' default cache folder
    starlette==1.10.0 uvicorn==0.54.0                       # `waveglow serve` and its tests
)
for wheel in "${WHEELS[@]}"; do
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "$wheel"
done
ls -la .whl
du -sh .whl
