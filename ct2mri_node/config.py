"""The node's YAML configuration: one frozen pydantic model, validated once at load.

Unknown keys are errors, and every error names the offending key path
(``destinations[1].port: ...``). Relative paths in the file (``spool_dir``, a folder
destination's ``path``, a ``model.checkpoint`` directory) are resolved against the folder
that holds the YAML file, so a config behaves the same from any working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

#: The embedded default configuration (runs as is on a fresh machine).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "ct2mri-node.yaml"
#: Environment variable that overrides the default configuration path.
CONFIG_ENV = "CT2MRI_NODE_CONFIG"

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash


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


class DicomDestination(_Frozen):
    """A DICOM peer that receives the MR series by C-STORE."""

    name: Annotated[str, Field(min_length=1)]
    type: Literal["dicom"]
    ae_title: AETitle
    host: Annotated[str, Field(min_length=1)]
    port: Port
    timeout_s: Seconds = 30.0
    tls: ClientTls | None = None


class FolderDestination(_Frozen):
    """A folder that receives the MR series as files (``<path>/<series uid>/<sop uid>.dcm``)."""

    name: Annotated[str, Field(min_length=1)]
    type: Literal["folder"]
    path: Path


Destination = Annotated[DicomDestination | FolderDestination, Field(discriminator="type")]


class SeriesSettings(_Frozen):
    """When a received series counts as complete, and what size of volume it may have."""

    quiet_period_s: Annotated[float, Field(ge=0)] = 2.0
    min_slices: Annotated[int, Field(ge=1)] = 8
    max_slices: Annotated[int, Field(ge=1)] = 2000     # more slices: the job fails with reason too_large
    max_matrix: Annotated[int, Field(ge=1)] = 1024     # more rows or columns: too_large
    restart_hold_s: Annotated[float, Field(ge=0)] = 30.0   # after a restart, series found in the spool wait this long for re-sends

    @model_validator(mode="after")
    def _slice_range(self) -> SeriesSettings:
        if self.max_slices < self.min_slices:
            raise ValueError(f"max_slices {self.max_slices} is below min_slices {self.min_slices}")
        return self


class ModelSettings(_Frozen):
    """Which checkpoint translates, on which device, with how many network evaluations and samples."""

    checkpoint: str = "bundled"
    device: str = "auto"
    steps: Annotated[int, Field(ge=1, le=1000)] | None = None   # None: the model card's default
    samples: Annotated[int, Field(ge=1, le=64)] = 1
    seed: int = 0

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", value):
            raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
        return value


class WorkerSettings(_Frozen):
    """Retry policy for sends: exponential backoff from ``backoff_initial_s``."""

    max_attempts: Annotated[int, Field(ge=1)] = 6
    backoff_initial_s: Seconds = 5.0
    backoff_max_s: Seconds = 600.0
    backoff_factor: Annotated[float, Field(ge=1)] = 2.0
    poll_interval_s: Seconds = 0.5
    backoff_jitter: Annotated[float, Field(ge=0, le=1)] = 0.2   # each delay varies by +-20 %


class LimitSettings(_Frozen):
    """Backpressure: what the SCP refuses (0xA700 / 0xC210) before it runs out of room."""

    min_free_disk_mb: Annotated[float, Field(ge=0)] = 1024.0    # below this free space in the spool: 0xA700
    max_instance_mb: Annotated[float, Field(gt=0)] = 256.0      # larger C-STORE data sets: 0xA700
    max_instances_per_series: Annotated[int, Field(ge=1)] = 5000
    max_queued_jobs: Annotated[int, Field(ge=1)] = 100          # at this many, instances of NEW series: 0xA700


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


class OpsSettings(_Frozen):
    """Operations: the HTTP endpoint for /metrics, /healthz, /readyz and the QA previews."""

    http_port: Annotated[int, Field(ge=0, le=65535)] | None = None   # None: off; 0: any free port
    http_bind_address: str = "127.0.0.1"
    qa_preview: bool = False             # write a CT/MR PNG montage beside each job's output
    echo_timeout_s: Seconds = 5.0        # C-ECHO timeout of /readyz per DICOM destination


class RetentionSettings(_Frozen):
    """When the spool forgets finished work: the CT input and MR output of old jobs (records stay)."""

    delivered_hours: Annotated[float, Field(gt=0)] | None = 168.0   # done jobs finished this long ago; None: keep forever
    failed_hours: Annotated[float, Field(gt=0)] | None = None       # failed jobs; None: keep until an admin acts
    sweep_interval_s: Seconds = 600.0                                # how often a receiving node looks


class NodeConfig(_Frozen):
    """The whole configuration file."""

    node: NodeSettings = NodeSettings()
    calling_aes: list[CallingAE] = []
    destinations: list[Destination] = []
    spool_dir: Path = Path("var/spool")
    series: SeriesSettings = SeriesSettings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    ops: OpsSettings = OpsSettings()
    limits: LimitSettings = LimitSettings()
    queue: QueueSettings = QueueSettings()
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="after")
    def _unique_destination_names(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        return self

    def destination(self, name: str) -> DicomDestination | FolderDestination:
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
        elif isinstance(previous, int) and part in ("dicom", "folder"):
            pass  # tag of the destination union, not a key in the file
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(top level)"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{_key_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
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

    dests = [
        d.model_copy(update={"path": absolute(d.path)}) if isinstance(d, FolderDestination)
        else d.model_copy(update={"tls": tls_paths(d.tls)})
        for d in config.destinations
    ]
    model = config.model
    ckpt = model.checkpoint
    if ckpt != "bundled" and not Path(ckpt).is_absolute():
        model = model.model_copy(update={"checkpoint": str(absolute(Path(ckpt)))})
    return config.model_copy(
        update={"spool_dir": absolute(config.spool_dir), "destinations": dests, "model": model,
                "node": config.node.model_copy(update={"tls": tls_paths(config.node.tls)})}
    )


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
