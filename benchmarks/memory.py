"""Peak memory while assembling a CT series: peak RSS against the raw int16 volume size.

Writes a generated series (default 300 slices of 512x512), then measures in fresh child
processes, each reporting its peak RSS above its own baseline after imports:
``read`` (pydicom reads every file), ``assemble`` (read + ``volume.assemble.assemble``).
Linux only: the peak is VmHWM from /proc after resetting it to the baseline.
The difference tells which part costs the memory. Target (issue 5): at most 2.5 x raw int16.
The series is stored as scanners do (uint16, slope 1, intercept -1024), so it assembles int16.

    .venv/bin/python benchmarks/memory.py
    .venv/bin/python benchmarks/memory.py --slices 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_CHILD = r"""
import json, sys
from pathlib import Path
from ct2mri_node.volume.assemble import assemble, read_series, VolumeLimits
def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no " + key + " in /proc/self/status")
def rss(): return status("VmHWM")   # peak resident set since the reset below
import numpy, pydicom  # noqa: imports are in the baseline
Path("/proc/self/clear_refs").write_text("5")   # reset the peak to the current RSS
base = status("VmRSS")
paths = sorted(Path(sys.argv[1]).glob("*.dcm"))
datasets = read_series(paths)
after_read = rss()
volume = None
if sys.argv[2] == "assemble":
    volume = assemble(datasets, VolumeLimits())
print(json.dumps({"base": base, "after_read": after_read, "peak": rss(),
                  "shape": list(volume.hu.shape) if volume is not None else None,
                  "dtype": str(volume.hu.dtype) if volume is not None else None}))
"""


def write_series(folder: Path, slices: int, size: int) -> int:
    """Write a generated CT series into ``folder``; the raw int16 size of its volume in bytes."""
    from ct2mri_node.training.ct_dicom import write_ct_series

    z, y, x = np.mgrid[0:slices, 0:size, 0:size]
    r = np.hypot(y - size / 2, x - size / 2)
    hu = np.where(r < size * 0.4, 40.0 + (z % 7), -1000.0).astype(np.float32)
    del z, y, x, r
    write_ct_series(hu, (1.0, 0.8, 0.8), folder, seed=5)
    return int(hu.size * 2)


def measure(folder: Path, mode: str) -> dict[str, Any]:
    """RSS after imports (``base``), and peaks in bytes, of a fresh interpreter that reads
    (``mode`` read) or reads and assembles (``assemble``) the series in ``folder``."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder), mode], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"child ({mode}) failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"generating {args.slices} x {args.size} x {args.size} CT ...", flush=True)
        raw = write_series(folder, args.slices, args.size)
        read = measure(folder, "read")
        full = measure(folder, "assemble")
    mib = 1024 * 1024
    read_peak = read["peak"] - read["base"]
    full_peak = full["peak"] - full["base"]
    print(f"  raw int16 volume              {raw / mib:8.1f} MiB  (assembled as {full['dtype']})")
    print(f"  peak RSS, read_series only    {read_peak / mib:8.1f} MiB  ({read_peak / raw:.2f} x raw)")
    print(f"  peak RSS, read + assemble     {full_peak / mib:8.1f} MiB  ({full_peak / raw:.2f} x raw)")
    print(f"  assemble's own share          {(full_peak - read_peak) / mib:8.1f} MiB  ({(full_peak - read_peak) / raw:.2f} x raw)")
    print(f"ratio peak/raw: {full_peak / raw:.2f}  (target <= 2.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
