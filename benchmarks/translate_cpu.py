"""Benchmark: translate a 256x256x128 CT phantom on the CPU and report time and memory.

    .venv/bin/python benchmarks/translate_cpu.py [--checkpoint bundled|DIR] [--steps N] [--samples N] [--full-fov]
    .venv/bin/python benchmarks/translate_cpu.py --steps 2 --sweep 1,4,8   # cost of N samples vs 1
    .venv/bin/python benchmarks/translate_cpu.py --overlap 0.25             # the faster, seamier windows

Prints seconds per network pass, passes, total time, peak memory (RSS) and the ratio against
1000-step DDPM sampling at the same per-pass cost. Target: <= 120 s on 2 CPU cores at the
model's default steps. The phantom is ``ct2mri_node.training.phantoms`` (pelvis);
``--full-fov`` instead uses a body that fills the whole 384 mm field of view (the worst case for
the body crop). ``--tiny`` uses a random tiny checkpoint (no trained model needed).
``--sweep 1,4,8`` translates the same CT with each number of samples in this one process (the
model loaded once per N, the CT the same) and prints each time and its ratio to the first N, with
the seconds spent on the uncertainty map (the per-sample post-processing and standard deviation).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

SHAPE = (128, 256, 256)
SPACING = (2.5, 1.5, 1.5)
DEMO_PATCH = 32  # patch edge of the demo config (`ct2mri-node train --patch` default), for --random


def phantom_ct(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    """A CT phantom in HU: the project's pelvis phantom."""
    from ct2mri_node.training.phantoms import generate_case

    return generate_case("pelvis", seed=0, shape=shape, spacing=spacing).ct.astype(np.float32)


def full_fov_ct(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A body filling the field of view: soft-tissue ellipse touching the edges, fat rim, bone."""
    _, y, x = np.ogrid[-1:1:complex(0, shape[0]), -1:1:complex(0, shape[1]), -1:1:complex(0, shape[2])]
    r2 = np.broadcast_to(y**2 / 0.98 + x**2 / 0.98, shape)
    ct = np.full(shape, -1000.0, np.float32)
    ct[r2 < 1.0] = -100.0
    ct[r2 < 0.8] = 45.0
    ct[np.broadcast_to((y / 0.12) ** 2 + (x / 0.12) ** 2, shape) < 1.0] = 900.0
    return ct


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--steps", type=int, default=None, help="evaluations per patch (default: the card's)")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--full-fov", action="store_true", help="a body filling the field of view")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random checkpoint")
    parser.add_argument("--random", action="store_true",
                        help="use random weights in the demo config (--spacing, --base-channels) to time a design")
    parser.add_argument("--spacing", type=float, default=4.0, help="model spacing for --random (mm)")
    parser.add_argument("--base-channels", type=int, default=16, help="width for --random")
    parser.add_argument("--arch", default="enhanced", help="architecture for --random")
    parser.add_argument("--patch", type=int, default=DEMO_PATCH, help="patch edge for --random (voxels)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--sweep", default="", help="comma-separated sample counts, e.g. 1,4,8")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5, the node's)")
    args = parser.parse_args(argv)

    import torch

    from ct2mri_node.model.networks import network_config
    from ct2mri_node.model.testing import make_tiny_checkpoint
    from ct2mri_node.model.translator import TranslationSettings, Translator

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint
    if args.random:  # random weights in the demo config (timing only; output meaningless)
        checkpoint = make_tiny_checkpoint(
            tempfile.mkdtemp(), args.arch, network=network_config(args.arch, base_channels=args.base_channels),
            spacing_mm=(args.spacing,) * 3, patch_size=(args.patch,) * 3,
        )
    elif args.tiny:
        checkpoint = make_tiny_checkpoint(tempfile.mkdtemp())
    ct = full_fov_ct() if args.full_fov else phantom_ct()
    if args.sweep:
        return sweep(checkpoint, ct, args.steps, [int(n) for n in args.sweep.split(",")], args.overlap)
    translator = Translator(checkpoint, TranslationSettings(steps=args.steps, device="cpu", samples=args.samples,
                                                            overlap=args.overlap))
    stamps: list[float] = []
    start = time.perf_counter()
    result = translator.translate(ct, SPACING, progress=lambda i, n: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    from ct2mri_node.training.evaluate import (
        peak_memory,  # after the run: its imports stay out of the peak
    )

    steps = len(stamps)
    per_step = (stamps[-1] - start) / steps if steps else float("nan")
    overhead = total - per_step * steps
    print(f"model            {result.model.name} ({result.model.architecture}), threads {torch.get_num_threads()}")
    print(f"volume           {ct.shape} at {SPACING} mm, overlap {args.overlap}")
    print(f"sampler          {translator.settings.sampler}, {translator.settings.steps} evaluations/patch, "
          f"{translator.settings.samples} sample(s): {steps} network passes over the body")
    print(f"network evals    {result.network_evaluations} ({result.network_evaluations // max(steps, 1)} patches/pass)")
    print(f"seconds/pass     {per_step:.2f}")
    print(f"total seconds    {total:.1f} (pre/post-processing {overhead:.1f})")
    print(f"peak RSS         {peak_memory()['process_max_rss_bytes'] / 2**20:.0f} MiB")
    print(f"1000-step DDPM   {1000 * per_step + overhead:.0f} s at the same per-step cost "
          f"(x{(1000 * per_step + overhead) / total:.0f} slower)")
    print(f"target 120 s     {'met' if total <= 120 else 'MISSED'}")
    return 0


def sweep(checkpoint: object, ct: np.ndarray, steps: int | None, counts: list[int], overlap: float = 0.5) -> int:
    """Translate ``ct`` with each sample count in ``counts``; print times and ratios to the first."""
    import torch

    from ct2mri_node.model import translator as translator_module
    from ct2mri_node.model.translator import TranslationSettings, Translator

    deviation_seconds: list[float] = []
    original = translator_module.sample_deviation

    def timed(*args: object, **kwargs: object) -> np.ndarray:
        start = time.perf_counter()
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        deviation_seconds.append(time.perf_counter() - start)
        return out

    translator_module.sample_deviation = timed  # type: ignore[assignment]
    rows = []
    for n in counts:
        deviation_seconds.clear()
        translator = Translator(checkpoint, TranslationSettings(steps=steps, device="cpu", samples=n, overlap=overlap))  # type: ignore[arg-type]
        start = time.perf_counter()
        result = translator.translate(ct, SPACING)
        total = time.perf_counter() - start
        rows.append((n, translator.settings.steps, result.network_evaluations, total, sum(deviation_seconds)))
    from ct2mri_node.training.evaluate import peak_memory

    print(f"volume {ct.shape} at {SPACING} mm, threads {torch.get_num_threads()}, checkpoint {checkpoint}")
    print(f"{'samples':>7} {'steps':>5} {'net evals':>9} {'seconds':>8} {'x vs first':>10} {'SD map s':>8}")
    for n, used_steps, evals, total, dev in rows:
        print(f"{n:>7} {used_steps:>5} {evals:>9} {total:>8.1f} {total / rows[0][3]:>10.2f} {dev:>8.1f}")
    print(f"peak RSS {peak_memory()['process_max_rss_bytes'] / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
