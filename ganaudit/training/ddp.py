"""Data-parallel training across processes: ``torchrun --nproc-per-node N -m ganaudit train ...``.

The plumbing :mod:`ganaudit.training.train` calls through small hooks; with one process (no torchrun) every hook is a
no-op and training is exactly the single-process training.

- The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): gloo on
  CPU, NCCL on GPUs (one GPU per process, ``cuda:LOCAL_RANK``).
- G, D, E (and the generated-image head) each get their own ``DistributedDataParallel`` wrapper with
  ``broadcast_buffers=False``: D runs forward twice (real, fake) before one backward, and broadcasting its
  buffers (spectral-norm vectors, the minibatch-std statistic) in the second forward would overwrite
  tensors the first one still needs (pytorch#22095). This is NVlabs/stylegan2-ada-pytorch's pattern.
- Each process draws its part of the batch (``batch_size / N`` images) from its own shard of the training
  set (``DistributedSampler``); gradients are averaged, so the step sees the same total batch.
- Only rank 0 writes checkpoints, samples, metrics and the run files; a checkpoint keeps every rank's RNG
  state and the sampler position, so ``--resume`` continues the same streams.

Training layer: torch only.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from ..core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, number of processes and local rank (1 process: 0, 1, 0)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The job as torchrun describes it in the environment (one process when it does not)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    # A RANK left in the environment made a lone process a non-writing rank: it trained, wrote nothing, exited 0.
    if d.world < 1 or not 0 <= d.rank < d.world or d.local_rank < 0:
        raise ConfigError(
            f"RANK={os.environ.get('RANK')}, WORLD_SIZE={os.environ.get('WORLD_SIZE')} in the environment do not "
            "describe a job: unset them for one process, or start several with torchrun (docs/distributed.md)"
        )
    if d.world > 1 and "MASTER_ADDR" not in os.environ:
        raise ConfigError(
            f"WORLD_SIZE={d.world} is set but not MASTER_ADDR: start several processes with torchrun "
            "(docs/distributed.md), or unset WORLD_SIZE and RANK for one"
        )
    return d


def is_main_process() -> bool:
    """Rank 0, or no torchrun at all: the process that prints and writes."""
    return from_env().is_main


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun; returns the job and this process's device."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def finish(d: Dist) -> None:
    """Leave the process group (no barrier: a rank that failed must not leave the others waiting)."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. Ctrl-C seen by one process)."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def on_main(d: Dist, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (it writes files); a ganaudit error there is raised on every rank."""
    if not d.enabled:
        return fn()
    result, error = None, None
    if d.is_main:
        try:
            result = fn()
        except ConfigError as e:  # the user-facing errors of preparing a run
            error = e
        except Exception as e:  # noqa: BLE001 - the other ranks must not wait forever for rank 0
            error = ConfigError(f"rank 0 failed: {type(e).__name__}: {e}")
    box = [None if error is None else str(error)]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise ConfigError(box[0]) if error is None else error
    return result


def sync_buffers(d: Dist, *modules: nn.Module) -> None:
    """Give every rank rank 0's buffers (running statistics): done when a phase freezes the networks, since
    each rank's own statistics drift apart while training (``broadcast_buffers=False``)."""
    if d.enabled:
        for m in modules:
            for b in m.buffers():
                dist.broadcast(b, src=0)


def gather(d: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (on every rank), in rank order."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


_BUFFER_SYNC = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else "broadcast_buffers"
)


class _Methods(nn.Module):
    """Lets DDP's forward reach a method other than forward (D.with_rotations), so its gradients sync too."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, method: str | None = None) -> Any:
        return (self.module if method is None else getattr(self.module, method))(*args)


def caller(module: nn.Module, d: Dist, device: torch.device) -> Callable[..., Any]:
    """``call(*args, method=None)`` runs ``module`` (or ``module.method``); across processes through its own
    DDP wrapper (``broadcast_buffers=False``), so that backward averages the gradients of every rank."""
    if not d.enabled:
        return lambda *args, method=None: (module if method is None else getattr(module, method))(*args)
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.13 names it forward_sync_buffers (and still syncs buffers once at init, which is wanted here).
    no_sync = {_BUFFER_SYNC: False}
    return nn.parallel.DistributedDataParallel(_Methods(module), device_ids=ids, **no_sync)


def local_batch(d: Dist, batch_size: int) -> int:
    """Images each process draws per step: the total batch split evenly over the processes."""
    if batch_size % d.world:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the number of processes ({d.world})")
    return batch_size // d.world


class ShardedBatches:
    """Batches of training-set indices from this rank's DistributedSampler shard, epoch after epoch.

    ``drawn`` (batches taken so far, the same on every rank) is the whole state: resuming with it continues
    the same index stream.
    """

    def __init__(self, n: int, d: Dist, batch: int, seed: int, drawn: int = 0) -> None:
        self.sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed)
        self.batch, self.drawn = batch, drawn
        self._epoch: int | None = None
        self._order: list[int] = []

    def _indices(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, list(self.sampler)
        return self._order

    def next(self) -> torch.Tensor:
        per_epoch = len(self.sampler)
        start = self.drawn * self.batch
        out = [self._indices(p // per_epoch)[p % per_epoch] for p in range(start, start + self.batch)]
        self.drawn += 1
        return torch.tensor(out)
