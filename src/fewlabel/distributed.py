"""Which process this is under a multi-process launch (torchrun, SLURM's srun), and the few
collective steps that run outside a Lightning fit.

Every process runs the same seeded data preparation and the same plain-Python loop (a
semi-supervised method's rounds); each fit is a Lightning DDP fit. Work between fits that
decides what the next fit trains on (pseudo-labels) is sharded across the processes and
gathered, so that every process trains on the same set. Only process 0 writes the run
directory. Several machines need a run directory on a shared filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def global_rank() -> int:
    """The process's global rank from the launcher's environment (0 when not launched so)."""
    for variable in ("RANK", "SLURM_PROCID"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def is_rank_zero() -> bool:
    return global_rank() == 0


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def process_share() -> tuple[int, int]:
    """(rank, world size) of the process group that DDP fits run in; (0, 1) outside one."""
    if not _group_ready():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def sharded(n: int, compute: Callable[[list[int]], Any], merge: Callable[[list[Any], list[list[int]]], Any]) -> Any:
    """Compute over ``n`` items split across the processes and give every process the result.

    ``compute(indices)`` runs on this process's share (every world-size-th item); ``merge`` gets
    every process's output with its indices, in rank order. Outside a process group it is
    ``merge([compute(all)], [all])``.
    """
    rank, world = process_share()
    shares = [list(range(r, n, world)) for r in range(world)]
    local = compute(shares[rank])
    if world == 1:
        return merge([local], shares)
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    return merge(gathered, shares)


def same_on_every_process(value: Any) -> Any:
    """Process 0's ``value`` on every process (a decision, such as skipping a fit, that every
    process must take alike); ``value`` itself outside a process group."""
    if not _group_ready():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
