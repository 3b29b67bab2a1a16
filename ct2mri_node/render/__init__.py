"""Rendering used at run time and in training reports: PNG montages (numpy and Pillow, no torch)."""
