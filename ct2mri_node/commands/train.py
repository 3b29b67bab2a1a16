"""``ct2mri-node train``: train a model on a SynthRAD-layout folder; resumable.

Torch is imported only when the command runs (the CLI imports every command to build --help).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "train",
        help="train a model on paired CT/MR cases (SynthRAD layout); re-run to resume",
        description="Train the enhanced diffusion model or a baseline on <data>/<case>/{ct,mr,mask}. "
        "Run state is saved in --out every --val-every iterations and on exit; the same command resumes, "
        "on any device and with any number of processes. "
        "The checkpoint (model.safetensors + card.json) is written into --out at the end. "
        "Several GPUs: torchrun --nproc_per_node N -m ct2mri_node train ... --device cuda "
        "(DistributedDataParallel; several machines: add --nnodes and --rdzv-endpoint). See docs/training.md.",
    )
    parser.add_argument("--data", required=True, type=Path,
                        help="folder of cases (SynthRAD layout), or a prepared folder (`ct2mri-node prepare`)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory (created; resumes if present)")
    parser.add_argument("--arch", default="enhanced", choices=["enhanced", "ddpm", "unet"], help="network (default enhanced)")
    parser.add_argument("--iterations", type=int, default=2000, help="total iterations (default 2000)")
    parser.add_argument("--batch-size", type=int, default=2, help="patches per iteration (default 2)")
    parser.add_argument("--patch", type=int, default=32, help="patch side in voxels, a multiple of 8 (default 32)")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (default 2e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, patches and noise (default 0)")
    parser.add_argument("--spacing", type=float, default=2.0, help="model spacing in mm, isotropic (default 2.0)")
    parser.add_argument("--base-channels", type=int, default=16,
                        help="width of the enhanced model; baselines are widened to match its parameter count (default 16)")
    parser.add_argument("--val-every", type=int, default=100, help="validate and save run state every K iterations (default 100)")
    parser.add_argument("--method", choices=["noise", "refine"],
                        help="diffusion sampling the model is trained for: refine (estimate, then DDIM from t0; "
                        "default for enhanced) or noise (from Gaussian noise; default for ddpm)")
    parser.add_argument("--t0", type=int, default=400, help="refine: timestep sampling starts from (default 400 of 1000)")
    parser.add_argument("--estimate-fraction", type=float, default=0.5,
                        help="refine: share of each batch trained as the one-pass estimate (default 0.5)")
    parser.add_argument("--ct-input", choices=["windows", "linear"], default="windows",
                        help="CT input: one channel per window (brain, soft tissue, bone, full range; default) "
                        "or one linear -1024..2000 HU channel (model 0.2)")
    parser.add_argument("--norm", choices=["batch", "group"], default="batch",
                        help="feature normalisation: batch (fixed statistics at inference; default) or group (model 0.2)")
    parser.add_argument("--mr-norm", choices=["fat", "percentile"], default="fat",
                        help="MR target: anchored on fat (default) or per-case 1st/99th percentiles (model 0.2)")
    parser.add_argument("--levels", type=int, default=3, help="resolution levels of the network (default 3)")
    parser.add_argument("--device", default="cpu",
                        help="auto, cpu, cuda or cuda:N (default cpu); on CUDA with bf16 autocast where the GPU "
                        "has it, else fp16 with a gradient scaler; a run resumes on any device")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="autocast of the forward pass: auto (bf16 on a GPU that has it, else fp16 with a "
                        "gradient scaler; fp32 on the CPU; default), fp32, bf16 (GPU or CPU) or fp16 (GPU)")
    parser.add_argument("--zoom", type=float, default=1.0,
                        help="scale augmentation: each patch is cut at a scale from 1/ZOOM to ZOOM and resampled, "
                             "so the network sees anatomy of other sizes (default 1: off; at most 4)")
    parser.add_argument("--paste", type=float, default=0.0,
                        help="structure paste: the share of patches (0-1) that get 2-6 small blobs (radius 2-12 mm) of "
                             "CT and MR moved from elsewhere in the same case, so small fluid, fat and bone "
                             "structures are read from their CT, not their surroundings (default 0: off)")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="fine-tune: start the weights from a trained checkpoint ('bundled' or a folder) of the "
                             "same network and mappings, with a fresh optimiser and learning-rate schedule; ignored "
                             "when --out holds a run state (it resumes)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader processes that cut patches (0: in the training process; default 2)")
    parser.add_argument("--cache", type=Path,
                        help="grid cache: cases resampled to the model grid once, read lazily; share it between "
                        "runs at one spacing (default <out>/grid-cache)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop after this many minutes (state saved, checkpoint written); the same command resumes")
    parser.add_argument("--weights", choices=["float32", "float16"], default="float32", dest="weights_dtype",
                        help="how the checkpoint stores its weights (float16: half the file; default float32)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--name", help="model name in the card (default ct2mri-<arch>-demo)")
    parser.set_defaults(func=run)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (systemd, kill, a job scheduler) stops training like Ctrl-C: state is saved."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.train import TrainRequest, run_training

    request = TrainRequest(
        data=args.data, out=args.out, arch=args.arch, iterations=args.iterations, batch_size=args.batch_size,
        patch=args.patch, lr=args.lr, seed=args.seed, spacing_mm=args.spacing, base_channels=args.base_channels,
        val_every=args.val_every, name=args.name, method=args.method, t0=args.t0,
        estimate_fraction=args.estimate_fraction, ct_input=args.ct_input, norm=args.norm, mr_norm=args.mr_norm,
        levels=args.levels, device=args.device, max_minutes=args.max_minutes, weights_dtype=args.weights_dtype,
        precision=args.precision, workers=args.workers, cache=args.cache, zoom=args.zoom, paste=args.paste, init=args.init,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    rank = int(os.environ.get("RANK", "0"))  # torchrun: one process per GPU; rank 0 reports
    with tqdm(total=args.iterations, desc=f"train {args.arch}", unit="it", disable=rank != 0) as bar:
        def on_step(iteration: int, loss: float) -> None:
            bar.n = iteration
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

        path, outcome = run_training(request, on_step=on_step)
    if outcome.rank != 0:
        return 0
    rate = (outcome.iterations - outcome.resumed_from) / outcome.seconds if outcome.seconds else 0.0
    print(f"checkpoint written to {path} ({outcome.iterations} iterations, {rate:.2f} it/s this run)")
    return 0


if __name__ == "__main__":
    from ..cli import main

    argv = sys.argv[1:]
    sys.argv = [sys.argv[0], "train", *argv]  # the card's training_command reads `ct2mri-node train ...`
    sys.exit(main(["--log-level", "INFO", "train", *argv], commands=("train",)))
