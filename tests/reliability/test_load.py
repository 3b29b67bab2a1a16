"""Load, small: 8 senders at once, each a 20-slice series on its own association; all delivered,
zero failed stores (benchmarks/load.py runs 8 x 200 slices)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from nodekit import make_ct_series, node_config, store, wait_for

from ct2mri_node.config import NodeConfig
from ct2mri_node.node import Node

SENDERS = 8
SLICES = 20


def test_eight_senders_at_once(start_node: Callable[[NodeConfig], Node], tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    node = start_node(node_config(tmp_path, destinations=[{"name": "local", "type": "folder", "path": str(outbox)}]))
    series = [make_ct_series(tmp_path / f"ct{i}", seed=100 + i, slices=SLICES, size=16) for i in range(SENDERS)]
    statuses: dict[int, list[int]] = {}

    def send(i: int) -> None:
        statuses[i] = store(node.port, series[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(statuses[i] == [0] * SLICES for i in range(SENDERS)), statuses
    assert node.store is not None
    wait_for(lambda: node.store.count("done") == SENDERS, 180, 0.2)
    assert node.store.count("failed") == 0
    assert sorted(len(list(d.glob("*.dcm"))) for d in outbox.iterdir()) == [SLICES] * SENDERS
