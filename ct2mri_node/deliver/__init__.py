"""The synthetic MR series: deterministic UIDs, encoding, and sending to destinations."""
