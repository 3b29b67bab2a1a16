"""``ct2mri-node serve`` as a subprocess: start, C-ECHO, a series in, MR out, status, SIGTERM."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import yaml
from nodekit import CLI, free_port, make_ct_series, status_json, write_config_file
from relkit import Serve


def test_serve_subprocess(tmp_path: Path, tiny_checkpoint: Path) -> None:
    port = free_port()
    config = write_config_file(
        tmp_path,
        node={"ae_title": "CT2MRI", "port": port, "bind_address": "127.0.0.1"},
        calling_aes=[{"ae_title": "PACS"}],
        destinations=[{"name": "local", "type": "folder", "path": "outbox"}],
        series={"quiet_period_s": 0.5},
        model={"checkpoint": str(tiny_checkpoint), "device": "cpu", "steps": 2},
        worker={},                      # the schema's retry and poll defaults
    )
    ct_dir = tmp_path / "ct"
    make_ct_series(ct_dir, seed=11)
    env = {**os.environ, "TCP_NODELAY": "1"}
    log = tmp_path / "serve.log"
    serve = Serve(config, log)
    try:
        serve.wait_listening(60)
        echo = subprocess.run(["echoscu", "-aet", "PACS", "-aec", "CT2MRI", "127.0.0.1", str(port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        sent = subprocess.run(["storescu", "-aet", "PACS", "-aec", "CT2MRI", "+sd", "127.0.0.1",
                               str(port), str(ct_dir)], capture_output=True, text=True, timeout=60, env=env)
        assert sent.returncode == 0, sent.stderr
        intruder = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", "CT2MRI", "127.0.0.1", str(port)],
                                  capture_output=True, text=True, timeout=30)
        assert intruder.returncode != 0
        end = time.monotonic() + 90
        jobs: list[dict[str, object]] = []
        while time.monotonic() < end:
            jobs = status_json(config)
            if jobs and jobs[0]["state"] in ("done", "failed"):
                break
            time.sleep(0.3)
        assert [j["state"] for j in jobs] == ["done"], jobs
        written = list((tmp_path / "outbox").glob("*/*.dcm"))
        assert len(written) == 12
        text = subprocess.run([*CLI, "status", "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert "done" in text.stdout and "-> local: done" in text.stdout
        retry = subprocess.run([*CLI, "retry", "1", "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert retry.returncode == 0 and "queued again" in retry.stdout
        missing = subprocess.run([*CLI, "retry", "42", "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert missing.returncode != 0 and "no job 42" in missing.stderr
    finally:
        code = serve.stop()             # SIGTERM, then the exit code
    stderr = log.read_text()
    assert code == 0, stderr
    assert "rejected association from calling AE 'INTRUDER'" in stderr


def test_echo_command(tmp_path: Path, capture: object) -> None:
    from nodekit import CaptureSCP

    assert isinstance(capture, CaptureSCP)
    data = {"destinations": [capture.destination(), {**capture.destination("down"), "port": free_port()},
                             {"name": "local", "type": "folder", "path": "x"}]}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    ok = subprocess.run([*CLI, "echo", "archive", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "success" in ok.stdout, ok.stderr
    down = subprocess.run([*CLI, "echo", "down", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cannot connect" in down.stderr
    folder = subprocess.run([*CLI, "echo", "local", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert folder.returncode == 2 and "only dicom" in folder.stderr
    unknown = subprocess.run([*CLI, "echo", "nope", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "known: archive, down, local" in unknown.stderr
