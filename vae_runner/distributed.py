"""Data-parallel training under `torchrun`: one process per device, each training on its shard of every batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from vae_runner.config import STAMP_ENV, run_stamp
from vae_runner.errors import UserError


def init() -> None:
    """Join the process group and agree on the run directory's stamp.

    The device is not known yet (Hydra composes the config later), so CUDA
    tensors go through NCCL and CPU tensors through gloo: `device=cpu` works
    on a GPU machine too.
    """
    if dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    stamp = [run_stamp() if rank() == 0 else None]
    dist.broadcast_object_list(stamp, src=0)
    os.environ[STAMP_ENV] = stamp[0]


def local_world_size() -> int:
    """The processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE), which share its cores; 1 outside torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def leave() -> None:
    """Leave the process group after a finished run (NCCL warns of leaked resources otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes training together (1 when not distributed)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 alone writes TensorBoard, checkpoints and metrics."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (e.g. a stop signal), so that all ranks stop at the same step."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)])  # through gloo, whatever the training device
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shard(n: int) -> slice:
    """This rank's rows of a global batch of n: contiguous, sizes differing by at most one."""
    size, extra = divmod(n, world_size())
    r = rank()
    start = r * size + min(r, extra)
    return slice(start, start + size + (1 if r < extra else 0))


def device_for_rank(device: torch.device) -> torch.device:
    """Under torchrun on GPUs, each rank uses the GPU of its local rank; every rank refuses too few GPUs alike."""
    if not (dist.is_initialized() and device.type == "cuda"):
        return device
    local_world, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if local_world > gpus:
        raise UserError(
            f"torchrun started {local_world} processes on this machine but it has {gpus} CUDA GPU(s), one per process; "
            f"use --nproc_per_node={gpus}, or device=cpu to train on the CPU."
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def mean_over_ranks(values: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Means over the whole batch from each rank's means of its `count` rows (unchanged when not distributed)."""
    if not dist.is_initialized():
        return values
    means = batch_mean(torch.stack([v.detach().float() for v in values.values()]), count)
    return dict(zip(values, means))


def batch_mean(local_mean: torch.Tensor, count: int) -> torch.Tensor:
    """The whole batch's mean from each rank's mean over its `count` rows, for a tensor of any shape (unchanged when not distributed)."""
    if not dist.is_initialized():
        return local_mean
    totals = torch.cat([local_mean.detach().float().reshape(-1) * count, torch.tensor([float(count)], device=local_mean.device)])
    dist.all_reduce(totals)
    return (totals[:-1] / totals[-1]).view_as(local_mean)
