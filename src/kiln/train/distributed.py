"""Data-parallel training on torch.distributed: launching torchrun and joining its process group.

``kiln train --nproc-per-node N`` re-runs itself under ``torchrun``; each worker sees the
``RANK``/``WORLD_SIZE`` variables torchrun sets and joins a gloo (CPU) or NCCL (CUDA) group.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the (possibly single-process) job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes in the environment, or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, local_world, device)


def shutdown(info: DistInfo) -> None:
    """Leave the process group, if one was joined."""
    if info.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when alone)."""
    if info.is_distributed:
        dist.barrier()


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place and return it (no-op when alone)."""
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(info: DistInfo, tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor on every rank with rank 0's copy, in place (no-op when alone)."""
    if info.is_distributed:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def gather_objects(info: DistInfo, obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` when alone)."""
    if not info.is_distributed:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def launch(
    argv: list[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
) -> int:
    """Run ``kiln <argv>`` under torchrun with ``nproc_per_node`` workers; return its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            f"--master-addr={master_addr}",
            f"--master-port={master_port}",
        ]
    cmd += ["-m", "kiln.cli.main", *argv]
    env = dict(os.environ, KILN_DISTRIBUTED_CHILD="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)
