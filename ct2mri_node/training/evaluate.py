"""Evaluate a checkpoint on paired cases: translate each CT, compare with the real MR, report.

For every case of a SynthRAD-layout folder: ``Translator.translate(case.ct, case.spacing)``, the
masked metrics of :mod:`.metrics` against ``case.mr`` inside ``case.mask``, optionally a PNG
montage, then one JSON report with per-case numbers, their mean, the model's identity, the
settings and the process's peak memory. torch stays behind the translator.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ..fsutil import atomic_write
from .metrics import NORMALISE_PERCENTILES, PSNR_CAP_DB, SSIM_BORDER, compare
from .montage import write_case_montage
from .pairs import PairedCase, list_cases, load_case

if TYPE_CHECKING:
    from ..model.translator import TranslationSettings, Translator

log = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = ("mae", "psnr", "ssim", "network_evaluations", "seconds")
METRIC_DEFINITION = (
    f"Real MR is the reference. Each volume is normalised separately to [0, 1] by its own "
    f"percentiles P{NORMALISE_PERCENTILES[0]:g}/P{NORMALISE_PERCENTILES[1]:g} inside the body mask, "
    f"clipped. MAE: mean |difference| over mask voxels. PSNR: 10 log10(R^2/MSE) over mask voxels, "
    f"R = reference range in the mask, capped at {PSNR_CAP_DB:g} dB. SSIM: 3D Gaussian window "
    f"(sigma 1.5 voxels, K1 0.01, K2 0.03) with outside-mask voxels set to 0, averaged over mask "
    f"voxels at least {SSIM_BORDER} voxels from the edge (SynthRAD2023)."
)


@dataclass(frozen=True)
class CaseResult:
    """Numbers for one case."""

    name: str
    mae: float
    psnr: float
    ssim: float
    network_evaluations: int
    seconds: float
    montage: str | None = None


def evaluate_case(translator: Translator, case: PairedCase, montage_dir: Path | None = None) -> CaseResult:
    """Translate one case's CT and score the synthetic MR against the real one."""
    result = translator.translate(case.ct, case.spacing)
    synthetic = result.mr.astype(np.float32)
    if synthetic.shape != case.ct.shape:
        raise DataError(f"case {case.name}: the translator returned {synthetic.shape}, expected {case.ct.shape}")
    scores = compare(case.mr, synthetic, case.mask)
    montage = None
    if montage_dir is not None:
        path = montage_dir / f"{case.name}.png"
        montage = str(write_case_montage(path, case.ct, case.mr, synthetic, case.spacing, case.mask))
    return CaseResult(case.name, scores.mae, scores.psnr, scores.ssim, result.network_evaluations,
                      result.seconds, montage)


def peak_memory() -> dict[str, int | None]:
    """Peak resident memory of this process (bytes) and, when known, the CUDA peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB
    return {"process_max_rss_bytes": rss_bytes, "cuda_peak_bytes": None}


def _mean(results: list[CaseResult]) -> dict[str, float]:
    return {key: float(np.mean([getattr(r, key) for r in results])) for key in METRIC_KEYS}


def evaluate(
    data: str | Path,
    checkpoint: str | os.PathLike[str] = "bundled",
    settings: TranslationSettings | None = None,
    limit: int | None = None,
    montage_dir: str | Path | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the cases under ``data`` (the first ``limit``); return the report."""
    from ..model.translator import TranslationSettings, Translator

    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    cases = list_cases(data)[:limit]
    settings = settings or TranslationSettings()
    translator = Translator(checkpoint, settings)
    montage_path = Path(montage_dir) if montage_dir is not None else None
    results = []
    for index, case_dir in enumerate(cases):
        result = evaluate_case(translator, load_case(case_dir), montage_path)
        log.info("case %d/%d %s: MAE %.4f PSNR %.2f SSIM %.4f", index + 1, len(cases), result.name,
                 result.mae, result.psnr, result.ssim)
        results.append(result)
        if on_case is not None:
            on_case(result)
    return {
        "data": str(data),
        "model": asdict(translator.model_info),
        "settings": asdict(settings),
        "device": translator.device,
        "metric_definition": METRIC_DEFINITION,
        "cases": [asdict(r) for r in results],
        "mean": _mean(results),
        "peak_memory": peak_memory(),
    }


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as JSON durably (``fsutil.atomic_write``, mode 0600).

    The text is built first, so a report that cannot be JSON (e.g. NaN) leaves no file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    atomic_write(path, text.encode())
    return path


def format_table(report: dict[str, Any]) -> str:
    """A short plain-text table: one line per case and the mean."""
    lines = [f"{'case':<20} {'MAE':>8} {'PSNR':>7} {'SSIM':>7} {'evals':>7} {'s':>7}"]
    rows = [(c["name"], c) for c in report["cases"]] + [("mean", report["mean"])]
    for name, row in rows:
        lines.append(f"{name:<20} {row['mae']:8.4f} {row['psnr']:7.2f} {row['ssim']:7.4f} "
                     f"{row['network_evaluations']:7.0f} {row['seconds']:7.1f}")
    model = report["model"]
    lines.append(f"model {model['name']} {model['version']} ({model['architecture']}), device "
                 f"{report['device']}, peak RSS {report['peak_memory']['process_max_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)
