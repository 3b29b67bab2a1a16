"""Data families: the generators of paired CT/MR cases, by name.

Each family is a module with ``KINDS`` (the anatomies it can draw) and
``generate_case(kind, seed, shape=None, spacing=None, name=None) -> PhantomCase`` (deterministic
in ``seed``, with tissue labels). Training mixes the training families; ``heldout`` and
``independent`` are kept for evaluation only: no training (or tuning) case ever comes from them.

- ``phantom``: the first release's head and pelvis phantoms (fixed anatomy, ~6% shifted MR slices);
- ``randomised``: domain randomisation, random tissue layouts and per-case tissue values (SynthSeg-style);
- ``icbm``: real brain anatomy from the ICBM152 2009a templates shipped in the nilearn wheel;
- ``heldout``: a separate generator for evaluation only;
- ``independent``: plain ellipsoid blocks without texture, another shape language again, for
  evaluation only.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType

from ..errors import DataError

log = logging.getLogger(__name__)

FAMILIES: dict[str, str] = {
    "phantom": "ct2mri_node.training.phantoms",
    "randomised": "ct2mri_node.training.randomised",
    "icbm": "ct2mri_node.training.icbm",
    "heldout": "ct2mri_node.training.heldout",
    "independent": "ct2mri_node.training.independent",
}
#: Families that training data is drawn from (the evaluation families never are).
TRAINING_FAMILIES: tuple[str, ...] = ("phantom", "randomised", "icbm")
#: Families for evaluation only (training refuses their cases, ``prepared.check_training_family``).
EVALUATION_FAMILIES: tuple[str, ...] = tuple(name for name in FAMILIES if name not in TRAINING_FAMILIES)
#: First case seed per evaluation family for the benchmarks' evaluation cases (ablation, size
#: response, uncertainty calibration); the bundled-model CI tests use other seeds (7100+).
EVALUATION_SEEDS: dict[str, int] = {"independent": 5000, "heldout": 9000}


def family(name: str) -> ModuleType:
    """The generator module of family ``name``; DataError for an unknown name."""
    if name not in FAMILIES:
        raise DataError(f"unknown data family {name!r}; choose from {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])


def write_family(out: str | Path, name: str, cases: int, seed: int = 0, kinds: tuple[str, ...] | None = None,
                 shape: tuple[int, int, int] | None = None,
                 spacing: tuple[float, float, float] | None = None) -> list[Path]:
    """Write ``cases`` cases of family ``name`` under ``out`` (kinds in turn, case i uses seed + i).

    Case folders are ``<family>_<i:03d>_<kind>``; each holds ``ct``, ``mr``, ``mask``,
    ``labels`` images, ``labels.json`` and ``phantom.json``.
    """
    from .phantoms import write_phantom_case

    module = family(name)
    kinds = tuple(kinds or module.KINDS)
    unknown = [k for k in kinds if k not in module.KINDS]
    if unknown or not kinds:
        raise DataError(f"family {name}: unknown kind(s) {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(module.KINDS)}")
    if cases < 1:
        raise DataError(f"number of cases must be at least 1, got {cases}")
    out = Path(out)
    folders = []
    for i in range(cases):
        kind = kinds[i % len(kinds)]
        case = module.generate_case(kind, seed + i, shape, spacing, name=f"{name}_{i:03d}_{kind}")
        case.info.setdefault("family", name)
        folders.append(write_phantom_case(out / case.name, case))
        log.info("wrote %s case %s (%d of %d)", name, case.name, i + 1, cases)
    return folders
