"""Run by ``torchrun`` in the DDP tests: one training step per rank, then each rank's weights.

    torchrun --nproc_per_node 2 tests/model/ddp/ddp_worker.py REPORT_DIR RUN_DIR

Writes REPORT_DIR/rank<R>.pt: the rank's loss and parameters after the step (the run state
itself is rank 0's alone, so each rank's own weights come out here)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ct2mri_node.model import distributed
from ct2mri_node.model.diffusion import scheduler_config
from ct2mri_node.model.testing import tiny_prepared_cases
from ct2mri_node.model.trainer import PreparedCase, TrainSettings, train
from ct2mri_node.training.train import TrainRequest, network, sampling


def cases() -> list[PreparedCase]:
    return tiny_prepared_cases(3, noise=0.1, insert_hu_step=400.0)


def main() -> None:
    report, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    device = distributed.start("cpu")
    # unet: an L1 loss with no noise drawn, so the ranks' losses differ only if their patches do
    request = TrainRequest(data=run_dir, out=run_dir, arch="unet", patch=8, base_channels=2, batch_size=2)
    settings = TrainSettings(arch="unet", network=network(request), scheduler=scheduler_config(),
                             iterations=1, batch_size=2, patch=8, seed=0, val_every=1, ema_decay=0.0,
                             sampling=sampling(request))
    losses: list[float] = []
    outcome = train(cases(), settings, run_dir, lambda i, loss: losses.append(loss), device)
    params = {k: v.detach().clone() for k, v in outcome.network.named_parameters()}
    torch.save({"loss": losses[0], "params": params, "rank": outcome.rank, "world": outcome.world_size},
               report / f"rank{outcome.rank}.pt")
    distributed.stop()


if __name__ == "__main__":
    main()
