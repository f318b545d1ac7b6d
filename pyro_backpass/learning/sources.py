"""Where hard EM and the observation fit read activations from, one minibatch at a time.

An *activation source* has ``len(source)`` examples, their ``categories`` (N,) and
``batch(index) -> list of L tensors (n, C_l, H_l, W_l)``. :class:`TensorActivations` holds them in
memory; a backbone-backed source computes them on demand, so large data sets are streamed and
memory stays bounded by the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..validation import check_finite

__all__ = ["TensorActivations", "iterate_batches"]


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
