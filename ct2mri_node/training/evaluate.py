"""Evaluate a checkpoint on paired cases: translate each CT, compare with the real MR, report.

For every case of a SynthRAD-layout folder: ``Translator.translate(case.ct, case.spacing)``, the
masked metrics of :mod:`.metrics` against ``case.mr`` inside ``case.mask``, the body correlation
and, when the case has tissue labels, the tissue-order score of :mod:`.tissue_order`, optionally a
PNG montage, then one JSON report with per-case numbers, their mean, the model's identity, the
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
from ..render.montage import write_case_montage
from .metrics import NORMALISE_PERCENTILES, PSNR_CAP_DB, SSIM_BORDER, compare
from .pairs import PairedCase, list_cases, load_case, load_labels
from .tissue_order import MIN_INTERIOR_VOXELS, body_correlation, tissue_order

if TYPE_CHECKING:
    from ..model.translator import TranslationSettings, Translator

log = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = ("mae", "psnr", "ssim", "network_evaluations", "seconds")
METRIC_DEFINITION = (
    f"Real MR is the reference. Each volume is normalised separately to [0, 1] by its own "
    f"percentiles P{NORMALISE_PERCENTILES[0]:g}/P{NORMALISE_PERCENTILES[1]:g} inside the body mask, "
    f"clipped. MAE: mean |difference| over mask voxels. PSNR: 10 log10(R^2/MSE) over mask voxels, "
    f"R = reference range in the mask (1 after normalisation), capped at {PSNR_CAP_DB:g} dB. "
    f"SSIM: 3D SSIM (Wang et al.) with a Gaussian window (sigma 1.5 voxels, truncated at 3.5 sigma), "
    f"K1 0.01, K2 0.03, population covariances, data range R, computed with outside-mask voxels set "
    f"to 0 in both volumes and averaged over the mask voxels at least {SSIM_BORDER} voxels from the "
    f"volume's edge (SynthRAD2023; skimage gaussian_weights=True). Correlation: Pearson coefficient "
    f"of the raw real and synthetic MR over the mask voxels (0 if either is constant). Tissue order "
    f"(cases with tissue labels only): each tissue's median synthetic intensity over its interior "
    f"(label eroded by one 6-connected voxel, inside the mask; tissues with fewer than "
    f"{MIN_INTERIOR_VOXELS} interior voxels skipped); checks white_matter > grey_matter > csf, "
    f"fat > muscle > urine, marrow > muscle, and each of fat, muscle, grey_matter, white_matter, "
    f"marrow, organ > cortical_bone, > air (inside the body) and > bowel_gas, applied when both "
    f"tissues are present; score = fraction of applied checks that hold (strictly greater); the "
    f"mean is over the cases that have a score."
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
    correlation: float = 0.0
    #: ``{"score", "held", "total", "failed"}`` when the case has tissue labels, else None.
    tissue_order: dict[str, Any] | None = None


def _order_summary(prediction: np.ndarray, case: PairedCase,
                   labels: tuple[np.ndarray, dict[int, str]] | None) -> dict[str, Any] | None:
    """The tissue-order score of a labelled case, without the per-check medians."""
    if labels is None:
        return None
    label_map, names = labels
    if label_map.shape != case.ct.shape:
        raise DataError(f"case {case.name}: labels {label_map.shape} do not match the CT {case.ct.shape}")
    order = tissue_order(prediction, label_map, names, case.mask)
    return {key: order[key] for key in ("score", "held", "total", "failed")}


def evaluate_case(translator: Translator, case: PairedCase, montage_dir: Path | None = None,
                  labels: tuple[np.ndarray, dict[int, str]] | None = None) -> CaseResult:
    """Translate one case's CT and score the synthetic MR against the real one.

    ``labels`` (a label map and its tissue names, :func:`.pairs.load_labels`) adds the tissue-order score.
    """
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
                      result.seconds, montage, correlation=body_correlation(case.mr, synthetic, case.mask),
                      tissue_order=_order_summary(synthetic, case, labels))


def peak_memory() -> dict[str, int | None]:
    """Peak resident memory of this process (bytes) and, when known, the CUDA peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB
    return {"process_max_rss_bytes": rss_bytes, "cuda_peak_bytes": None}


def _mean(results: list[CaseResult]) -> dict[str, float]:
    """Means of :data:`METRIC_KEYS` and the correlation; the tissue-order mean over the scored cases.

    Every value is a number (``benchmarks/compare_models.py`` rounds them all): ``tissue_order`` is
    left out when no case has a score, and ``tissue_order_cases`` says how many had one.
    """
    mean = {key: float(np.mean([getattr(r, key) for r in results])) for key in METRIC_KEYS}
    mean["correlation"] = float(np.mean([r.correlation for r in results]))
    scores = [r.tissue_order["score"] for r in results
              if r.tissue_order is not None and r.tissue_order["score"] is not None]
    if scores:
        mean["tissue_order"] = float(np.mean(scores))
    mean["tissue_order_cases"] = float(len(scores))
    return mean


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
        result = evaluate_case(translator, load_case(case_dir), montage_path, load_labels(case_dir))
        log.info("case %d/%d %s: MAE %.4f PSNR %.2f SSIM %.4f r %.3f tissue order %s", index + 1, len(cases),
                 result.name, result.mae, result.psnr, result.ssim, result.correlation,
                 _order_text(result.tissue_order))
        results.append(result)
        if on_case is not None:
            on_case(result)
    return {
        "data": str(data),
        "model": asdict(translator.model_info),
        "settings": asdict(translator.settings),  # resolved: the card's sampler and steps filled in
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


def _order_text(order: dict[str, Any] | float | None) -> str:
    """A tissue-order entry (a case's dict or the mean's number) as text; '-' when there is none."""
    if isinstance(order, dict):
        return "-" if order["score"] is None else f"{order['held']}/{order['total']}"
    return "-" if order is None else f"{order:.3f}"


def format_table(report: dict[str, Any]) -> str:
    """A short plain-text table: one line per case and the mean, then each case's failed tissue orders."""
    lines = [f"{'case':<24} {'MAE':>8} {'PSNR':>7} {'SSIM':>7} {'r':>6} {'order':>6} {'evals':>7} {'s':>7}"]
    rows = [(c["name"], c) for c in report["cases"]] + [("mean", report["mean"])]
    for name, row in rows:
        correlation = row.get("correlation")
        lines.append(f"{name:<24} {row['mae']:8.4f} {row['psnr']:7.2f} {row['ssim']:7.4f} "
                     f"{'-' if correlation is None else f'{correlation:.3f}':>6} "
                     f"{_order_text(row.get('tissue_order')):>6} "
                     f"{row['network_evaluations']:7.0f} {row['seconds']:7.1f}")
    for case in report["cases"]:
        order = case.get("tissue_order")
        if order and order.get("failed"):
            lines.append(f"{case['name']}: tissue order fails {', '.join(order['failed'])}")
    model = report["model"]
    lines.append(f"model {model['name']} {model['version']} ({model['architecture']}), device "
                 f"{report['device']}, peak RSS {report['peak_memory']['process_max_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)
