"""Several processes training one policy: torchrun's environment, the device, and DistributedDataParallel.

`htouch train` runs as one process, or under torchrun on one or many machines:

    torchrun --nproc_per_node 2 -m htouch train DATA --run-dir runs/x              # 2 GPUs (or CPU processes)
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
             --nproc_per_node 4 -m htouch train DATA --run-dir runs/x               # on each of 2 machines

(--run-dir, not --run: torchrun's own argument parser takes --run as an abbreviation of its --run-path.)

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the process group uses NCCL on
CUDA and gloo otherwise. Every rank loads the same data and model (same seed); DDP averages gradients, so the
parameters stay identical on every rank. Each rank trains on its shard of every epoch's permutation
(DistributedSampler), validation is split across ranks and summed. Only rank 0 writes files and reports.
With frozen encoders every rank encodes the whole dataset once (the embeddings stay on its device).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from htouch.errors import HtouchError

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DistEnv:
    """This process's place among the training processes (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls) -> DistEnv:
        """From torchrun's variables; a process without them is alone."""
        try:
            rank = int(os.environ.get("RANK", 0))
            world = int(os.environ.get("WORLD_SIZE", 1))
            local = int(os.environ.get("LOCAL_RANK", 0))
        except ValueError:
            raise HtouchError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise HtouchError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                              f"LOCAL_RANK={local}")
        return cls(rank, world, local)


def choose_device(requested: str = "auto", env: DistEnv = DistEnv()) -> torch.device:
    """auto: this process's CUDA device (cuda:LOCAL_RANK) if there is one, else Apple's MPS, else the CPU."""
    if requested not in DEVICES:
        raise HtouchError(f"unknown device {requested!r}; use one of {', '.join(DEVICES)}")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if env.local_rank >= n:
            raise HtouchError(f"LOCAL_RANK {env.local_rank} but this machine has {n} CUDA device(s); "
                              f"start at most {n} processes per node")
        return torch.device("cuda", env.local_rank)
    if requested == "cuda":
        raise HtouchError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    mps = getattr(torch.backends, "mps", None)
    if requested in ("auto", "mps") and mps is not None and mps.is_available() and not env.distributed:
        return torch.device("mps")
    if requested == "mps":
        raise HtouchError("--device mps: Apple's MPS backend is not available here"
                          + (" (nor usable with several processes)" if env.distributed else ""))
    return torch.device("cpu")


def init(env: DistEnv, device: torch.device, timeout_s: float = 600.0) -> bool:
    """Join the process group: NCCL for CUDA devices, gloo otherwise. Returns whether it created the group (a
    caller that set one up itself keeps it; alone there is none)."""
    if not env.distributed or dist.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise HtouchError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set; start the processes with torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                            timeout=dt.timedelta(seconds=timeout_s))
    return True


def shutdown(env: DistEnv) -> None:
    """Leave the process group (only the one `init` created: the store of a torchrun job cannot be joined twice)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every process of a distributed run (nothing in a single process)."""
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def agree(flag: bool, env: DistEnv) -> bool:
    """True on every rank if it is True on any rank (e.g. 'some rank hit an error')."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: object, env: DistEnv) -> object:
    """Rank 0's value of a small picklable object on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the module when several processes train (it broadcasts rank 0's
    parameters and buffers at once, and averages gradients in backward); the module itself otherwise."""
    if not env.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
