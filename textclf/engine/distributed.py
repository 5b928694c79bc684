"""Data-parallel training over several processes: torch.distributed + DistributedDataParallel.

One process per device (NCCL on CUDA, gloo on CPU). The processes come from `torchrun` (one machine or several),
from `trainer.devices=N` (textclf starts them itself, textclf.engine.launch) or from a submitit job with
several tasks (textclf.commands.sweep exports the torch.distributed environment from submitit's). Every process runs the
same recipe on the same config and run folder; what differs per rank:

  - data: each global batch (trainer.batch_size x world size rows, length-grouped from the shared seed) is dealt
    out row by row, so every rank takes the same number of steps and no row is trained twice in an epoch; the
    loss of a rank's share is weighted so the averaged gradient is the gradient of the global batch's mean loss
  - evaluation: the validation batches are dealt out and the logits gathered back in batch order on every rank
    (so every rank scores the same numbers and early stopping stops them together)
  - files, loggers, progress bars: rank 0 only (engine.callbacks.is_main)

The process group is started once per process (init_from_env) and closed at exit (shutdown).
"""
from __future__ import annotations

import datetime
import logging
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from textclf.engine.callbacks import launched, local_rank, rank, world_size  # noqa: F401 - part of this module's interface
from textclf.errors import TextclfError

log = logging.getLogger(__name__)

def active() -> bool:
    """True once the process group of a multi-process run is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env(timeout_min: float = 30.0) -> bool:
    """Start the process group from the launcher's environment (idempotent). CUDA machines get NCCL for CUDA
    tensors and gloo for the small CPU messages (run folder, stop requests, gathered logits); CPU ones gloo.
    Returns whether this is a multi-process run."""
    if not launched():
        return False
    if dist.is_initialized():
        return True
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_min))
    return True


#: what a collective's error says when another process of the run is gone: gloo's connection to it closed, or the
#: wait for it timed out (gloo and NCCL)
LOST_PEER_SIGNS = ("connection reset by peer", "connection closed by peer", "broken pipe", "remote worker",
                   "timed out")


def lost_peer(error: BaseException | None) -> bool:
    """True when `error` (or what caused it) is a collective's failure because another process of this
    multi-process run ended or stopped answering, not a fault of this process."""
    if not launched():
        return False
    network = tuple(t for t in (getattr(dist, "DistNetworkError", None), getattr(dist, "DistStoreError", None)) if t)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if network and isinstance(error, network):
            return True
        if isinstance(error, RuntimeError) and any(sign in str(error).lower() for sign in LOST_PEER_SIGNS):
            return True
        error = error.__cause__ or error.__context__
    return False


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """rank `src`'s object, on every rank (pickled over the CPU group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn) -> Any:
    """fn() on rank 0, its result on every rank; an error there is raised on every rank (the others would
    otherwise wait for rank 0 until the timeout)."""
    if not active():
        return fn()
    outcome = None
    if rank() == 0:
        try:
            outcome = ("ok", fn())
        except TextclfError as e:
            broadcast(("error", str(e)))
            raise
        except BaseException as e:
            broadcast(("error", f"rank 0 failed: {type(e).__name__}: {e}"))
            raise
    kind, value = broadcast(outcome)
    if kind == "error" and rank() != 0:
        raise TextclfError(value)
    return value


def all_gather(obj: Any) -> list:
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def max_over_ranks(value: int) -> int:
    """The largest of every rank's value, on every rank (a CPU tensor: no CUDA stream waits for it)."""
    return _reduce(value, "MAX")


def sum_over_ranks(value: int) -> int:
    return _reduce(value, "SUM")


def _reduce(value: int, op: str) -> int:
    if not active():
        return value
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return int(t.item())


def average_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """In place: each tensor becomes its mean over the ranks (gloo has no AVG: a sum, then a division)."""
    if not active() or not tensors:
        return tensors
    n = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    torch._foreach_div_(tensors, float(n))
    return tensors


def shared_device(device: torch.device) -> torch.device:
    """A CUDA device of a multi-process run is this process's own GPU (cuda:LOCAL_RANK), whatever index the
    config named; CPU stays CPU."""
    if launched() and device.type == "cuda":
        return torch.device("cuda", local_rank() % max(torch.cuda.device_count(), 1))
    return device


# ----------------------------------------------------------------------------- data
class ShardedBatches:
    """A rank's share of every global batch of an inner batch sampler (EpochBatches at batch_size x world).

    Global batches smaller than the world size would leave a rank empty: each is merged into the batch before
    it (a slightly larger step) instead, so no row is dropped and none repeated. The rows of a global batch are
    dealt out strided (row j to rank j % world), which keeps each rank's share as evenly long as the batch.
    `scales[i]`: the weight of this rank's mean loss in batch i, n_rank * world / n_global, so the gradient
    DDP averages is that of the global batch's mean loss (equal shares: 1)."""

    def __init__(self, inner, rank: int, world: int):
        self.inner, self.rank, self.world = inner, int(rank), int(world)
        self.scales: list[float] = []
        self._cache: tuple[Any, list] | None = None

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def global_batches(self) -> list[list[int]]:
        key = getattr(self.inner, "epoch", None)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, merge_small(list(self.inner), self.world))
        return self._cache[1]

    def __iter__(self):
        batches = self.global_batches()
        shares = [b[self.rank::self.world] for b in batches]
        self.scales = [len(s) * self.world / len(b) for s, b in zip(shares, batches)]
        return iter(shares)

    def __len__(self) -> int:
        return len(self.global_batches())


def merge_small(batches: list[list[int]], world: int) -> list[list[int]]:
    out: list[list[int]] = []
    for b in batches:
        if len(b) < world and out:
            out[-1] = out[-1] + list(b)
        else:
            out.append(list(b))
    if out and len(out[0]) < world and len(out) > 1:  # a small first batch joins the next
        out[1] = out[0] + out[1]
        out.pop(0)
    return out


class ShardedList:
    """Inference batches dealt out: rank r takes batches r, r + world, ...; `sizes` are every rank's batch sizes
    in the global order, for gather_in_order."""

    def __init__(self, batches: list[list[int]], rank: int, world: int):
        self.batches, self.rank, self.world = batches, int(rank), int(world)
        self.sizes = [len(b) for b in batches]

    def __iter__(self):
        return iter(self.batches[self.rank::self.world])

    def __len__(self) -> int:
        return len(self.batches[self.rank::self.world])


def gather_in_order(rows: np.ndarray, logits: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (rows, logits) of its dealt-out batches, put back in the global batch order: the order a
    single process would have produced. Same result on every rank."""
    parts = all_gather((rows, logits))
    world = len(parts)
    pieces = []
    for r, (rw, lg) in enumerate(parts):
        own = sizes[r::world]
        cuts = np.cumsum(own)[:-1]
        pieces.append(list(zip(np.split(rw, cuts), np.split(lg, cuts))))
    ordered = [pieces[j % world][j // world] for j in range(len(sizes))]
    if not ordered:
        return rows, logits
    return np.concatenate([p[0] for p in ordered]), np.concatenate([p[1] for p in ordered])


def wrap(model: torch.nn.Module, device: torch.device):
    """The DDP wrapper (for forwards and backwards); the module itself stays what hooks, EMA and saving see.
    find_unused_parameters: a backbone's pooler (or a frozen part's neighbours) gets no gradient with most
    poolings, which DDP would otherwise wait for."""
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=True)
