"""Routing: which CT series are translated, by which model, and where the results go.

``rules`` is the pure rule engine (a config and the facts of a series in, a decision out);
``facts`` reads those facts from a file on disk. Neither sends, spools nor translates.
"""

from __future__ import annotations

from .facts import FolderScan, SeriesFacts, read_facts, scan_series_folder
from .rules import ACTIONS, Decision, EntryResult, RuleTrace, decide, explain, format_explanation

__all__ = [
    "ACTIONS", "Decision", "EntryResult", "FolderScan", "RuleTrace", "SeriesFacts",
    "decide", "explain", "format_explanation", "read_facts", "scan_series_folder",
]
