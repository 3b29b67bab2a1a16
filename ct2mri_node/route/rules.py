"""The rule engine: which rule decides a series, and why (pure: config and facts in, decision out).

Rules are tried in order and the first whose ``match`` holds decides; every entry of a match
must hold, and an empty match holds for every series. Entries:

* a string is a case-insensitive regular expression, searched (``re.search``, not anchored) in
  the attribute's value as text; a multi-valued attribute is its values joined with ``\\``
  (ImageType ``ORIGINAL\\PRIMARY\\AXIAL``), so ``"^ORIGINAL\\\\PRIMARY"`` (YAML, double-quoted)
  and ``"LOCALIZER"`` both work. A missing or empty attribute fails (note ``missing``).
* ``calling_ae`` is matched the same way against the sender's AE title; an unknown sender
  (``None``, e.g. a series found in the spool after a restart) fails (note ``unknown sender``).
* ``{min, max}`` holds when the attribute has at least one value and every value (PixelSpacing
  has two) is a finite number in [min, max], bounds included (notes ``missing``, ``not numeric``).

``explain`` evaluates EVERY rule, also those after the deciding one, so that an admin sees what
each rule would do; ``RuleTrace.matched`` says whether a rule's match holds on its own, and the
decision names the first such rule. Nothing here raises on odd data (bytes, sequences,
non-ASCII text, unreadable values): such an entry fails with a note.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from ..config import CALLING_AE_KEY, DEFAULT_MODEL_NAME, NodeConfig, RangeMatch, Rule
from .facts import SeriesFacts

log = logging.getLogger(__name__)

#: The actions a decision can take.
ACTIONS = ("translate", "ignore", "refuse")
#: ``Decision.rule`` when no rule matched (the series is ignored).
NO_RULE = "(no rule)"
#: ``Decision.rule`` when the config has no ``rules:`` section (the only model translates).
DEFAULT_RULE = "(default)"


@dataclass(frozen=True)
class EntryResult:
    """One match entry checked against a series."""

    key: str                 # DICOM keyword or "calling_ae"
    expected: str            # "/head|brain/i" for a regex; "<= 3", ">= 1" or "1 .. 3" for a range
    actual: str | None       # the value as text (several joined with "\"); None when missing
    held: bool
    note: str = ""           # why it failed beyond the comparison: "missing", "not numeric", ...


@dataclass(frozen=True)
class RuleTrace:
    """One rule evaluated against a series (every entry, even after one fails)."""

    name: str
    action: str              # "translate" | "ignore" | "refuse"
    entries: tuple[EntryResult, ...]
    matched: bool            # every entry held (evaluated for every rule, also after the deciding one)
    detail: str = ""         # translate: the model (and destinations); refuse: the reason


@dataclass(frozen=True)
class Decision:
    """What happens to a series, and which rule said so."""

    rule: str                # the rule's name; "(no rule)" when none matched; "(default)" with no rules section
    action: str              # "translate" | "ignore" | "refuse"
    model: str | None        # model name for translate, else None
    destinations: tuple[str, ...] | None   # None: every destination
    reason: str | None       # refuse: the rule's reason; ignore: why


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _values(facts: SeriesFacts, keyword: str) -> tuple[list[Any] | None, str]:
    """The attribute's values (None: absent or unreadable) and a note for odd data."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None, "not a DICOM keyword"
    ds: Any = facts.dataset
    if tag >> 16 == 0x0002:   # file meta information lives beside the data set
        ds = getattr(ds, "file_meta", None)
    try:
        if ds is None or tag not in ds:
            return None, "missing"
        element = ds[tag]
        if element.VR == "SQ":
            return None, "a sequence"
        value = element.value
    except Exception as exc:  # noqa: BLE001 - a malformed element must fail its entry, not the node
        log.debug("cannot read %s: %s", keyword, exc)
        return None, "unreadable value"
    if value is None:
        return None, "missing"
    if isinstance(value, bytes | bytearray):
        return None, "binary value"
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return values, ""


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    return str(value).strip("\x00 ")


def _check_regex(key: str, pattern: str, actual: str | None, note: str) -> EntryResult:
    expected = f"/{pattern}/i"
    if actual is None or actual == "":
        return EntryResult(key, expected, None, False, note or "missing")
    return EntryResult(key, expected, actual, _regex(pattern).search(actual) is not None)


def _check_range(key: str, bounds: RangeMatch, values: list[Any] | None, note: str) -> EntryResult:
    expected = bounds.describe()
    texts = [_text(v) for v in values or []]
    actual = "\\".join(texts) if texts and any(texts) else None
    if actual is None:
        return EntryResult(key, expected, None, False, note or "missing")
    numbers: list[float] = []
    for value in values or []:
        try:
            number = math.nan if isinstance(value, bytes | bytearray) else float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not math.isfinite(number):
            return EntryResult(key, expected, actual, False, "not numeric")
        numbers.append(number)
    held = all((bounds.min is None or n >= bounds.min) and (bounds.max is None or n <= bounds.max) for n in numbers)
    return EntryResult(key, expected, actual, held)


def _check_entry(key: str, expected: str | RangeMatch, facts: SeriesFacts) -> EntryResult:
    """One match entry against the facts; never raises on odd data."""
    if key == CALLING_AE_KEY:
        ae = facts.calling_ae.strip() if facts.calling_ae is not None else None
        if isinstance(expected, RangeMatch):   # the config refuses this; stay total anyway
            return EntryResult(key, expected.describe(), ae, False, "not numeric")
        return _check_regex(key, expected, ae, "" if ae is not None else "unknown sender")
    values, note = _values(facts, key)
    if isinstance(expected, RangeMatch):
        return _check_range(key, expected, values, note)
    actual = "\\".join(_text(v) for v in values) if values else None
    return _check_regex(key, expected, actual, note)


def _trace(rule: Rule, facts: SeriesFacts) -> RuleTrace:
    entries = tuple(_check_entry(key, expected, facts) for key, expected in rule.match.items())
    if rule.translate is not None:
        detail = f"model {rule.translate}" + (f", destinations {', '.join(rule.destinations)}"
                                              if rule.destinations else ", every destination")
    else:
        detail = rule.refuse or ""
    return RuleTrace(rule.name, rule.action, entries, all(e.held for e in entries), detail)


def _decision_of(rule: Rule) -> Decision:
    if rule.translate is not None:
        dests = tuple(rule.destinations) if rule.destinations is not None else None
        return Decision(rule.name, "translate", rule.translate, dests, None)
    if rule.ignore:
        return Decision(rule.name, "ignore", None, None, f"ignored by rule {rule.name!r}")
    return Decision(rule.name, "refuse", None, None, rule.refuse)


def _default_decision(config: NodeConfig) -> Decision:
    names = list(config.named_models())
    model = names[0] if len(names) == 1 else DEFAULT_MODEL_NAME
    return Decision(DEFAULT_RULE, "translate", model, None, None)


_NO_MATCH = Decision(NO_RULE, "ignore", None, None, "no rule matched")


def decide(config: NodeConfig, facts: SeriesFacts) -> Decision:
    """The decision for a series: the first rule whose match holds (stops there)."""
    if config.rules is None:
        return _default_decision(config)
    for rule in config.rules:
        if all(_check_entry(key, expected, facts).held for key, expected in rule.match.items()):
            return _decision_of(rule)
    return _NO_MATCH


def explain(config: NodeConfig, facts: SeriesFacts) -> tuple[list[RuleTrace], Decision]:
    """Every rule in order, each traced entry by entry, and the decision (the same as ``decide``)."""
    if config.rules is None:
        return [], _default_decision(config)
    traces = [_trace(rule, facts) for rule in config.rules]
    for rule, trace in zip(config.rules, traces, strict=True):
        if trace.matched:
            return traces, _decision_of(rule)
    return traces, _NO_MATCH


def describe_decision(decision: Decision) -> str:
    """One line, e.g. ``translate with model 'head' (rule 'head-planning'), results to every destination``."""
    by = {DEFAULT_RULE: "no rules section", NO_RULE: "no rule matched"}.get(decision.rule, f"rule {decision.rule!r}")
    if decision.action == "translate":
        where = ("every destination" if decision.destinations is None
                 else "destinations " + ", ".join(decision.destinations))
        return f"translate with model {decision.model!r} ({by}), results to {where}"
    if decision.action == "refuse":
        return f"refuse ({by}): {decision.reason}"
    return f"{decision.action} ({by})"


def _shown(text: str | None) -> str:
    """A value for the text output: double-quoted, backslashes as is, unprintable characters escaped."""
    if text is None:
        return "(missing)"
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + '"'


def format_explanation(traces: Sequence[RuleTrace], decision: Decision) -> str:
    """Human-readable text for the CLI: every rule with its entries, then the decision."""
    lines: list[str] = []
    if not traces:
        lines.append("no rules section: every series is translated by the only model")
    else:
        lines.append("rules, in order (the first that matches decides):")
    decided = False
    for number, trace in enumerate(traces, start=1):
        if decided:
            state = "not reached" + (" (would also match)" if trace.matched else "")
        elif trace.matched:
            state, decided = "MATCHED, decides", True
        else:
            state = "no match"
        detail = f" ({trace.detail})" if trace.detail else ""
        lines.append(f"  {number}. {trace.name}: {trace.action}{detail}: {state}")
        if not trace.entries:
            lines.append("       (empty match: matches every series)")
        for e in trace.entries:
            note = f" [{e.note}]" if e.note and not (e.note == "missing" and e.actual is None) else ""
            lines.append(f"       {'held  ' if e.held else 'FAILED'} {e.key}: expected {e.expected}, "
                         f"actual {_shown(e.actual)}{note}")
    lines.append(f"decision: {describe_decision(decision)}")
    return "\n".join(lines)
