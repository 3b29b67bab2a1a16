"""GPU check: translate a 512x512x200 CT phantom with autocast; time, memory, bf16 vs fp32.

    .venv/bin/python benchmarks/gpu_check.py [--checkpoint bundled|DIR] [--tiny] [--steps N] [--samples N]

The sampler is the checkpoint's own (the bundled model: estimate, then DDIM from t0; steps =
network evaluations per patch, default the card's). ``--samples 4`` also times the mean of four
samples (issue 14's uncertainty needs several).

Targets (issue 2): <= 20 s and <= 8 GB of GPU memory (torch.cuda.max_memory_allocated) on one
GPU. Also runs the same volume in fp32 and reports the difference of the uint16 outputs.
Without CUDA it says "no CUDA" and exits 0 (so it can run anywhere).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

SHAPE = (200, 512, 512)
SPACING = (1.5, 0.8, 0.8)


def phantom(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Ellipsoid body (soft tissue) with a bone core and a fat ring, in HU."""
    z, y, x = np.ogrid[-1:1:complex(0, shape[0]), -1:1:complex(0, shape[1]), -1:1:complex(0, shape[2])]
    ct = np.full(shape, -1000.0, np.float32)
    r2 = (y / 0.8) ** 2 + (x / 0.9) ** 2 + 0 * z
    ct[r2 < 1.0] = -100.0
    ct[r2 < 0.8] = 40.0
    ct[(y / 0.15) ** 2 + (x / 0.15) ** 2 + 0 * z < 1.0] = 900.0
    return ct


def run_once(translator, ct: np.ndarray) -> tuple[object, float, float, list[float]]:  # type: ignore[no-untyped-def]
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []
    start = time.perf_counter()
    result = translator.translate(ct, SPACING, progress=lambda i, n: stamps.append(time.perf_counter()))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    per_step = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    return result, seconds, peak_gib, per_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="evaluations per patch (default: the card's)")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--sw-batch-size", type=int, default=8)
    parser.add_argument("--skip-fp32", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from ct2mri_node.model import translator as tr
    from ct2mri_node.model.testing import make_tiny_checkpoint

    if not torch.cuda.is_available():
        print("no CUDA: nothing to check on this machine (run on a GPU host)")
        return 0
    print(f"device           {torch.cuda.get_device_name(0)}")
    checkpoint = make_tiny_checkpoint(tempfile.mkdtemp()) if args.tiny else args.checkpoint
    ct = phantom()
    settings = tr.TranslationSettings(steps=args.steps, device="cuda", sw_batch_size=args.sw_batch_size,
                                      samples=args.samples)
    translator = tr.Translator(checkpoint, settings)
    translator.translate(ct[:32, :128, :128], SPACING)  # warm-up (cuDNN autotune, allocator)
    result, seconds, peak, per_step = run_once(translator, ct)
    print(f"model            {result.model.name} ({result.model.architecture})")
    print(f"autocast         {translator._autocast}")
    print(f"volume           {ct.shape} at {SPACING} mm, {translator.settings.sampler} {translator.settings.steps} "
          f"evaluations/patch, {args.samples} sample(s), sw_batch_size {args.sw_batch_size}")
    print(f"network evals    {result.network_evaluations}")
    print(f"total seconds    {seconds:.2f}  (target <= 20)")
    print(f"seconds/step     {np.median(per_step):.3f} (median)")
    print(f"peak GPU memory  {peak:.2f} GiB  (target <= 8)")
    if not args.skip_fp32:
        translator._autocast = None  # same weights, same seed, full precision
        fp32, seconds32, peak32, _ = run_once(translator, ct)
        diff = np.abs(result.mr.astype(np.int32) - fp32.mr.astype(np.int32))
        print(f"fp32 seconds     {seconds32:.2f}, peak {peak32:.2f} GiB")
        print(f"autocast vs fp32 mean |diff| {diff.mean():.2f}, p99 {np.percentile(diff, 99):.0f}, max {diff.max()} (of 4095)")
    ok = seconds <= 20 and peak <= 8
    print(f"targets          {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
