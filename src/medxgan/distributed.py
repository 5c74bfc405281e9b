"""Data-parallel training and explanation with torch.distributed, launched by ``torchrun``.

``torchrun --nproc_per_node N -m medxgan train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`init` then joins the process group (nccl on CUDA, gloo on CPU) and every
command that supports it splits its work:

* training (classifier and GAN): each rank takes a disjoint shard of every epoch from a
  :class:`torch.utils.data.DistributedSampler` seeded with the run's seed and the epoch number,
  G and D (or the classifier being trained) are wrapped in DistributedDataParallel, which averages
  gradients, and the frozen classifier is replicated on every rank, not wrapped. ``batch_size``
  stays the *global* batch: each rank processes ``batch_size / world_size`` images per step.
* BatchNorm: on CUDA, BatchNorm layers become :class:`torch.nn.SyncBatchNorm`, so statistics are
  those of the global batch as in a single-process run. SyncBatchNorm does not run on CPU, so with
  gloo every rank normalises with its own batch's statistics (a "ghost batch" of
  ``batch_size / world_size``); DDP broadcasts rank 0's running statistics each step, so all
  ranks keep identical buffers. A BatchNorm-free configuration gives the single-process result.
* logging, sample grids and checkpoints happen on rank 0 only; checkpoints hold the global state
  (weights, optimisers, EMA, step), so ``--resume`` works under any world size.
* explanation: images are split into contiguous blocks, one per rank, and rank 0 gathers the
  results and writes one report in the original order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medxgan.errors import MedxganError


@dataclass(frozen=True)
class Context:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Context()


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init(device: str = "auto") -> tuple[Context, str]:
    """Join the process group when launched by torchrun; returns (context, device string).

    ``device`` is resolved per rank: with CUDA each rank uses ``cuda:LOCAL_RANK``.
    """
    from medxgan.device import resolve_device

    world = env_world_size()
    if world <= 1:
        return SINGLE, str(resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = str(resolve_device(device))
    if dev.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev, backend = f"cuda:{local_rank}", "nccl"
    elif dev == "cpu":
        backend = "gloo"
    else:
        raise MedxganError(f"distributed runs support cuda (nccl) and cpu (gloo), not {dev}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Context(world, rank, local_rank), dev


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish(ctx: Context) -> None:
    """Leave the process group on every rank together, once the distributed part of a command
    is over (rank 0 then evaluates and writes alone).

    A rank that left early and tore down its side of the group while rank 0 was still working
    could abort at exit ("terminate called without an active exception" under gloo), and
    torchrun then killed rank 0 before it wrote its metrics. Here the DDP wrappers left over
    from training are collected first, every rank waits for the others, and all of them destroy
    the group at the same point, while the interpreter is fully alive.
    """
    if not ctx.distributed or not (dist.is_available() and dist.is_initialized()):
        return
    import gc

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def per_rank_batch(global_batch: int, ctx: Context) -> int:
    if global_batch % ctx.world_size:
        raise MedxganError(f"batch_size {global_batch} must be divisible by the number of processes ({ctx.world_size})")
    return global_batch // ctx.world_size


def epoch_shard(n: int, epoch: int, seed: int, ctx: Context) -> list[int]:
    """This rank's indices of epoch ``epoch``: a DistributedSampler over range(n), shuffled with
    (seed, epoch), dropping the tail so that every rank gets the same number."""
    from torch.utils.data import DistributedSampler

    if n < ctx.world_size:
        raise MedxganError(f"{n} training images cannot be shared between {ctx.world_size} processes")
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def mean_across(values: dict, ctx: Context) -> dict:
    """Average a dict of floats over ranks (every rank gets the result)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t = (t / ctx.world_size).cpu()
    return {k: float(v) for k, v in zip(keys, t)}


def any_across(flag: bool, ctx: Context) -> bool:
    """True on every rank when it is true on any (e.g. Ctrl-C seen by one process)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def wrap(module: torch.nn.Module, ctx: Context, device: str) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` (SyncBatchNorm first on CUDA); unchanged when single."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.startswith("cuda"):
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DDP(module, device_ids=[ctx.local_rank])
    return DDP(module)


def sync_buffers(ctx: Context, *modules: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. Under gloo each rank's
    last forward updates its own statistics from its own shard; this makes them agree again."""
    if not ctx.distributed:
        return
    for m in modules:
        for buf in m.buffers():
            dist.broadcast(buf.data, src=0)


def block(n: int, ctx: Context) -> range:
    """This rank's contiguous block of ``n`` items (the first ``n % world`` ranks get one more)."""
    q, r = divmod(n, ctx.world_size)
    start = ctx.rank * q + min(ctx.rank, r)
    return range(start, start + q + (1 if ctx.rank < r else 0))


def gather_to_main(obj, ctx: Context):
    """List of every rank's ``obj`` on rank 0 (None elsewhere)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out
