"""fsutil: the one durable write (temporary file, fsync, rename, folder fsync)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct2mri_node.fsutil import atomic_write, fsync_dir, write_temporary


def test_atomic_write_creates_and_replaces_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    atomic_write(target, b"first")
    atomic_write(target, b"second", sync_dir=False)
    fsync_dir(tmp_path)
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.dcm"
    atomic_write(target, b"old")
    blocker = tmp_path / "dir.dcm"
    blocker.mkdir()
    (blocker / "inside").write_bytes(b"x")            # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        atomic_write(blocker, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "dir.dcm"]


def test_write_temporary_is_hidden_and_complete(tmp_path: Path) -> None:
    tmp = write_temporary(b"data", tmp_path, suffix=".dcm", sync=False)
    assert tmp.name.startswith(".tmp-") and tmp.suffix == ".dcm" and tmp.read_bytes() == b"data"
    with pytest.raises(FileNotFoundError):
        write_temporary(b"data", tmp_path / "missing")


def test_atomic_write_of_several_buffers_is_private_and_in_order(tmp_path: Path) -> None:
    target = tmp_path / "b.dcm"
    payload = bytearray(b"pixels" * 100_000)
    with memoryview(payload) as view:
        atomic_write(target, [b"meta:", view])
    assert target.read_bytes() == b"meta:" + bytes(payload)
    assert target.stat().st_mode & 0o777 == 0o600      # spooled CT is PHI: owner only
    assert [p.name for p in tmp_path.iterdir()] == ["b.dcm"]
