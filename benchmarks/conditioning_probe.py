"""How much does a diffusion checkpoint use the CT? One-step x0 estimates at several noise levels.

For each checkpoint and held-out case: noise the real MR (on the model grid, normalised as in
training) to timestep t, let the network predict v from concat(x_t, CT), recover
x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v, and print the Pearson correlation of x0 with the real
MR inside the body mask, averaged over the cases. At t = 999 the noisy input holds almost no
MR signal, so the correlation measures what the network infers from the CT alone: the coarse
structure that the first denoising steps lay down.

    python benchmarks/conditioning_probe.py --data HELDOUT --cases 2 enhanced=runs/enhanced-1000 ddpm=runs/ddpm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ct2mri_node.model import pre_post
from ct2mri_node.model.checkpoint import load_checkpoint
from ct2mri_node.model.diffusion import training_scheduler
from ct2mri_node.training.pairs import PairedCase, list_cases, load_case
from ct2mri_node.training.train import prepare_case

TIMESTEPS = (999, 700, 400, 100)


def probe(checkpoint: str, raw_cases: list[PairedCase], spacing: float, seed: int) -> list[float]:
    """Mean correlation of the one-step x0 estimate with the real MR, per timestep.

    The cases are prepared with the CT mapping of the checkpoint's card, as its training was.
    """
    ckpt = load_checkpoint(checkpoint)
    if ckpt.card.architecture == "unet":
        raise SystemExit(f"{checkpoint}: a regression UNet has no noise levels to probe")
    mapping = pre_post.IntensityMapping.from_card(ckpt.card.intensity)
    cases = [prepare_case(case, spacing, mapping) for case in raw_cases]
    net, sched = ckpt.network.eval(), training_scheduler(ckpt.card.scheduler)
    means = []
    for t in TIMESTEPS:
        corr = []
        for case in cases:
            crop = tuple(slice(0, (n // 8) * 8) for n in case.ct.shape)
            ct = torch.from_numpy(case.ct[crop])[None, None]
            mr = torch.from_numpy(case.mr[crop])[None, None]
            mask = torch.from_numpy(case.mask[crop])[None, None]
            noise = torch.randn(mr.shape, generator=torch.Generator().manual_seed(seed))
            tt = torch.tensor([t])
            x_t = sched.add_noise(mr, noise, tt)
            with torch.inference_mode():
                v = net(torch.cat([x_t, ct], 1), tt)
            a = sched.alphas_cumprod[t]
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * v
            corr.append(float(np.corrcoef(x0[mask].numpy(), mr[mask].numpy())[0, 1]))
        means.append(float(np.mean(corr)))
    return means


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=4.0, help="model spacing of the checkpoints (mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("models", nargs="+", help="LABEL=CHECKPOINT (a folder or 'bundled')")
    args = parser.parse_args()
    cases = [load_case(d) for d in list_cases(args.data)[: args.cases]]
    print("model".ljust(16) + "".join(f"t={t}".rjust(9) for t in TIMESTEPS))
    for item in args.models:
        label, _, path = item.partition("=")
        print(label.ljust(16) + "".join(f"{c:9.3f}" for c in probe(path, cases, args.spacing, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
