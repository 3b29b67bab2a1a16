"""The status page's routes on the ops HTTP server (``health.py`` mounts them).

``GET /`` lists jobs newest first (``?state=failed``, ``?page=N``), ``GET /jobs/<id>`` shows one
job, ``GET /jobs/<id>/qa.png`` its QA montage (``ops/preview.py``), ``GET /jobs/<id>/<id>.*.png``
any other preview image the job has (e.g. an uncertainty map). Read-only unless
``ops.allow_actions``: then every page needs HTTP basic authentication against ``ops.users``
and a failed job's page has a Retry button (``POST /jobs/<id>/retry``), checked by a CSRF
token and by the Origin (or Referer) header. Patient name, ID and birth date are shown only
with ``ops.show_phi``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom
from pydicom.errors import InvalidDicomError

from ..config import NodeConfig
from ..errors import JobError
from ..jobs.store import STATES, Job, JobStore
from . import pages
from .auth import CsrfTokens, verify_password
from .preview import PREVIEW_SUFFIX

log = logging.getLogger(__name__)

#: Jobs per list page.
PAGE_SIZE = 50
#: Series headers remembered (job id -> SeriesInfo), so a reload reads no files.
_CACHE_SIZE = 4096
_HTML = "text/html; charset=utf-8"
_JOB_RE = re.compile(r"^/jobs/(\d{1,18})(?:/([A-Za-z0-9_.-]+))?/?$")


@dataclass
class Response:
    """What a route answers."""

    code: int
    body: bytes
    content_type: str = _HTML
    headers: dict[str, str] = field(default_factory=dict)


class StatusPages:
    """The status page of one node: its job store, spool and ``ops`` settings."""

    def __init__(self, config: NodeConfig, store: JobStore | None) -> None:
        self.config = config
        self.store = store
        self.output = config.spool_dir / "output"
        self.incoming = config.spool_dir / "incoming"
        self.csrf = CsrfTokens()
        self._series: OrderedDict[int, pages.SeriesInfo] = OrderedDict()
        self._lock = threading.Lock()

    # -- routing ---------------------------------------------------------------------------
    def get(self, target: str, headers: Mapping[str, str]) -> Response | None:
        """Answer a GET of ``target`` (path and query), or None when it is not a status page path."""
        parts = urlsplit(target)
        match = _JOB_RE.match(parts.path)
        if parts.path != "/" and match is None:
            return None
        user, denied = self._authenticate(headers)
        if denied is not None:
            return denied
        if self.store is None:
            return Response(503, pages.message("Not ready", "the job store is not open yet"))
        viewer = pages.Viewer(user=user, show_phi=self.config.ops.show_phi,
                              csrf=self.csrf.token(user) if user is not None else None)
        if match is None:
            return self._list(parse_qs(parts.query), viewer)
        job_id, name = int(match.group(1)), match.group(2)
        if name is None:
            return self._job(job_id, viewer)
        return self._image(job_id, name)

    def post(self, target: str, headers: Mapping[str, str], body: bytes) -> Response | None:
        """Answer a POST (only ``/jobs/<id>/retry``), or None when it is not a status page path."""
        match = _JOB_RE.match(urlsplit(target).path)
        if match is None or match.group(2) != "retry":
            return None
        if not self.config.ops.allow_actions:
            return Response(403, pages.message("Read-only", "this status page is read-only "
                                               "(ops.allow_actions is off); use `ct2mri-node retry`"))
        user, denied = self._authenticate(headers)
        if denied is not None or user is None:
            return denied or Response(401, b"")
        job_id = int(match.group(1))
        back = f"/jobs/{job_id}"
        if not self._same_origin(headers):
            log.warning("status page: refused a retry of job %d by %s from another origin", job_id, user)
            return Response(403, pages.message("Refused", "the request did not come from this status page", back))
        token = parse_qs(body.decode("ascii", "replace")).get("csrf", [""])[0]
        if not self.csrf.check(user, token):
            log.warning("status page: refused a retry of job %d by %s: bad form token", job_id, user)
            return Response(403, pages.message("Refused", "the form has expired; reload the job page", back))
        if self.store is None:
            return Response(503, pages.message("Not ready", "the job store is not open yet", back))
        try:
            self.store.retry(job_id)
        except JobError as exc:
            return Response(409, pages.message("Cannot retry", str(exc), back))
        log.info("job %d queued again from the status page by %s", job_id, user)
        return Response(303, b"", headers={"Location": back})

    # -- security --------------------------------------------------------------------------
    def _authenticate(self, headers: Mapping[str, str]) -> tuple[str | None, Response | None]:
        """(user, None) when authenticated or no authentication is needed (user None then);
        (None, 401 response) otherwise."""
        if not self.config.ops.allow_actions:
            return None, None
        header = headers.get("Authorization") or ""
        user = None
        if header.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name, password = "", ""
            stored = self.config.ops.users.get(name)
            if stored is not None and verify_password(password, stored):
                user = name
        if user is None:
            return None, Response(401, pages.message("Sign in", "this status page needs a user from ops.users"),
                                  headers={"WWW-Authenticate": 'Basic realm="ct2mri-node", charset="UTF-8"'})
        return user, None

    @staticmethod
    def _same_origin(headers: Mapping[str, str]) -> bool:
        """The POST came from a page of this server: its Origin (or else Referer) names our Host."""
        host = headers.get("Host")
        if not host:
            return False
        origin = headers.get("Origin")
        if origin and origin != "null":
            return urlsplit(origin).netloc == host
        referer = headers.get("Referer")
        return bool(referer) and urlsplit(referer).netloc == host

    # -- pages -----------------------------------------------------------------------------
    def _list(self, query: Mapping[str, list[str]], viewer: pages.Viewer) -> Response:
        assert self.store is not None
        state = (query.get("state") or [None])[0] or None
        if state is not None and state not in STATES:
            return Response(400, pages.message("Bad filter", f"unknown state {state!r}; one of {', '.join(STATES)}"))
        raw = (query.get("page") or ["1"])[0]
        if not raw.isdigit() or int(raw) < 1:
            return Response(400, pages.message("Bad page", f"page must be a number from 1, not {raw!r}"))
        page = int(raw)
        counts, _ = self.store.state_counts()     # one indexed GROUP BY gives the filter counts and the total
        total = counts.get(state, 0) if state is not None else sum(counts.values())
        jobs = self.store.page((page - 1) * PAGE_SIZE, PAGE_SIZE, state)
        series = {job.id: self.series_info(job) for job in jobs}
        body = pages.job_list(jobs, series, state=state, page=page, pages=math.ceil(total / PAGE_SIZE),
                              total=total, counts=counts, viewer=viewer)
        return Response(200, body)

    def _job(self, job_id: int, viewer: pages.Viewer) -> Response:
        assert self.store is not None
        try:
            job = self.store.get(job_id)
        except JobError:
            return Response(404, pages.message("No such job", f"there is no job {job_id}"))
        images = [("qa.png" if name == f"{job_id}{PREVIEW_SUFFIX}" else name) for name in self.images(job_id)]
        body = pages.job_page(job, self.series_info(job), self.store.provenance(job_id), images, viewer)
        return Response(200, body)

    def _image(self, job_id: int, name: str) -> Response:
        if name == "retry":
            return Response(405, pages.message("Use the button", "retry is a POST from the job page"),
                            headers={"Allow": "POST"})
        file = f"{job_id}{PREVIEW_SUFFIX}" if name == "qa.png" else name
        if file not in self.images(job_id):
            return Response(404, pages.message("No such image", f"job {job_id} has no image {name}"))
        try:
            data = (self.output / file).read_bytes()
        except OSError:
            return Response(404, pages.message("No such image", f"job {job_id} has no image {name}"))
        return Response(200, data, "image/png", {"Cache-Control": "no-cache"})

    # -- data ------------------------------------------------------------------------------
    def images(self, job_id: int) -> list[str]:
        """The PNG files beside the job's output folder (``<id>.preview.png`` first, then the others)."""
        prefix = f"{job_id}."
        try:
            names = [e.name for e in os.scandir(self.output)
                     if e.name.startswith(prefix) and e.name.endswith(".png") and e.is_file()]
        except OSError:
            return []
        return sorted(names, key=lambda n: (n != f"{job_id}{PREVIEW_SUFFIX}", n))

    def series_info(self, job: Job) -> pages.SeriesInfo:
        """Series description (and, with ``ops.show_phi``, patient fields) from the spooled CT header."""
        with self._lock:
            if job.id in self._series:
                self._series.move_to_end(job.id)
                return self._series[job.id]
        info = self._read_header(job.series_uid)
        if info is None:
            return pages.SeriesInfo()
        with self._lock:
            self._series[job.id] = info
            while len(self._series) > _CACHE_SIZE:
                self._series.popitem(last=False)
        return info

    def _read_header(self, series_uid: str) -> pages.SeriesInfo | None:
        folder = self.incoming / series_uid
        if not re.fullmatch(r"[0-9.]{1,64}", series_uid):
            return None
        try:
            first = next((Path(e.path) for e in os.scandir(folder)
                          if e.name.endswith(".dcm") and not e.name.startswith(".")), None)
            if first is None:
                return None
            ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=[
                "SeriesDescription", "PatientName", "PatientID", "PatientBirthDate"])
        except (OSError, InvalidDicomError, ValueError) as exc:
            log.debug("status page: cannot read a header of series %s: %s", series_uid, exc)
            return None
        show = self.config.ops.show_phi

        def text(keyword: str) -> str | None:
            value = ds.get(keyword)
            return str(value) if value not in (None, "") else None

        return pages.SeriesInfo(
            description=text("SeriesDescription"),
            patient_name=text("PatientName") if show else None,
            patient_id=text("PatientID") if show else None,
            birth_date=text("PatientBirthDate") if show else None,
        )
