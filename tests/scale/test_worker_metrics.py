"""A scale-out worker is observable on its own ``ops.http_port``: /healthz, /readyz and the
translation, send, latency and rejection metrics of the jobs it ran (real redis, real receiver
and worker processes, real C-STOREs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from nodekit import free_port, http_get, make_ct_series, samples, send, wait_for
from relkit import job_states
from scalekit import Proc, Redis, receiver, scale_config, worker


def _worker_config(config: Path, http_port: int) -> Path:
    """The shared config with this worker's own ops port (beside it, so relative paths agree)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["ops"] = {"http_port": http_port, "echo_timeout_s": 2}
    path = config.with_name("worker.yaml")
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.slow
def test_worker_metrics_after_a_job(tmp_path: Path, tiny_checkpoint: Path, redis_server: Redis) -> None:
    port, http_port = free_port(), free_port()
    config = scale_config(tmp_path, port, tiny_checkpoint, redis_server.url)   # a folder destination
    procs: list[Proc] = [receiver(config, tmp_path / "receiver.log"),
                         worker(_worker_config(config, http_port), tmp_path / "worker.log")]
    try:
        for proc in procs:
            proc.wait_ready()
        assert http_get(http_port, "/healthz")[0] == 200
        ct = make_ct_series(tmp_path / "ct", seed=61)
        send(port, ct)
        gap = make_ct_series(tmp_path / "gap", seed=62)
        send(port, gap[:4] + gap[5:])                         # a slice missing: refused by the receiver
        wait_for(lambda: sorted(job_states(config)) == ["done", "refused"], 120, 0.2)
        code, body = http_get(http_port, "/metrics")
        assert code == 200
        m = samples(body.decode())
        assert m[("ct2mri_translation_seconds_count", ())] == 1
        assert m[("ct2mri_sends_total", (("destination", "local"), ("status", "done")))] == 1
        assert m[("ct2mri_last_ct_to_mr_confirmed_seconds_count", (("destination", "local"),))] == 1
        # refused at completion by the receiver: the worker never spent time on it
        assert ("ct2mri_series_rejected_total", (("reason", "missing_slices"),)) not in m
        assert m[("ct2mri_jobs", (("state", "refused"),))] == 1
        assert m[("ct2mri_jobs", (("state", "done"),))] == 1
        assert m[("ct2mri_destination_up", (("destination", "local"),))] == 1
        assert m[("ct2mri_spool_free_bytes", ())] > 0
        # what only a receiver updates is not exported by a worker (no metric exported by nobody)
        assert not any(name.startswith(("ct2mri_instances_received", "ct2mri_series_completed",
                                        "ct2mri_series_refused"))
                       for name, _ in m)
        code, body = http_get(http_port, "/readyz")
        report = json.loads(body)
        assert code == 200, report
        assert report["checks"]["model"]["ok"] and report["checks"]["job_store"]["ok"]
    finally:
        for proc in procs:
            proc.stop()
