"""A real DICOMweb archive: the node STOW-RSes its MR series into Orthanc (DICOMweb plugin,
basic authentication) and the series is read back over QIDO-RS in the CT's study.

Orthanc cannot bind to loopback only, so it, the node and the checks run inside a private
network namespace with only loopback (``unshare -n``; needs root, as in CI).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodekit import private_network_problem, run_in_private_network

SCRIPT = Path(__file__).with_name("orthanc_dicomweb.py")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def test_mr_series_lands_in_the_ct_study_over_stow_rs(
    tiny_checkpoint: Path, tmp_path: Path, require_peer: Callable[[bool, str], None]
) -> None:
    reason = private_network_problem("Orthanc") or (
        None if PLUGIN.is_file() else f"{PLUGIN} is missing (deploy/install.sh installs Debian's orthanc-dicomweb package)")
    require_peer(reason is None, reason or "")   # under CI a missing Orthanc, plugin or namespace fails
    report = run_in_private_network(SCRIPT, str(tmp_path), str(tiny_checkpoint))
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
    assert "dicomweb-secret" not in report["stderr"]                                            # never logged
