"""Multi-process training: the process group from ``torchrun``'s environment, and the few
collective operations the training loop needs.

``torchrun --nproc_per_node=N ...`` starts N copies of the program and tells each who it is
through environment variables: ``RANK`` (0..N-1 over all machines), ``LOCAL_RANK`` (index on
this machine, which picks the GPU), ``WORLD_SIZE`` (N) and ``MASTER_ADDR``/``MASTER_PORT``
(where rank 0 listens). Without them (or with ``WORLD_SIZE=1``) everything here degrades to a
single process and every collective is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from attnlab.errors import AttnlabError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedEnvironmentError(AttnlabError, ValueError):
    """A torchrun environment variable is missing or malformed; the message names it."""


def process_rank() -> int:
    """This process's rank in a ``torchrun`` run (``RANK``), 0 when it was not started by one
    (``RANK`` unset or empty): the rank that reports for all. Readable before the process
    group exists, so that a command can decide early what it prints. Raises
    :class:`DistributedEnvironmentError` when ``RANK`` is not a whole number >= 0."""
    text = os.environ.get("RANK", "").strip()
    if not text:
        return 0
    rank = _whole_number("RANK", text)
    if rank < 0:
        raise DistributedEnvironmentError(f"environment variable RANK must be >= 0, got RANK={text!r}")
    return rank


@dataclass
class DistributedContext:
    """Who this process is in the run, and its device (``cuda:<local_rank>`` or ``cpu``).

    ``owns_group`` is True when :func:`setup_distributed` created the process group, so that
    :meth:`close` destroys only what it made (a caller's own group is left alone).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and plots."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        if not self.distributed:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one (ranks stop together)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj) -> list:
        """``obj`` from every rank, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        """Destroy the process group if :func:`setup_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str) -> int:
    text = os.environ.get(name)
    if text is None:
        raise DistributedEnvironmentError(f"multi-process training needs the environment variable {name} "
                                          f"(torchrun sets {', '.join(TORCHRUN_VARIABLES)})")
    return _whole_number(name, text)


def _whole_number(name: str, text: str) -> int:
    """Environment variable ``name``'s value ``text`` as an int, or a one-line error naming it."""
    try:
        return int(text)
    except ValueError:
        raise DistributedEnvironmentError(f"environment variable {name} must be a whole number, "
                                          f"got {name}={text!r}") from None


def setup_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes, or run as a single process.

    The device is ``device`` when given, else ``cuda:<LOCAL_RANK>`` when CUDA is available,
    else the CPU; the backend is NCCL for CUDA and gloo for the CPU. If a process group is
    already initialised (the caller made one) it is used as is and :meth:`~.close` keeps it.
    Raises :class:`DistributedEnvironmentError` (a ``ValueError``) naming a missing or malformed
    torchrun variable.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size, owns = dist.get_rank(), dist.get_world_size(), False
        local_rank = _whole_number("LOCAL_RANK", os.environ.get("LOCAL_RANK", str(rank)))
    else:
        world_size = _whole_number("WORLD_SIZE", os.environ.get("WORLD_SIZE", "").strip() or "1")
        if world_size <= 1:
            return DistributedContext(device=_pick_device(device, 0))
        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
        _env_int("MASTER_PORT")
        if not os.environ.get("MASTER_ADDR"):
            raise DistributedEnvironmentError("multi-process training needs the environment variable "
                                              f"MASTER_ADDR (torchrun sets {', '.join(TORCHRUN_VARIABLES)})")
        owns = True
    chosen = _pick_device(device, local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if owns:
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen,
                              owns_group=owns)


def _pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
