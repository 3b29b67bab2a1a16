"""Several processes, one per GPU (or CPU processes), started by torch's own launcher.

``torchrun --nproc_per_node N -m ct2mri_node train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in each process's environment; :func:`start` joins the process group it
describes (NCCL on GPUs, gloo on the CPU) and picks this rank's GPU. Several machines are the
same command on each with ``--nnodes`` and ``--rdzv-endpoint``: nothing here is ours but the
joining. A process started without torchrun is a world of one and never touches
``torch.distributed``.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ModelError

log = logging.getLogger(__name__)

#: How long a rank waits for the others (rank 0 filling the grid cache of a large data set).
TIMEOUT = timedelta(hours=2)


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as exc:
        raise ModelError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({exc})") from exc


def start(device: str) -> str:
    """Join torchrun's process group (if launched by it) and return this rank's device name.

    On CUDA each process takes the GPU of its local rank (``--device cuda`` or ``auto``; a
    ``cuda:N`` is refused, as N would be the same GPU for every rank)."""
    rank, world, local = launched_world()
    if world <= 1:
        return device
    name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if name.startswith("cuda"):
        if name != "cuda":
            raise ModelError(f"--device {name} with torchrun: use --device cuda, each rank takes the GPU "
                             "of its LOCAL_RANK (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise ModelError(f"rank {rank} (local rank {local}) has no GPU: {torch.cuda.device_count()} visible; "
                             "start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local)
        name, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
        log.info("rank %d of %d joined the process group (%s, %s)", rank, world, backend, name)
    return name


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (nothing in a world of one)."""
    if dist.is_initialized():
        dist.barrier()


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (pickled; for the run state, which rank 0 alone reads,
    so that the other machines of a multi-node run need not see ``--out``)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_rank() -> int:
    """This process's rank on its machine (0 without torchrun)."""
    return launched_world()[2] if dist.is_initialized() else 0


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on one of them (a time limit reached on one)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def stop() -> None:
    """Leave the process group (end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int, iteration: int = 0) -> int:
    """A seed of its own for each rank (and resume point): rank 0 keeps ``seed`` itself, so a run
    of one process draws what it always drew."""
    if rank == 0 and iteration == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1)[0])
