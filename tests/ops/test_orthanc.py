"""A real PACS round trip: Orthanc stores a CT series, pushes it to the node, gets the MR series
back with its uncertainty map (Parametric Map) and QA image (Secondary Capture) in the same study.

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

SCRIPT = Path(__file__).with_name("orthanc_roundtrip.py")
CT_CLASS, MR_CLASS = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
PM_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.7"


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


def test_orthanc_pushes_ct_and_receives_synthetic_mr_map_and_qa_image(
    tiny_checkpoint: Path, tmp_path: Path, require_peer: Callable[[bool, str], None]
) -> None:
    reason = _namespace_ok()
    require_peer(reason is None, reason or "")   # under CI a missing Orthanc or namespace fails
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
           sys.executable, str(SCRIPT), str(tmp_path), str(tiny_checkpoint)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TCP_NODELAY": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["jobs"] == [{"state": "done", "reason": None}]
    by_class = {s["tags"]["0008,0016"]: s for s in report["series"]}
    assert set(by_class) == {CT_CLASS, MR_CLASS, PM_CLASS, SC_CLASS}   # all in the CT's study
    ct, mr = by_class[CT_CLASS], by_class[MR_CLASS]
    assert ct["instances"] == mr["instances"] == report["ct_instances"]
    pm, sc = by_class[PM_CLASS]["tags"], by_class[SC_CLASS]["tags"]
    assert by_class[PM_CLASS]["instances"] == by_class[SC_CLASS]["instances"] == 1
    assert pm["0020,0052"] == ct["tags"]["0020,0052"]                # the map: the CT's frame of reference
    assert pm["0008,001c"] == sc["0008,001c"] == "YES"              # SyntheticData (Explicit VR: Orthanc reads it)
    assert pm["0008,103e"].startswith("SD MAP - SYNTHETIC MR")
    assert sc["0008,103e"].startswith("QA - SYNTHETIC MR - NOT FOR DIAGNOSIS")
    assert sc["0028,0301"] == "YES"                                  # BurnedInAnnotation
    tags = mr["tags"]
    assert tags["0020,000d"] == report["study_uid"]                 # same study
    assert tags["0020,0052"] == ct["tags"]["0020,0052"]             # same frame of reference
    assert tags["0008,001c"] == "YES"                               # SyntheticData
    assert "DERIVED" in tags["0008,0008"]                           # ImageType
    assert "SYNTHETIC" in tags["0008,103e"].upper()                 # series description
