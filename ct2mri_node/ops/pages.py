"""Server-rendered HTML of the status page: the job list and one job (pure functions, no I/O).

Every value that comes from a record, a DICOM header or the configuration goes through
``html.escape``. No JavaScript, no assets from elsewhere: a small inline style sheet, images
served by the node itself, and a ``<meta http-equiv=refresh>`` on the list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from ..jobs.store import STATES, Job

#: Seconds between two automatic reloads of the list page.
REFRESH_S = 10

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .4em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#eee}.s-done{color:#1a7f37}.s-failed{color:#c62828;font-weight:600}.s-ignored{color:#777}.s-refused{color:#b26a00;font-weight:600}.s-superseded{color:#777;font-style:italic}
.s-queued,.s-received{color:#8a6d00}.s-translating,.s-sending{color:#1565c0}
nav a{margin-right:.6em}nav a.on{font-weight:700;text-decoration:none;color:#222}
.small{font-size:12px;color:#555}.uid{font-family:monospace;font-size:12px}img{max-width:100%;border:1px solid #ccc}
.cols{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.cols>div{min-width:0}figure{margin:0 0 1em}
"""


@dataclass(frozen=True)
class SeriesInfo:
    """What the page shows of a job's CT series (patient fields only with ``ops.show_phi``)."""

    description: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    birth_date: str | None = None


@dataclass(frozen=True)
class Viewer:
    """Who looks and what they may do: ``csrf`` is set when the Retry button is offered."""

    user: str | None = None
    csrf: str | None = None
    show_phi: bool = False


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _state(state: str) -> str:
    return f'<span class="s-{escape(state)}">{escape(state)}</span>'


def _timings(timings: Mapping[str, float]) -> str:
    parts = [f"{escape(k)} {v:.2f}&nbsp;s" for k, v in sorted(timings.items()) if not k.endswith("_at")]
    return "<br>".join(parts) or "-"


def _deliveries(job: Job) -> str:
    if not job.deliveries:
        planned = "every destination" if job.destinations is None else ", ".join(job.destinations)
        return f'<span class="small">to {escape(planned)}</span>'
    return "<br>".join(f"{escape(d.destination)}: {_state(d.state)}"
                       + (f' <span class="small">({d.attempts} attempt{"s" if d.attempts != 1 else ""})</span>')
                       for d in job.deliveries)


def _series(info: SeriesInfo, viewer: Viewer) -> str:
    text = escape(info.description) if info.description else '<span class="small">-</span>'
    if viewer.show_phi:
        phi = [v for v in (info.patient_name, info.patient_id, info.birth_date) if v]
        if phi:
            text += f'<br><span class="small">{escape(" / ".join(phi))}</span>'
    return text


def _page(title: str, body: str, refresh: bool = False) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>{body}"
            '<p class="small">ct2mri-node: synthetic MR, not for diagnosis.</p></body></html>').encode()


def _link(state: str | None, page: int) -> str:
    query = {k: v for k, v in (("state", state), ("page", page if page > 1 else None)) if v is not None}
    return "/" + (f"?{urlencode(query)}" if query else "")


def job_list(jobs: Sequence[Job], series: Mapping[int, SeriesInfo], *, state: str | None, page: int,
             pages: int, total: int, counts: Mapping[str, int], viewer: Viewer) -> bytes:
    """The list page: one page of jobs (newest first) with the state filter and the pager."""
    nav = [f'<a href="/"{" class=on" if state is None else ""}>all ({sum(counts.values())})</a>']
    nav += [f'<a href="{escape(_link(s, 1))}"{" class=on" if s == state else ""}>{escape(s)} ({counts.get(s, 0)})</a>'
            for s in STATES]
    rows = []
    for job in jobs:
        rule = escape(job.rule or "-") + (f"<br>{escape(job.model)}" if job.model else "")
        rows.append(
            f'<tr class="job"><td><a href="/jobs/{job.id}">{job.id}</a></td><td>{_state(job.state)}</td>'
            f"<td>{rule}</td><td>{_series(series.get(job.id, SeriesInfo()), viewer)}</td>"
            f'<td class="small">{_when(job.created_at)}</td><td class="small">{_timings(job.timings)}</td>'
            f"<td>{_deliveries(job)}</td><td>{escape(job.reason or '')}</td></tr>")
    pager = f"page {page} of {max(pages, 1)} ({total} job{'s' if total != 1 else ''})"
    if page > 1:
        pager = f'<a href="{escape(_link(state, page - 1))}">newer</a> ' + pager
    if page < pages:
        pager += f' <a href="{escape(_link(state, page + 1))}">older</a>'
    table = ("<table><thead><tr><th>job</th><th>state</th><th>rule / model</th><th>series</th><th>created (UTC)</th>"
             "<th>timings</th><th>destinations</th><th>reason</th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>") if rows else "<p>No jobs here yet.</p>"
    body = (f"<h1>ct2mri-node jobs</h1><nav>{''.join(nav)}</nav><p class=small>{pager}; "
            f"reloads every {REFRESH_S} s</p>{table}<p class=small>{pager}</p>")
    return _page("ct2mri-node jobs", body, refresh=True)


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _uid(value: Any) -> str:
    if isinstance(value, list):
        return "<br>".join(_uid(v) for v in value)
    return f'<span class="uid">{escape(str(value))}</span>' if value is not None else "-"


def job_page(job: Job, info: SeriesInfo, provenance: Mapping[str, Any] | None, images: Sequence[str],
             viewer: Viewer) -> bytes:
    """One job: its record, provenance, per-destination history, timings and preview images."""
    summary = _kv([
        ("state", _state(job.state)), ("reason", escape(job.reason or "-")),
        ("rule", escape(job.rule or "-")), ("action", escape(job.action or "-")), ("model", escape(job.model or "-")),
        ("series", _series(info, viewer)), ("series UID", _uid(job.series_uid)), ("study UID", _uid(job.study_uid)),
        ("created", _when(job.created_at)), ("queued", _when(job.queued_at)), ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)), ("attempts", str(job.attempts)),
        ("purged", _when(job.purged_at) if job.purged_at else "no"),
    ])
    body = f'<p><a href="/">all jobs</a></p><h1>job {job.id}</h1><div class="cols"><div>{summary}'
    if viewer.csrf is not None and job.state in ("failed", "refused") and job.purged_at is None:
        body += (f'<form method="post" action="/jobs/{job.id}/retry"><input type="hidden" name="csrf" '
                 f'value="{escape(viewer.csrf)}"><button type="submit">Retry</button> '
                 f'<span class="small">as {escape(viewer.user or "")}</span></form>')
    body += "<h2>Destinations</h2>"
    if job.deliveries:
        body += ("<table><tr><th>destination</th><th>state</th><th>attempts</th><th>send</th><th>last CT to confirmed"
                 "</th><th>reason</th></tr>")
        for d in job.deliveries:
            send, latency = job.timings.get(f"send:{d.destination}"), job.timings.get(f"latency:{d.destination}")
            body += (f"<tr><td>{escape(d.destination)}</td><td>{_state(d.state)}</td><td>{d.attempts}</td>"
                     f"<td>{'-' if send is None else f'{send:.2f} s'}</td>"
                     f"<td>{'-' if latency is None else f'{latency:.2f} s'}</td><td>{escape(d.reason or '')}</td></tr>")
        body += "</table>"
    else:
        planned = "every destination" if job.destinations is None else ", ".join(job.destinations)
        body += f"<p>Nothing sent yet (to {escape(planned)}).</p>"
    body += f"<h2>Timings</h2><p>{_timings(job.timings)}</p></div><div><h2>QA images</h2>"
    if images:
        body += "".join(f'<figure><img class="qa" src="{escape(src)}" alt="{escape(caption)}">'
                        f"<figcaption class=small>{escape(caption)}</figcaption></figure>"
                        for src, caption in ((f"/jobs/{job.id}/{name}",
                                              "CT and synthetic MR: axial, coronal, sagittal" if name == "qa.png"
                                              else name) for name in images))
    else:
        body += "<p>No preview (ops.qa_preview is off, or the job has no MR series yet).</p>"
    body += "</div></div><h2>Provenance</h2>" + (_provenance(provenance) if provenance else "<p>Not translated yet.</p>")
    return _page(f"ct2mri-node job {job.id}", body)


def _provenance(record: Mapping[str, Any]) -> str:
    model = record.get("model") or {}
    sampling = record.get("sampling") or {}
    source = record.get("source") or {}
    output = record.get("output") or {}
    rows = [
        ("model", escape(f"{model.get('name', '-')} {model.get('version', '')}".strip())),
        ("architecture", escape(str(model.get("architecture", "-")))),
        ("weight hash (sha256)", _uid(model.get("weight_hash"))),
        ("sampler", escape(str(sampling.get("sampler", "-")))), ("steps", escape(str(sampling.get("steps", "-")))),
        ("seed", escape(str(sampling.get("seed", "-")))), ("samples", escape(str(sampling.get("samples", "-")))),
        ("device / precision", escape(f"{sampling.get('device', '-')} / {sampling.get('precision', '-')}")),
        ("source series UID", _uid(source.get("series_uid"))), ("source instances", escape(str(source.get("instances", "-")))),
        ("output series UID", _uid(output.get("series_uid"))), ("output instances", escape(str(output.get("instances", "-")))),
    ]
    extra = {k: v for k, v in record.items() if k not in ("model", "sampling", "source", "output")}
    return _kv(rows) + (f'<details><summary class=small>full record</summary><pre class="small">'
                        f"{escape(json.dumps(extra, indent=1, sort_keys=True, default=str))}</pre></details>")


def message(title: str, text: str, back: str = "/") -> bytes:
    """A short page that says what went wrong (or right) with a link back."""
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(text)}</p><p><a href=\"{escape(back)}\">back</a></p>")
