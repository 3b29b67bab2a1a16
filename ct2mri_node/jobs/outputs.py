"""Where each job's MR series lives in the spool: ``output/<job id>/``, and its removal.

Beside the folder may lie files named ``<job id>.*`` (the QA preview); they go with it.
Removal is crash-safe (:mod:`ct2mri_node.receive.removal`) and reported to the spool's
listeners as ``folder_removed("output")``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpoolError
from ..receive.removal import remove_folder
from ..receive.spool import Spool


def output_dir(spool: Spool, job_id: int) -> Path:
    """The folder holding job ``job_id``'s MR series."""
    return spool.output / str(int(job_id))


def output_job_ids(spool: Spool) -> list[int]:
    """Job ids that have an output folder."""
    if not spool.output.is_dir():
        return []
    return sorted(int(p.name) for p in spool.output.iterdir() if p.name.isdigit() and p.is_dir())


def remove_output(spool: Spool, job_id: int) -> bool:
    """Remove a job's MR series folder and the files beside it named ``<job id>.*`` (its QA
    preview); True when something was removed."""
    removed = remove_folder(output_dir(spool, job_id))
    if removed:
        spool.notify_removed("output")
    prefix = f"{int(job_id)}."
    try:
        siblings = [p for p in spool.output.iterdir() if p.name.startswith(prefix) and p.is_file()]
        for path in siblings:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot remove the output of job {job_id} in {spool.output}: {exc.strerror or exc}") from exc
    return removed or bool(siblings)
