"""Load a folder with OpenTPS' own reader and describe what it made (run by OpenTPS' interpreter).

``python opentps_read.py FOLDER OUT``: ``opentps.core.io.dataLoader.readData([FOLDER])``, then for
each image it returns one JSON line on stdout (class, modality, grid size, spacing, origin, frame
of reference, patient) and its voxels as ``OUT/<index>.npy``. This file imports only OpenTPS and
numpy: it runs in OpenTPS' own virtual environment (``.venv-opentps``), whose pins are not ours.
A reader error propagates (non-zero exit, the traceback on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from opentps.core.io.dataLoader import readData


def main(folder: str, out: str) -> None:
    for index, item in enumerate(readData([folder])):
        array = getattr(item, "imageArray", None)
        if array is not None:
            np.save(Path(out) / f"{index}.npy", np.asarray(array))
        patient = getattr(item, "patient", None)
        print(json.dumps({
            "index": index,
            "class": type(item).__name__,
            "modality": str(getattr(item, "modality", "")),
            "grid_size": [int(v) for v in getattr(item, "gridSize", ())],
            "spacing": [float(v) for v in getattr(item, "spacing", ())],
            "origin": [float(v) for v in getattr(item, "origin", ())],
            "frame_of_reference": str(getattr(item, "frameOfReferenceUID", "")),
            "series": str(getattr(item, "seriesInstanceUID", "")),
            "patient_id": str(getattr(patient, "id", "")),
            "patient_name": str(getattr(patient, "name", "")),
        }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
