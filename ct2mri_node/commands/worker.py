"""``ct2mri-node worker``: a translation worker process of the scale-out topology.

It loads the model once, consumes job ids from the ``urgent`` and ``routine`` queues of the
configured Redis broker (urgent first), and runs each job from the shared spool: one job at a
time per process, one process per device. Several workers on one machine must use different
GPUs (``--device cuda:N``); a second worker on the same GPU is refused. Stops cleanly on
SIGTERM/SIGINT after the job in hand (Celery's warm shutdown).

With ``ops.http_port`` set, the worker serves ``/metrics``, ``/healthz`` and ``/readyz`` on its
own port (0: a free one, printed at start) and exports what a translating role updates:
translations, sends, latency, rejections, jobs by state, spool free bytes and destination
probes (``ops/metrics.py`` lists which role exports which metric). Give each worker on one
machine its own port.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from ..config import ModelSettings, NodeConfig, default_config_path, load_config
from ..errors import ConfigError
from ..fsutil import try_lock

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "worker",
        help="run a translation worker that takes jobs from the broker (queue.backend: celery)",
        description="Take job ids from the Redis broker, translate the series from the shared spool and "
        "send the MR series to every configured destination. Run one per GPU; receivers run "
        "`ct2mri-node serve --role receiver` with the same config.",
    )
    parser.add_argument(
        "--config", type=Path, default=None,
        help=f"YAML configuration (default: $CT2MRI_NODE_CONFIG or {default_config_path()})",
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: model.device of the config)")
    parser.add_argument(
        "--queues", default="urgent,routine",
        help="queues to consume, comma-separated; urgent is always served first (default: urgent,routine)",
    )
    parser.set_defaults(func=run)


def worker_config(config: NodeConfig, device: str | None) -> NodeConfig:
    """The config with ``--device`` applied; ConfigError unless the celery backend is configured."""
    if config.queue.backend != "celery":
        raise ConfigError("`ct2mri-node worker` needs queue.backend: celery and queue.broker_url in the config; "
                          "with the local queue, `ct2mri-node serve` translates in its own process")
    if device is None:
        return config
    try:   # every named model runs on this worker's device (one worker per GPU)
        model = ModelSettings(**{**config.model.model_dump(), "device": device})
        models = {name: ModelSettings(**{**m.model_dump(), "device": device}) for name, m in config.models.items()}
    except ValidationError as exc:
        raise ConfigError(f"--device: {exc.errors()[0]['msg']}") from None
    return config.model_copy(update={"model": model, "models": models})


def worker_device(config: NodeConfig) -> str:
    """The device this worker translates on: that of its first named model (``--device`` sets all)."""
    return next(iter(config.named_models().values())).device


def lock_device(device: str, folder: Path | None = None) -> IO[str] | None:
    """Hold an exclusive lock for a GPU on this machine (one translation at a time per GPU);
    None for the CPU and ``auto``, which any number of workers may share."""
    if not device.startswith("cuda"):
        return None
    name = device if ":" in device else "cuda:0"
    path = (folder or Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())) / \
        f"ct2mri-node-{name.replace(':', '-')}.lock"
    handle = try_lock(path)
    if handle is None:
        raise ConfigError(f"device {name} is already used by another ct2mri-node worker on this machine; "
                          "start this one with another --device cuda:N")
    return handle


def _queues(text: str) -> list[str]:
    names = [q.strip() for q in text.split(",") if q.strip()]
    bad = [q for q in names if q not in ("urgent", "routine")]
    if not names or bad:
        raise ConfigError(f"--queues {text!r}: use urgent, routine or both, comma-separated")
    return [q for q in ("urgent", "routine") if q in names]


def run(args: argparse.Namespace) -> int:
    from celery.signals import worker_ready

    from ..jobs.distributed import WorkerRuntime, make_app, publisher_send, register_task
    from ..jobs.queue import Publisher, worker_identity
    from ..node import model_pool
    from ..ops.health import HealthServer
    from ..ops.metrics import NodeMetrics
    from ..ops.observer import OpsObserver

    config = worker_config(load_config(args.config), args.device)
    queues = _queues(args.queues)
    device = worker_device(config)
    if device == "auto":   # resolve before locking, so `auto` on a GPU machine takes the GPU's lock too
        from ..model.translator import resolve_device

        resolved = str(resolve_device("auto")[0])
        device = "cuda:0" if resolved == "cuda" else resolved
        config = worker_config(config, device)
    lock = lock_device(device)
    translator = model_pool(config)
    translator.first()   # ready once a model works; the others load on first use
    runtime = WorkerRuntime.build(config, translator, worker_identity(device))
    metrics = NodeMetrics(receives=False, translates=True)
    metrics.observe_store(runtime.worker.store)
    metrics.watch_spool(runtime.worker.spool)
    runtime.worker.observer = OpsObserver(runtime.worker.store, metrics, config.ops.qa_preview)
    health: HealthServer | None = None
    if config.ops.http_port is not None:
        health = HealthServer(config, metrics, lambda: True, runtime.worker.store)   # the model is loaded
        health.start()
        print(f"ct2mri-node worker operations endpoint on port {health.port}", flush=True)
    app = make_app(config)
    app.conf.worker_redirect_stdouts = False
    register_task(app, runtime)
    publisher = Publisher(runtime.dispatch, publisher_send(app), config.queue)

    def ready(**_: Any) -> None:
        print(f"ct2mri-node worker ready on device {device}, queues {','.join(queues)}", flush=True)

    worker_ready.connect(ready, weak=False)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower())
    publisher.start()
    try:
        app.Worker(
            pool="solo", concurrency=1, prefetch_multiplier=1, queues=queues,
            hostname=f"ct2mri-{slug}-{os.getpid()}@{socket.gethostname()}",
            without_gossip=True, without_mingle=True, without_heartbeat=True,
            loglevel=logging.getLevelName(logging.getLogger().level),
        ).start()
    finally:
        publisher.stop()
        if health is not None:
            health.stop()
        if lock is not None:
            lock.close()
    return 0
