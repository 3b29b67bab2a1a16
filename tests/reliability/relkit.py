"""Helpers for the reliability tests and benchmarks: serve subprocesses, stubborn senders,
expected output UIDs, test certificates (C-STORE, polling and configs come from nodekit)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from nodekit import CLI, store, write_config_file
from nodekit import wait_for  # noqa: F401 (re-exported: the benchmarks import it from here)
from pydicom.uid import ExplicitVRLittleEndian


def send_until_acked(port: int, paths: Sequence[Path], timeout_s: float = 120.0) -> int:
    """Send a series like a stubborn PACS: after an abort or refusal, send it all again.

    Returns the number of associations it took; every instance was answered 0x0000 once.
    """
    end = time.monotonic() + timeout_s
    tries = 0
    while time.monotonic() < end:
        tries += 1
        try:
            if store(port, paths) == [0] * len(paths):
                return tries
        except (ConnectionError, RuntimeError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"series never acknowledged within {timeout_s} s ({tries} associations)")


def write_config(tmp_path: Path, port: int, checkpoint: Path, **overrides: Any) -> Path:
    """A YAML config for ``ct2mri-node serve`` on loopback with the tiny checkpoint: restart hold
    and retries long enough for crash tests, a folder destination."""
    data: dict[str, Any] = {
        "node": {"ae_title": "CT2MRI", "port": port, "bind_address": "127.0.0.1"},
        "calling_aes": [{"ae_title": "PACS", "host": "127.0.0.1"}],
        "destinations": [{"name": "local", "type": "folder", "path": "outbox"}],
        "series": {"quiet_period_s": 1.0, "min_slices": 8, "restart_hold_s": 3.0},
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "steps": 2},
        "worker": {"max_attempts": 20, "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "poll_interval_s": 0.1},
        "limits": {"min_free_disk_mb": 64},
    }
    data.update(overrides)
    return write_config_file(tmp_path, **data)


class Proc:
    """A ct2mri-node subprocess logging to a file, optionally armed with a fault point."""

    def __init__(self, args: list[str], log_path: Path, ready_word: str, fault: str | None = None,
                 env_defaults: dict[str, str] | None = None) -> None:
        env = {**(env_defaults or {}), **os.environ, "TCP_NODELAY": "1"}
        env.pop("CT2MRI_FAULT", None)
        if fault:
            env["CT2MRI_FAULT"] = fault
        self.log_path = log_path
        self.log = log_path.open("a")
        self.ready_word = ready_word
        self.proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Read the process's stdout until it prints ``ready_word``; fail if it exits first."""
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if self.ready_word in line:
                return
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"{self.ready_word!r} never printed (exit code {self.proc.poll()}); see {self.log_path}")

    def stop(self) -> int:
        """SIGTERM (if alive) and wait; the exit code (-9 if it was killed)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


class Serve(Proc):
    """``ct2mri-node serve`` as a subprocess, optionally armed with a fault point."""

    def __init__(self, config: Path, log_path: Path, fault: str | None = None) -> None:
        super().__init__(["serve", "--config", str(config)], log_path, "listening", fault)

    def wait_listening(self, timeout_s: float = 120.0) -> None:
        self.wait_ready(timeout_s)


def job_states(config: Path) -> list[str]:
    """The states of the node's jobs, read with ``ct2mri-node status`` logic (store opened directly)."""
    from ct2mri_node.commands.status import open_store

    try:
        return [j.state for j in open_store(config).list()]
    except Exception:  # noqa: BLE001 (database not there yet)
        return []


def expected_mr_uids(ct_paths: Sequence[Path], translator: Any) -> tuple[str, set[str]]:
    """(series UID, SOP Instance UIDs) an uninterrupted run produces for this CT series."""
    from ct2mri_node.jobs.pipeline import PipelineOptions, translate_series
    from ct2mri_node.volume.assemble import VolumeLimits

    datasets = [pydicom.dcmread(p) for p in ct_paths]
    mr = translate_series(datasets, translator, PipelineOptions(limits=VolumeLimits(min_slices=8)))
    return str(mr[0].SeriesInstanceUID), {str(d.SOPInstanceUID) for d in mr}


def folder_uids(outbox: Path) -> dict[str, list[str]]:
    """{series folder: [file names]} of a folder destination (temp files left out)."""
    if not outbox.is_dir():
        return {}
    return {d.name: sorted(p.name for p in d.glob("*.dcm")) for d in outbox.iterdir() if d.is_dir()}


# -- certificates ---------------------------------------------------------------------------
def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def issue(cn: str, key: Any, issuer: x509.Name, issuer_key: Any, ca: bool,
              usage: Any = None, san: Any = None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("ct2mri test CA", ca_key, name("ct2mri test CA"), ca_key, True)
    out = {"ca": write_cert(ca, folder / "ca.pem"), "ca_key": write_key(ca_key, folder / "ca.key")}
    for role, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(f"ct2mri test {role}", key, ca.subject, ca_key, False, usage, san)
        out[role] = write_cert(cert, folder / f"{role}.pem")
        out[f"{role}_key"] = write_key(key, folder / f"{role}.key")
    return out


class raw_sending:  # noqa: N801 (used as a context manager, like contextlib's)
    """Send files byte for byte (pynetdicom's chunked mode): the data set after the file meta is
    never decoded or re-encoded by the sender, so broken objects reach the node as they are."""

    def __enter__(self) -> None:
        from pynetdicom import _config

        self._old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True

    def __exit__(self, *exc: object) -> None:
        from pynetdicom import _config

        _config.STORE_SEND_CHUNKED_DATASET = self._old


def write_raw(path: Path, ds: pydicom.Dataset, sop_class: str, sop_instance: str) -> Path:
    """Write ``ds`` behind a valid file meta (so the C-STORE request is well formed) without
    validating or copying the data set's own values."""
    path.write_bytes(file_meta_bytes(sop_class, sop_instance) + dataset_bytes(ds))
    return path


def file_meta_bytes(sop_class: str, sop_instance: str) -> bytes:
    """Preamble, DICM and a File Meta group for Explicit VR Little Endian."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    """The data set alone, Explicit VR Little Endian, values written as they are."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    with pydicom.config.disable_value_validation():
        write_dataset(buffer, ds)
    return buffer.getvalue()
