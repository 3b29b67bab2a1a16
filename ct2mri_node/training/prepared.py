"""Cases resampled to the model grid once and kept on disk: a *prepared* folder.

Why: resampling every case to the model spacing is the slow part of starting a run, and it is
the same for every run at that spacing whatever the network, the CT windows or the MR target.
A prepared folder holds, per case, the CT in HU (int16, clipped to -1024..3071), the raw MR
(float16: 11 significant bits, far below the MR noise) and the body mask on the model grid,
plus ``prepared.json`` (spacing, format version, case names and where they came from). Training
reads it with numpy alone (no SimpleITK), so a GPU host needs only numpy and torch; and the
input channels and the MR target are made at load time (:func:`finish`), so one prepared folder
serves every ablation.

    ct2mri-node prepare --data data/train --out data/train-2mm --spacing 2
    ct2mri-node prepare --family randomised --cases 60 --seed 2000 --out data/train-2mm --workers 16
    ct2mri-node train --data data/train-2mm ...

A generated family can go straight into a prepared folder (no image files, no SimpleITK), case
by case in worker processes; a folder that exists already is added to, so several families and
sources make one training set.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..model import pre_post
from ..model.trainer import PreparedCase
from .families import EVALUATION_FAMILIES

log = logging.getLogger(__name__)

MANIFEST = "prepared.json"
FORMAT_VERSION = 1
HU_STORED = (-1024.0, 3071.0)


@dataclass
class GridCase:
    """One paired case on the model grid: CT in HU, raw MR, body mask."""

    name: str
    hu: np.ndarray
    mr: np.ndarray
    mask: np.ndarray
    family: str = "unlabelled"


def to_grid(name: str, ct: np.ndarray, mr: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...],
            spacing_mm: float, family: str = "unlabelled") -> GridCase:
    """Resample one case to isotropic ``spacing_mm`` (index space, as at inference)."""
    grid = pre_post.model_shape(ct.shape, tuple(spacing), (spacing_mm,) * 3)
    stored = pre_post.IntensityMapping.linear(*HU_STORED)
    hu, mask_grid = pre_post.to_model_grid(ct, mask, grid, stored)
    return GridCase(name, hu, pre_post.resample(mr, grid), mask_grid, family)


def finish(case: GridCase, mapping: pre_post.IntensityMapping, mr_method: str) -> PreparedCase:
    """What the trainer takes: the CT channels of ``mapping`` and the MR target of ``mr_method``."""
    hu = case.hu.astype(np.float32)
    mr = pre_post.normalise_mr(case.mr.astype(np.float32), hu, case.mask, mr_method)
    return PreparedCase(case.name, mapping.encode(hu), mr, case.mask)


def is_prepared(folder: Path) -> bool:
    """True when ``folder`` is a prepared folder (it holds ``prepared.json``)."""
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a prepared folder; DataError when it is unreadable or of another format."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the prepared folder's manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: not a prepared folder of format {FORMAT_VERSION}; prepare the data again")
    return manifest


def check_training_family(name: str, family: str) -> None:
    """DataError for a case of an evaluation-only family: a model must never train on those."""
    if family in EVALUATION_FAMILIES:
        raise DataError(f"case {name} comes from the {family} family, which is for evaluation only; "
                        "remove it from the training data")


def _save(out: Path, grid: GridCase) -> None:
    np.savez_compressed(out / f"{grid.name}.npz", hu=np.rint(np.clip(grid.hu, *HU_STORED)).astype(np.int16),
                        mr=grid.mr.astype(np.float16), mask=grid.mask)
    log.info("prepared %s: model grid %s", grid.name, grid.hu.shape)


def _add_to_manifest(out: Path, spacing_mm: float, source: str, families: dict[str, str]) -> Path:
    """Record ``families`` (case name -> family) in ``out``'s manifest, creating it or adding to it."""
    if is_prepared(out):
        manifest = read_manifest(out)
        if abs(float(manifest["spacing_mm"]) - spacing_mm) > 1e-6:
            raise DataError(f"{out} holds cases at {manifest['spacing_mm']} mm; add cases at that spacing only")
    else:
        manifest = {"format": FORMAT_VERSION, "spacing_mm": spacing_mm, "sources": [], "cases": [], "families": {}}
    manifest["sources"] = [*manifest.get("sources", []), source]
    manifest["cases"] = [*[n for n in manifest["cases"] if n not in families], *families]
    manifest["families"] = {**manifest.get("families", {}), **families}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def write_prepared(data: Path, out: Path, spacing_mm: float) -> Path:
    """Resample every case of a SynthRAD-layout folder into the prepared folder ``out``."""
    from . import pairs  # SimpleITK: only for reading the source images

    out.mkdir(parents=True, exist_ok=True)
    families = {}
    for case_dir in pairs.list_cases(data):
        family = case_family(case_dir)
        check_training_family(case_dir.name, family)
        case = pairs.load_case(case_dir)
        _save(out, to_grid(case.name, case.ct, case.mr, case.mask, case.spacing, spacing_mm, family))
        families[case.name] = family
    return _add_to_manifest(out, spacing_mm, f"folder {data.name}", families)


def _generate_one(job: tuple[str, str, int, str, float, str]) -> str:
    """Worker: generate one case of a family and save it on the model grid (returns its name)."""
    from .families import family as family_module

    family, kind, seed, name, spacing_mm, out = job
    case = family_module(family).generate_case(kind, seed, name=name)
    _save(Path(out), to_grid(name, case.ct, case.mr, case.mask, case.spacing, spacing_mm, family))
    return name


def write_generated(family: str, cases: int, seed: int, out: Path, spacing_mm: float, workers: int = 0,
                    kinds: tuple[str, ...] | None = None) -> Path:
    """Generate ``cases`` cases of ``family`` (kinds in turn, case i with seed + i, named as
    ``ct2mri-node phantoms`` names them) straight into the prepared folder ``out``, in ``workers``
    processes (0: one per CPU)."""
    from .families import family as family_module

    check_training_family(f"{family} cases", family)
    module = family_module(family)
    kinds = tuple(kinds or module.KINDS)
    if cases < 1:
        raise DataError(f"number of cases must be at least 1, got {cases}")
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(cases):
        kind = kinds[i % len(kinds)]
        name = f"case{i:03d}_{kind}" if family == "phantom" else f"{family}_{i:03d}_{kind}"
        jobs.append((family, kind, seed + i, name, spacing_mm, str(out)))
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        names = list(pool.map(_generate_one, jobs))
    return _add_to_manifest(out, spacing_mm, f"family {family}, {cases} cases from seed {seed}",
                            {name: family for name in names})


def read_prepared(folder: Path, spacing_mm: float) -> list[GridCase]:
    """Every case of a prepared folder; DataError when it was prepared at another spacing."""
    manifest = read_manifest(folder)
    if abs(float(manifest["spacing_mm"]) - spacing_mm) > 1e-6:
        raise DataError(f"{folder} was prepared at {manifest['spacing_mm']} mm, the run asks for {spacing_mm} mm; "
                        "prepare it again with --spacing")
    cases = []
    for name in manifest["cases"]:
        family = str(manifest.get("families", {}).get(name, "unlabelled"))
        check_training_family(name, family)
        cases.append(read_one(folder, name, family))
    if not cases:
        raise DataError(f"{folder}: the prepared folder holds no case")
    return cases


def read_one(folder: Path, name: str, family: str = "unlabelled") -> GridCase:
    """One case of a prepared folder; DataError when it is missing or corrupt."""
    try:
        with np.load(Path(folder) / f"{name}.npz") as arrays:
            return GridCase(name, arrays["hu"], arrays["mr"], arrays["mask"].astype(bool), family)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{folder}: case {name} is missing or corrupt ({exc}); prepare the data again") from exc


def describe(folder: Path) -> str:
    """"N paired CT/MR cases from DIR (family: count, ...)" of a prepared folder."""
    manifest = read_manifest(folder)
    counts: dict[str, int] = {}
    for family in manifest.get("families", {}).values():
        counts[family] = counts.get(family, 0) + 1
    parts = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    sources = "; ".join(manifest.get("sources", []))
    return (f"{len(manifest['cases'])} paired CT/MR cases ({parts}; {sources}), resampled to "
            f"{manifest['spacing_mm']} mm; synthetic data, no patient data")


def case_family(case_dir: Path) -> str:
    """The family a case's ``phantom.json`` names ("unlabelled" for other data)."""
    info = case_dir / "phantom.json"
    if info.is_file():
        try:
            return str(json.loads(info.read_text()).get("family", "phantom"))
        except (OSError, ValueError):
            pass
    return "unlabelled"
