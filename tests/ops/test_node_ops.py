"""A running node's operations surface: metrics, health, readiness, provenance, QA preview."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
from nodekit import CaptureSCP, http_get, make_ct_series, samples, send, status_json, wait_for, write_config_file
from PIL import Image

from ct2mri_node.config import load_config
from ct2mri_node.jobs.outputs import output_dir
from ct2mri_node.model.translator import Translator
from ct2mri_node.node import Node
from ct2mri_node.ops.preview import preview_path


def write_config(tmp_path: Path, capture: CaptureSCP, qa_preview: bool = True) -> Path:
    """The node's config file: the capture SCP and a folder, short completion and retries, ops on."""
    return write_config_file(
        tmp_path,
        destinations=[capture.destination(), {"name": "local", "type": "folder", "path": "outbox"}],
        series={"quiet_period_s": 0.3, "min_slices": 8},
        worker={"max_attempts": 2, "backoff_initial_s": 0.2, "backoff_max_s": 0.5, "poll_interval_s": 0.1},
        ops={"http_port": 0, "qa_preview": qa_preview, "echo_timeout_s": 2},
    )


def test_metrics_health_provenance_preview_and_restart(
    translator: Translator, capture: CaptureSCP, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, capture)
    config = load_config(config_path)
    node = Node(config, translator=translator)
    node.start()
    try:
        assert node.health is not None
        port = node.health.port
        assert http_get(port, "/healthz") == (200, b'{"status": "ok"}')
        ct = make_ct_series(tmp_path / "ct", seed=11)
        send(node.port, ct)
        gap = make_ct_series(tmp_path / "gap", seed=12)
        send(node.port, gap[:4] + gap[5:])     # one slice missing: refused at completion
        assert node.store is not None
        jobs = wait_for(lambda: (js := node.store.list()) and len(js) == 2
                        and all(j.state in ("done", "failed", "refused") for j in js) and js, timeout_s=90.0)
        done, refused = sorted(jobs, key=lambda j: j.state != "done")
        assert (done.state, refused.state) == ("done", "refused"), [j.reason for j in jobs]

        code, body = http_get(port, "/metrics")
        assert code == 200
        m = samples(body.decode())
        assert m[("ct2mri_instances_received_total", (("outcome", "stored"),))] == len(ct) + len(gap) - 1
        assert m[("ct2mri_series_completed_total", ())] == 2
        assert m[("ct2mri_series_refused_total", (("reason", "missing_slices"),))] == 1
        assert m[("ct2mri_translation_seconds_count", ())] == 1
        assert m[("ct2mri_sends_total", (("destination", "archive"), ("status", "done")))] == 1
        assert m[("ct2mri_sends_total", (("destination", "local"), ("status", "done")))] == 1
        assert m[("ct2mri_last_ct_to_mr_confirmed_seconds_count", (("destination", "archive"),))] == 1
        assert m[("ct2mri_jobs", (("state", "done"),))] == 1
        assert m[("ct2mri_jobs", (("state", "refused"),))] == 1
        assert m[("ct2mri_jobs", (("state", "failed"),))] == 0
        assert m[("ct2mri_queue_depth", ())] == 0

        code, body = http_get(port, "/readyz")
        assert code == 200, body
        report = json.loads(body)
        assert report["destinations"]["archive"]["up"] is True      # probed in the background at start
        assert report["checks"]["spool"]["ok"] and report["checks"]["model"]["ok"]
        assert m[("ct2mri_destination_up", (("destination", "archive"),))] == 1

        preview = preview_path(output_dir(node.spool, done.id))
        with Image.open(preview) as image:
            assert image.format == "PNG" and image.size == (3 * 192, 2 * 192)
    finally:
        node.stop()
    check_provenance(status_json(config_path), ct, capture, translator)
    restarted = Node(config, translator=translator)   # provenance survives a restart
    restarted.start()
    restarted.stop()
    check_provenance(status_json(config_path), ct, capture, translator)


def check_provenance(report: list[dict[str, Any]], ct: list[Path], capture: CaptureSCP, translator: Translator) -> None:
    done, refused = sorted(report, key=lambda j: j["state"] != "done")
    assert refused["state"] == "refused" and refused["provenance"] is None
    prov = done["provenance"]
    first = pydicom.dcmread(ct[0])
    mr_series = {str(ds.SeriesInstanceUID) for ds in capture.datasets}
    assert prov["source"] == {"study_uid": first.StudyInstanceUID, "series_uid": first.SeriesInstanceUID,
                              "instances": len(ct), "lossy": False, "notes": []}
    assert prov["model"]["weight_hash"] == translator.model_info.weight_hash
    assert prov["model"]["name"] == translator.model_info.name
    assert prov["model"]["version"] == translator.model_info.version
    assert (prov["sampling"]["sampler"], prov["sampling"]["steps"], prov["sampling"]["seed"]) == ("refine", 2, 0)
    assert prov["sampling"]["t0"] == translator.settings.t0 is not None
    assert prov["output"] == {"series_uid": mr_series.pop(), "instances": len(ct)}
    dests = prov["destinations"]
    assert set(dests) == {"archive", "local"}
    for result in dests.values():
        assert result["state"] == "done" and result["send_s"] >= 0
        assert result["last_ct_to_confirmed_s"] > 0


def test_no_preview_unless_asked(translator: Translator, capture: CaptureSCP, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, capture, qa_preview=False))
    config = config.model_copy(update={"ops": config.ops.model_copy(update={"http_port": None})})
    node = Node(config, translator=translator)
    node.start()
    try:
        assert node.health is None
        send(node.port, make_ct_series(tmp_path / "ct", seed=13))
        assert node.store is not None
        (job,) = wait_for(lambda: [j for j in node.store.list() if j.state in ("done", "failed")], timeout_s=90.0)
        assert job.state == "done", job.reason
        assert not preview_path(output_dir(node.spool, job.id)).exists()
        assert node.store.provenance(job.id) is not None
    finally:
        node.stop()
