"""Data-parallel training across processes (`torchrun`, or `kdforge train --nproc N`).

Each process (rank) holds the student, the method adapters and the frozen teacher; it
trains on its share of every global batch, and PyTorch DDP averages the gradients, so N
processes take the same steps as one process on the whole batch. `data.batch_size` is the
GLOBAL batch: each rank takes batch_size / N images, and the learning rate needs no change
when N changes. Backends: NCCL on GPUs, gloo on CPUs. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.capabilities import MultiPathNet


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def current() -> "Distributed":
        """The running process group's ranks, or a single process."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return Distributed()

    # ------------------------------------------------------------------ collectives (no-ops alone)
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks, in place; returned for chaining."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is true on any rank."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Every rank takes rank 0's buffers (BatchNorm statistics), e.g. before evaluating."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Average `.grad` over ranks (for the methods' pre-training stages, which DDP does not wrap)."""
        if self.enabled:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(self.world_size)

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. writes a cache), then the others (which read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # ------------------------------------------------------------------ set-up
    def device(self, requested: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK when training on GPUs."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def per_rank_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ConfigError(f"data.batch_size={batch_size} is the global batch and must divide evenly over "
                              f"{self.world_size} processes (each takes batch_size / {self.world_size})")
        return batch_size // self.world_size


def init_from_environment(device_name: str) -> Distributed:
    """Join the process group that torchrun describes (WORLD_SIZE > 1); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        on_gpu = device_name != "cpu" and torch.cuda.is_available()
        if on_gpu:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return Distributed.current()


def shutdown(ctx: Distributed) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def refuse_unsupported(losses, optim_name: str) -> None:
    """Methods whose state follows individual training images (CRD's memory bank) are single-process, and so
    is DOT's two-backward step (`optim.name: dot`)."""
    unsupported = [key for key, m in losses.methods.items() if not m.supports_distributed]
    if unsupported:
        raise ConfigError(f"losses {unsupported} keep per-image state that data-parallel ranks would not share; "
                          f"train them in one process (drop --nproc / torchrun)")
    if optim_name == "dot":
        raise ConfigError("optim.name: dot is not supported in distributed runs yet (two backward passes a step); "
                          "train in one process (drop --nproc / torchrun)")


class DistillStep(nn.Module):
    """The student and the methods' adapters as one module, so DDP syncs both; its forward is one
    training step's forward (teacher lookup, student, losses), given by the trainer."""

    def __init__(self, student: nn.Module, losses: nn.Module, step):
        super().__init__()
        self.student = student
        self.losses = losses
        self._step = step

    def forward(self, images, labels, indices):
        return self._step(images, labels, indices)


def may_skip_parameters(student: nn.Module, losses) -> bool:
    """Whether a training step can leave trainable parameters unused: adapters trained only by a
    pre-training stage (AB's connectors), or the paths of a depth-dynamic student."""
    return isinstance(student, MultiPathNet) or any(m.pretrain_epochs > 0 for m in losses.methods.values())


def wrap_for_ddp(student: nn.Module, losses, step, device: torch.device, find_unused: bool | None) -> nn.Module:
    """DDP over student + adapters (`find_unused` None: decided by `may_skip_parameters`)."""
    from torch.nn.parallel import DistributedDataParallel

    if find_unused is None:
        find_unused = may_skip_parameters(student, losses)
    module = DistillStep(student, losses, step)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)
