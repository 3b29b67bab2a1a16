"""The routing rule engine (ct2mri_node.route.rules) on real pydicom data sets: what holds, what
decides, and that odd data fails an entry instead of raising."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ct2mri_node.config import NodeConfig, parse_config
from ct2mri_node.route import Decision, EntryResult, SeriesFacts, decide, explain, format_explanation, read_facts


def _ct(**attrs: Any) -> Dataset:
    """A CT header like a planning CT's first instance; ``attrs`` override or (None) remove."""
    ds = Dataset()
    ds.Modality = "CT"
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "Head PLANNING 2mm"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "2.5"
    ds.PixelSpacing = ["0.48828125", "0.48828125"]
    ds.KVP = "120"
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def _config(tmp_path: Path, rules: list[dict[str, Any]] | None, **extra: Any) -> NodeConfig:
    data: dict[str, Any] = {"destinations": [{"name": "tps", "type": "folder", "path": "tps"},
                                             {"name": "pacs", "type": "folder", "path": "pacs"}], **extra}
    if rules is not None:
        data.setdefault("models", {"head": {}, "pelvis": {}})
        data["rules"] = rules
    return parse_config(data, tmp_path, "test")


def _run(config: NodeConfig, ds: Dataset, calling_ae: str | None = None) -> tuple[list[Any], Decision]:
    """explain() and decide() on the same facts; they must agree."""
    facts = SeriesFacts(dataset=ds, calling_ae=calling_ae)
    traces, decision = explain(config, facts)
    assert decide(config, facts) == decision
    return traces, decision


def _entry(tmp_path: Path, key: str, expected: Any, ds: Dataset, calling_ae: str | None = None) -> EntryResult:
    """The one entry of a one-rule config, evaluated."""
    config = _config(tmp_path, [{"name": "only", "match": {key: expected}, "ignore": True}])
    traces, decision = _run(config, ds, calling_ae)
    (entry,) = traces[0].entries
    assert traces[0].matched == entry.held
    assert decision.rule == ("only" if entry.held else "(no rule)")
    return entry


@pytest.mark.parametrize(
    ("pattern", "held"),
    [("planning", True), ("PLAN", True), ("^head", True), ("^plan", False), ("2MM$", True),
     ("head.*mm", True), ("pelvis", False)],
)
def test_regex_is_a_case_insensitive_unanchored_search(tmp_path: Path, pattern: str, held: bool) -> None:
    entry = _entry(tmp_path, "SeriesDescription", pattern, _ct())
    assert entry.held is held
    assert entry.actual == "Head PLANNING 2mm"
    assert entry.expected == f"/{pattern}/i"


def test_multi_valued_attribute_is_matched_joined_with_backslash(tmp_path: Path) -> None:
    primary = _entry(tmp_path, "ImageType", r"^ORIGINAL\\PRIMARY", _ct())
    assert primary.held and primary.actual == "ORIGINAL\\PRIMARY\\AXIAL"
    assert not _entry(tmp_path, "ImageType", "LOCALIZER", _ct()).held
    localizer = _ct(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert _entry(tmp_path, "ImageType", "localizer", localizer).held
    assert not _entry(tmp_path, "ImageType", r"^ORIGINAL\\SECONDARY", localizer).held


def test_missing_or_empty_attribute_fails_a_regex(tmp_path: Path) -> None:
    missing = _entry(tmp_path, "ContrastBolusAgent", ".", _ct())
    assert (missing.held, missing.actual, missing.note) == (False, None, "missing")
    empty = _entry(tmp_path, "BodyPartExamined", ".*", _ct(BodyPartExamined=""))
    assert (empty.held, empty.actual, empty.note) == (False, None, "missing")
    # present: ".*" holds for any non-empty value
    assert _entry(tmp_path, "ContrastBolusAgent", ".", _ct(ContrastBolusAgent="IOMERON 350")).held


@pytest.mark.parametrize(
    ("bounds", "thickness", "held"),
    [({"max": 3}, "2.5", True), ({"max": 3}, "3", True), ({"max": 3}, "3.01", False),
     ({"min": 1}, "1", True), ({"min": 1}, "0.625", False), ({"min": 1, "max": 5}, "5", True),
     ({"min": 1, "max": 5}, "5.5", False)],
)
def test_range_bounds_are_inclusive(tmp_path: Path, bounds: dict[str, float], thickness: str, held: bool) -> None:
    entry = _entry(tmp_path, "SliceThickness", bounds, _ct(SliceThickness=thickness))
    assert entry.held is held and entry.actual == thickness and entry.note == ""


def test_range_checks_every_value_of_pixel_spacing(tmp_path: Path) -> None:
    bounds = {"min": 0.4, "max": 1.0}
    both = _entry(tmp_path, "PixelSpacing", bounds, _ct())
    assert both.held and both.actual == "0.48828125\\0.48828125" and both.expected == "0.4 .. 1"
    assert not _entry(tmp_path, "PixelSpacing", bounds, _ct(PixelSpacing=["0.5", "1.2"])).held
    assert not _entry(tmp_path, "PixelSpacing", bounds, _ct(PixelSpacing=["0.3", "0.5"])).held
    missing = _entry(tmp_path, "PixelSpacing", bounds, _ct(PixelSpacing=None))
    assert (missing.held, missing.note) == (False, "missing")


def test_range_on_values_that_are_not_numbers_fails_with_a_note(tmp_path: Path) -> None:
    nan = _ct(CTDIvol=float("nan"))   # FD
    entry = _entry(tmp_path, "CTDIvol", {"min": 0}, nan)
    assert (entry.held, entry.note) == (False, "not numeric")
    assert _entry(tmp_path, "CTDIvol", {"max": 20}, _ct(CTDIvol=12.5)).held
    ds = _ct()
    tag = Tag("SliceThickness")
    ds[tag] = RawDataElement(tag, "DS", 4, b"thin", 0, True, True)   # as read from a malformed file
    bad = _entry(tmp_path, "SliceThickness", {"max": 3}, ds)
    assert not bad.held and bad.note in ("not numeric", "unreadable value")


def test_calling_ae_matches_the_sender(tmp_path: Path) -> None:
    held = _entry(tmp_path, "calling_ae", "^ct_scan", _ct(), calling_ae="CT_SCANNER1")
    assert held.held and held.actual == "CT_SCANNER1"
    assert not _entry(tmp_path, "calling_ae", "^ct_scan", _ct(), calling_ae="PACS").held
    unknown = _entry(tmp_path, "calling_ae", ".", _ct(), calling_ae=None)
    assert (unknown.held, unknown.actual, unknown.note) == (False, None, "unknown sender")


def test_all_entries_must_hold_and_each_is_traced(tmp_path: Path) -> None:
    config = _config(tmp_path, [{"name": "thin-head", "match": {"BodyPartExamined": "head", "SliceThickness": {"max": 2},
                                                                "KVP": "120"}, "translate": "head"}])
    traces, decision = _run(config, _ct())
    assert [(e.key, e.held) for e in traces[0].entries] == [("BodyPartExamined", True), ("SliceThickness", False),
                                                            ("KVP", True)]
    assert not traces[0].matched and decision.rule == "(no rule)"
    _, thin = _run(config, _ct(SliceThickness="1.0"))
    assert thin == Decision("thin-head", "translate", "head", None, None)


DEPARTMENT = [
    {"name": "contrast", "match": {"ContrastBolusAgent": "."}, "refuse": "contrast-enhanced CT is out of scope"},
    {"name": "head-planning", "match": {"BodyPartExamined": "head|brain", "SliceThickness": {"max": 3}},
     "translate": "head"},
    {"name": "pelvis-planning", "match": {"BodyPartExamined": "pelvis|prostate"}, "translate": "pelvis",
     "destinations": ["tps"]},
    {"name": "localizers", "match": {"ImageType": "LOCALIZER"}, "ignore": True},
    {"name": "any-head", "match": {"BodyPartExamined": "head"}, "refuse": "head CT thicker than 3 mm"},
]


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({}, Decision("head-planning", "translate", "head", None, None)),
        ({"BodyPartExamined": "BRAIN"}, Decision("head-planning", "translate", "head", None, None)),
        ({"BodyPartExamined": "PROSTATE"}, Decision("pelvis-planning", "translate", "pelvis", ("tps",), None)),
        ({"ContrastBolusAgent": "IOMERON"}, Decision("contrast", "refuse", None, None, "contrast-enhanced CT is out of scope")),
        ({"SliceThickness": "5"}, Decision("any-head", "refuse", None, None, "head CT thicker than 3 mm")),
        ({"BodyPartExamined": "CHEST", "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
         Decision("localizers", "ignore", None, None, "ignored by rule 'localizers'")),
        ({"BodyPartExamined": "KNEE"}, Decision("(no rule)", "ignore", None, None, "no rule matched")),
        ({"BodyPartExamined": None}, Decision("(no rule)", "ignore", None, None, "no rule matched")),
    ],
)
def test_first_matching_rule_decides(tmp_path: Path, attrs: dict[str, Any], expected: Decision) -> None:
    traces, decision = _run(_config(tmp_path, DEPARTMENT), _ct(**attrs))
    assert decision == expected
    assert [t.name for t in traces] == [r["name"] for r in DEPARTMENT]   # every rule, in order
    assert [t.action for t in traces] == ["refuse", "translate", "translate", "ignore", "refuse"]


def test_rules_after_the_deciding_one_are_evaluated_and_shown_not_reached(tmp_path: Path) -> None:
    traces, decision = _run(_config(tmp_path, DEPARTMENT), _ct())
    assert decision.rule == "head-planning"
    assert [t.matched for t in traces] == [False, True, False, False, True]   # any-head would match too
    text = format_explanation(traces, decision)
    lines = text.splitlines()
    assert "  2. head-planning: translate (model head, every destination): MATCHED, decides" in lines
    assert "  5. any-head: refuse (head CT thicker than 3 mm): not reached (would also match)" in lines
    assert "  1. contrast: refuse (contrast-enhanced CT is out of scope): no match" in lines
    assert 'held   BodyPartExamined: expected /head|brain/i, actual "HEAD"' in text
    assert 'FAILED ContrastBolusAgent: expected /./i, actual (missing)' in text
    assert lines[-1] == "decision: translate with model 'head' (rule 'head-planning'), results to every destination"


def test_empty_match_matches_every_series(tmp_path: Path) -> None:
    config = _config(tmp_path, [{"name": "pelvis", "match": {"BodyPartExamined": "pelvis"}, "translate": "pelvis"},
                                {"name": "everything-else", "translate": "head"}])
    traces, decision = _run(config, Dataset())
    assert traces[1].entries == () and traces[1].matched
    assert decision == Decision("everything-else", "translate", "head", None, None)
    assert "(empty match: matches every series)" in format_explanation(traces, decision)


def test_no_rules_section_translates_with_the_only_model(tmp_path: Path) -> None:
    traces, decision = _run(_config(tmp_path, None), _ct())
    assert traces == [] and decision == Decision("(default)", "translate", "default", None, None)
    named = _config(tmp_path, None, models={"brain": {"steps": 4}})
    assert _run(named, Dataset())[1] == Decision("(default)", "translate", "brain", None, None)
    assert format_explanation(*_run(named, _ct())).endswith(
        "decision: translate with model 'brain' (no rules section), results to every destination")


def test_no_rule_matched_is_ignored(tmp_path: Path) -> None:
    traces, decision = _run(_config(tmp_path, DEPARTMENT[:3]), _ct(BodyPartExamined="ABDOMEN"))
    assert decision == Decision("(no rule)", "ignore", None, None, "no rule matched")
    assert not any(t.matched for t in traces)
    assert format_explanation(traces, decision).endswith("decision: ignore (no rule matched)")
    empty_rules = _config(tmp_path, [], models={"head": {}})
    assert _run(empty_rules, _ct())[1].rule == "(no rule)"


def test_odd_data_never_raises(tmp_path: Path) -> None:
    """Non-ASCII text, undecodable bytes, a sequence where text is expected: entries fail or hold, no exception."""
    ds = _ct(SeriesDescription="Schädel nativ ÄÖÜ")
    tag = Tag("ProtocolName")
    ds[tag] = RawDataElement(tag, "LO", 4, b"\xff\xfe\x00x", 0, True, True)
    ds.ReferencedImageSequence = [Dataset()]
    config = _config(tmp_path, [
        {"name": "umlaut", "match": {"SeriesDescription": "SCHÄDEL", "ProtocolName": "x", "PatientName": "."},
         "translate": "head"},
        {"name": "range-on-text-value", "match": {"KVP": {"min": 80}}, "ignore": True},
    ])
    traces, decision = _run(config, ds)
    umlaut = traces[0].entries
    assert umlaut[0].held and umlaut[0].actual == "Schädel nativ ÄÖÜ"
    assert umlaut[2].note == "missing"
    assert decision.rule == "range-on-text-value"
    format_explanation(traces, decision)  # renders unprintable characters without raising
    assert "\\xff" in format_explanation(traces, decision) or "ÿ" in format_explanation(traces, decision)


def test_read_facts_reads_the_header_without_pixels(tmp_path: Path) -> None:
    from ct2mri_node.errors import InputError

    ds = _ct(SOPClassUID=pydicom.uid.CTImageStorage, SOPInstanceUID=pydicom.uid.generate_uid())
    ds.PixelData = b"\0\0" * 16
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = 16
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    facts = read_facts(path, calling_ae="CT1")
    assert facts.calling_ae == "CT1" and facts.dataset.BodyPartExamined == "HEAD"
    assert "PixelData" not in facts.dataset
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(InputError, match="notes.txt"):
        read_facts(tmp_path / "notes.txt")
