"""``ct2mri-node translate``: one CT DICOM series in a folder -> a synthetic MR series in another.

The same pipeline as the node's worker, without the send step. The CT is checked before the
model is loaded, so unusable input fails fast with a message saying what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InputError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "translate",
        help="translate a CT DICOM series into a synthetic MR series (NOT FOR DIAGNOSIS)",
        description="Read one CT series from a folder (any file names, any order), translate it "
        "with the model and write one synthetic MR Image Storage file per CT slice, on the CT's "
        "grid and frame of reference, labelled as synthetic and not for diagnosis.",
    )
    parser.add_argument("--input", required=True, type=Path, help="folder holding one CT series")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the MR series into")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", default="bundled",
                       help="checkpoint directory, or 'bundled' for the demonstration model (default)")
    model.add_argument("--bundle", help="a MONAI bundle folder instead of a checkpoint (docs/training.md)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--steps", type=int, help="network evaluations per patch and sample (default: the model's)")
    parser.add_argument("--samples", type=int, default=1, help="samples averaged into the MR (default 1)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="share of a sliding-window patch its neighbour also covers, 0 <= x < 1 (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--t0", type=int,
                        help="refine sampler: the timestep (1-999) the estimate is noised to before the DDIM "
                        "steps; needs --steps >= 2 to matter (default: the model card's)")
    parser.add_argument("--sampler", choices=["auto", "refine", "ddim", "ddpm"], default="auto",
                        help="sampler (default auto: the model's own, refine for the bundled model)")
    parser.add_argument("--uncertainty-map", action="store_true",
                        help="also write the per-voxel SD across the samples as a Parametric Map (needs --samples >= 2)")
    parser.add_argument("--qa-capture", action="store_true",
                        help="also write the QA montage (CT, MR and, with samples, the SD) as a Secondary Capture")
    parser.add_argument("--min-slices", type=int, default=8, help="fewest CT slices accepted (default 8)")
    parser.add_argument("--max-slices", type=int, default=2000, help="most CT slices accepted (default 2000)")
    parser.add_argument("--max-matrix", type=int, default=1024,
                        help="largest rows or columns per CT slice accepted (default 1024)")
    parser.add_argument("--series-number-offset", type=int, default=1000,
                        help="MR SeriesNumber = CT SeriesNumber + this (default 1000)")
    parser.set_defaults(func=run)


class _LazyTranslator:
    """Loads the model on the first ``translate`` call, i.e. only after the CT was accepted."""

    def __init__(self, checkpoint: str, settings: Any, bundle: str | None = None) -> None:
        self._checkpoint = checkpoint
        self._settings = settings
        self._bundle = bundle
        self.translator: Any = None

    def translate(self, ct_hu: np.ndarray, spacing: tuple[float, float, float],
                  progress: Callable[[int, int], None] | None = None) -> Any:
        if self.translator is None:
            from ..model.translator import Translator

            self.translator = Translator(self._checkpoint, self._settings, bundle=self._bundle)
        return self.translator.translate(ct_hu, spacing, progress)


def input_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (recursively), or an InputError saying why not."""
    if not folder.exists():
        raise InputError(f"--input {folder} does not exist; give the folder holding the CT series")
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"--input {folder} is empty; give the folder holding the CT series")
    return files


def _options(args: argparse.Namespace) -> Any:
    from ..deliver.companions import CompanionOptions
    from ..deliver.encode import EncodeOptions
    from ..jobs.pipeline import PipelineOptions
    from ..volume.assemble import VolumeLimits

    if min(args.steps or 1, args.samples, args.min_slices, args.max_slices, args.max_matrix) < 1:
        raise ConfigError("--steps, --samples, --min-slices, --max-slices and --max-matrix must be at least 1")
    if args.t0 is not None and args.t0 < 1:
        raise ConfigError(f"--t0 must be at least 1, got {args.t0}")
    if not 0.0 <= args.overlap < 1.0:
        raise ConfigError(f"--overlap must be at least 0 and below 1, got {args.overlap}")
    if args.max_slices < args.min_slices:
        raise ConfigError(f"--max-slices {args.max_slices} is below --min-slices {args.min_slices}")
    if args.uncertainty_map and args.samples < 2:
        raise ConfigError(f"--uncertainty-map needs --samples >= 2 (--samples is {args.samples}): "
                          "the map is the spread across samples")
    try:
        encode = EncodeOptions(series_number_offset=args.series_number_offset)
    except ValueError as exc:
        raise ConfigError(f"--series-number-offset: {exc}") from exc
    limits = VolumeLimits(min_slices=args.min_slices, max_slices=args.max_slices,
                          max_rows=args.max_matrix, max_columns=args.max_matrix)
    companions = CompanionOptions(uncertainty_map=args.uncertainty_map, qa_capture=args.qa_capture)
    return PipelineOptions(limits=limits, encode=encode, companions=companions)


def run(args: argparse.Namespace) -> int:
    from ..jobs.pipeline import run_pipeline, write_series
    from ..model.translator import TranslationSettings
    from ..volume.assemble import read_series

    options = _options(args)
    start = time.perf_counter()
    datasets = read_series(input_files(args.input))
    if not datasets:
        raise InputError(f"--input {args.input} holds no DICOM files; give a CT DICOM series")
    settings = TranslationSettings(steps=args.steps, sampler=args.sampler, seed=args.seed,
                                   device=args.device, samples=args.samples, overlap=args.overlap, t0=args.t0)
    translator = _LazyTranslator(args.checkpoint, settings, args.bundle)
    outcome = run_pipeline(datasets, translator, options)
    write_series(outcome.all_datasets, args.output)
    seconds = time.perf_counter() - start
    result = outcome.translation
    print(f"synthetic MR series {outcome.datasets[0].SeriesInstanceUID} (NOT FOR DIAGNOSIS)")
    print(f"  from CT series {outcome.volume.series_instance_uid}, "
          f"{len(outcome.datasets)} instances in {args.output}")
    for companion in outcome.companions:
        print(f"  {companion.SeriesDescription} (series {companion.SeriesInstanceUID})")
    print(f"  model {result.model.name} {result.model.version}, {result.settings.sampler} "
          f"{result.settings.steps} steps, seed {result.settings.seed}, device {result.device}")
    print(f"  time {seconds:.1f} s (sampling {result.seconds:.1f} s, "
          f"{result.network_evaluations} network evaluations)")
    for note in outcome.volume.notes:
        print(f"  note: {note}")
    return 0
