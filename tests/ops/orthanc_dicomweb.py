"""Inside a private network namespace (loopback only): Orthanc with its DICOMweb plugin as an
archive that the node reaches only over DICOMweb (STOW-RS), with basic authentication.

Run by test_orthanc_dicomweb.py as
``unshare -n sh -c 'ip link set lo up && exec python THIS WORKDIR CKPT'``. Uploads a generated
CT series to Orthanc (REST), sends the same series to the node (C-STORE), waits for the node's
job, then reads the CT's study back over QIDO-RS with dicomweb-client and prints it as JSON.
Fixed ports are fine: the namespace is ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "node"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import orthanc_roundtrip as roundtrip  # noqa: E402
from nodekit import make_ct_series, send  # noqa: E402
from orthanc_roundtrip import HTTP, NODE, PASSWORD, USER, rest, wait_job  # noqa: E402

from ct2mri_node.config import parse_config
from ct2mri_node.model.translator import TranslationSettings, Translator
from ct2mri_node.node import Node

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def start_orthanc(work: Path) -> subprocess.Popen[bytes]:
    """The round trip's Orthanc, with the DICOMweb plugin at /dicom-web/."""
    return roundtrip.start_orthanc(work, Name="ct2mri-dicomweb", Plugins=[PLUGIN],
                                   DicomWeb={"Enable": True, "Root": "/dicom-web/"})


def start_node(work: Path, checkpoint: str) -> Node:
    os.environ["CT2MRI_TEST_STOW_PASSWORD"] = PASSWORD
    config = parse_config({
        "node": {"ae_title": "CT2MRI", "port": NODE, "bind_address": "127.0.0.1"},
        "destinations": [{"name": "cloud", "type": "dicomweb", "url": f"http://127.0.0.1:{HTTP}/dicom-web",
                          "auth": {"type": "basic", "username": USER, "password_env": "CT2MRI_TEST_STOW_PASSWORD"}}],
        "spool_dir": "spool", "series": {"quiet_period_s": 0.3, "min_slices": 8},
        "worker": {"max_attempts": 2, "backoff_initial_s": 0.2, "poll_interval_s": 0.1},
    }, work, "dicomweb")
    node = Node(config, translator=Translator(checkpoint, TranslationSettings(steps=2, device="cpu")))
    node.start()
    return node


def qido_study(study_uid: str) -> dict[str, Any]:
    """The study as QIDO-RS shows it: per series, modality, description and instance UIDs."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    web = DICOMwebClient(f"http://127.0.0.1:{HTTP}/dicom-web",
                         session=create_session_from_user_pass(USER, PASSWORD))
    series: dict[str, dict[str, Any]] = {}
    for found in web.search_for_instances(study_instance_uid=study_uid,
                                          fields=["Modality", "SeriesDescription", "ImageType"]):
        get = (lambda tag: (found.get(tag, {}).get("Value") or [None])[0])   # noqa: B023
        entry = series.setdefault(get("0020000E"), {"series_uid": get("0020000E"), "modality": get("00080060"),
                                                    "description": get("0008103E"), "instances": []})
        entry["instances"].append(get("00080018"))
    return {"study_uid": study_uid, "series": list(series.values())}


def main() -> int:
    work, checkpoint = Path(sys.argv[1]), sys.argv[2]
    orthanc = start_orthanc(work)
    node = None
    try:
        ct = make_ct_series(work / "ct", seed=23, slices=12)
        for path in ct:
            rest("POST", "/instances", path.read_bytes())
        study_uid = rest("GET", f"/instances/{rest('GET', '/instances')[0]}/tags?short")["0020,000d"]
        node = start_node(work, checkpoint)
        send(node.port, ct)
        jobs = wait_job(node)
        report = qido_study(study_uid)
        report["jobs"] = [{"state": j.state, "reason": j.reason,
                           "deliveries": [[d.destination, d.state] for d in j.deliveries]} for j in jobs]
        report["ct_instances"] = len(ct)
        written: dict[str, list[str]] = {}     # what the node wrote for each job: series -> instances
        for job in jobs:
            for path in sorted((node.spool.output / str(job.id)).glob("*.dcm")):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                written.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
        report["written"] = written
        print(json.dumps(report))
    finally:
        if node is not None:
            node.stop()
        orthanc.terminate()
        orthanc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
