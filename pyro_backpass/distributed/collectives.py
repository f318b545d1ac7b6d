"""Collectives over the ranks' shards of a data set, each the identity in one process.

See :mod:`pyro_backpass.distributed` for the conventions.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from .group import (
    PREP_TIMEOUT_S,
    comm_device,
    control_group,
    guard,
    is_distributed,
    is_main,
    rank,
    timeout_s,
    world_size,
)

__all__ = ["shard", "all_reduce_sum", "gather_by_index", "broadcast_tensors", "gather_objects", "all_gather_objects",
           "broadcast_object", "check_same", "barrier", "run_on_main", "main_first"]


def shard(n: int, rank_: int | None = None, world: int | None = None) -> torch.Tensor:
    """Indices of the examples ``0..n-1`` that rank ``rank_`` of ``world`` holds: one contiguous block, (m,).

    Block sizes differ by at most one (the first ``n % world`` ranks get one more). Defaults: this process.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank, world: expected 0 <= rank < world, got {r} and {w}")
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return torch.arange(start, start + base + (1 if r < extra else 0))


def all_reduce_sum(tensor: torch.Tensor, what: str = "all_reduce_sum") -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (the identity in one process). Integer sums are exact;
    float sums match one process's within rounding (the order of the additions depends on the ranks)."""
    if not is_distributed():
        return tensor
    buf = tensor.detach().to(comm_device()).contiguous()
    with guard(what):
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf.data_ptr() != tensor.data_ptr():
        tensor.copy_(buf)
    return tensor


def gather_by_index(values: torch.Tensor, index: torch.Tensor, n: int, what: str = "gather_by_index") -> torch.Tensor:
    """The global (n, ...) tensor on every rank, from each rank's ``values`` (m, ...) at positions ``index`` (m,).

    Each position is held by one rank, so the result (one value plus zeros) is bit-identical to one process's,
    and means or argsorts over it do not depend on the number of ranks.
    """
    out = torch.zeros((n,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    out[index.to(values.device)] = values
    return all_reduce_sum(out, what)


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0, what: str = "broadcast_tensors") -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values, in place."""
    for t in tensors if is_distributed() else []:
        buf = t.detach().to(comm_device()).contiguous()
        with guard(what):
            dist.broadcast(buf, src=src)
        if buf.data_ptr() != t.data_ptr():
            t.detach().copy_(buf)


def gather_objects(items: list, dst: int = 0, what: str = "gather_objects") -> list | None:
    """Every rank's list of picklable items concatenated in rank order (with :func:`shard`, the global order) on
    rank ``dst``; ``None`` on the other ranks; ``list(items)`` in one process."""
    if not is_distributed():
        return list(items)
    parts = [None] * world_size() if rank() == dst else None
    with guard(what):
        dist.gather_object(list(items), parts, dst=dst, group=control_group())
    return [x for p in parts for x in p] if rank() == dst else None


def all_gather_objects(obj: Any, what: str = "all_gather_objects") -> list:
    """Every rank's ``obj``, as a list indexed by rank, on every rank (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    with guard(what):
        dist.all_gather_object(out, obj, group=control_group())
    return out


def broadcast_object(obj: Any, src: int = 0, what: str = "broadcast_object") -> Any:
    """Rank ``src``'s ``obj`` on every rank (the argument is ignored elsewhere)."""
    if not is_distributed():
        return obj
    box = [obj]
    with guard(what):
        dist.broadcast_object_list(box, src=src, group=control_group())
    return box[0]


def check_same(what: str, obj: Any) -> None:
    """Raise the same :class:`ValueError` on every rank unless ``obj`` (picklable) is equal on all; ``what``
    names the argument or setting in the message."""
    objs = all_gather_objects(obj, what=f"checking {what} across ranks")
    bad = [r for r, o in enumerate(objs) if o != objs[0]]
    if not bad:
        return
    mine, theirs = _flatten(objs[0]), _flatten(objs[bad[0]])
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    detail = "; ".join(f"{k}: rank 0 has {mine.get(k)!r}, rank {bad[0]} has {theirs.get(k)!r}" for k in keys[:5])
    raise ValueError(f"{what}: expected the same value on every rank, got a different one on rank(s) {bad} "
                     f"than on rank 0 ({detail})")


def _flatten(obj: Any, prefix: str = "") -> dict:
    """Nested dicts as ``{"a.b": value}``, so a mismatch names the innermost differing key."""
    if not isinstance(obj, dict):
        return {prefix or "value": obj}
    out = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def barrier(what: str = "barrier", timeout: float | None = None) -> None:
    """Wait for every rank; a rank that does not arrive within ``timeout`` seconds is named in the error."""
    if not is_distributed():
        return
    with guard(what):
        dist.monitored_barrier(group=control_group(), timeout=datetime.timedelta(seconds=timeout or timeout_s()),
                               wait_all_ranks=True)


def run_on_main(fn, what: str, timeout: float = PREP_TIMEOUT_S):
    """``fn()`` on rank 0 only, its result broadcast to every rank (the others wait up to ``timeout`` s)."""
    if not is_distributed():
        return fn()
    result = fn() if is_main() else None
    barrier(f"waiting for rank 0 ({what})", timeout)
    return broadcast_object(result, what=f"receiving {what} from rank 0")


@contextmanager
def main_first(what: str, timeout: float = PREP_TIMEOUT_S) -> Iterator[None]:
    """Run the body on rank 0 first and on the others after it (e.g. to fill a disk cache once); they wait up
    to ``timeout`` s, and get a :class:`DistributedError` if rank 0 fails in the body."""
    if is_distributed() and not is_main():
        barrier(f"waiting for rank 0 ({what})", timeout)
    yield
    if is_distributed() and is_main():
        barrier(f"waiting for rank 0 ({what})", timeout)
