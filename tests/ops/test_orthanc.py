"""A real PACS round trip: Orthanc stores a CT series, pushes it to the node, gets the MR series
back with its uncertainty map (Parametric Map) and QA image (Secondary Capture) in the same study.

Orthanc cannot bind to loopback only, so it, the node and the checks run inside a private
network namespace with only loopback (``unshare -n``; needs root, as in CI).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodekit import private_network_problem, run_in_private_network

SCRIPT = Path(__file__).with_name("orthanc_roundtrip.py")
CT_CLASS, MR_CLASS = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
PM_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.7"


def test_orthanc_pushes_ct_and_receives_synthetic_mr_map_and_qa_image(
    tiny_checkpoint: Path, tmp_path: Path, require_peer: Callable[[bool, str], None]
) -> None:
    reason = private_network_problem("Orthanc")
    require_peer(reason is None, reason or "")   # under CI a missing Orthanc or namespace fails
    report = run_in_private_network(SCRIPT, str(tmp_path), str(tiny_checkpoint))
    assert report["jobs"] == [{"state": "done", "reason": None}]
    # nothing else arrived: the CT's series and exactly the series the node wrote, each instance
    # once, all in the CT's study, and no other study, series or instance anywhere in Orthanc
    series = {s["series_uid"]: s for s in report["series"]}
    assert len(series) == len(report["series"]) == len(report["written"]) + 1, report["series"]
    ct_series = [s for s in report["series"] if s["series_uid"] not in report["written"]]
    assert len(ct_series) == 1 and ct_series[0]["instances"] == report["ct_instances"]
    for series_uid, sop_uids in report["written"].items():
        assert series[series_uid]["sop_uids"] == sop_uids, series_uid
    written = sum(len(sops) for sops in report["written"].values())
    assert report["statistics"] == {"CountStudies": 1, "CountSeries": len(series),
                                    "CountInstances": report["ct_instances"] + written}
    by_class = {s["tags"]["0008,0016"]: s for s in report["series"]}
    assert len(by_class) == len(series)                              # one series per SOP class
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
