"""The DICOM SCP, the durable spool and series completion."""
