"""The node with CT as it really arrives: refusals end as refused jobs (header checks at
completion, never queued) with their reason in ``status --json``, configured size limits apply, a lossy input is translated and labelled."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
from nodekit import jobs_in, make_ct_series, node_config, send, status_json, wait_for, write_config_file
from pydicom.uid import JPEGLSNearLossless

from ct2mri_node.config import NodeConfig, load_config
from ct2mri_node.node import Node


def _spooled_name(path: Path) -> str:
    """The spool's file name for a CT file: its SOP Instance UID (read before it is broken)."""
    return f"{pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm"


def _break_modality_vr(path: Path) -> None:
    """Give (0008,0060) Modality an unknown VR in place, as a broken exporter might."""
    data = bytearray(path.read_bytes())
    tag = struct.pack("<HH", 0x0008, 0x0060)
    at = data.index(tag + b"CS")
    data[at + 4:at + 6] = b"QQ"
    path.write_bytes(bytes(data))


def test_refused_series_fail_with_their_reason_in_status_json(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path
) -> None:
    """A missing slice, too many slices for series.max_slices and an undecodable header:
    three jobs refused at completion, never queued, whose reasons (code and message) `status --json` shows."""
    config_file = write_config_file(
        tmp_path,
        spool_dir=str(tmp_path / "spool"),
        series={"quiet_period_s": 0.3, "min_slices": 8, "max_slices": 11, "restart_hold_s": 0},
        destinations=[{"name": "local", "type": "folder", "path": str(tmp_path / "outbox")}],
    )
    node = start_node(load_config(config_file))
    gap = make_ct_series(tmp_path / "gap", seed=21, slices=10)
    send(node.port, gap[:4] + gap[5:])
    send(node.port, make_ct_series(tmp_path / "big", seed=22, slices=12))
    broken = make_ct_series(tmp_path / "broken", seed=23, slices=10)
    broken_file = _spooled_name(broken[3])
    _break_modality_vr(broken[3])
    send(node.port, broken)
    wait_for(lambda: len(jobs_in(node, "done", "failed", "refused")) == 3, 60)
    reasons = {str(j["series_uid"]): str(j["reason"]) for j in status_json(config_file) if j["state"] == "refused"}
    assert all(j["queued_at"] is None and j["attempts"] == 0 for j in status_json(config_file))
    series = {name: str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
              for name, paths in (("gap", gap), ("broken", broken))}
    assert len(reasons) == 3
    assert reasons[series["gap"]].startswith("series refused (missing_slices): 1 slice(s) missing")
    assert reasons[series["broken"]].startswith(f"series refused (invalid_series): {broken_file} ")
    assert "Unknown Value Representation 'QQ'" in reasons[series["broken"]]
    (big,) = set(reasons) - set(series.values())
    assert reasons[big].startswith("series refused (too_large)") and "series.max_slices" in reasons[big]
    assert not (tmp_path / "outbox").exists()


def test_lossy_jpeg_ls_series_is_accepted_and_labelled_lossy(
    start_node: Callable[[NodeConfig], Node], tmp_path: Path
) -> None:
    """JPEG-LS near-lossless CT over the network: translated, and the MR says it is lossy."""
    outbox = tmp_path / "outbox"
    node = start_node(node_config(tmp_path, destinations=[{"name": "local", "type": "folder", "path": str(outbox)}]))
    paths = make_ct_series(tmp_path / "ct", seed=24, slices=8)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(JPEGLSNearLossless, jls_error=3)
        ds.save_as(path)
    send(node.port, paths, syntax=JPEGLSNearLossless)
    (job,) = wait_for(lambda: jobs_in(node, "done", "failed"), 60)
    assert job.state == "done", job.reason
    spooled = node.spool.instance_paths(job.series_uid)
    assert {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in spooled} == {JPEGLSNearLossless}
    mr = [pydicom.dcmread(p) for p in sorted(outbox.glob("*/*.dcm"))]
    assert len(mr) == len(paths)
    for ds in mr:
        assert ds.LossyImageCompression == "01"
        assert "ISO_14495_1" in ([ds.LossyImageCompressionMethod] if isinstance(ds.LossyImageCompressionMethod, str)
                                 else list(ds.LossyImageCompressionMethod))
