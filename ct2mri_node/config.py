"""The node's YAML configuration: one frozen pydantic model, validated once at load.

Unknown keys are errors, and every error names the offending key path
(``destinations[1].port: ...``). Relative paths in the file (``spool_dir``, a folder
destination's ``path``, a ``model.checkpoint`` directory or
``model.bundle`` folder) are resolved against the folder
that holds the YAML file, so a config behaves the same from any working directory.

Routing (issue 13): ``models:`` names several model settings (the single ``model:`` section
means one model named ``default``) and ``rules:`` says which series each one translates; the
rule engine that applies them is :mod:`ct2mri_node.route.rules`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom import config as dicom_config
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.valuerep import DSfloat, validate_value

from .errors import ConfigError

#: The embedded default configuration (runs as is on a fresh machine).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "ct2mri-node.yaml"
#: Environment variable that overrides the default configuration path.
CONFIG_ENV = "CT2MRI_NODE_CONFIG"

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash

#: The name of the one model a ``model:`` section (or no model section at all) configures.
DEFAULT_MODEL_NAME = "default"
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: ``ops.users`` password hashes: ``scrypt$N$r$p$<salt base64>$<hash base64>`` (ops/auth.py).
_PASSWORD_HASH_RE = re.compile(r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
#: The match key that means the sender's calling AE title rather than a DICOM attribute.
CALLING_AE_KEY = "calling_ae"
#: Value representations that a ``{min, max}`` range can match (every value must be a number).
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD"})
#: Value representations that cannot be matched at all (binary data, sequences).
_UNMATCHABLE_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})
#: The actions a rule can take, in the order error messages list them.
RULE_ACTIONS = ("translate", "ignore", "refuse")


class KeyedErrors(ValueError):
    """Validation errors that carry their key path below the validator's own location.

    Pydantic reports a validator's error at the location of the model or field it belongs to
    (the top level for a NodeConfig model_validator); each item here adds the rest of the path,
    e.g. ``(("rules", 2, "translate"), "no model named 'pelvs'")``, so that ``_format_errors``
    renders ``rules[2].translate: no model named 'pelvs'``.
    """

    def __init__(self, errors: Sequence[tuple[tuple[int | str, ...], str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{_key_path(path)}: {message}" for path, message in self.errors))


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae(value: str) -> str:
    """An AE title: 1-16 printable ASCII characters without backslash, not all spaces."""
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no '\\')")
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class ServerTls(_Frozen):
    """DICOM TLS for the SCP: our certificate and key; ``ca`` set means client certificates are required."""

    cert: Path
    key: Path
    ca: Path | None = None            # CA bundle that signs the callers' client certificates
    require_client_cert: bool = True  # only with ``ca``; False: verify client certificates if sent


class ClientTls(_Frozen):
    """DICOM TLS towards a destination: the CA that signs its certificate, optionally our client cert."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_hostname: str | None = None   # name checked in the peer's certificate (default: host)

    @model_validator(mode="after")
    def _cert_with_key(self) -> ClientTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


class NodeSettings(_Frozen):
    """Our own AE: title, listening port and network limits."""

    ae_title: AETitle = "CT2MRI"
    port: Annotated[int, Field(ge=0, le=65535)] = 11112   # 0: any free port (tests)
    bind_address: str = "0.0.0.0"
    max_associations: Annotated[int, Field(ge=1, le=100)] = 10
    network_timeout_s: Seconds = 60.0
    acse_timeout_s: Seconds = 30.0
    dimse_timeout_s: Seconds = 60.0
    tls: ServerTls | None = None   # set: the SCP speaks DICOM TLS only (plaintext associations fail)


class CallingAE(_Frozen):
    """One allowed caller; ``host`` (an IP address or name) restricts it to one peer."""

    ae_title: AETitle
    host: str | None = None


#: Attributes a coercion may not touch: they identify the instances and describe their pixels,
#: which stay as the node wrote them (the job's bookkeeping and every other destination rely on them).
_UNCOERCIBLE = frozenset({
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "NumberOfFrames", "PlanarConfiguration", "PixelData", "FloatPixelData",
    "DoubleFloatPixelData",
})
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})


def _coerce_value(key: str, vr: str, value: Any) -> Any:
    """One value for ``vr`` as pydicom takes it (numbers for DS/IS become their text); ValueError
    saying why it does not fit."""
    if isinstance(value, bool):
        raise ValueError(f"{value} is not a value for VR {vr}")
    if vr == "DS" and isinstance(value, int | float):
        value = str(DSfloat(value, auto_format=True))
    elif vr == "IS" and isinstance(value, int | float):
        if float(value) != int(value):
            raise ValueError(f"{value} is not an integer (VR IS)")
        value = str(int(value))
    elif vr in ("FL", "FD") and isinstance(value, int):
        value = float(value)
    elif vr in _INT_VRS and not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer (VR {vr})")
    elif vr not in ("FL", "FD") and vr not in _INT_VRS and not isinstance(value, str):
        hint = f' (quote it: "{value}")' if isinstance(value, int | float) else ""
        raise ValueError(f"{value!r} is not text for VR {vr}{hint}")
    validate_value(vr, value, dicom_config.RAISE)
    return value


def _check_coercion(key: Any, value: Any) -> Any:
    """One ``coerce`` entry: a DICOM keyword that may be changed, and a value that fits its VR
    and VM (None removes the attribute); the value as pydicom takes it, or ValueError."""
    if not isinstance(key, str) or tag_for_keyword(key) is None:
        close = difflib.get_close_matches(str(key), keyword_dict, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"{key!r} is not a DICOM keyword (e.g. RepetitionTime, InstitutionName){hint}")
    tag = tag_for_keyword(key)
    assert tag is not None
    vr = str(dictionary_VR(tag))
    if tag >> 16 == 0x0002 or vr == "UI" or key in _UNCOERCIBLE:
        raise ValueError(f"{key} identifies the instance or describes its pixels; it is sent as written "
                         "and cannot be coerced")
    if value is None:
        return None
    if vr in _BINARY_VRS or " or " in vr:
        raise ValueError(f"{key} has VR {vr}; a coercion can only remove it (null), not set it")
    values = value if isinstance(value, list) else [value]
    vm = str(dictionary_VM(tag))
    if len(values) > 1 and vm == "1":
        raise ValueError(f"{key} takes one value (VM 1), got {len(values)}")
    if not values:
        raise ValueError(f"an empty list is no value; write \"\" for an empty {key} or null to remove it")
    try:
        out = [_coerce_value(key, vr, v) for v in values]
    except ValueError as exc:
        raise ValueError(f"{value!r} does not fit {key} (VR {vr}): {str(exc).split('. Please see')[0]}") from None
    return out if isinstance(value, list) else out[0]


class _Destination(_Frozen):
    """What every destination has: a name, and the attribute coercion applied when sending to it.

    ``coerce`` (``{Keyword: value}``, null removes the attribute) changes what this destination
    receives, as a PACS coerces attributes for a receiver with quirks; the spooled series, its
    UIDs, its pixel data and what other destinations receive stay as written.
    """

    name: Annotated[str, Field(min_length=1)]
    coerce: dict[str, Any] = {}

    @field_validator("coerce", mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("coerce is a mapping of DICOM keywords to a value (null removes the attribute)")
        out: dict[str, Any] = {}
        errors: list[tuple[tuple[int | str, ...], str]] = []
        for key, item in value.items():
            try:
                out[key] = _check_coercion(key, item)
            except ValueError as exc:
                errors.append(((str(key),), str(exc)))
        if errors:
            raise KeyedErrors(errors)
        return out


class DicomDestination(_Destination):
    """A DICOM peer that receives the MR series by C-STORE."""

    type: Literal["dicom"]
    ae_title: AETitle
    host: Annotated[str, Field(min_length=1)]
    port: Port
    timeout_s: Seconds = 30.0
    tls: ClientTls | None = None


class FolderDestination(_Destination):
    """A folder that receives the MR series as files (``<path>/<series uid>/<sop uid>.dcm``)."""

    type: Literal["folder"]
    path: Path


class DicomWebAuth(_Frozen):
    """Credentials for a DICOMweb archive, read from a file or an environment variable (never logged).

    ``basic``: ``username`` and one of ``password_file`` / ``password_env``; ``bearer``: one of
    ``token_file`` / ``token_env``.
    """

    type: Literal["basic", "bearer"]
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    token_file: Path | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> DicomWebAuth:
        if self.type == "basic":
            if not self.username:
                raise ValueError("basic auth needs a username")
            if (self.password_file is None) == (self.password_env is None):
                raise ValueError("basic auth needs exactly one of password_file and password_env")
            if self.token_file is not None or self.token_env is not None:
                raise ValueError("basic auth takes a password, not token_file or token_env")
        else:
            if (self.token_file is None) == (self.token_env is None):
                raise ValueError("bearer auth needs exactly one of token_file and token_env")
            if self.username is not None or self.password_file is not None or self.password_env is not None:
                raise ValueError("bearer auth takes a token, not username or password_*")
        return self


class DicomWebDestination(_Destination):
    """A DICOMweb archive that receives the MR series by STOW-RS (``url``: the DICOMweb root)."""

    type: Literal["dicomweb"]
    url: Annotated[str, Field(min_length=1)]
    auth: DicomWebAuth | None = None
    ca: Path | None = None            # CA bundle that signs the archive's certificate (https); None: the system's
    timeout_s: Seconds = 30.0

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL of a DICOMweb root")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in auth (from a file or the environment), not in the URL")
        return value.rstrip("/")


#: Every kind of destination.
AnyDestination = DicomDestination | FolderDestination | DicomWebDestination
Destination = Annotated[AnyDestination, Field(discriminator="type")]


class SeriesSettings(_Frozen):
    """When a received series counts as complete, and what size of volume it may have."""

    quiet_period_s: Annotated[float, Field(ge=0)] = 2.0
    min_slices: Annotated[int, Field(ge=1)] = 8
    max_slices: Annotated[int, Field(ge=1)] = 2000     # more slices: the job fails with reason too_large
    max_matrix: Annotated[int, Field(ge=1)] = 1024     # more rows or columns: too_large
    restart_hold_s: Annotated[float, Field(ge=0)] = 30.0   # after a restart, series found in the spool wait this long for re-sends
    open_association_quiet_s: Annotated[float, Field(ge=0)] = 10.0   # quiet period while the sender's association stays open

    @model_validator(mode="after")
    def _slice_range(self) -> SeriesSettings:
        if self.max_slices < self.min_slices:
            raise ValueError(f"max_slices {self.max_slices} is below min_slices {self.min_slices}")
        return self


class ModelSettings(_Frozen):
    """Which checkpoint (or MONAI bundle) translates, on which device, with how many network
    evaluations and samples. ``bundle`` is the alternative to ``checkpoint``: exactly one of the
    two is given (neither: the bundled checkpoint)."""

    checkpoint: str = "bundled"
    bundle: str | None = None       # a MONAI bundle folder, instead of checkpoint
    device: str = "auto"
    steps: Annotated[int, Field(ge=1, le=1000)] | None = None   # None: the model card's default
    samples: Annotated[int, Field(ge=1, le=64)] = 1
    seed: int = 0
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5   # sliding windows: share of a patch its neighbour sees

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", value):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSettings:
        if self.bundle is not None and "checkpoint" in self.model_fields_set:
            raise ValueError("give checkpoint or bundle, not both (bundle: a MONAI bundle folder, "
                             "checkpoint: bundled or a checkpoint folder)")
        if self.bundle is not None and not self.bundle.strip():
            raise ValueError("bundle is empty; give the path of a MONAI bundle folder")
        return self

    @property
    def source(self) -> str:
        """What loads: ``bundle PATH`` or ``checkpoint PATH`` (for summaries and logs)."""
        return f"bundle {self.bundle}" if self.bundle is not None else f"checkpoint {self.checkpoint}"


class WorkerSettings(_Frozen):
    """Retry policy for sends: exponential backoff from ``backoff_initial_s``."""

    max_attempts: Annotated[int, Field(ge=1)] = 6
    backoff_initial_s: Seconds = 5.0
    backoff_max_s: Seconds = 600.0
    backoff_factor: Annotated[float, Field(ge=1)] = 2.0
    poll_interval_s: Seconds = 0.5
    backoff_jitter: Annotated[float, Field(ge=0, le=1)] = 0.2   # each delay varies by +-20 %
    max_loaded_models: Annotated[int, Field(ge=1)] = 2   # models a worker keeps loaded; beyond: least recently used dropped


class LimitSettings(_Frozen):
    """Backpressure: what the SCP refuses (0xA700 / 0xC210) before it runs out of room."""

    min_free_disk_mb: Annotated[float, Field(ge=0)] = 1024.0    # below this free space in the spool: 0xA700
    max_instance_mb: Annotated[float, Field(gt=0)] = 256.0      # larger C-STORE data sets: 0xA700
    max_instances_per_series: Annotated[int, Field(ge=1)] = 5000
    max_queued_jobs: Annotated[int, Field(ge=1)] = 100          # at this many, instances of NEW series: 0xA700
    #: One calling AE's share of the queue: at this many of ITS series queued, its new series get
    #: 0xA700 while other AEs are still admitted. None (the default): half of max_queued_jobs,
    #: rounded up (50 of 100); a node with one sender sets it to max_queued_jobs.
    max_queued_jobs_per_ae: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _share_within_queue(self) -> LimitSettings:
        if self.max_queued_jobs_per_ae is not None and self.max_queued_jobs_per_ae > self.max_queued_jobs:
            message = (f"{self.max_queued_jobs_per_ae} is above max_queued_jobs ({self.max_queued_jobs});"
                       " one AE's share cannot exceed the whole queue")
            raise KeyedErrors([(("max_queued_jobs_per_ae",), message)])
        return self

    @property
    def queued_jobs_per_ae(self) -> int:
        """The per-AE share in force: ``max_queued_jobs_per_ae``, else half the queue rounded up."""
        if self.max_queued_jobs_per_ae is not None:
            return self.max_queued_jobs_per_ae
        return max(1, -(-self.max_queued_jobs // 2))


class UrgentRule(_Frozen):
    """Series that go to the urgent queue: every field set must match (regex: case-insensitive search)."""

    calling_ae: AETitle | None = None
    series_description: str | None = None

    @model_validator(mode="after")
    def _one_field(self) -> UrgentRule:
        if self.calling_ae is None and self.series_description is None:
            raise ValueError("an urgent rule needs calling_ae, series_description or both")
        if self.series_description is not None:
            try:
                re.compile(self.series_description)
            except re.error as exc:
                raise ValueError(f"series_description {self.series_description!r} is not a regular expression: {exc}") from None
        return self


def _plain_message(message: str) -> str:
    """Pydantic's message without its ``Value error, `` prefix (the key path already says where)."""
    return message.removeprefix("Value error, ")


def _join_and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


class RangeMatch(_Frozen):
    """A numeric match entry: every value of the attribute is a number in [min, max] (inclusive)."""

    min: Annotated[float, Field(allow_inf_nan=False)] | None = None
    max: Annotated[float, Field(allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RangeMatch:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    def describe(self) -> str:
        """The range as text: ``<= 3``, ``>= 1`` or ``1 .. 3``."""
        if self.min is None:
            return f"<= {self.max:g}"
        if self.max is None:
            return f">= {self.min:g}"
        return f"{self.min:g} .. {self.max:g}"


def _match_key_vr(key: str) -> str | None:
    """The VR of a match key (None for ``calling_ae``); ValueError if it is no DICOM keyword."""
    if key == CALLING_AE_KEY:
        return None
    tag = tag_for_keyword(key)
    if tag is None:
        close = difflib.get_close_matches(key, keyword_dict, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"{key!r} is neither a DICOM keyword (e.g. BodyPartExamined, SliceThickness) "
                         f"nor {CALLING_AE_KEY}{hint}")
    return str(dictionary_VR(tag))


def _check_match_entry(key: Any, expected: Any) -> str | RangeMatch:
    """One ``match`` entry, validated: a compiled-checked regex string or a RangeMatch."""
    if not isinstance(key, str):
        raise ValueError(f"match keys are DICOM keywords or {CALLING_AE_KEY}, not {key!r}")
    vr = _match_key_vr(key)
    if vr is not None and set(vr.split(" or ")) & _UNMATCHABLE_VRS:
        raise ValueError(f"{key} has VR {vr}, which cannot be matched (binary data or a sequence)")
    if isinstance(expected, str):
        try:
            re.compile(expected, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"{expected!r} is not a regular expression: {exc}") from None
        return expected
    if isinstance(expected, dict | RangeMatch):
        if vr is None:
            raise ValueError(f"a {{min, max}} range needs a numeric attribute; {CALLING_AE_KEY} is the sender's AE title")
        if not set(vr.split(" or ")) <= NUMERIC_VRS:
            raise ValueError(f"a {{min, max}} range needs a numeric attribute; {key} has VR {vr}")
        return expected if isinstance(expected, RangeMatch) else RangeMatch.model_validate(expected)
    hint = f' (quote it: "{expected}")' if isinstance(expected, int | float) and not isinstance(expected, bool) else ""
    raise ValueError(f"expected a regular expression (a quoted string) or a {{min, max}} range, "
                     f"got {type(expected).__name__} {expected!r}{hint}")


class Rule(_Frozen):
    """One routing rule: when every ``match`` entry holds, its one action decides the series.

    String values are case-insensitive regular expressions searched (not anchored) in the
    attribute's value as text (several values joined with ``\\``); ``{min, max}`` ranges need
    every value of a numeric attribute in range. An empty ``match`` matches every series.
    """

    name: Annotated[str, Field(min_length=1, max_length=64)]
    match: dict[str, str | RangeMatch] = {}
    translate: str | None = None          # a model name (models:, or "default")
    ignore: bool | None = None            # only ``true`` is an action
    refuse: str | None = None             # the reason the job fails with
    destinations: list[str] | None = None  # translate only; None: every destination

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"match is a mapping of DICOM keywords (or {CALLING_AE_KEY}) to a regular "
                             "expression or a {min, max} range")
        out: dict[Any, Any] = {}
        errors: list[tuple[tuple[int | str, ...], str]] = []
        for key, expected in value.items():
            try:
                out[key] = _check_match_entry(key, expected)
            except ValidationError as exc:   # inside a {min, max} range
                errors += [((str(key), *e["loc"]), _plain_message(e["msg"])) for e in exc.errors()]
            except ValueError as exc:
                errors.append(((str(key),), str(exc)))
        if errors:
            raise KeyedErrors(errors)
        return out

    @model_validator(mode="after")
    def _one_action(self) -> Rule:
        if self.ignore is False:
            raise KeyedErrors([(("ignore",), "ignore: false is not an action; write ignore: true, "
                                              "or translate: MODEL or refuse: REASON")])
        actions = [a for a, v in zip(RULE_ACTIONS, (self.translate, self.ignore, self.refuse), strict=True)
                   if v is not None]
        if len(actions) != 1:
            has = _join_and(actions) if actions else "none"
            raise ValueError(f"a rule has exactly one action (translate, ignore or refuse); this one has {has}")
        if self.refuse is not None and not self.refuse.strip():
            raise KeyedErrors([(("refuse",), "a refusal needs a reason (non-empty text)")])
        if self.destinations is not None:
            if self.translate is None:
                verb = "ignores" if self.ignore else "refuses"
                raise KeyedErrors([(("destinations",), f"only a translate rule has destinations; this one {verb}")])
            if not self.destinations:
                raise KeyedErrors([(("destinations",), "an empty list sends nowhere; leave destinations out "
                                                       "to send to every destination")])
            repeated = sorted({d for d in self.destinations if self.destinations.count(d) > 1})
            if repeated:
                raise KeyedErrors([(("destinations",), f"repeated: {', '.join(repeated)}")])
        return self

    @property
    def action(self) -> str:
        """``translate``, ``ignore`` or ``refuse``."""
        return "translate" if self.translate is not None else "ignore" if self.ignore else "refuse"


class QueueSettings(_Frozen):
    """Where jobs wait: ``local`` (one process, no broker) or ``celery`` (a Redis broker, worker processes)."""

    backend: Literal["local", "celery"] = "local"
    broker_url: str | None = None            # redis://host:6379/0; required with celery
    urgent: list[UrgentRule] = []            # matching series go to the "urgent" queue, others to "routine"
    lease_s: Seconds = 60.0                  # a worker that stops renewing its claim this long is presumed dead
    republish_after_s: Seconds = 60.0        # a queued job published this long ago and still unclaimed: publish again
    sweep_interval_s: Seconds = 2.0          # how often receivers and workers look for jobs to (re-)publish

    @model_validator(mode="after")
    def _broker(self) -> QueueSettings:
        if self.backend == "celery" and not (self.broker_url or "").startswith(("redis://", "rediss://")):
            raise ValueError("backend celery needs broker_url: redis://HOST:PORT/DB (or rediss:// for TLS)")
        return self


class JobStoreSettings(_Frozen):
    """Where job records, leases and provenance live: SQLite in the spool (one machine; the default)
    or a PostgreSQL server (``url``), which receivers and workers on several machines share."""

    url: str | None = None               # postgresql://USER[:PASSWORD]@HOST:PORT/DB; None: jobs.sqlite3 in the spool
    password_env: str | None = None      # an environment variable holding the password (wins when set)
    password_file: Path | None = None    # else a file whose first line is the password (relative: to the config file)
    connect_timeout_s: Seconds = 30.0    # how long a call waits for an unreachable server (e.g. while it restarts)

    @model_validator(mode="after")
    def _url(self) -> JobStoreSettings:
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("url must be postgresql://USER[:PASSWORD]@HOST:PORT/DB (leave job_store out for SQLite)")
        if self.url is None and (self.password_env is not None or self.password_file is not None):
            raise ValueError("password_env and password_file need url")
        return self

    def password(self) -> str | None:
        """The password from ``password_env`` when that variable is set, else from ``password_file``
        (None: neither is configured, the URL may carry it)."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is not None:
                return value
            if self.password_file is None:
                raise ConfigError(f"job_store.password_env: the environment variable {self.password_env} is not set")
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError(f"job_store.password_file: cannot read a password from {self.password_file}: "
                                  f"{getattr(exc, 'strerror', None) or 'empty file'}") from None
        return None


class OpsSettings(_Frozen):
    """Operations: the HTTP endpoint for /metrics, /healthz, /readyz and the QA previews."""

    http_port: Annotated[int, Field(ge=0, le=65535)] | None = None   # None: off; 0: any free port
    http_bind_address: str = "127.0.0.1"
    qa_preview: bool = False             # write a CT/MR PNG montage beside each job's output
    echo_timeout_s: Seconds = 5.0        # C-ECHO timeout of the background destination probe (reported by /readyz)
    show_phi: bool = False               # status page shows patient name, ID and birth date
    allow_actions: bool = False          # status page Retry button (needs users: HTTP basic auth, CSRF checked)
    users: dict[str, str] = {}           # name -> password hash from `ct2mri-node hash-password`

    @field_validator("users")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name, digest in value.items() if not _PASSWORD_HASH_RE.match(digest)]
        if bad:
            raise ValueError(f"not a password hash for {', '.join(sorted(bad))}; make one with "
                             "`ct2mri-node hash-password` (format scrypt$N$r$p$salt$hash)")
        return value

    @model_validator(mode="after")
    def _actions_need_users(self) -> OpsSettings:
        if self.allow_actions and not self.users:
            raise ValueError("allow_actions needs users (HTTP basic authentication); add ops.users "
                             "with hashes from `ct2mri-node hash-password`")
        return self


class OutputSettings(_Frozen):
    """Companion objects sent with each synthetic MR series (see docs/conformance-statement.md)."""

    uncertainty_map: bool = False   # Parametric Map of the per-voxel SD across samples (needs samples >= 2)
    qa_capture: bool = False        # Secondary Capture QA montage (CT, MR, and the map with samples >= 2)


class RetentionSettings(_Frozen):
    """When the spool forgets finished work: the CT input and MR output of old jobs (records stay)."""

    delivered_hours: Annotated[float, Field(gt=0)] | None = 168.0   # done jobs finished this long ago; None: keep forever
    failed_hours: Annotated[float, Field(gt=0)] | None = None       # failed and refused jobs; None: keep until an admin acts
    sweep_interval_s: Seconds = 600.0                                # how often a receiving node looks


class NodeConfig(_Frozen):
    """The whole configuration file."""

    node: NodeSettings = NodeSettings()
    calling_aes: list[CallingAE] = []
    destinations: list[Destination] = []
    spool_dir: Path = Path("var/spool")
    series: SeriesSettings = SeriesSettings()
    model: ModelSettings = ModelSettings()
    models: dict[str, ModelSettings] = {}     # name -> settings; instead of model (which is one model, "default")
    rules: list[Rule] | None = None           # None: every series is translated by the only model
    worker: WorkerSettings = WorkerSettings()
    ops: OpsSettings = OpsSettings()
    limits: LimitSettings = LimitSettings()
    queue: QueueSettings = QueueSettings()
    retention: RetentionSettings = RetentionSettings()
    outputs: OutputSettings = OutputSettings()
    job_store: JobStoreSettings = JobStoreSettings()

    @model_validator(mode="after")
    def _unique_destination_names(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _model_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str) or not _MODEL_NAME_RE.match(k)]
            if bad:
                raise KeyedErrors([((str(k),), f"{k!r} is not a model name (1-64 letters, digits, '_', '.', '-')")
                                   for k in bad])
        return value

    @model_validator(mode="after")
    def _routing(self) -> NodeConfig:
        """Cross-field checks of models and rules; every error names its key."""
        errors: list[tuple[tuple[int | str, ...], str]] = []
        if {"model", "models"} <= self.model_fields_set:
            errors.append((("models",), "both model and models are given; use model (one model, named "
                                        f"{DEFAULT_MODEL_NAME!r}) or models (several, by name), not both"))
        if "models" in self.model_fields_set and not self.models:
            errors.append((("models",), "name at least one model (or leave models out and use model)"))
        models = self.named_models()
        if self.rules is None and len(models) > 1:
            errors.append((("rules",), f"several models are configured ({', '.join(models)}); "
                                       "add rules that say which series each one translates"))
        dest_names = [d.name for d in self.destinations]
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules or []):
            if rule.name in seen:
                errors.append((("rules", i, "name"), f"{rule.name!r} is already the name of rules[{seen[rule.name]}]; "
                                                     "rule names must be unique"))
            seen.setdefault(rule.name, i)
            if rule.translate is not None and rule.translate not in models:
                errors.append((("rules", i, "translate"),
                               f"no model named {rule.translate!r} (known: {', '.join(models)})"))
            for j, dest in enumerate(rule.destinations or []):
                if dest not in dest_names:
                    known = ", ".join(dest_names) or "none configured"
                    errors.append((("rules", i, "destinations", j), f"no destination named {dest!r} (known: {known})"))
        if errors:
            raise KeyedErrors(errors)
        return self

    @model_validator(mode="after")
    def _outputs_need_samples(self) -> NodeConfig:
        """An uncertainty map needs at least two samples from every model that can translate."""
        if not self.outputs.uncertainty_map:
            return self
        errors: list[tuple[tuple[int | str, ...], str]] = []
        for name, settings in self.named_models().items():
            if settings.samples < 2:
                key = f"models.{name}.samples" if self.models else "model.samples"
                errors.append((("outputs", "uncertainty_map"),
                               f"needs {key} >= 2 ({key} is {settings.samples}); the map is the spread "
                               "across samples (or set outputs.uncertainty_map: false)"))
        if errors:
            raise KeyedErrors(errors)
        return self

    def named_models(self) -> dict[str, ModelSettings]:
        """The models in effect, by name: ``models:``, or ``model:`` as the one model ``default``."""
        return dict(self.models) if self.models else {DEFAULT_MODEL_NAME: self.model}

    def destination(self, name: str) -> AnyDestination:
        """The destination called ``name``; ConfigError listing the known names otherwise."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"no destination named {name!r} (known: {known})")


def default_config_path() -> Path:
    """``$CT2MRI_NODE_CONFIG`` if set, else the embedded ``config/ct2mri-node.yaml``."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _key_path(loc: Sequence[int | str]) -> str:
    """Pydantic's error location as ``a.b[1].c`` (discriminator tags left out)."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in ("dicom", "folder", "dicomweb"):
            pass  # tag of the destination union, not a key in the file
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(top level)"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for e in exc.errors():
        error = e.get("ctx", {}).get("error")
        if isinstance(error, KeyedErrors):   # a validator that knows the rest of the key path
            lines += [f"{_key_path((*e['loc'], *path))}: {message}" for path, message in error.errors]
        else:
            lines.append(f"{_key_path(e['loc'])}: {_plain_message(e['msg'])}")
    return f"invalid configuration {source}:\n  " + "\n  ".join(lines)


def _resolve(config: NodeConfig, base: Path) -> NodeConfig:
    """Make relative paths absolute against ``base`` (the YAML file's folder)."""

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    def tls_paths(tls: Any) -> Any:
        if tls is None:
            return None
        keys = ("cert", "key", "ca")
        return tls.model_copy(update={k: absolute(getattr(tls, k)) for k in keys if getattr(tls, k) is not None})

    def dicomweb_paths(d: DicomWebDestination) -> DicomWebDestination:
        auth = d.auth
        if auth is not None:
            auth = auth.model_copy(update={k: absolute(getattr(auth, k)) for k in ("password_file", "token_file")
                                           if getattr(auth, k) is not None})
        return d.model_copy(update={"auth": auth, "ca": None if d.ca is None else absolute(d.ca)})

    dests = [
        d.model_copy(update={"path": absolute(d.path)}) if isinstance(d, FolderDestination)
        else dicomweb_paths(d) if isinstance(d, DicomWebDestination)
        else d.model_copy(update={"tls": tls_paths(d.tls)})
        for d in config.destinations
    ]
    def checkpoint(model: ModelSettings) -> ModelSettings:
        if model.bundle is not None and not Path(model.bundle).is_absolute():
            return model.model_copy(update={"bundle": str(absolute(Path(model.bundle)))})
        ckpt = model.checkpoint
        if model.bundle is None and ckpt != "bundled" and not Path(ckpt).is_absolute():
            return model.model_copy(update={"checkpoint": str(absolute(Path(ckpt)))})
        return model

    update: dict[str, Any] = {
        "spool_dir": absolute(config.spool_dir), "destinations": dests, "model": checkpoint(config.model),
        "node": config.node.model_copy(update={"tls": tls_paths(config.node.tls)}),
    }
    if config.models:
        update["models"] = {name: checkpoint(m) for name, m in config.models.items()}
    if config.job_store.password_file is not None:
        update["job_store"] = config.job_store.model_copy(
            update={"password_file": absolute(config.job_store.password_file)})
    return config.model_copy(update=update)


def parse_config(data: Any, base_dir: Path, source: str = "") -> NodeConfig:
    """Validate already-parsed YAML data; relative paths resolve against ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: the top level must be a mapping of keys")
    try:
        config = NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    return _resolve(config, base_dir)


def load_config(path: str | os.PathLike[str] | None = None) -> NodeConfig:
    """Read and validate a YAML config file (the default one when ``path`` is None)."""
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {file} is not valid YAML: {exc}") from None
    return parse_config(data, file.resolve().parent, str(file))
