"""Data-parallel training under ``torchrun``: every ``semlink train …`` command runs unchanged as

    torchrun --nproc_per_node=2 -m semlink.cli train selector …

and as a single process (no ``WORLD_SIZE`` in the environment, or 1) exactly as before.

How: each of the ``W`` processes builds the same global batch (the data pipelines are seeded, not
rank-dependent), trains on its ``1/W`` slice of it, and before each optimiser step the gradients
are summed across processes and divided by ``W`` (one flattened all-reduce per step: what
DistributedDataParallel does, without its ``forward`` wrapper, since the trainers call the
models' parts: ``forward_device``, ``forward_tail``, exits). With equal slices the averaged
gradient is the single process's gradient of the mean loss, so the weights follow the same path
up to floating-point order, per-slice BatchNorm statistics and per-process random draws
(budgets, channel noise); ``tests/integration/test_torchrun.py`` states the tolerance it holds.
Parameters start equal (broadcast from rank 0), BatchNorm buffers are averaged before each
validation, and only rank 0 writes checkpoints, progress bars and logs.

The backend is gloo, on CPU. A single process trains on a GPU with ``--device cuda`` (or ``auto``:
:func:`training_device`); several processes on GPUs (NCCL) are not wired up. ``--nnodes``/``--rdzv-endpoint`` work as
``torchrun`` documents, the machines reaching each other on the rendezvous port.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


class Distributed:
    """This process's place among the data-parallel processes ``torchrun`` started (rank 0 of 1
    without ``torchrun``)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
            log.info("data-parallel: rank %d of %d (gloo)", self.rank, self.world)

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that saves, logs and draws progress bars."""
        return self.rank == 0

    def shard(self, *arrays: np.ndarray | torch.Tensor) -> list:
        """This rank's contiguous slice of each array of one global batch (slices differ in
        length by at most one when the batch does not divide)."""
        if not self.enabled:
            return list(arrays)
        n = len(arrays[0])
        bounds = np.linspace(0, n, self.world + 1).round().astype(int)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        return [a[lo:hi] for a in arrays]

    def sync_parameters(self, module: nn.Module) -> None:
        """Every rank starts from rank 0's parameters and buffers."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, 0)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replaces each gradient by its mean over the ranks, in one all-reduce. A parameter
        without a gradient keeps none (AdamW then skips it, as ALaST relies on): the ranks
        agree on which have one, since every random choice of structure is seeded alike."""
        if not self.enabled:
            return
        params = [p for p in params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def average_buffers(self, module: nn.Module) -> None:
        """Averages floating-point buffers (BatchNorm running statistics) over the ranks."""
        if not self.enabled:
            return
        with torch.no_grad():
            for b in module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b /= self.world

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        """Waits for every rank."""
        if self.enabled:
            dist.barrier()


def training_device(name: str) -> torch.device:
    """Where a trainer computes: ``cpu``, ``cuda`` (an error when none is there) or ``auto`` (the
    GPU when there is one). Under ``torchrun`` only ``cpu``: the process group is gloo's."""
    if name not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be cpu, cuda or auto, got {name!r}")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ValueError("device cuda asked for, but torch sees no GPU here: use cpu or auto")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    if current().enabled:
        raise ValueError("under torchrun the trainers run on cpu (gloo): drop --device")
    return torch.device("cuda")


def rank_from_env() -> int:
    """This process's rank as ``torchrun`` set it, without joining the process group."""
    return int(os.environ.get("RANK", "0"))


@functools.cache
def current() -> Distributed:
    """The process group of this process, made on first use."""
    return Distributed()


def quiet_unless_main() -> bool:
    """On ranks other than 0: logs only warnings and prints nothing (the command line calls
    this before a training command). Returns whether this is rank 0."""
    if rank_from_env() == 0:
        return True
    logging.getLogger().setLevel(logging.WARNING)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's lifetime)
    return False
