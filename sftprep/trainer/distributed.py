"""One process or many under torchrun: rank, world size and device, and the few collectives
the loop needs (sums of counts, gathering small Python objects)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Sequence

import torch
import torch.distributed as dist

from sftprep.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> Context:
    """Read torchrun's environment; join the process group (gloo on CPU, nccl on CUDA)."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible to torch")
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo",
                                device_id=where if where.type == "cuda" else None)
    return Context(rank, world_size, where)


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_all(values: Sequence[float], context: Context) -> List[float]:
    """Element-wise sums over ranks (float64: token counts stay exact up to 2**53)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=context.device)
    if context.distributed:
        dist.all_reduce(tensor)
    return tensor.tolist()


def gather(value: Any, context: Context) -> List[Any]:
    """Every rank's value, in rank order, on every rank."""
    if not context.distributed:
        return [value]
    out: List[Any] = [None] * context.world_size
    dist.all_gather_object(out, value)
    return out


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()
