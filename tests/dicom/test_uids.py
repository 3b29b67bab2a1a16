"""Deterministic UIDs: same job -> same UIDs; anything that changes pixels -> new UIDs."""

from __future__ import annotations

from ct2mri_node.deliver.uids import derive_output_uids, instances_digest, is_valid_uid, uid_from

SOURCES = [f"1.2.3.{i}" for i in range(1, 6)]


def test_same_inputs_same_uids() -> None:
    a = derive_output_uids("1.2.3", SOURCES, "ab" * 32, ("ddim", 20, 0))
    b = derive_output_uids("1.2.3", list(SOURCES), "ab" * 32, ("ddim", 20, 0))
    assert a == b
    assert len(set(a.sop_instance_uids)) == len(SOURCES)
    assert a.series_instance_uid not in a.sop_instance_uids
    assert all(is_valid_uid(u) and u.startswith("2.25.")
               for u in (a.series_instance_uid, *a.sop_instance_uids))


def test_each_input_changes_the_series_uid() -> None:
    base = derive_output_uids("1.2.3", SOURCES, "ab" * 32, ("ddim", 20, 0)).series_instance_uid
    variants = [
        derive_output_uids("1.2.4", SOURCES, "ab" * 32, ("ddim", 20, 0)),
        derive_output_uids("1.2.3", SOURCES[:-1], "ab" * 32, ("ddim", 20, 0)),
        derive_output_uids("1.2.3", SOURCES, "cd" * 32, ("ddim", 20, 0)),
        derive_output_uids("1.2.3", SOURCES, "ab" * 32, ("ddim", 21, 0)),
        derive_output_uids("1.2.3", SOURCES, "ab" * 32, ("ddim", 20, 1)),
        derive_output_uids("1.2.3", SOURCES, "ab" * 32, ("ddpm", 20, 0)),
    ]
    assert len({base, *(v.series_instance_uid for v in variants)}) == 7


def test_digest_ignores_arrival_order() -> None:
    assert instances_digest(SOURCES) == instances_digest(reversed(SOURCES))
    assert instances_digest(SOURCES) != instances_digest(SOURCES[:-1])


def test_uid_syntax() -> None:
    assert uid_from("x", 1) == uid_from("x", 1) != uid_from("x", "1")
    assert is_valid_uid("1.2.840.10008.1.2")
    for bad in ("", "1..2", "1.02", "../etc", "1.2.a", "1." * 40):
        assert not is_valid_uid(bad)
