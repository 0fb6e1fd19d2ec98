"""Data-parallel search under ``torchrun``: every rank trains, rank 0 alone meets the world.

``torchrun --nproc-per-node N --no-python hwdnal search ...`` starts N processes with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :meth:`Cluster.from_environment` joins them with
``torch.distributed`` (NCCL on CUDA, gloo on the CPU). The rules the search keeps:

- Each rank trains on its part of every global batch (``--batch-size`` is the global batch),
  so the optimiser steps, the learning-rate schedule and δ's schedule are the same for any N.
- Gradients are averaged by DistributedDataParallel, the gates' like any other parameter's.
- Only rank 0 touches the outside: the run directory, the target device (profile, fit,
  compile, measure) and the terminal. The others wait for it on a separate gloo group whose
  timeout is :data:`MAIN_RANK_WAIT`, so a long profile or fit does not trip the training
  group's collective timeout (NCCL's is 10 minutes). A rank-0 failure reaches every rank as
  the same error; torchrun ends the group when a process dies.
- What must agree (the keep mask) is compared across ranks; a mismatch is an error.

Objects sent between ranks are pickled by ``torch.distributed``: they come from this job's
own processes, never from files.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from hwdnal.errors import UserError
from hwdnal.interrupt import Interrupted

T = TypeVar("T")

#: how long the other ranks wait for rank 0's profile, fit or compile
MAIN_RANK_WAIT = timedelta(hours=48)
#: steps between the ranks' agreement on a requested stop (one small gloo all-reduce)
STOP_CHECK_EVERY = 8


class PeerError(UserError):
    """An error raised on rank 0 (or another rank), re-raised here so every rank stops.

    The CLI prints it on rank 0 only: the same line N times helps nobody."""


@dataclass
class Cluster:
    """This process's place in the job; a single process is a cluster of one."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    _control: Any = field(default=None, repr=False)
    _stop_calls: int = field(default=0, repr=False)

    # -- joining and leaving -------------------------------------------------------------
    @classmethod
    def from_environment(cls, device: str,
                         collective_timeout: timedelta | None = None) -> Cluster:
        """Join the torchrun job described by the environment, or a cluster of one."""
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world_size <= 1:
            return cls()
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            if device != "cuda":
                raise UserError(f"--device {device}: under torchrun every rank uses its own "
                                "GPU (cuda:LOCAL_RANK); pass --device cuda")
            if local_rank >= torch.cuda.device_count():
                raise UserError(
                    f"local rank {local_rank} has no GPU (this node has "
                    f"{torch.cuda.device_count()}): start at most that many processes per "
                    "node (--nproc-per-node)")
            torch.cuda.set_device(local_rank)
            backend = "nccl"
        else:
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=collective_timeout)
        control = dist.new_group(backend="gloo", timeout=MAIN_RANK_WAIT)
        return cls(rank, world_size, local_rank, backend, control)

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # -- who am I ------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device this rank trains on: its own GPU under torchrun."""
        return f"cuda:{self.local_rank}" if self.active and requested == "cuda" else requested

    def shard(self) -> tuple[int, int] | None:
        """(rank, world size) for :func:`hwdnal.data.batches`, or None when alone."""
        return (self.rank, self.world_size) if self.active else None

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend or "none"}

    def check_batch_size(self, batch_size: int) -> None:
        if self.active and batch_size % self.world_size:
            raise UserError(
                f"--batch-size {batch_size} is the global batch and must divide among the "
                f"{self.world_size} processes: use a multiple of {self.world_size}")

    # -- rank 0's work, everyone's outcome -----------------------------------------------
    def broadcast(self, value: T | None = None) -> T:
        """Rank 0's ``value`` on every rank (the others' argument is ignored)."""
        if not self.active:
            return value  # type: ignore[return-value]
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]  # type: ignore[return-value]

    def run_on_main(self, work: Callable[[], T]) -> T:
        """Rank 0 does ``work``; every rank returns its result or raises its error."""
        if not self.active:
            return work()
        if not self.is_main:
            return _unpack(self.broadcast())
        try:
            value = work()
        except Interrupted as stop:
            self.broadcast(("interrupted", stop.where, stop.signal_number))
            raise
        except UserError as error:
            self.broadcast(("error", str(error)))
            raise
        except BaseException as error:
            self.broadcast(("error", f"rank 0 failed ({type(error).__name__}: {error})"))
            raise
        self.broadcast(("ok", value))
        return value

    def raise_if_any(self, error: UserError | None) -> None:
        """Every rank checks its own inputs; if any failed, all stop with the first error."""
        if not self.active:
            if error is not None:
                raise error
            return
        import torch.distributed as dist

        messages: list[str | None] = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else str(error),
                               group=self._control)
        if error is not None:
            raise error
        for rank, message in enumerate(messages):
            if message is not None:
                raise PeerError(f"rank {rank}: {message}")

    def stop_agreed(self, requested: Callable[[], bool]) -> bool:
        """Whether to stop now, the same answer on every rank (checked every few steps)."""
        if not self.active:
            return requested()
        self._stop_calls += 1
        if self._stop_calls % STOP_CHECK_EVERY:
            return False
        import torch.distributed as dist

        flag = torch.tensor([1 if requested() else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control)
        return bool(flag.item())

    # -- tensors and modules -------------------------------------------------------------
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place on the training group)."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def sync_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (BatchNorm statistics drift apart:
        each rank's last forward pass updated them from its own images)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def data_parallel(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped for gradient averaging (itself when alone)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def check_same(self, what: str, tensor: torch.Tensor) -> list[str]:
        """Digests of ``tensor`` on every rank; raises when any rank's differs from rank 0's."""
        digest = hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if not self.active:
            return [digest]
        import torch.distributed as dist

        digests: list[str | None] = [None] * self.world_size
        dist.all_gather_object(digests, digest, group=self._control)
        different = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if different:
            raise UserError(
                f"the {what} differs between ranks ({', '.join(map(str, different))} against "
                "rank 0): the ranks did not train the same gates. Re-run with --debug and "
                "report it; a single-process run is not affected")
        return [str(d) for d in digests]


def _unpack(outcome: tuple) -> Any:
    kind = outcome[0]
    if kind == "ok":
        return outcome[1]
    if kind == "interrupted":
        raise Interrupted(outcome[1], outcome[2] or signal.SIGTERM)
    raise PeerError(outcome[1])


def to_sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm layers as SyncBatchNorm (statistics over the global batch; CUDA only),
    each remembering its own class for :func:`revert_sync_batchnorm`."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, nn.SyncBatchNorm):
        synced = nn.SyncBatchNorm(module.num_features, module.eps, module.momentum,
                                  module.affine, module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.to(next(iter(module.state_dict().values())).device)
        synced.train(module.training)
        synced.plain_class = type(module)  # type: ignore[assignment]
        return synced
    for name, child in module.named_children():
        setattr(module, name, to_sync_batchnorm(child))
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm layers back to their own class (what pruning, ONNX and the LUT know)."""
    if isinstance(module, nn.SyncBatchNorm):
        plain_class = getattr(module, "plain_class", nn.BatchNorm2d)
        plain = plain_class(module.num_features, module.eps, module.momentum,
                            module.affine, module.track_running_stats)
        plain.load_state_dict(module.state_dict())
        plain.to(next(iter(module.state_dict().values())).device)
        plain.train(module.training)
        return plain
    for name, child in module.named_children():
        setattr(module, name, revert_sync_batchnorm(child))
    return module
