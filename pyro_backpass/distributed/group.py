"""The process group: joining it from torchrun's environment, this process's rank, timeouts and errors.

See :mod:`pyro_backpass.distributed` for the conventions.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

__all__ = ["DistributedError", "TIMEOUT_ENV", "PREP_TIMEOUT_S", "init_from_env", "session", "destroy",
           "is_distributed", "rank", "world_size", "is_main", "timeout_s", "comm_seconds", "comm_device",
           "control_group", "guard"]

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
    the group at the end if it joined it here (a group the caller set up is left alone).

    While distributed, SIGTERM raises :class:`DistributedError`: torchrun stops every rank with it when one
    fails, and the error then says so (with the checkpoint to resume from) instead of the rank vanishing."""
    joined = not _on() and init_from_env(backend)
    previous = None
    if is_distributed() and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield is_distributed()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if joined:
            destroy()


def _on_sigterm(signum, frame):
    raise DistributedError(f"rank {rank()} of {world_size()}: stopped by SIGTERM, which torchrun sends to every "
                           "rank when one of them fails (the root cause it reports is that rank's error)")


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
def guard(what: str) -> Iterator[None]:
    """Time a collective and turn its failure into a :class:`DistributedError` naming ``what``."""
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


def comm_device() -> torch.device:
    """Where tensors must be for the default group's collectives (this rank's GPU under NCCL)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def control_group():
    """The group for object collectives and barriers (``None``: the default group, when it is gloo)."""
    return _control
