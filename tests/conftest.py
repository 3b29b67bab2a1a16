"""Session-wide test settings: pydicom validates strictly, as highdicom's tests do."""

from __future__ import annotations

import os

import pydicom.config

# Every object we read or write in the tests must be valid DICOM; a lenient default would hide
# encoder bugs. Code under test that reads hostile input handles its own validation.
pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE

# dcmtk and Orthanc stall ~40 ms per C-STORE with Nagle's algorithm on.
os.environ.setdefault("TCP_NODELAY", "1")
