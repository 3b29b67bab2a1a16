"""Routing rules over real associations: which series are translated, by which model, sent where;
refused and ignored series with their reasons; the decisions in ``status --json`` and the metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from nodekit import CaptureSCP, jobs_in, make_ct_series, node_config_data, samples, send, status_json, wait_for

from ct2mri_node.config import load_config
from ct2mri_node.model.testing import make_tiny_checkpoint
from ct2mri_node.node import Node


@pytest.fixture
def archives() -> Iterator[tuple[CaptureSCP, CaptureSCP]]:
    tps, pacs = CaptureSCP("TPS").start(), CaptureSCP("PACS").start()
    yield tps, pacs
    tps.stop()
    pacs.stop()


def _department(tmp_path: Path, tps: CaptureSCP, pacs: CaptureSCP) -> Path:
    """The worked example of docs/routing.md, with two tiny models of different architectures (so provenance
    shows which one translated each series)."""
    head = make_tiny_checkpoint(tmp_path / "head-model", arch="enhanced")
    pelvis = make_tiny_checkpoint(tmp_path / "pelvis-model", arch="unet")
    data = node_config_data(
        models={"head": {"checkpoint": str(head), "device": "cpu", "steps": 2},
                "pelvis": {"checkpoint": str(pelvis), "device": "cpu"}},
        destinations=[tps.destination("tps"), pacs.destination("pacs")],
        rules=[
            {"name": "head-planning", "match": {"BodyPartExamined": "head|brain", "SliceThickness": {"max": 3}},
             "translate": "head"},
            {"name": "pelvis-planning", "match": {"BodyPartExamined": "pelvis|prostate"},
             "translate": "pelvis", "destinations": ["tps"]},
            {"name": "contrast", "match": {"ContrastBolusAgent": "."}, "refuse": "contrast-enhanced CT is not supported"},
            {"name": "chest", "match": {"BodyPartExamined": "chest|thorax"},
             "refuse": "chest CT is outside this node's intended use"},
        ],
    )
    del data["model"]                      # the models: section replaces it
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_four_series_routed_by_rules(tmp_path: Path, archives: tuple[CaptureSCP, CaptureSCP]) -> None:
    tps, pacs = archives
    config_path = _department(tmp_path, tps, pacs)
    data = load_config(config_path)
    series = {part: make_ct_series(tmp_path / part, seed=i, body_part=part.upper())
              for i, part in enumerate(("head", "pelvis", "chest", "knee"), start=1)}
    uid_of = {part: str(pydicom.dcmread(paths[0]).SeriesInstanceUID) for part, paths in series.items()}
    node = Node(data)
    node.start()
    try:
        threads = [threading.Thread(target=send, args=(node.port, paths)) for paths in series.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        jobs = wait_for(lambda: len(node.store.list()) == 4 and jobs_in(node, "done", "failed", "ignored"), 240)
        by_series = {j.series_uid: j for j in jobs}
        head, pelvis = by_series[uid_of["head"]], by_series[uid_of["pelvis"]]
        chest, knee = by_series[uid_of["chest"]], by_series[uid_of["knee"]]
        assert (head.state, head.rule, head.action, head.model, head.destinations) == (
            "done", "head-planning", "translate", "head", None)
        assert (pelvis.state, pelvis.rule, pelvis.model, pelvis.destinations) == (
            "done", "pelvis-planning", "pelvis", ("tps",))
        assert [d.destination for d in pelvis.deliveries] == ["tps"]
        assert chest.state == "failed" and chest.rule == "chest" and chest.action == "refuse"
        assert "chest CT is outside this node's intended use" in (chest.reason or "")
        assert knee.state == "ignored" and knee.rule == "(no rule)" and knee.action == "ignore"
        assert knee.purged_at is not None                                    # its CT left the spool
        assert not (node.spool.incoming / uid_of["knee"]).exists()
        assert (node.spool.incoming / uid_of["chest"]).exists()              # refused: kept for an admin

        # the right model made each series (provenance), and results went where the rule said
        assert node.store.provenance(head.id)["model"]["name"] == "ct2mri-enhanced-tiny-test"
        assert node.store.provenance(pelvis.id)["model"]["name"] == "ct2mri-unet-tiny-test"
        sources = lambda scp: {str(d.ReferencedSeriesSequence[0].SeriesInstanceUID) for d in scp.datasets}  # noqa: E731
        assert sources(tps) == {uid_of["head"], uid_of["pelvis"]}
        assert sources(pacs) == {uid_of["head"]}
        assert len(pacs.datasets) == len(series["head"])

        metrics = samples(node.metrics.exposition().decode())
        for rule, action in (("head-planning", "translate"), ("pelvis-planning", "translate"),
                             ("chest", "refuse"), ("(no rule)", "ignore")):
            assert metrics[("ct2mri_routing_decisions_total", (("action", action), ("rule", rule)))] == 1.0
    finally:
        node.stop()

    report = {j["series_uid"]: j for j in status_json(config_path)}
    assert report[uid_of["pelvis"]]["rule"] == "pelvis-planning" and report[uid_of["pelvis"]]["model"] == "pelvis"
    assert report[uid_of["knee"]]["state"] == "ignored"


def test_models_load_lazily_and_least_recently_used_is_dropped(tmp_path: Path) -> None:
    from ct2mri_node.jobs.models import ModelPool

    loads: list[str] = []
    closed: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    def load(name: str) -> Fake:
        loads.append(name)
        return Fake(name)

    pool = ModelPool(["a", "b", "c"], load, capacity=2)
    assert loads == []                           # nothing loaded before first use
    assert pool.get("a").name == "a" and pool.get("a").name == "a"
    assert loads == ["a"]                        # loaded once, shared
    pool.get("b")
    pool.get("a")                                # a is now the most recently used
    pool.get("c")                                # over capacity: b (least recently used) goes first
    assert closed == ["b"] and pool.loaded() == ["a", "c"]
    with pytest.raises(Exception, match="no model named 'd'"):
        pool.get("d")
