"""Time the DICOM stages of the node and measure the memory of assembly.

Generates a CT series (200 slices of 512x512 by default) with ``write_ct_series`` in a
temporary folder, then times each stage that is not translation: ``read_series``,
``assemble``, ``encode_series`` (with a real ``TranslationResult`` built from a uint16 array)
and ``write_series``. In a fresh subprocess it reads and assembles a taller series
(300 slices of 512x512) and compares its peak RSS (``VmHWM``, measured as in ``memory.py``) with
the raw int16 volume.

    .venv/bin/python benchmarks/stages.py                     # 200 x 512 x 512, memory at 300
    .venv/bin/python benchmarks/stages.py --slices 50 --memory-slices 60   # quick look

Targets (issues 3 and 5): read + assemble + encode + write (+ send, timed by
``benchmarks/latency.py``) under 2 s for 200 slices of 512x512; peak RSS while assembling
512x512x300 at most 2.5 times the raw int16 volume. The memory ratio is printed twice: for the
whole process, and for the growth above the process's RSS after imports (the interpreter,
numpy and pydicom are about the same size whatever the series).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ct2mri_node.training.ct_dicom import write_ct_series

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory  # noqa: E402  (one memory measurement, shared with memory.py)

T = TypeVar("T")
MIB = 1024 * 1024
TOTAL_TARGET_S = 2.0
MEMORY_TARGET = 2.5


def _hu(slices: int, size: int) -> np.ndarray:
    """A head-like CT in HU (air, soft tissue, bone ring), every slice different."""
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(y - size / 2, x - size / 2)
    plane = np.where(r < size * 0.4, 40.0, -1000.0).astype(np.float32)
    plane[(r >= size * 0.32) & (r < size * 0.4)] = 900.0
    return plane[None] + np.arange(slices, dtype=np.float32)[:, None, None]


def _write_ct(folder: Path, slices: int, size: int) -> list[Path]:
    return write_ct_series(_hu(slices, size), (2.0, 1.0, 1.0), folder, seed=1,
                           shuffle_names=True)


def _timed(label: str, times: dict[str, float], call: Callable[[], T]) -> T:
    gc.collect()
    start = time.perf_counter()
    value = call()
    times[label] = time.perf_counter() - start
    return value


def _result(shape: tuple[int, ...]) -> object:
    """A real TranslationResult around a uint16 array (no model runs)."""
    from ct2mri_node.model.translator import ModelInfo, TranslationResult, TranslationSettings

    mr = np.random.default_rng(0).integers(0, 4096, size=shape, dtype=np.uint16)
    model = ModelInfo("ct2mri-bench", "0.1.0", "enhanced", "ab" * 32, "benchmark stand-in")
    return TranslationResult(mr=mr, window_center=1500.0, window_width=3000.0, model=model,
                             settings=TranslationSettings(steps=20), device="cpu",
                             network_evaluations=0, seconds=0.0)


def time_stages(folder: Path, slices: int, size: int) -> dict[str, float]:
    """Seconds of read, assemble, encode and write for one generated series."""
    from ct2mri_node.deliver.encode import EncodeOptions, encode_series
    from ct2mri_node.jobs.pipeline import write_series
    from ct2mri_node.volume.assemble import assemble, read_series

    paths = _write_ct(folder / "ct", slices, size)
    times: dict[str, float] = {}
    datasets = _timed("read_series", times, lambda: read_series(paths))
    volume = _timed("assemble", times, lambda: assemble(datasets))
    result = _result(volume.hu.shape)
    options = EncodeOptions(contribution_datetime=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    mr = _timed("encode_series", times,
                lambda: encode_series(volume, result, options))  # type: ignore[arg-type]
    _timed("write_series", times, lambda: write_series(mr, folder / "mr"))
    return times


def measure_memory(folder: Path, slices: int, size: int) -> dict[str, Any]:
    """Peak RSS of read_series + assemble in a fresh interpreter, against raw int16 bytes
    (the measurement of ``memory.py``, reported for the whole process and above imports)."""
    series = folder / "ct-memory"
    series.mkdir()
    raw = memory.write_series(series, slices, size)
    child = memory.measure(series, "assemble")
    peak, before = child["peak"], child["base"]
    return {"raw_mib": raw / MIB, "peak_mib": peak / MIB, "imports_mib": before / MIB,
            "ratio": peak / raw, "growth_ratio": (peak - before) / raw, "dtype": child["dtype"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--memory-slices", type=int, default=300)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temporary folder; put it on the "
                             "spool's file system for representative write times)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        memory = measure_memory(folder, args.memory_slices, args.size)
        times = time_stages(folder, args.slices, args.size)
    total = sum(times.values())
    print(f"stages for {args.slices} slices of {args.size}x{args.size}:")
    for label, seconds in times.items():
        print(f"  {label:<14} {seconds:7.3f} s")
    print(f"  {'total':<14} {total:7.3f} s   target < {TOTAL_TARGET_S:.1f} s (without send): "
          f"{total / TOTAL_TARGET_S:.2f} x target")
    print(f"assembly of {args.memory_slices} slices of {args.size}x{args.size} "
          f"(raw int16 {memory['raw_mib']:.0f} MiB; assembled as {memory['dtype']}):")
    print(f"  peak RSS {memory['peak_mib']:.0f} MiB = {memory['ratio']:.2f} x raw "
          f"(target <= {MEMORY_TARGET})")
    print(f"  growth above imports ({memory['imports_mib']:.0f} MiB) = "
          f"{memory['growth_ratio']:.2f} x raw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
