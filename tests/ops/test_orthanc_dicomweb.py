"""A real DICOMweb archive: the node STOW-RSes its MR series into Orthanc (DICOMweb plugin,
basic authentication) and the series is read back over QIDO-RS in the CT's study.

Orthanc cannot bind to loopback only, so it, the node and the checks run inside a private
network namespace with only loopback (``unshare -n``; needs root, as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SCRIPT = Path(__file__).with_name("orthanc_dicomweb.py")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _namespace_ok() -> str | None:
    """None when Orthanc with DICOMweb can run in a private network namespace, else why not."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (deploy/install.sh installs Debian's orthanc package)"
    if not PLUGIN.is_file():
        return f"{PLUGIN} is missing (deploy/install.sh installs Debian's orthanc-dicomweb package)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot create a private network namespace (needs root): {probe.stderr.strip()}"
    return None


def test_mr_series_lands_in_the_ct_study_over_stow_rs(
    tiny_checkpoint: Path, tmp_path: Path, require_peer: Callable[[bool, str], None]
) -> None:
    reason = _namespace_ok()
    require_peer(reason is None, reason or "")   # under CI a missing Orthanc, plugin or namespace fails
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
           sys.executable, str(SCRIPT), str(tmp_path), str(tiny_checkpoint)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "TCP_NODELAY": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["jobs"] == [{"state": "done", "reason": None, "deliveries": [["cloud", "done"]]}]
    ct = [s for s in report["series"] if s["modality"] == "CT"]
    outputs = {s["series_uid"]: s for s in report["series"] if s["modality"] != "CT"}
    assert len(ct) == 1 and len(ct[0]["instances"]) == report["ct_instances"]
    # every series the node wrote (the MR series and any other output) is in the CT's study,
    # each instance exactly once, and nothing else arrived
    assert set(outputs) == set(report["written"]) and report["written"]
    for series_uid, instances in report["written"].items():
        assert sorted(outputs[series_uid]["instances"]) == sorted(instances)
    mr = [s for s in outputs.values() if s["modality"] == "MR" and "SYNTHETIC" in str(s["description"]).upper()]
    assert mr and len(mr[0]["instances"]) == report["ct_instances"]
    assert "dicomweb-secret" not in run.stderr                                            # never logged
