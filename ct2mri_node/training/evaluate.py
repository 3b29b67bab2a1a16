"""Evaluate a checkpoint on paired cases: translate each CT, compare with the real MR, report.

For every case of a SynthRAD-layout folder: ``Translator.translate(case.ct, case.spacing)``, the
masked metrics of :mod:`.metrics` against ``case.mr`` inside ``case.mask``, the body correlation
and, when the case has tissue labels, the checks of :mod:`.tissue_checks` (per-tissue table, every
T1w order check, uniformity, seam ratio) and the older tissue-order fraction of :mod:`.tissue_order`,
optionally a PNG montage, then one JSON report with per-case numbers, their mean, the worst case of
each pass criterion, the model's identity, the settings and the process's peak memory. torch stays
behind the translator.
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
from .metrics import (
    GRADIENT_QUANTILES,
    NORMALISE_PERCENTILES,
    PSNR_CAP_DB,
    SPECTRUM_BINS,
    SPECTRUM_MIN_BODY_FRACTION,
    SSIM_BORDER,
    compare,
    texture,
)
from .pairs import PairedCase, list_cases, load_case, load_labels
from .tissue_checks import T1W_SOFT_TISSUES, UNIFORMITY_PAIRS, case_checks
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
    f"of the raw real and synthetic MR over the mask voxels (0 if either is constant). "
    f"Texture (lower is closer; 0 = the same), both volumes normalised as above: spectrum: per axial "
    f"slice where the body fills at least {SPECTRUM_MIN_BODY_FRACTION:g} of its in-plane bounding box, "
    f"the box with outside-mask voxels set to the slice's body mean, mean removed, 2D Hann taper, "
    f"power |FFT|^2 averaged over {SPECTRUM_BINS} rings of radial frequency in (0, 0.5] cycles/voxel, "
    f"normalised to unit sum, log10, averaged over slices; the distance is the mean |difference| of "
    f"the two log spectra (decades). gradient: 1D Wasserstein distance (mean |difference| of "
    f"{len(GRADIENT_QUANTILES)} quantiles, {GRADIENT_QUANTILES[0]:g} to {GRADIENT_QUANTILES[-1]:g}) between "
    f"the central-difference gradient magnitudes over the mask eroded by one 6-connected voxel. "
    f"Cases with tissue labels only: a tissue's interior is its label eroded by one 6-connected "
    f"voxel, inside the mask; tissues with fewer than {MIN_INTERIOR_VOXELS} interior voxels are "
    f"absent. Tissue table: per tissue, mean and SD of the synthetic and of the real MR over its "
    f"interior (raw units). T1w checks: pairs (brighter, darker) compared by interior MEANS of the "
    f"synthetic MR, each held when strictly greater, applied when both tissues are present: "
    f"white_matter > grey_matter > csf; fat > muscle > urine; grey_matter and muscle > each of csf, "
    f"urine, eye; marrow > muscle; each of {', '.join(T1W_SOFT_TISSUES)} > cortical_bone, > air (inside "
    f"the body) and > bowel_gas; a case passes (all_held) only when every applied check holds. "
    f"Uniformity: for {', '.join(f'{a} vs {b}' for a, b in UNIFORMITY_PAIRS)}: |mean(first) - "
    f"mean(second)| / SD of the synthetic MR over the first's interior (capped at 1000), and their "
    f"minimum; the truth is uniform inside each tissue. Seam ratio: mean |finite difference| of the "
    f"synthetic MR between voxel pairs whose segment comes within 1 voxel of a plane where "
    f"sliding-window patches meet, over the same for all other pairs, counting only pairs inside "
    f"one tissue's interior, pooled over the three axes (1 = no seams; null when the translator "
    f"reports no window edges). Tissue order (older score, kept for comparison with earlier "
    f"tables): each tissue's median over its interior; checks white_matter > grey_matter > csf, "
    f"fat > muscle > urine, marrow > muscle, and each of fat, muscle, grey_matter, white_matter, "
    f"marrow, organ > cortical_bone, > air and > bowel_gas; score = fraction held. Mean: over the "
    f"cases that have each number (t1w_all_held: fraction of checked cases that pass). Worst: the "
    f"worst case of each pass criterion (all T1w checks held in every case, lowest correlation, "
    f"lowest uniformity, highest seam ratio)."
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
    #: Tissue name -> voxels, synthetic and true mean and SD over its interior (labelled cases).
    tissue_table: dict[str, dict[str, float]] | None = None
    #: ``{"held", "total", "all_held", "failed"}``: every T1w order check (labelled cases).
    t1w: dict[str, Any] | None = None
    #: ``{"white_matter_vs_grey_matter", "muscle_vs_fat", "min"}`` where present (labelled cases).
    uniformity: dict[str, float | None] | None = None
    #: Seams of the sliding window against elsewhere (labelled cases whose translation reports edges).
    seam_ratio: float | None = None
    #: ``{"spectrum", "gradient"}``: texture distances from the real MR (:func:`.metrics.texture`).
    texture: dict[str, float] | None = None


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

    ``labels`` (a label map and its tissue names, :func:`.pairs.load_labels`) adds the tissue
    checks and the tissue-order score; the seam ratio also needs the translation's window edges.
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
    checks: dict[str, Any] = {}
    if labels is not None:
        label_map, names = labels
        if label_map.shape != case.ct.shape:
            raise DataError(f"case {case.name}: labels {label_map.shape} do not match the CT {case.ct.shape}")
        # Per axis, the planes where patches meet, in CT voxels (p = k - 0.5); None from older translators.
        edges = getattr(result, "window_edges", None)
        checks = case_checks(synthetic, case.mr, label_map, names, case.mask, edges)
    return CaseResult(case.name, scores.mae, scores.psnr, scores.ssim, result.network_evaluations,
                      result.seconds, montage, correlation=body_correlation(case.mr, synthetic, case.mask),
                      tissue_order=_order_summary(synthetic, case, labels),
                      texture=_texture(case, synthetic), **checks)


def _texture(case: PairedCase, synthetic: np.ndarray) -> dict[str, float] | None:
    """The case's texture distances; None (and a warning) for a body too small to have a spectrum."""
    try:
        return asdict(texture(case.mr, synthetic, case.mask))
    except DataError as exc:
        log.warning("case %s: no texture distance: %s", case.name, exc)
        return None


def peak_memory() -> dict[str, int | None]:
    """Peak resident memory of this process (bytes) and, when known, the CUDA peak."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB
    return {"process_max_rss_bytes": rss_bytes, "cuda_peak_bytes": None}


def _mean(results: list[CaseResult]) -> dict[str, float]:
    """Means of :data:`METRIC_KEYS` and the correlation; the others over the cases that have them.

    Every value is a number (``benchmarks/compare_models.py`` rounds them all): ``tissue_order``,
    ``t1w_all_held`` (the fraction of checked cases where every T1w check holds), ``uniformity`` (of
    each case's minimum) and ``seam_ratio`` are left out when no case has one; ``tissue_order_cases``
    and ``t1w_cases`` say how many had one.
    """
    mean = {key: float(np.mean([getattr(r, key) for r in results])) for key in METRIC_KEYS}
    mean["correlation"] = float(np.mean([r.correlation for r in results]))
    scores = [r.tissue_order["score"] for r in results
              if r.tissue_order is not None and r.tissue_order["score"] is not None]
    if scores:
        mean["tissue_order"] = float(np.mean(scores))
    mean["tissue_order_cases"] = float(len(scores))
    passed = [r.t1w["all_held"] for r in results if r.t1w is not None and r.t1w["all_held"] is not None]
    if passed:
        mean["t1w_all_held"] = float(np.mean(passed))
    mean["t1w_cases"] = float(len(passed))
    for key in ("spectrum", "gradient"):
        values = [r.texture[key] for r in results if r.texture is not None]
        if values:
            mean[f"texture_{key}"] = float(np.mean(values))
    for key, values in (("uniformity", _uniformities(results)), ("seam_ratio", _seam_ratios(results))):
        if values:
            mean[key] = float(np.mean(values))
    return mean


def _uniformities(results: list[CaseResult]) -> list[float]:
    return [r.uniformity["min"] for r in results if r.uniformity is not None and r.uniformity["min"] is not None]


def _seam_ratios(results: list[CaseResult]) -> list[float]:
    return [r.seam_ratio for r in results if r.seam_ratio is not None]


def _worst(results: list[CaseResult]) -> dict[str, Any]:
    """The worst case of each pass criterion: what a quality gate compares with its thresholds.

    ``t1w_all_held``: True when every checked case holds every T1w check (None when no case was
    checked); ``t1w_failed_cases``: the names of those that do not; ``correlation`` and
    ``uniformity``: the lowest; ``seam_ratio``: the highest (None where no case has one).
    """
    checked = [r for r in results if r.t1w is not None and r.t1w["all_held"] is not None]
    uniformities, seams = _uniformities(results), _seam_ratios(results)
    return {
        "t1w_all_held": all(r.t1w["all_held"] for r in checked) if checked else None,  # type: ignore[index]
        "t1w_failed_cases": [r.name for r in checked if not r.t1w["all_held"]],  # type: ignore[index]
        "correlation": min(r.correlation for r in results) if results else None,
        "uniformity": min(uniformities) if uniformities else None,
        "seam_ratio": max(seams) if seams else None,
    }


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
        log.info("case %d/%d %s: MAE %.4f PSNR %.2f SSIM %.4f r %.3f T1w checks %s uniformity %s seams %s",
                 index + 1, len(cases), result.name, result.mae, result.psnr, result.ssim, result.correlation,
                 _t1w_text(result.t1w), _number(result.uniformity["min"] if result.uniformity else None, 1),
                 _number(result.seam_ratio, 2))
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
        "worst": _worst(results),
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


def _t1w_text(t1w: dict[str, Any] | float | None) -> str:
    """A case's T1w checks as 'held/total' ('!' when one fails), the mean's pass fraction, or '-'."""
    if isinstance(t1w, dict):
        if not t1w.get("total"):
            return "-"
        return f"{t1w['held']}/{t1w['total']}{'' if t1w['all_held'] else '!'}"
    return "-" if t1w is None else f"{t1w:.2f}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spectrum(row: dict[str, Any]) -> float | None:
    """A case's (or the mean's) texture spectrum distance, None where there is none."""
    value = row.get("texture")
    return value.get("spectrum") if isinstance(value, dict) else row.get("texture_spectrum")


def _uniformity_min(row: dict[str, Any]) -> float | None:
    value = row.get("uniformity")
    return value.get("min") if isinstance(value, dict) else value


def format_tissue_table(name: str, table: dict[str, dict[str, float]]) -> list[str]:
    """One case's per-tissue table: interior voxels, synthetic and true mean +- SD."""
    lines = [f"{name}: {'tissue':<14} {'voxels':>8} {'synthetic mean +- SD':>22} {'true mean +- SD':>22}"]
    indent = " " * (len(name) + 2)
    for tissue, row in table.items():
        synthetic = f"{row['synthetic_mean']:.1f} +- {row['synthetic_sd']:.1f}"
        true = f"{row['true_mean']:.1f} +- {row['true_sd']:.1f}"
        lines.append(f"{indent}{tissue:<14} {row['voxels']:>8} {synthetic:>22} {true:>22}")
    return lines


def format_table(report: dict[str, Any]) -> str:
    """A plain-text summary: one line per case and the mean, the worst case, then each case's failed
    T1w checks and tissue-order checks and its per-tissue table."""
    header = (f"{'case':<24} {'MAE':>8} {'PSNR':>7} {'SSIM':>7} {'r':>6} {'T1w':>7} {'unif':>6} {'seam':>5} "
              f"{'order':>6} {'tex':>6} {'evals':>7} {'s':>7}")
    lines = [header]
    rows = [(c["name"], c) for c in report["cases"]] + [("mean", report["mean"])]
    for name, row in rows:
        correlation = row.get("correlation")
        t1w = row.get("t1w_all_held") if name == "mean" else row.get("t1w")
        lines.append(f"{name:<24} {row['mae']:8.4f} {row['psnr']:7.2f} {row['ssim']:7.4f} "
                     f"{'-' if correlation is None else f'{correlation:.3f}':>6} "
                     f"{_t1w_text(t1w):>7} {_number(_uniformity_min(row), 1):>6} "
                     f"{_number(row.get('seam_ratio'), 2):>5} {_order_text(row.get('tissue_order')):>6} "
                     f"{_number(_spectrum(row), 3):>6} {row['network_evaluations']:7.0f} {row['seconds']:7.1f}")
    worst = report.get("worst")
    if worst:
        held = {True: "every case", False: "NOT every case", None: "-"}[worst.get("t1w_all_held")]
        lines.append(f"worst: T1w checks hold in {held}; r {_number(worst.get('correlation'), 3)}, "
                     f"uniformity {_number(worst.get('uniformity'), 1)}, "
                     f"seam ratio {_number(worst.get('seam_ratio'), 2)}")
    for case in report["cases"]:
        t1w = case.get("t1w")
        if t1w and t1w.get("failed"):
            lines.append(f"{case['name']}: T1w checks fail {', '.join(t1w['failed'])}")
        order = case.get("tissue_order")
        if order and order.get("failed"):
            lines.append(f"{case['name']}: tissue order fails {', '.join(order['failed'])}")
    for case in report["cases"]:
        if case.get("tissue_table"):
            lines.extend(format_tissue_table(case["name"], case["tissue_table"]))
    model = report["model"]
    lines.append(f"model {model['name']} {model['version']} ({model['architecture']}), device "
                 f"{report['device']}, peak RSS {report['peak_memory']['process_max_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)
