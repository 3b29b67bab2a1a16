"""A real PACS round trip: Orthanc stores a CT series, pushes it to the node, gets the MR series back.

Orthanc cannot bind to loopback only, so it, the node and the checks run inside a private
network namespace with only loopback (``unshare -n``; needs root, as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("orthanc_roundtrip.py")


def _namespace_ok() -> str | None:
    """None when a private network namespace can be made, else why not."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (deploy/install.sh installs Debian's orthanc package)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a private network namespace (needs root): {probe.stderr.strip()}"
    return None


def test_orthanc_pushes_ct_and_receives_synthetic_mr(tiny_checkpoint: Path, tmp_path: Path) -> None:
    reason = _namespace_ok()
    if reason is not None:
        pytest.skip(reason)
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
           sys.executable, str(SCRIPT), str(tmp_path), str(tiny_checkpoint)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TCP_NODELAY": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["jobs"] == [{"state": "done", "reason": None}]
    by_modality = {s["modality"]: s for s in report["series"]}
    assert set(by_modality) == {"CT", "MR"}
    ct, mr = by_modality["CT"], by_modality["MR"]
    assert ct["instances"] == mr["instances"] == report["ct_instances"]
    tags = mr["tags"]
    assert tags["0020,000d"] == report["study_uid"]                 # same study
    assert tags["0020,0052"] == ct["tags"]["0020,0052"]             # same frame of reference
    assert tags["0008,001c"] == "YES"                               # SyntheticData
    assert "DERIVED" in tags["0008,0008"]                           # ImageType
    assert "SYNTHETIC" in tags["0008,103e"].upper()                 # series description
