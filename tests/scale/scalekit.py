"""Helpers for the scale-out tests and benchmark: a real redis-server, receiver and worker
subprocesses, and the YAML config they share (node and reliability helpers are reused)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from nodekit import free_port, wait_for
from relkit import Proc, write_config


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
