"""Where hard EM and the observation fit read activations from, one minibatch at a time.

An *activation source* has ``len(source)`` examples, their ``categories`` (N,) and
``batch(index) -> list of L tensors (n, C_l, H_l, W_l)``. :class:`TensorActivations` holds them in
memory; a backbone-backed source computes them on demand, so large data sets are streamed and
memory stays bounded by the batch size.

In a distributed run each rank holds a shard of the examples: :class:`ShardedSource` is the global view of
such a shard (global ``len`` and ``categories``, ``batch`` of the examples this rank holds). Learning code
walks the *global* minibatches of :func:`iterate_batches` on every rank and processes the part of each
that the rank holds (:meth:`ShardedSource.local`), so the minibatches, and the random order they come in,
do not depend on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .. import distributed
from ..validation import check_finite

__all__ = ["TensorActivations", "ShardedSource", "as_sharded", "iterate_batches"]


class TensorActivations:
    """In-memory activations.

    :param list maps: ``L`` tensors (N, C_l, H_l, W_l), bottom-up.
    :param torch.Tensor categories: (N,) integer categories (defaults to all 0).
    """

    def __init__(self, maps: list[torch.Tensor], categories: torch.Tensor | None = None):
        if not maps:
            raise ValueError("maps: expected a non-empty list of per-layer tensors, got an empty list")
        n = maps[0].shape[0]
        if n == 0:
            raise ValueError("maps: expected at least one example, got an empty data set")
        for i, m in enumerate(maps):
            check_finite(f"maps[{i}]", m)
            if m.shape[0] != n:
                raise ValueError(f"maps[{i}]: expected {n} examples like maps[0], got {m.shape[0]}")
        self.maps = maps
        self.categories = (torch.zeros(n, dtype=torch.long) if categories is None
                           else torch.as_tensor(categories, dtype=torch.long))
        if self.categories.shape != (n,):
            raise ValueError(f"categories: expected shape ({n},), got {tuple(self.categories.shape)}")

    def __len__(self) -> int:
        return self.maps[0].shape[0]

    def batch(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The maps of the examples ``index`` (n,): ``L`` tensors (n, C_l, H_l, W_l)."""
        return [m[index] for m in self.maps]


def iterate_batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index minibatches over ``range(n)``: in order, or shuffled by ``generator`` (deterministic)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


class ShardedSource:
    """The global view of a data set of which this process holds the examples ``owned``.

    ``len`` and ``categories`` are global (all ``n`` examples); ``batch(index)`` takes global indices and
    accepts only owned ones, so a learning step that reads another rank's example fails loudly instead of
    silently duplicating work. Build one with :meth:`of` (a full source, of which this rank reads only its
    shard) or :meth:`from_local` (a source holding only this rank's examples).

    :param read: ``read(global index (m,)) -> list of L tensors``, for owned indices.
    :param torch.Tensor owned: (m,) sorted global indices held here.
    :param int n: global number of examples.
    :param torch.Tensor categories: (n,) categories of all examples.
    """

    def __init__(self, read, owned: torch.Tensor, n: int, categories: torch.Tensor):
        owned = torch.as_tensor(owned, dtype=torch.long)
        self.categories = torch.as_tensor(categories, dtype=torch.long)
        if self.categories.shape != (n,):
            raise ValueError(f"categories: expected shape ({n},), got {tuple(self.categories.shape)}")
        if owned.numel() and (owned.min() < 0 or owned.max() >= n or not bool((owned[1:] > owned[:-1]).all())):
            raise ValueError(f"owned: expected sorted distinct indices in [0, {n}), got {owned.tolist()[:10]}...")
        self._read, self.owned, self._n = read, owned, n
        self.position = torch.full((n,), -1, dtype=torch.long)  # global index -> position in ``owned``
        self.position[owned] = torch.arange(len(owned))
        self.mask = self.position >= 0

    @classmethod
    def of(cls, source, owned: torch.Tensor | None = None) -> ShardedSource:
        """View of a full source (``len``, ``categories``, ``batch``) of which this rank holds ``owned``
        (default :func:`pyro_backpass.distributed.shard` of its length)."""
        n = len(source)
        owned = distributed.shard(n) if owned is None else owned
        return cls(source.batch, owned, n, source.categories)

    @classmethod
    def from_local(cls, local, owned: torch.Tensor, categories: torch.Tensor) -> ShardedSource:
        """View of ``local``, a source whose example ``i`` is the global example ``owned[i]``.

        :param torch.Tensor categories: (n,) categories of all ``n`` global examples.
        """
        owned = torch.as_tensor(owned, dtype=torch.long)
        if len(local) != len(owned):
            raise ValueError(f"local: expected {len(owned)} examples (one per owned index), got {len(local)}")
        view = cls(lambda index: local.batch(view.position[index]), owned, len(categories), categories)
        return view

    def __len__(self) -> int:
        return self._n

    def local(self, index: torch.Tensor) -> torch.Tensor:
        """The members of the global index batch ``index`` that this rank holds, in their order."""
        return index[self.mask[index]]

    def batch(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The maps of the owned global examples ``index`` (m,): ``L`` tensors (m, C_l, H_l, W_l)."""
        index = torch.as_tensor(index, dtype=torch.long)
        if not bool(self.mask[index].all()):
            missing = index[~self.mask[index]].tolist()[:5]
            raise IndexError(f"index: expected examples held by rank {distributed.rank()}, got {missing} "
                             "held by another rank")
        return self._read(index)


def as_sharded(source) -> ShardedSource:
    """``source`` itself if it is a :class:`ShardedSource`, else its view with this rank's shard."""
    return source if isinstance(source, ShardedSource) else ShardedSource.of(source)
