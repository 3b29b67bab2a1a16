"""QA preview: a PNG montage of the CT beside its synthetic MR (axial, coronal, sagittal through
the centre), so that a physicist can eyeball a result without a DICOM viewer.

Uses the montage renderer of ``render/montage.py``; the MR is shown with the display window the encoder
suggested for the series.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..jobs.pipeline import PipelineResult
from ..render.montage import CT_WINDOW, Row, render

log = logging.getLogger(__name__)

#: File name of the preview inside a job's output folder's parent (``output/<job>.preview.png``).
PREVIEW_SUFFIX = ".preview.png"


def preview_path(output_dir: Path) -> Path:
    """Where the preview of the job whose MR series is in ``output_dir`` goes (beside it)."""
    return output_dir.with_name(output_dir.name + PREVIEW_SUFFIX)


def write_preview(path: Path, result: PipelineResult, cell: int = 192) -> Path:
    """Write the two-row montage (CT, synthetic MR) of one pipeline result as PNG; returns ``path``."""
    translation = result.translation
    rows = [
        Row("CT", result.volume.hu, CT_WINDOW),
        Row("sMR", translation.mr, (translation.window_center, translation.window_width)),
    ]
    image = render(rows, result.volume.spacing, cell=cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    log.debug("wrote QA preview %s", path)
    return path
