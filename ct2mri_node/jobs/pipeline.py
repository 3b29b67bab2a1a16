"""Where the stages meet: CT datasets -> volume -> translator -> synthetic MR datasets -> files.

The node's worker and the offline ``ct2mri-node translate`` command both call
:func:`run_pipeline` and :func:`write_series`; the translator is passed in (loaded once by the
caller), so this module never imports the model or torch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydicom.dataset import Dataset

from ..deliver.companions import CompanionOptions, encode_companions
from ..deliver.encode import EncodeOptions, FileEncoder, encode_series
from ..deliver.uids import is_valid_uid
from ..errors import InputError, SpoolError
from ..fsutil import fsync_dir, fsync_path, write_temporary
from ..volume.assemble import CTVolume, VolumeLimits, assemble

if TYPE_CHECKING:
    import numpy as np

    from ..model.translator import TranslationResult

log = logging.getLogger(__name__)


class SupportsTranslate(Protocol):
    """What the pipeline needs of a translator (``ct2mri_node.model.translator.Translator``).

    ``ct_hu`` is the assembled ``CTVolume.hu``: int16 or float32 HU, passed without a copy.
    """

    def translate(self, ct_hu: np.ndarray, spacing: tuple[float, float, float],
                  progress: Callable[[int, int], None] | None = None) -> TranslationResult: ...


@dataclass(frozen=True)
class PipelineOptions:
    """Volume limits, labelling options and companion objects for one translation."""

    limits: VolumeLimits = field(default_factory=VolumeLimits)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    companions: CompanionOptions = field(default_factory=CompanionOptions)


@dataclass
class PipelineResult:
    """The MR datasets and what they were made from (for summaries and timings).

    ``timings`` holds the seconds of each stage: ``assembly``, ``translation``, ``encoding``
    (the MR and its companions). ``companions`` are the uncertainty map and QA image that
    ``PipelineOptions.companions`` asked for (written into the same folder, sent with the MR).
    """

    datasets: list[Dataset]
    volume: CTVolume
    translation: TranslationResult
    timings: dict[str, float] = field(default_factory=dict)
    companions: list[Dataset] = field(default_factory=list)

    @property
    def all_datasets(self) -> list[Dataset]:
        """The MR series, then its companions (what a job writes and sends)."""
        return [*self.datasets, *self.companions]


def run_pipeline(
    datasets: Sequence[Dataset],
    translator: SupportsTranslate,
    options: PipelineOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PipelineResult:
    """assemble -> translate -> encode; returns the MR datasets with the volume, the result and
    each stage's wall time (the worker stores them as the job's timings)."""
    options = options or PipelineOptions()
    started = time.perf_counter()
    volume = assemble(datasets, options.limits)
    log.info("series %s: volume %s, spacing %s mm", volume.series_instance_uid,
             volume.hu.shape, tuple(round(s, 3) for s in volume.spacing))
    translating = time.perf_counter()
    result = translator.translate(volume.hu, volume.spacing, progress)
    translated = time.perf_counter()
    mr = encode_series(volume, result, options.encode)
    companions = _companions(volume, result, mr, options, datasets)
    timings = {
        "assembly": translating - started,
        "translation": translated - translating,
        "encoding": time.perf_counter() - translated,
    }
    return PipelineResult(datasets=mr, volume=volume, translation=result, timings=timings, companions=companions)


def _companions(volume: CTVolume, result: TranslationResult, mr: list[Dataset], options: PipelineOptions,
                ct_datasets: Sequence[Dataset]) -> list[Dataset]:
    """The companion objects asked for; a model that gives one sample whatever it is asked (the
    regression UNet) has no spread to map, so its map is left out with a warning."""
    wanted = options.companions
    if wanted.uncertainty_map and result.uncertainty is None:
        log.warning("series %s: no uncertainty map: model %s gave %d sample(s) (architecture %s)",
                    volume.series_instance_uid, result.model.name, result.settings.samples,
                    result.model.architecture)
        wanted = CompanionOptions(uncertainty_map=False, qa_capture=wanted.qa_capture)
    return encode_companions(volume, result, mr, wanted, options.encode, ct_datasets)


def translate_series(
    datasets: Sequence[Dataset],
    translator: SupportsTranslate,
    options: PipelineOptions | None = None,
) -> list[Dataset]:
    """The synthetic MR datasets of one CT series (see :func:`run_pipeline`)."""
    return run_pipeline(datasets, translator, options).datasets


#: File name prefix per SOP class: the MR's files sort first, then the map (PM), the QA image (SC).
FILE_PREFIXES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.4": "MR",        # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.30": "PM",       # Parametric Map Storage
    "1.2.840.10008.5.1.4.1.1.7": "SC",        # Secondary Capture Image Storage
}


def instance_file_name(ds: Dataset) -> str:
    """``MR<instance>_<SOPInstanceUID>.dcm`` (``PM``/``SC`` for the companions), from validated
    values only (no path tricks)."""
    uid = str(ds.get("SOPInstanceUID", ""))
    if not is_valid_uid(uid):
        raise InputError(f"refusing to name a file after an invalid SOP Instance UID {uid!r}")
    number = int(ds.get("InstanceNumber", 0) or 0)
    prefix = FILE_PREFIXES.get(str(ds.get("SOPClassUID", "")), "MR")
    return f"{prefix}{number:05d}_{uid}.dcm"


#: Threads that fsync written files: one fsync at a time waits out the disk's flush latency
#: once per file; several in flight let the file system commit them together.
FSYNC_THREADS = 8


def write_series(datasets: Sequence[Dataset], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write one file per instance into ``out_dir``; every file is durable when this returns.

    Each file is written under a temporary name and fsynced by a small thread pool while the
    next ones are encoded; once all are on disk they are renamed to their final names and the
    directory is fsynced once. A reader of ``out_dir`` never sees a partial file, and a crash
    leaves at most ``.tmp-*`` files (removed on error). The node's worker writes into a staging
    folder and renames it; the files and their names are on disk before that rename.
    """
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        names = [instance_file_name(ds) for ds in datasets]
        temps = _write_temporaries(datasets, directory)
        paths = []
        try:
            for tmp, name in zip(temps, names, strict=True):
                os.replace(tmp, directory / name)
                paths.append(directory / name)
        finally:
            for tmp in temps[len(paths):]:
                tmp.unlink(missing_ok=True)
        fsync_dir(directory)
    except OSError as exc:
        raise SpoolError(f"cannot write the MR series to {directory}: {exc}") from exc
    log.debug("wrote %d MR files to %s", len(paths), directory)
    return paths


def _write_temporaries(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Write every dataset to a temporary file and fsync them all; remove them on failure."""
    encoder = FileEncoder()
    temps: list[Path] = []
    try:
        with ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="fsync") as pool:
            pending = []
            for ds in datasets:
                temps.append(write_temporary(encoder.encode(ds), directory, suffix=".dcm", sync=False))
                pending.append(pool.submit(fsync_path, temps[-1]))
            for future in pending:
                future.result()
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    return temps
