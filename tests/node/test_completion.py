"""Series completion with associations that stay open, series spread over associations, late
instances, and the calling AE reported to the sink (what routing rules match on)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodekit import CaptureSCP, RecordingSink, jobs_in, make_ct_series, node_config, scu, wait_for

from ct2mri_node.config import NodeConfig
from ct2mri_node.node import Node
from ct2mri_node.receive.completion import CompletionWatcher


def test_open_association_completes_after_its_longer_quiet_period() -> None:
    now = [0.0]
    sink = RecordingSink()
    watcher = CompletionWatcher(sink, quiet_period_s=2.0, clock=lambda: now[0], open_association_quiet_s=10.0)
    watcher.instance_received("1.1", "1", association=7, calling_ae="PACS")
    now[0] = 9.9
    assert watcher.check() == []                  # association open: the longer wait applies
    now[0] = 10.0
    assert watcher.check() == ["1.1"]             # complete although association 7 stays open
    assert sink.calling_aes == ["PACS"]
    # a late instance of the completed series opens it again; it completes one quiet period later
    now[0] = 11.0
    watcher.instance_received("1.1", "1", association=None)
    now[0] = 12.9
    assert watcher.check() == []
    now[0] = 13.0
    assert watcher.check() == ["1.1"]
    assert sink.received == ["1.1", "1.1"] and sink.complete == ["1.1", "1.1"]


def test_open_association_wait_is_never_shorter_than_the_quiet_period() -> None:
    now = [0.0]
    sink = RecordingSink()
    watcher = CompletionWatcher(sink, quiet_period_s=5.0, clock=lambda: now[0], open_association_quiet_s=1.0)
    watcher.instance_received("1.1", "1", association=1)
    now[0] = 4.9
    assert watcher.check() == []
    now[0] = 5.0
    assert watcher.check() == ["1.1"]


def test_series_over_two_associations_is_one_series() -> None:
    now = [0.0]
    sink = RecordingSink()
    watcher = CompletionWatcher(sink, quiet_period_s=1.0, clock=lambda: now[0], open_association_quiet_s=5.0)
    watcher.instance_received("1.1", "1", association=1, calling_ae="A")
    watcher.association_closed(1)
    now[0] = 0.5
    watcher.instance_received("1.1", "1", association=2, calling_ae="B")
    watcher.association_closed(2)
    now[0] = 1.4
    assert watcher.check() == []
    now[0] = 1.5
    assert watcher.check() == ["1.1"]
    assert sink.complete == ["1.1"] and sink.calling_aes == ["B"]   # the sender of its last instance


def test_sender_keeping_its_association_open_gets_its_mr_before_releasing(
    start_node: Callable[[NodeConfig], Node], capture: CaptureSCP, tmp_path: Path
) -> None:
    """A router that holds one association open: the series completes after
    ``series.open_association_quiet_s`` and its MR arrives while the association is still open."""
    archive = capture
    paths = make_ct_series(tmp_path / "ct", seed=3)
    config = node_config(tmp_path, destinations=[archive.destination()],
                         series={"quiet_period_s": 0.3, "open_association_quiet_s": 1.0,
                                 "min_slices": 8, "restart_hold_s": 0})
    node = start_node(config)
    assoc = scu("ROUTER").associate("127.0.0.1", node.port, ae_title="CT2MRI")
    try:
        assert assoc.is_established
        for path in paths:
            assert assoc.send_c_store(path).Status == 0
        (job,) = wait_for(lambda: jobs_in(node, "done"), timeout_s=120)
        assert assoc.is_established                   # the sender never released
        assert len(archive.datasets) == len(paths)
        echo = assoc.send_c_echo()                    # the association still works
        assert echo.Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


def test_series_whose_job_cannot_be_recorded_is_reported_again() -> None:
    """The job store is away when a series completes: the series stays pending and is reported
    again until the sink records it (nothing accepted is dropped)."""
    from ct2mri_node.receive.completion import RETRY_S

    now = [0.0]

    class FlakySink(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.failures = 2

        def series_complete(self, series_uid: str, study_uid: str, last_instance_at: float,
                            calling_ae: str | None = None) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("job database unreachable")
            super().series_complete(series_uid, study_uid, last_instance_at, calling_ae)

    sink = FlakySink()
    watcher = CompletionWatcher(sink, quiet_period_s=1.0, clock=lambda: now[0], open_association_quiet_s=5.0)
    watcher.instance_received("1.1", "1", association=None, calling_ae="PACS")
    now[0] = 1.0
    assert watcher.check() == ["1.1"] and sink.complete == []      # failed: kept
    assert watcher.pending() == ["1.1"]
    now[0] = 1.0 + RETRY_S - 0.1
    assert watcher.check() == []
    now[0] = 1.0 + RETRY_S
    watcher.check()                                                # fails again
    now[0] = 1.0 + 2 * RETRY_S
    watcher.check()
    assert sink.complete == ["1.1"] and sink.calling_aes == ["PACS"] and watcher.pending() == []
