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

from .collectives import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    broadcast_tensors,
    check_same,
    gather_by_index,
    gather_objects,
    main_first,
    run_on_main,
    shard,
)
from .group import (
    PREP_TIMEOUT_S,
    TIMEOUT_ENV,
    DistributedError,
    comm_seconds,
    destroy,
    init_from_env,
    is_distributed,
    is_main,
    rank,
    session,
    timeout_s,
    world_size,
)

__all__ = ["DistributedError", "TIMEOUT_ENV", "PREP_TIMEOUT_S", "init_from_env", "session", "destroy",
           "is_distributed", "rank", "world_size", "is_main", "timeout_s", "comm_seconds", "shard", "all_reduce_sum",
           "gather_by_index", "broadcast_tensors", "gather_objects", "all_gather_objects", "broadcast_object",
           "check_same", "barrier", "main_first", "run_on_main"]
