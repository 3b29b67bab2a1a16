"""Inside a private network namespace (loopback only): Orthanc as a real PACS, our node beside it.

Run by test_orthanc.py as ``unshare -n sh -c 'ip link set lo up && exec python THIS WORKDIR CKPT'``.
Starts Orthanc with a JSON config (authentication on, remote access off), uploads a generated
CT series through its REST API, has Orthanc push the series to the node
(``POST /modalities/ct2mri/store``), waits for the node's job, and prints as JSON what Orthanc
then holds in the CT's study, for the test to check. Fixed ports are fine: the namespace is ours.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "node"))
from nodekit import make_ct_series  # noqa: E402

from ct2mri_node.config import parse_config  # noqa: E402
from ct2mri_node.model.translator import TranslationSettings, Translator  # noqa: E402
from ct2mri_node.node import Node  # noqa: E402

USER, PASSWORD = "ops", "roundtrip-secret"
HTTP, DICOM, NODE = 8042, 4242, 11112
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def rest(method: str, path: str, body: bytes | str | None = None) -> Any:
    """One authenticated call to Orthanc's REST API; the decoded JSON answer."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(f"http://127.0.0.1:{HTTP}{path}", data=data, method=method,
                                 headers={"Authorization": AUTH})
    with urllib.request.urlopen(req, timeout=60) as rsp:
        raw = rsp.read()
    return json.loads(raw) if raw else None


def start_orthanc(work: Path, **extra: Any) -> subprocess.Popen[bytes]:
    """Orthanc with authentication on and remote access off; ``extra`` adds or replaces config keys
    (e.g. ``Plugins`` and ``DicomWeb`` for the DICOMweb test, orthanc_dicomweb.py)."""
    config = {
        "Name": "ct2mri-roundtrip", "StorageDirectory": str(work / "orthanc-db"),
        "IndexDirectory": str(work / "orthanc-db"), "HttpPort": HTTP, "DicomPort": DICOM,
        "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD}, "Plugins": [],
        "DicomModalities": {"ct2mri": ["CT2MRI", "127.0.0.1", NODE]},
        **extra,
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = (work / "orthanc.log").open("wb")
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TCP_NODELAY": "1"})
    for _ in range(200):
        try:
            rest("GET", "/system")
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("Orthanc did not start; see " + str(work / "orthanc.log"))


def start_node(work: Path, checkpoint: str) -> Node:
    config = parse_config({
        "node": {"ae_title": "CT2MRI", "port": NODE, "bind_address": "127.0.0.1"},
        "calling_aes": [{"ae_title": "ORTHANC", "host": "127.0.0.1"}],
        "destinations": [{"name": "pacs", "type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": DICOM}],
        "spool_dir": "spool", "series": {"quiet_period_s": 0.3, "min_slices": 8},
        "worker": {"max_attempts": 2, "backoff_initial_s": 0.2, "poll_interval_s": 0.1},
        "model": {"checkpoint": checkpoint, "device": "cpu", "steps": 2, "samples": 3},
        "outputs": {"uncertainty_map": True, "qa_capture": True},   # Parametric Map and Secondary Capture
    }, work, "roundtrip")
    node = Node(config, translator=Translator(checkpoint, TranslationSettings(steps=2, samples=3, device="cpu")))
    node.start()
    return node


def wait_job(node: Node, timeout_s: float = 120) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        jobs = node.store.list() if node.store is not None else []
        if jobs and all(j.state in ("done", "failed") for j in jobs):
            return jobs
        time.sleep(0.1)
    raise SystemExit("the node's job did not finish in time")


def study_report(study_uid: str) -> dict[str, Any]:
    """What Orthanc holds in the study: per series, modality, its SOP Instance UIDs and one
    instance's tags; and what Orthanc holds in all (``statistics``), so nothing else goes unseen."""
    (study,) = [r["ID"] for r in rest("POST", "/tools/lookup", study_uid) if r["Type"] == "Study"]
    series = []
    for s in rest("GET", f"/studies/{study}/series"):
        instances = rest("GET", f"/series/{s['ID']}/instances")
        tags = rest("GET", f"/instances/{instances[0]['ID']}/tags?short")
        series.append({"modality": s["MainDicomTags"].get("Modality"), "instances": len(instances),
                       "sop_uids": sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances),
                       "series_uid": s["MainDicomTags"]["SeriesInstanceUID"], "tags": tags})
    stats = rest("GET", "/statistics")
    return {"study_uid": study_uid, "series": series,
            "statistics": {k: stats[k] for k in ("CountStudies", "CountSeries", "CountInstances")}}


def written_by(node: Node, jobs: list[Any]) -> dict[str, list[str]]:
    """What the node wrote for its jobs (MR series and companions): series UID -> SOP Instance UIDs."""
    import pydicom

    written: dict[str, list[str]] = {}
    for job in jobs:
        for path in sorted((node.spool.output / str(job.id)).glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            written.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
    return {uid: sorted(sops) for uid, sops in written.items()}


def main() -> int:
    work, checkpoint = Path(sys.argv[1]), sys.argv[2]
    orthanc = start_orthanc(work)
    node = None
    try:
        ct = make_ct_series(work / "ct", seed=21, slices=12)
        for path in ct:
            rest("POST", "/instances", path.read_bytes())
        study_uid = rest("GET", f"/instances/{rest('GET', '/instances')[0]}/tags?short")["0020,000d"]
        (ct_series,) = rest("GET", "/series")
        node = start_node(work, checkpoint)
        rest("POST", "/modalities/ct2mri/store", json.dumps({"Resources": [ct_series], "Synchronous": True}))
        jobs = wait_job(node)
        report = study_report(study_uid)
        report["jobs"] = [{"state": j.state, "reason": j.reason} for j in jobs]
        report["ct_instances"] = len(ct)
        report["written"] = written_by(node, jobs)
        print(json.dumps(report))
    finally:
        if node is not None:
            node.stop()
        orthanc.terminate()
        orthanc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
