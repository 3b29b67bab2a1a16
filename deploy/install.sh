#!/usr/bin/env bash
# Install ct2mri-node and everything its tests need on a fresh Debian 12 machine.
# Creates ./.venv (Python 3.11+) and installs the Debian peers the tests talk to (dcmtk, orthanc with
# its DICOMweb plugin, redis, postgresql, plastimatch, dcm2niix, chromium with its driver), and
# ./.venv-opentps with OpenTPS, a treatment planning system the real-reader test loads our MR with.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    need=""
    command -v storescu >/dev/null 2>&1 || need="$need dcmtk"
    command -v Orthanc >/dev/null 2>&1 || need="$need orthanc"
    command -v ip >/dev/null 2>&1 || need="$need iproute2"
    command -v redis-server >/dev/null 2>&1 || need="$need redis-server"   # broker of the scale-out tests
    [ -x /usr/lib/postgresql/15/bin/initdb ] || need="$need postgresql"   # job store of the scale-out tests (job_store.url)
    command -v plastimatch >/dev/null 2>&1 || need="$need plastimatch"     # real-reader tests
    command -v dcm2niix >/dev/null 2>&1 || need="$need dcm2niix"           # real-reader tests
    command -v chromium >/dev/null 2>&1 || need="$need chromium"           # status page browser test
    command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
    [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need="$need orthanc-dicomweb"   # DICOMweb destination test
    if [ -n "$need" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
    fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: that version is a local CPU wheel; an unpinned torch (or MONAI
# installed first) would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
# OpenTPS (opentps-core, Apache-2.0) in a virtual environment of its own: it pins numpy 1.26 and
# pulls pymedphys, pandas and scikit-image, which must not move the node's pins. Only the test
# uses it (tests/dicom/test_real_readers.py runs its reader there); ~1 min, ~1.1 GB.
[ -x .venv-opentps/bin/python ] || "$PY" -m venv .venv-opentps
.venv-opentps/bin/python -m pip install -q --upgrade pip
.venv-opentps/bin/python -m pip install -q "opentps-core==${OPENTPS_VERSION:-2.0.0}" matplotlib
echo "ct2mri-node installed in $(pwd)/.venv (OpenTPS for the tests in $(pwd)/.venv-opentps)"
