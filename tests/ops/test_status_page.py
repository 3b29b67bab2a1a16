"""The web status page on ``ops.http_port``: paged job list, job page, QA images, PHI kept out,
the Retry button behind basic auth and CSRF, and a real headless Chromium looking at a node
that has run a job.

``CT2MRI_SCREENSHOTS=1`` makes the browser test (re)write docs/images/status-{list,job}.png.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nodekit import CaptureSCP, http_get, make_ct_series, node_config, send, wait_for

from ct2mri_node.config import NodeConfig
from ct2mri_node.errors import ConfigError
from ct2mri_node.jobs.store import JobStore, Route
from ct2mri_node.node import Node
from ct2mri_node.ops.auth import hash_password, verify_password
from ct2mri_node.ops.health import HealthServer
from ct2mri_node.ops.metrics import NodeMetrics
from ct2mri_node.ops.web import PAGE_SIZE

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
_ROW = re.compile(r'<tr class="job">')


def _bulk_jobs(store: JobStore, n: int, failed_every: int = 10) -> None:
    """``n`` finished job records written in one transaction (as many nodes' history would be)."""
    now = time.time()
    rows = [(f"1.2.826.0.1.3680043.8.498.{i}", "1.2.826.0.1.3680043.8.498.9", "failed" if i % failed_every == 0
             else "done", now + i, now + i, "refused by rule 'x': test" if i % failed_every == 0 else None)
            for i in range(1, n + 1)]
    with store.transaction() as conn:
        conn.executemany("INSERT INTO jobs (series_uid, study_uid, state, created_at, updated_at, reason)"
                         " VALUES (?, ?, ?, ?, ?, ?)", rows)


@pytest.fixture
def ops_server(tmp_path: Path) -> Iterator[Callable[..., tuple[HealthServer, JobStore]]]:
    """An ops HTTP server over a fresh spool's job store (no SCP, no model)."""
    servers: list[HealthServer] = []

    def start(**ops: object) -> tuple[HealthServer, JobStore]:
        config = node_config(tmp_path, ops={"http_port": 0, **ops})
        (config.spool_dir / "output").mkdir(parents=True, exist_ok=True)
        store = JobStore(config.spool_dir / "jobs.sqlite3")
        server = HealthServer(config, NodeMetrics(receives=False, translates=False), None, store)
        server.start()
        servers.append(server)
        return server, store

    yield start
    for server in servers:
        server.stop()


def test_ten_thousand_jobs_render_one_page_newest_first(ops_server: Callable[..., tuple[HealthServer, JobStore]]) -> None:
    server, store = ops_server()
    _bulk_jobs(store, 10_000)
    assert store.count_jobs() == 10_000 and store.count_jobs("failed") == 1_000
    newest = store.page(0, 3, None)
    assert [j.id for j in newest] == [10_000, 9_999, 9_998]
    assert [j.id for j in store.page(0, 2, "failed")] == [10_000, 9_990]
    with store.connect() as conn:   # the filtered page walks an index, not the table
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state=? ORDER BY id DESC LIMIT 50 OFFSET 0", ("failed",)))
    assert "USING" in plan and "INDEX" in plan and "TEMP B-TREE" not in plan, plan

    code, body = http_get(server.port, "/")
    html = body.decode()
    assert code == 200
    assert len(_ROW.findall(html)) == PAGE_SIZE
    assert 'href="/jobs/10000"' in html and 'href="/jobs/9951"' in html and 'href="/jobs/9950"' not in html
    assert '<meta http-equiv="refresh"' in html and "page 1 of 200" in html and "<script" not in html
    code, body = http_get(server.port, "/?page=200")
    assert code == 200 and len(_ROW.findall(body.decode())) == PAGE_SIZE and 'href="/jobs/1"' in body.decode()
    code, body = http_get(server.port, "/?state=failed&page=2")
    html = body.decode()
    assert code == 200 and len(_ROW.findall(html)) == PAGE_SIZE and "page 2 of 20" in html
    assert html.count('class="s-failed">failed</span></td>') == PAGE_SIZE and "refused by rule" in html
    assert http_get(server.port, "/?state=bogus")[0] == 400
    assert http_get(server.port, "/?page=0")[0] == 400
    assert http_get(server.port, "/jobs/123456")[0] == 404
    assert http_get(server.port, "/healthz")[0] == 200          # the other routes still answer
    assert http_get(server.port, "/nothing")[0] == 404


def test_job_page_images_phi_and_escaping(tmp_path: Path, ops_server: Callable[..., tuple[HealthServer, JobStore]]) -> None:
    server, store = ops_server()
    ct = make_ct_series(tmp_path / "ct", seed=3, slices=8, patient_name="Doe^Jane", patient_id="PID-4711",
                        series_description="<b>Head</b> & neck")
    series_uid = str(__import__("pydicom").dcmread(ct[0], stop_before_pixels=True).SeriesInstanceUID)
    incoming = tmp_path / "spool" / "incoming" / series_uid
    incoming.mkdir(parents=True)
    for path in ct:
        shutil.copy(path, incoming / path.name)
    job_id = store.series_complete(series_uid, "1.2.3", time.time(),
                                   route=Route("head <rule>", "refuse", reason="not <a> head"))
    output = tmp_path / "spool" / "output"
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    (output / f"{job_id}.preview.png").write_bytes(png)
    (output / f"{job_id}.uncertainty.png").write_bytes(png + b"u")

    code, body = http_get(server.port, "/")
    html = body.decode()
    assert code == 200 and "&lt;b&gt;Head&lt;/b&gt; &amp; neck" in html and "<b>Head" not in html
    assert "Doe" not in html and "PID-4711" not in html        # no PHI by default
    assert "head &lt;rule&gt;" in html and "not &lt;a&gt; head" in html
    code, body = http_get(server.port, f"/jobs/{job_id}")
    html = body.decode()
    assert code == 200 and "Doe" not in html and "PID-4711" not in html
    assert f'src="/jobs/{job_id}/qa.png"' in html and f'src="/jobs/{job_id}/{job_id}.uncertainty.png"' in html
    assert "Retry" not in html                                  # read-only by default
    assert http_get(server.port, f"/jobs/{job_id}/qa.png") == (200, png)
    assert http_get(server.port, f"/jobs/{job_id}/{job_id}.uncertainty.png") == (200, png + b"u")
    assert http_get(server.port, f"/jobs/{job_id}/..%2Fjobs.sqlite3")[0] == 404
    assert http_get(server.port, f"/jobs/{job_id}/{job_id + 1}.preview.png")[0] == 404
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/jobs/{job_id}/retry", data=b"csrf=x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403                            # read-only: no action without allow_actions
    assert store.get(job_id).state == "failed"

    phi_server, _ = ops_server(show_phi=True)
    html = http_get(phi_server.port, "/")[1].decode()
    assert "Doe^Jane" in html and "PID-4711" in html


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", **headers})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as rsp:
            return rsp.status, rsp.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", "") or ""


def test_retry_button_needs_basic_auth_csrf_and_same_origin(
        ops_server: Callable[..., tuple[HealthServer, JobStore]]) -> None:
    digest = hash_password("s3cret pass")
    assert digest.startswith("scrypt$") and verify_password("s3cret pass", digest)
    assert not verify_password("wrong", digest) and not verify_password("s3cret pass", "scrypt$1$1$1$AA==$AA==")
    server, store = ops_server(allow_actions=True, users={"admin": digest})
    _bulk_jobs(store, 10)
    job_id = 10                                                   # failed (refused)
    port = server.port
    code, _ = http_get(port, "/")
    assert code == 401                                            # every page needs a user now
    good = "Basic " + base64.b64encode(b"admin:s3cret pass").decode()
    bad = "Basic " + base64.b64encode(b"admin:nope").decode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/jobs/{job_id}", headers={"Authorization": bad})
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(req, timeout=10)
    assert denied.value.code == 401 and "Basic" in denied.value.headers["WWW-Authenticate"]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/jobs/{job_id}", headers={"Authorization": good})
    with urllib.request.urlopen(req, timeout=10) as rsp:
        html = rsp.read().decode()
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert token is not None and f'action="/jobs/{job_id}/retry"' in html
    form = f"csrf={token.group(1)}".encode()
    origin = {"Origin": f"http://127.0.0.1:{port}"}
    path = f"/jobs/{job_id}/retry"
    assert _post(port, path, form, origin)[0] == 401                                     # no user
    assert _post(port, path, form, {"Authorization": good})[0] == 403                    # no Origin/Referer
    assert _post(port, path, form, {"Authorization": good, "Origin": "http://evil.example"})[0] == 403
    assert _post(port, path, b"csrf=0000", {"Authorization": good, **origin})[0] == 403  # forged token
    assert store.get(job_id).state == "failed"
    assert _post(port, path, form, {"Authorization": good, **origin}) == (303, f"/jobs/{job_id}")
    assert store.get(job_id).state == "queued"
    referer = {"Referer": f"http://127.0.0.1:{port}/jobs/9"}
    assert _post(port, path, form, {"Authorization": good, **referer})[0] == 409        # queued: not retryable


def test_allow_actions_without_users_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_actions needs users"):
        node_config(tmp_path, ops={"allow_actions": True})
    with pytest.raises(ConfigError, match=r"ops\.users: .*hash-password"):
        node_config(tmp_path, ops={"users": {"admin": "plain-text"}})


def test_hash_password_command() -> None:
    done = subprocess.run([sys.executable, "-m", "ct2mri_node", "hash-password", "--stdin"], input="correct horse\n",
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip()
    assert verify_password("correct horse", digest) and not verify_password("correct horsE", digest)
    node_config(Path("."), ops={"allow_actions": True, "users": {"admin": digest}})   # accepted by the schema


def _chromium() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def test_browser_sees_job_montage_and_job_page(
    tmp_path: Path, start_node: Callable[[NodeConfig], Node], capture: CaptureSCP,
    require_peer: Callable[[bool, str], None],
) -> None:
    browser, driver_path = _chromium()
    require_peer(browser is not None and driver_path is not None,
                 "chromium and chromium-driver are not installed (deploy/install.sh installs them)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        require_peer(False, "selenium is not installed (pip install -e .[test])")
    config = node_config(tmp_path, destinations=[capture.destination()],
                         ops={"http_port": 0, "qa_preview": True, "echo_timeout_s": 2})
    node = start_node(config)
    send(node.port, make_ct_series(tmp_path / "ct", seed=5, series_description="Head routine 3mm"))
    gap = make_ct_series(tmp_path / "gap", seed=6, series_description="Pelvis 2mm")
    send(node.port, gap[:4] + gap[5:])                           # a slice missing: refused with a reason
    assert node.store is not None and node.health is not None
    jobs = wait_for(lambda: (js := node.store.list()) and len(js) == 2
                    and all(j.state in ("done", "failed", "refused") for j in js) and js, timeout_s=120)
    job, refused = sorted(jobs, key=lambda j: j.state != "done")
    assert (job.state, refused.state) == ("done", "refused"), [j.reason for j in jobs]
    wait_for(lambda: (config.spool_dir / "output" / f"{job.id}.preview.png").is_file(), timeout_s=30)

    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,800", "--no-proxy-server", "--disable-extensions"):
        options.add_argument(arg)
    try:
        chrome = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    except Exception as exc:  # noqa: BLE001 (a browser that cannot start is a missing peer)
        require_peer(False, f"headless chromium does not start: {exc}")
        return
    try:
        base = f"http://127.0.0.1:{node.health.port}"
        chrome.get(base + "/")
        link = chrome.find_element(By.CSS_SELECTOR, f'a[href="/jobs/{job.id}"]')
        rows = {r.find_element(By.CSS_SELECTOR, "td").text: r.text
                for r in chrome.find_elements(By.CSS_SELECTOR, "tr.job")}
        assert set(rows) == {str(job.id), str(refused.id)}
        assert "done" in rows[str(job.id)] and "Head routine 3mm" in rows[str(job.id)] and "archive" in rows[str(job.id)]
        assert "refused" in rows[str(refused.id)] and "Pelvis 2mm" in rows[str(refused.id)]
        assert (refused.reason or "")[:40] in rows[str(refused.id)]
        shots = os.environ.get("CT2MRI_SCREENSHOTS")
        if shots:
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            chrome.save_screenshot(str(DOCS_IMAGES / "status-list.png"))
        link.click()
        wait_for(lambda: chrome.current_url.endswith(f"/jobs/{job.id}"), timeout_s=30)
        assert f"job {job.id}" in chrome.find_element(By.TAG_NAME, "h1").text
        img = chrome.find_element(By.CSS_SELECTOR, "img.qa")
        assert img.get_attribute("src").endswith(f"/jobs/{job.id}/qa.png")
        width = wait_for(lambda: chrome.execute_script(
            "const i = arguments[0]; return i.complete && i.naturalWidth;", img), timeout_s=30)
        assert width == 3 * 192                                  # the montage: three views of 192 px
        page = chrome.find_element(By.TAG_NAME, "body").text
        assert "weight hash" in page and "archive" in page and job.series_uid in page
        if shots:
            chrome.save_screenshot(str(DOCS_IMAGES / "status-job.png"))
    finally:
        chrome.quit()
    if os.environ.get("CT2MRI_SCREENSHOTS"):
        for name in ("status-list.png", "status-job.png"):
            assert (DOCS_IMAGES / name).stat().st_size < 150_000, json.dumps(name)
