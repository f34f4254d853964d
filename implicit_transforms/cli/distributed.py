"""Multi-process (multi-GPU, multi-node) training through PyTorch's distributed data parallel.

``torchrun --nproc_per_node N -m implicit_transforms train ...`` starts ``N`` processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`setup` joins them into one process group (NCCL on CUDA, gloo on CPU). Every rank trains
on its share of each global batch; DDP averages the gradients, so ``N`` processes follow the
same trajectory as one process with the same global batch (up to rounding, and the per-rank
randomness of the stochastic log-det estimators). Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["World", "check_in_sync", "setup", "state_fingerprint", "teardown"]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size == 1``: no distribution)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    def barrier(self) -> None:
        """Wait for every process."""
        if self.distributed:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over all processes (a new tensor, same on every rank)."""
        out = values.clone()
        if self.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def state_fingerprint(module: torch.nn.Module) -> tuple[list[str], torch.Tensor]:
    """Names and a ``(T, 2)`` float64 tensor of ``(sum, sum of |.|)`` of every tensor in
    ``module.state_dict()`` (parameters and buffers: weights, spectral-norm state, ActNorm)."""
    names, rows = [], []
    for name, t in module.state_dict().items():
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        v = t.detach().double()
        names.append(name)
        rows.append(torch.stack([v.sum(), v.abs().sum()]))
    return names, torch.stack(rows)


def check_in_sync(world: World, module: torch.nn.Module, rtol: float = 1e-9) -> None:
    """Raise ``RuntimeError`` naming the first tensor whose state differs between processes
    (relative tolerance ``rtol`` on its sum and absolute sum); nothing to do for one process.

    DDP keeps parameters equal by averaging gradients, but state computed outside the
    gradient (data-dependent initialisation, spectral-norm estimates) must come out equal too.
    """
    if not world.distributed:
        return
    names, fp = state_fingerprint(module)
    hi, lo = fp.clone(), fp.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    bad = ((hi - lo).abs() > rtol * torch.maximum(hi.abs(), lo.abs()).clamp_min(1e-300)).any(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise RuntimeError(
            f"distributed training: {names[i]!r} differs between the {world.size} processes "
            f"(sums {float(lo[i, 0])!r} .. {float(hi[i, 0])!r}); the run cannot continue"
        )


def setup(device: str) -> World:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device: the ``--device`` setting; ``"auto"`` or ``"cuda..."`` with CUDA present uses
            NCCL and one GPU per process (``cuda:LOCAL_RANK``), otherwise gloo on the CPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size)
    return World(rank, size, local)


def teardown(world: World) -> None:
    """Leave the process group."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
