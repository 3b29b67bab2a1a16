"""ct2mri-node: a DICOM node that turns CT series into synthetic MR series (not for diagnosis)."""

__version__ = "0.1.0"
