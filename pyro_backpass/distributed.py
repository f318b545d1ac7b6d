"""Data parallelism over ``torch.distributed`` (launched by ``torchrun``), and the same calls as no-ops in one process.

``torchrun --nproc_per_node N -m scripts.<name> ...`` (``--nnodes`` across machines) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; :func:`init_from_env` joins that group (gloo on CPU, NCCL with
CUDA). In a plain ``python`` run nothing is initialised and every helper is the identity of a one-process world
(:func:`rank` 0, :func:`world_size` 1, :func:`shard` every index, :func:`all_reduce_sum` its input,
:func:`gather_objects` its list), so library code calls them unconditionally and never needs torch.distributed.

Conventions:

- **Shards are contiguous blocks** (:func:`shard`), so the ranks' results in rank order are in global order
  (what :func:`gather_objects` returns). Sharded inference, e.g. over scenes::

      rows = [evaluate_one(scenes[i]) for i in distributed.shard(len(scenes)).tolist()]
      rows = distributed.gather_objects(rows)  # all rows, in scene order, on rank 0; None elsewhere
      if distributed.is_main():
          atomic_write_json(out / "metrics.json", summarise(rows))

- **Two groups.** Tensor collectives use the default group (NCCL moves CPU tensors to this rank's GPU and
  back); object collectives and barriers use a gloo group.
- **Failures are errors, not hangs.** Collectives run under a timeout (:func:`timeout_s`) and any failure (a
  peer died, a connection reset, a timeout) raises :class:`DistributedError` naming this rank and the
  operation. A peer that exits closes its sockets, so the others learn of it at once, not after the timeout.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistributedError", "init_from_env", "destroy", "is_distributed", "rank", "world_size", "is_main",
           "timeout_s", "shard", "all_reduce_sum", "gather_by_index", "broadcast_tensors", "gather_objects",
           "all_gather_objects", "broadcast_object", "check_same", "barrier", "main_first", "run_on_main",
           "comm_seconds", "session"]

TIMEOUT_ENV = "PYRO_BACKPASS_DIST_TIMEOUT"
PREP_TIMEOUT_S = 4 * 3600.0  # waits for work only rank 0 does (training the backbone) may be long

_control = None  # the gloo group for objects and barriers (None: the default group is gloo)
_comm = {"seconds": 0.0}


class DistributedError(RuntimeError):
    """A collective failed: another rank died, was killed, or stopped answering within the timeout."""


def timeout_s() -> float:
    """Seconds a collective may wait for the slowest rank (``PYRO_BACKPASS_DIST_TIMEOUT``, default 600)."""
    text = os.environ.get(TIMEOUT_ENV, "600")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}: expected a number of seconds > 0, got {text!r}")
    return value


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    if not text.isdigit():
        raise ValueError(f"{name}: expected an integer (set by torchrun), got {text!r}")
    return int(text)


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment; returns whether it is distributed.

    Does nothing (returns ``False``) without ``WORLD_SIZE``/``RANK`` in the environment; idempotent.

    :param str backend: ``"gloo"`` or ``"nccl"``; default NCCL if CUDA is available, else gloo (env
        ``PYRO_BACKPASS_DIST_BACKEND`` overrides).
    """
    global _control
    if _on():
        return True
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return False
    world, r = _env_int("WORLD_SIZE"), _env_int("RANK")
    if world < 1 or not 0 <= r < world:
        raise ValueError(f"RANK, WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got {r} and {world}")
    backend = backend or os.environ.get("PYRO_BACKPASS_DIST_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0)
    timeout = datetime.timedelta(seconds=timeout_s())
    dist.init_process_group(backend, timeout=timeout)
    _control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return True


@contextmanager
def session(backend: str | None = None) -> Iterator[bool]:
    """:func:`init_from_env` for the length of a script: yields whether the run is distributed, and leaves
    the group at the end if it joined it here (a group the caller set up is left alone)."""
    joined = not _on() and init_from_env(backend)
    try:
        yield is_distributed()
    finally:
        if joined:
            destroy()


def destroy() -> None:
    """Leave the process group (after the last collective of a successful run)."""
    global _control
    if _on():
        dist.destroy_process_group()
    _control = None


def _on() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return _on() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if _on() else 0


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    return dist.get_world_size() if _on() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one that writes files and prints."""
    return rank() == 0


def comm_seconds() -> float:
    """Wall seconds this process has spent in collectives (waits for slower ranks included)."""
    return _comm["seconds"]


@contextmanager
def _guard(what: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    except RuntimeError as e:  # gloo/NCCL failures are RuntimeErrors (DistBackendError among them)
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {what} failed ({reason}). Another rank has probably died, been "
            f"killed or stopped answering (timeout {timeout_s():g} s, {TIMEOUT_ENV}); its own log says why"
        ) from e
    finally:
        _comm["seconds"] += time.perf_counter() - t


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


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, what: str = "all_reduce_sum") -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (the identity in one process). Integer sums are exact;
    float sums match one process's within rounding (the order of the additions depends on the ranks)."""
    if not is_distributed():
        return tensor
    buf = tensor.detach().to(_comm_device()).contiguous()
    with _guard(what):
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
        buf = t.detach().to(_comm_device()).contiguous()
        with _guard(what):
            dist.broadcast(buf, src=src)
        if buf.data_ptr() != t.data_ptr():
            t.detach().copy_(buf)


def gather_objects(items: list, dst: int = 0, what: str = "gather_objects") -> list | None:
    """Every rank's list of picklable items concatenated in rank order (with :func:`shard`, the global order) on
    rank ``dst``; ``None`` on the other ranks; ``list(items)`` in one process."""
    if not is_distributed():
        return list(items)
    parts = [None] * world_size() if rank() == dst else None
    with _guard(what):
        dist.gather_object(list(items), parts, dst=dst, group=_control)
    return [x for p in parts for x in p] if rank() == dst else None


def all_gather_objects(obj: Any, what: str = "all_gather_objects") -> list:
    """Every rank's ``obj``, as a list indexed by rank, on every rank (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    with _guard(what):
        dist.all_gather_object(out, obj, group=_control)
    return out


def broadcast_object(obj: Any, src: int = 0, what: str = "broadcast_object") -> Any:
    """Rank ``src``'s ``obj`` on every rank (the argument is ignored elsewhere)."""
    if not is_distributed():
        return obj
    box = [obj]
    with _guard(what):
        dist.broadcast_object_list(box, src=src, group=_control)
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
    with _guard(what):
        dist.monitored_barrier(group=_control, timeout=datetime.timedelta(seconds=timeout or timeout_s()),
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
