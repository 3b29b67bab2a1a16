"""Training memory against the number of cases (issue 22): peak RSS with 20 vs 200 cases.

    .venv/bin/python benchmarks/train_memory.py [--cases 20 200] [--iterations 30] [--workers 2]
    .venv/bin/python benchmarks/train_memory.py --pythonpath /other/checkout --plain   # another version

Generates small SynthRAD-layout cases (CT, MR, mask as .nii.gz, 64x128x128 at 1 mm, random
ellipsoid bodies), then runs ``ct2mri-node train`` twice on each set: the first run fills the
grid cache (resampling to 2 mm), the second reads it. While a run goes, the memory of its
process tree is followed from /proc every 50 ms: the training process's peak RSS (the kernel's high-water
mark), and the peak PSS summed over it and its DataLoader workers (PSS shares copy-on-write pages fairly, where summed RSS
would count them once per worker). Memory that grows with the number of cases shows as a
larger peak at 200 than at 20. ``--plain`` leaves out the options older versions lack
(--workers, --cache), to measure them with ``--pythonpath``.

Measured (2 busy CPU cores, 20 iterations; peak RSS / peak PSS of the tree, MiB, second run):
this version 971 / 866 at 20 cases and 975 / 882 at 200; before issue 22 (every case in memory)
1032 / 898 and 1611 / 1509.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (64, 128, 128)


def generate(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` paired cases: an ellipsoid body with fat, soft tissue and a bone core, 1 mm voxels."""
    from ct2mri_node.training.pairs import PairedCase, write_case

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[-1:1:complex(0, SHAPE[0]), -1:1:complex(0, SHAPE[1]), -1:1:complex(0, SHAPE[2])]
    for i in range(n):
        a, b, c = rng.uniform(0.6, 0.95, 3)
        r2 = (z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2
        ct = np.full(SHAPE, -1000.0, np.float32)
        ct[r2 < 1.0] = -100.0
        ct[r2 < 0.7] = 40.0
        ct[r2 < 0.1] = 900.0
        ct += rng.normal(0, 10, SHAPE).astype(np.float32)
        mr = np.select([r2 < 0.1, r2 < 0.7, r2 < 1.0], [80.0, 300.0, 700.0], 5.0).astype(np.float32)
        write_case(root / f"case{i:03d}", PairedCase(f"case{i:03d}", ct, mr, r2 < 1.0, (1.0, 1.0, 1.0)))
    return root


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _kib(pid: int, path: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """Run ``cmd`` in ``cwd``; (seconds, peak RSS of the process in MiB, peak PSS of its tree in MiB).

    The process's peak RSS is the kernel's own (VmHWM, then wait4's ru_maxrss), not a sample.
    ``cwd`` matters: ``python -m`` imports from the working directory first."""
    start = time.perf_counter()
    log = cwd / "train.log"
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        peak_rss = peak_pss = 0
        while True:
            peak_rss = max(peak_rss, _kib(proc.pid, "status", "VmHWM:"))
            peak_pss = max(peak_pss, sum(_kib(p, "smaps_rollup", "Pss:") for p in _tree(proc.pid)))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
    peak_rss = max(peak_rss, usage.ru_maxrss)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start, peak_rss / 1024, peak_pss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pythonpath", help="import ct2mri_node from here (default: this checkout)")
    parser.add_argument("--plain", action="store_true", help="no --workers/--cache (versions before issue 22)")
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="ct2mri-trainmem-"))
    env = {**os.environ, "PYTHONPATH": args.pythonpath or str(Path(__file__).resolve().parents[1])}
    print(f"cases of {SHAPE} at 1 mm -> 2 mm; {args.iterations} iterations, batch 4, patch 32, "
          f"{'plain' if args.plain else f'{args.workers} workers'}; ct2mri_node from {env['PYTHONPATH']}")
    print(f"{'cases':>6} {'run':<14} {'seconds':>8} {'peak RSS MiB':>13} {'peak PSS tree MiB':>18}")
    try:
        for n in args.cases:
            data = root / f"data{n}"
            if not data.is_dir():
                generate(data, n)
            out = root / f"run{n}"
            shutil.rmtree(out, ignore_errors=True)
            for run in ("first (resample)", "second (cache)"):
                (out / "last.pt").unlink(missing_ok=True)
                cmd = [sys.executable, "-m", "ct2mri_node", "train", "--data", str(data), "--out", str(out),
                       "--arch", "unet", "--iterations", str(args.iterations), "--batch-size", "4", "--patch", "32",
                       "--base-channels", "8", "--val-every", "0", "--spacing", "2", "--threads", "1"]
                if not args.plain:
                    cmd += ["--workers", str(args.workers)]
                seconds, rss, pss = measure(cmd, env, root)
                print(f"{n:>6} {run:<14} {seconds:>8.1f} {rss:>13.0f} {pss:>18.0f}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
