"""GPU check: translate a 512x512x200 CT phantom with autocast (time, memory, bf16 vs fp32), and
train (iterations/s and peak GPU memory at 2 mm and 1 mm patches, on 1 and on 2 GPUs).

    .venv/bin/python benchmarks/gpu_check.py [--checkpoint bundled|DIR] [--tiny] [--steps N] [--samples N]
    .venv/bin/python benchmarks/gpu_check.py --train-only [--train-iterations 300]
    .venv/bin/python benchmarks/gpu_check.py --cpu-dry-run        # the whole script on the CPU, tiny sizes

The sampler is the checkpoint's own (the bundled model: estimate, then DDIM from t0; steps =
network evaluations per patch, default the card's). ``--samples 4`` also times the mean of four
samples (issue 14's uncertainty needs several).

Targets (issue 2): <= 20 s and <= 8 GB of GPU memory (torch.cuda.max_memory_allocated) on one
GPU. Also runs the same volume in fp32 and reports the difference of the uint16 outputs.

Training (issue 22): the enhanced model (the bundled model's width 24, batch 8) trains for
``--train-iterations`` on generated cases held in memory, with the trainer's own loop (autocast,
EMA, patches cut in DataLoader workers). The patch covers the same 96 mm at both spacings: 48
voxels at 2 mm, 96 at 1 mm. Iterations/s are timed after a warm-up (cuDNN autotuning), peak
memory is torch.cuda.max_memory_allocated. With two GPUs or more, the same runs go again with
``torchrun --nproc_per_node 2`` (DistributedDataParallel, NCCL): iterations/s per process and
patches/s over both.

Without CUDA it says "no CUDA" and exits 0 (so it can run anywhere); ``--cpu-dry-run`` runs
every part on the CPU at tiny sizes (two gloo processes for the two-GPU part), to try the
script before a lease.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


#: (spacing mm, patch voxels) of the training check: the same 96 mm field at both spacings.
TRAIN_PATCHES = ((2.0, 48), (1.0, 96))
DRY_PATCHES = ((2.0, 8), (1.0, 16))


def train_cases(spacing_mm: float, side_mm: float = 192.0, n: int = 4) -> list:  # type: ignore[type-arg]
    """``n`` prepared cases (the phantom of :func:`phantom`: a ``side_mm`` cube) on a ``spacing_mm`` grid."""
    from ct2mri_node.model.pre_post import IntensityMapping
    from ct2mri_node.model.trainer import PreparedCase

    side = round(side_mm / spacing_mm)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        hu = phantom((side, side, side)) + rng.normal(0, 10, (side, side, side)).astype(np.float32)
        mr = np.select([hu > 500, hu > 0, hu > -300], [-0.8, 0.2, 0.6], -1.0).astype(np.float32)
        cases.append(PreparedCase(f"bench{i}", IntensityMapping().encode(hu), mr, hu > -500))
    return cases


def train_once(spacing_mm: float, patch: int, iterations: int, device: str, width: int, batch: int,
               workers: int, side_mm: float = 192.0) -> dict[str, float | int | str]:
    """Train the enhanced model for ``iterations`` in this process (a rank, under torchrun)."""
    import torch

    from ct2mri_node.model import distributed
    from ct2mri_node.model.diffusion import scheduler_config
    from ct2mri_node.model.trainer import TrainSettings, train
    from ct2mri_node.training.train import TrainRequest, network, sampling

    device = distributed.start(device)
    request = TrainRequest(data=Path("."), out=Path("."), patch=patch, base_channels=width, batch_size=batch)
    settings = TrainSettings(arch="enhanced", network=network(request), scheduler=scheduler_config(),
                             iterations=iterations, batch_size=batch, patch=patch, lr=1e-3, val_every=0,
                             sampling=sampling(request))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        outcome = train(train_cases(spacing_mm, side_mm), settings, Path(run_dir), lambda i, loss: stamps.append(
            time.perf_counter()), device, workers=workers)
    if cuda:
        torch.cuda.synchronize()
    warm = max(1, len(stamps) // 5)  # the first fifth: cuDNN autotuning, allocator, workers starting
    rate = (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm]) if len(stamps) > warm + 1 else float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    distributed.stop()
    return {"spacing_mm": spacing_mm, "patch": patch, "processes": outcome.world_size, "rank": outcome.rank,
            "precision": outcome.precision, "it_per_s": rate, "patches_per_s": rate * batch * outcome.world_size,
            "peak_gib": peak, "iterations": outcome.iterations}


def train_check(args: argparse.Namespace, device: str) -> None:
    """The training table: each patch size on one process, then on two (torchrun) when there
    are two GPUs (or, in a dry run, two CPU processes)."""
    import torch

    patches = DRY_PATCHES if args.cpu_dry_run else TRAIN_PATCHES
    two = args.cpu_dry_run or (device == "cuda" and torch.cuda.device_count() >= 2)
    print(f"training         enhanced width {args.train_width}, batch {args.train_batch} per process, "
          f"{args.train_iterations} iterations, {args.train_workers} DataLoader workers per process")
    print(f"  {'spacing':>7} {'patch':>5} {'procs':>5} {'prec':>5} {'it/s':>7} {'patches/s':>9} {'peak GiB':>8}")
    for spacing_mm, patch in patches:
        runs = [train_once(spacing_mm, patch, args.train_iterations, device, args.train_width, args.train_batch,
                           args.train_workers, args.case_mm)]
        if two:
            runs.append(_torchrun_train(args, device, spacing_mm, patch))
        for r in runs:
            print(f"  {r['spacing_mm']:>5} mm {r['patch']:>5} {r['processes']:>5} {r['precision']:>5} "
                  f"{r['it_per_s']:>7.2f} {r['patches_per_s']:>9.1f} {_gib(r['peak_gib']):>8}", flush=True)
    if not two:
        print("  (one GPU: no two-GPU run)")


def _gib(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"  # NaN on the CPU: no GPU memory to report


def _torchrun_train(args: argparse.Namespace, device: str, spacing_mm: float, patch: int) -> dict[str, float]:
    """The same run on two processes (torchrun, DDP); rank 0's result."""
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc_per_node", "2", __file__, "--train-worker",
           "--worker-spacing", str(spacing_mm), "--worker-patch", str(patch), "--device", device,
           "--train-iterations", str(args.train_iterations), "--train-width", str(args.train_width),
           "--train-batch", str(args.train_batch), "--train-workers", str(args.train_workers),
           "--case-mm", str(args.case_mm)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"two-process training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="evaluations per patch (default: the card's)")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--sw-batch-size", type=int, default=8)
    parser.add_argument("--skip-fp32", action="store_true")
    parser.add_argument("--skip-train", action="store_true", help="translation check only")
    parser.add_argument("--train-only", action="store_true", help="training check only")
    parser.add_argument("--train-iterations", type=int, default=300)
    parser.add_argument("--train-width", type=int, default=24)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-workers", type=int, default=4)
    parser.add_argument("--case-mm", type=float, default=192.0, help="side of the generated training cubes (mm)")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every part on the CPU at tiny sizes (tries the script; the numbers mean nothing)")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun rank
    parser.add_argument("--worker-spacing", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--worker-patch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_worker:
        result = train_once(args.worker_spacing, args.worker_patch, args.train_iterations, args.device,
                            args.train_width, args.train_batch, args.train_workers, args.case_mm)
        if result["rank"] == 0:
            print(json.dumps(result), flush=True)
        return 0
    if args.cpu_dry_run:
        return dry_run(args)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA: nothing to check on this machine (run on a GPU host; --cpu-dry-run tries the script here)")
        return 0
    print(f"device           {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)")
    if not args.train_only:
        translate_check(args)
    if not args.skip_train:
        train_check(args, "cuda")
    return 0


def dry_run(args: argparse.Namespace) -> int:
    """Every part on the CPU at tiny sizes: the translation of a small phantom with a tiny
    checkpoint, and the training table with 8 and 16 voxel patches, on one and two processes."""
    import torch

    from ct2mri_node.model import translator as tr
    from ct2mri_node.model.testing import make_tiny_checkpoint

    torch.set_num_threads(1)  # as torchrun's processes (OMP_NUM_THREADS=1): 1 and 2 processes compare
    print("device           CPU (dry run: tiny sizes, the numbers mean nothing)")
    if not args.train_only:
        translator = tr.Translator(make_tiny_checkpoint(tempfile.mkdtemp()), tr.TranslationSettings(steps=2))
        start = time.perf_counter()
        result = translator.translate(phantom((24, 48, 48)), SPACING)
        print(f"translate        {result.mr.shape} in {time.perf_counter() - start:.2f} s with a tiny checkpoint")
    if not args.skip_train:
        args.train_iterations = min(args.train_iterations, 6)
        args.train_width, args.train_batch, args.train_workers, args.case_mm = 2, 2, min(args.train_workers, 1), 40.0
        train_check(args, "cpu")
    return 0


def translate_check(args: argparse.Namespace) -> None:
    """The translation check (issue 2's targets) on the first GPU."""

    from ct2mri_node.model import translator as tr
    from ct2mri_node.model.testing import make_tiny_checkpoint

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


if __name__ == "__main__":
    sys.exit(main())
