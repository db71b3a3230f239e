"""``torch.distributed`` helpers: process group from the torchrun environment, rank-aware I/O.

Under ``torchrun --nproc_per_node=N`` every process runs the same training; :func:`fit
<grulab.train.fit>` wraps the model in ``DistributedDataParallel`` when a process group is
initialised, each rank computes the loss on its shard of the global batch, gradients are averaged,
and only rank 0 evaluates, writes files and shows progress (it broadcasts the metrics so every
rank takes the same early-stopping decision).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the number of processes and its rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """The current process group's view (a single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set (``WORLD_SIZE`` and ``RANK``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env(device: str = "cpu") -> DistInfo:
    """Initialise the default process group from torchrun's environment, once.

    The backend is ``nccl`` for CUDA devices and ``gloo`` otherwise. Without torchrun's
    variables (a plain ``python -m grulab train``) nothing happens and a single-process
    :class:`DistInfo` is returned.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return dist_info()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist_info()


def shutdown() -> None:
    """Destroy the default process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_json(value: object, device: torch.device) -> object:
    """Send a JSON-serialisable value from rank 0 to every rank (as UTF-8 bytes, never pickled)."""
    info = dist_info()
    if not info.distributed:
        return value
    data = json.dumps(value).encode() if info.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if info.is_main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def all_mean(values: list[float], device: torch.device) -> list[float]:
    """The mean over ranks of each value (identity for a single process)."""
    if not dist_info().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()


def shard(n: int, info: DistInfo | None = None) -> slice:
    """The slice of ``range(n)`` (items of a global batch) that this rank handles.

    Ranks get contiguous, nearly equal parts; with ``n`` not divisible by the world size the
    first ranks get one more item. Loss functions that must match a single-process run exactly
    should normalise by the global count, not the shard's (see :mod:`grulab.tasks`).
    """
    info = info or dist_info()
    base, extra = divmod(n, info.world_size)
    start = info.rank * base + min(info.rank, extra)
    return slice(start, start + base + (1 if info.rank < extra else 0))
