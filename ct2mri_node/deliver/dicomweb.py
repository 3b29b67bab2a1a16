"""DICOMweb destinations: store the MR series by STOW-RS, probe by QIDO-RS (``dicomweb-client``).

Same semantics as a DICOM destination (``send.py``; :mod:`.dispatch` picks the sender). One STOW-RS request carries the instances
not yet stored; the response's ReferencedSOPSequence and FailedSOPSequence give per-instance
results. Instances the archive confirmed are recorded in ``output/<job id>.dicomweb-<name>.json``
beside the job's series (removed with it), so a later attempt sends only the others: each
instance is stored once. Transient (``SendError(permanent=False)``, the worker backs off):
connection errors and timeouts, 408, 429 (its Retry-After is in the reason and on the error as
``retry_after_s``), 5xx, and failed instances with an out-of-resources reason (0xA7xx).
Permanent: any other 4xx (with the archive's reason), any other failure reason.
Credentials come from files or environment variables and never appear in logs or reasons.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from ..config import DicomWebAuth, DicomWebDestination
from ..errors import ConfigError, SendError
from ..fsutil import atomic_write
from .coerce import coerce_dataset
from .report import SendReport

log = logging.getLogger(__name__)

#: HTTP statuses worth trying again later.
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


class DicomWebBusy(SendError):
    """The archive asked us to come back later (429/503 with Retry-After); ``retry_after_s`` says when."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message, permanent=False, retry_after_s=retry_after_s)


def _secret(dest: DicomWebDestination, path: Path | None, env: str | None, what: str) -> str:
    """A password or token from its file (first line) or environment variable."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
        except OSError as exc:
            raise SendError(f"destination {dest.name}: cannot read the {what} file {path}: "
                            f"{exc.strerror or exc}", permanent=True) from None
    else:
        value = os.environ.get(env or "", "")
    if not value:
        where = f"file {path}" if path is not None else f"environment variable {env}"
        raise SendError(f"destination {dest.name}: the {what} ({where}) is empty or missing", permanent=True)
    return value


def _session(dest: DicomWebDestination) -> requests.Session:
    """A requests session with the destination's TLS trust and credentials."""
    session = requests.Session()
    session.verify = str(dest.ca) if dest.ca is not None else True
    auth: DicomWebAuth | None = dest.auth
    if auth is not None and auth.type == "basic":
        session.auth = (auth.username or "", _secret(dest, auth.password_file, auth.password_env, "password"))
    elif auth is not None:
        token = _secret(dest, auth.token_file, auth.token_env, "token")
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def client(dest: DicomWebDestination) -> DICOMwebClient:
    """A DICOMweb client for ``dest`` without the library's own retries (the worker backs off)."""
    try:
        # one Content-Length body (the message is in memory anyway): not every archive takes chunked uploads
        web = DICOMwebClient(dest.url, session=_session(dest), timeout=dest.timeout_s, chunk_size=2**40)
    except ValueError as exc:
        raise ConfigError(f"destination {dest.name}: {exc}") from None
    web.set_http_retry_params(retry=False)
    return web


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _body_text(response: requests.Response, limit: int = 300) -> str:
    """The first characters of a response body, on one line (the archive's reason)."""
    text = re.sub(r"\s+", " ", response.text or "").strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def _http_error(dest: DicomWebDestination, response: requests.Response, action: str) -> SendError:
    """Classify an HTTP error status of ``action`` (STOW-RS or QIDO-RS)."""
    code = response.status_code
    what = f"destination {dest.name} answered {action} with HTTP {code} {response.reason or ''}".rstrip()
    body = _body_text(response)
    if body:
        what += f": {body}"
    if code in (429, 503) and response.headers.get("Retry-After"):
        after = _retry_after(response.headers.get("Retry-After"))
        shown = f"{after:.0f} s" if after is not None else repr(response.headers["Retry-After"])
        return DicomWebBusy(f"{what}; the archive asks to retry after {shown}", after)
    if code in TRANSIENT_HTTP or code >= 500:
        return SendError(f"{what}; sending again later")
    hint = "; check auth in the destination's config" if code in (401, 403) else ""
    return SendError(what + hint, permanent=True)


def _connection_error(dest: DicomWebDestination, exc: requests.RequestException) -> SendError:
    kind = ("TLS verification failed" if isinstance(exc, requests.exceptions.SSLError)
            else "timed out" if isinstance(exc, requests.exceptions.Timeout) else "cannot connect")
    return SendError(f"destination {dest.name} ({dest.url}): {kind}: {type(exc).__name__}")


def _parse_response(response: requests.Response | None) -> pydicom.Dataset | None:
    """The STOW-RS response body as a dataset (DICOM JSON), or None when there is none."""
    if response is None or not response.content:
        return None
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("cannot read a STOW-RS response: %s", exc)
        return None


def _sidecar(files: Sequence[Path], dest: DicomWebDestination) -> Path:
    """Where the instances ``dest`` already has are recorded (beside the job's output folder)."""
    folder = files[0].parent
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dest.name)
    return folder.with_name(f"{folder.name}.dicomweb-{safe}.json")


def _stored_before(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return set()


def _failure_reason(item: pydicom.Dataset) -> int | None:
    value = item.get("FailureReason")
    return None if value is None else int(value)


def send_dicomweb(destination: DicomWebDestination, files: Sequence[Path]) -> SendReport:
    """STOW-RS the series' instances not yet stored; SendError (``permanent`` set when retrying
    cannot help) when any is not stored."""
    sidecar = _sidecar(files, destination)
    stored = _stored_before(sidecar)
    datasets = {}
    for path in files:
        ds = coerce_dataset(pydicom.dcmread(path), destination.coerce)
        datasets[str(ds.SOPInstanceUID)] = ds
    todo = [uid for uid in datasets if uid not in stored]
    if not todo:
        log.info("destination %s already has all %d instances", destination.name, len(files))
        return SendReport(destination.name, len(files))
    study = str(datasets[todo[0]].StudyInstanceUID)
    web = client(destination)
    start = time.perf_counter()
    response: requests.Response | None = None
    try:
        result = web.store_instances([datasets[u] for u in todo], study_instance_uid=study)
    except requests.HTTPError as exc:
        response = exc.response
        result = _parse_response(response)
        if result is None or "FailedSOPSequence" not in result:
            raise _http_error(destination, exc.response, "STOW-RS") from None
    except requests.RequestException as exc:
        raise _connection_error(destination, exc) from None
    elapsed = time.perf_counter() - start
    referenced = {str(i.ReferencedSOPInstanceUID) for i in result.get("ReferencedSOPSequence", [])}
    failed = {str(i.ReferencedSOPInstanceUID): _failure_reason(i) for i in result.get("FailedSOPSequence", [])}
    if response is None and not referenced and not failed:
        referenced = set(todo)   # 200 without a readable body: the archive took them all
    now_stored = referenced & set(todo)
    if now_stored:
        atomic_write(sidecar, json.dumps(sorted(stored | now_stored)).encode(), sync_dir=True)
    missing = [u for u in todo if u not in now_stored]
    if missing:
        reasons = {failed.get(u) for u in missing}   # None: neither stored nor failed (send again)
        transient = all(r is None or 0xA700 <= r <= 0xA7FF for r in reasons)
        shown = ", ".join("no result" if r is None else f"0x{r:04X}" for r in sorted(reasons, key=lambda r: r or -1))
        raise SendError(
            f"destination {destination.name} did not store {len(missing)} of {len(todo)} instance(s) "
            f"(failure reason {shown}); {len(now_stored)} stored"
            + ("; sending the rest again later" if transient else ""),
            permanent=not transient,
        )
    log.info("stored %d instances at DICOMweb destination %s", len(files), destination.name)
    return SendReport(destination.name, len(files), elapsed if now_stored else None)


def echo_dicomweb(destination: DicomWebDestination) -> None:
    """A QIDO-RS study search (limit 1) that proves the archive answers and accepts our credentials."""
    web = client(destination)
    try:
        web.search_for_studies(limit=1)
    except requests.HTTPError as exc:
        raise _http_error(destination, exc.response, "QIDO-RS") from None
    except requests.RequestException as exc:
        raise _connection_error(destination, exc) from None
