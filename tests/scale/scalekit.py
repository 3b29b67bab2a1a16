"""Helpers for the scale-out tests and benchmarks: a real redis-server, a throw-away PostgreSQL
server (the job store of ``job_store.url``), receiver and worker subprocesses, and the YAML config
they share (node and reliability helpers are reused)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from nodekit import CaptureSCP, free_port, wait_for
from relkit import Proc, job_states, send_until_acked, write_config


def redis_available() -> bool:
    """Whether the Debian ``redis-server`` binary is installed (deploy/install.sh installs it)."""
    return shutil.which("redis-server") is not None


class Redis:
    """``redis-server`` on a free loopback port with its data in ``folder``; restartable."""

    def __init__(self, folder: Path, appendonly: bool = True) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--dir", str(self.folder), "--protected-mode", "yes"]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ping, 20)
        return self

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False

    def queue_length(self, name: str) -> int:
        import redis

        return int(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2).llen(name))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


ONE_THREAD = {"OMP_NUM_THREADS": "1"}   # 1 torch thread per role unless the environment says otherwise


def receiver(config: Path, log_path: Path) -> Proc:
    return Proc(["serve", "--config", str(config), "--role", "receiver"], log_path, "listening",
                env_defaults=ONE_THREAD)


def worker(config: Path, log_path: Path, fault: str | None = None) -> Proc:
    return Proc(["worker", "--config", str(config), "--device", "cpu"], log_path, "worker ready", fault,
                env_defaults=ONE_THREAD)


def scale_config(tmp_path: Path, port: int, checkpoint: Path, broker_url: str, **overrides: Any) -> Path:
    """The YAML every role of one test reads: shared spool, short leases and sweeps."""
    queue = {"backend": "celery", "broker_url": broker_url, "lease_s": 2.0,
             "republish_after_s": 3.0, "sweep_interval_s": 0.3}
    queue.update(overrides.pop("queue", {}))
    return write_config(tmp_path, port, checkpoint, queue=queue, **overrides)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_available() -> bool:
    """Whether the Debian ``postgresql`` server binaries are installed (deploy/install.sh does)."""
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def require_postgres() -> None:
    """Fail under CI (``CI`` set: every peer is installed there), skip elsewhere, when the
    PostgreSQL server binaries are missing (tests/conftest.py's ``require_peer`` rule, usable from
    session fixtures)."""
    import pytest

    if postgres_available():
        return
    reason = "PostgreSQL 15 is not installed; run deploy/install.sh (Debian package postgresql)"
    if os.environ.get("CI"):
        pytest.fail(f"real peer unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


class Postgres:
    """A throw-away PostgreSQL server: ``initdb`` in ``folder``, a free loopback port.

    Trust authentication, or with ``password`` the server's ``scram-sha-256`` for every
    connection (user ``postgres``): then only that password gets in, and the URLs this class
    gives out carry none (the node must get it from ``job_store.password_env``/``password_file``).
    As root the server runs as the ``postgres`` user (it refuses root), so the folder is given
    to that user. ``stop()``/``start()`` restart it (a fast shutdown, as an admin's restart)."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.password = password
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/ct2mri"

    def _connect(self, url: str) -> Any:
        import psycopg

        return psycopg.connect(url, autocommit=True, password=self.password)

    def _run(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(shlex.quote(a) for a in command)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def init(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        auth = ["--auth=trust"]
        pwfile = self.folder / "pwfile"
        if self.password is not None:
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            self._run("initdb", "-D", str(self.data), *auth, "-U", "postgres", "-E", "UTF8")
        finally:
            pwfile.unlink(missing_ok=True)
        self.start()
        with self._connect(self.url.rsplit("/", 1)[0] + "/postgres") as conn:
            conn.execute("CREATE DATABASE ct2mri")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.folder / "log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def ensure_running(self) -> None:
        """Start it again if a test left it stopped (``pg_ctl status`` exits 3 then)."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except subprocess.CalledProcessError:
            self.start()

    def database(self) -> str:
        """A new, empty database on this server; its URL (one per test keeps tests apart)."""
        self._databases = getattr(self, "_databases", 0) + 1
        name = f"t{self._databases}"
        with self._connect(self.url) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def remove(self) -> None:
        """Stop the server (immediately) and delete its folder."""
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres(password: str | None = None) -> Postgres:
    """A fresh server in a new folder under the system temporary folder (pytest's own folders are
    private to root, and the server runs as ``postgres``); ``password``: scram-sha-256 for all."""
    return Postgres(Path(tempfile.mkdtemp(prefix="ct2mri-pg-")), password).init()


def send_all(port: int, series: list[list[Path]]) -> None:
    """Send every series at once, one association each (like several scanners)."""
    threads = [threading.Thread(target=send_until_acked, args=(port, ct), daemon=True) for ct in series]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()


def all_done(config: Path, jobs: int) -> bool:
    """Whether ``status`` shows exactly ``jobs`` jobs, all done."""
    states = job_states(config)
    return len(states) == jobs and all(s == "done" for s in states)


def assert_exactly_once(capture: CaptureSCP, series: int, slices: int) -> None:
    """The archive holds ``series`` MR series of ``slices`` instances, each instance exactly once."""
    counts = Counter(str(d.SOPInstanceUID) for d in capture.datasets)
    assert len({str(d.SeriesInstanceUID) for d in capture.datasets}) == series
    assert len(counts) == series * slices
    assert set(counts.values()) == {1}, "an MR instance was delivered more than once"


def stop_all(procs: list[Proc]) -> None:
    """Stop every process started by the test."""
    for proc in procs:
        proc.stop()
