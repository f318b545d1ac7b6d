"""Table priors over mixture indices (eq. 7): uniform, unigram and n-gram.

Tables are buffers named ``table_<layer>``, so they move with ``.to(device, dtype)`` and live in
``state_dict``. Lookups index a table with the tuple of prefix tensors (advanced indexing), so
Pyro's enumeration shapes broadcast for free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..validation import check_finite, check_index_range, check_shape, check_tensor
from .base import GammaPrior, _positive_int

__all__ = ["UniformPrior", "NGramPrior", "UnigramPrior"]


class UniformPrior(GammaPrior):
    """``P(γ^l = k | ...) = 1 / K_l``: every table row is ``-log K_l``. Nothing is learned, so the
    tables are non-persistent buffers (not in ``state_dict``)."""

    def __init__(self, Ks: Sequence[int], n_categories: int):
        super().__init__(Ks, n_categories)
        for layer, K in enumerate(self.Ks):
            self.register_buffer(f"table_{layer}", self._uniform_table(K), persistent=False)

    def _log_prob_table(self, layer, history):
        table = getattr(self, f"table_{layer}")
        return table.expand(self._batch_shape(history) + table.shape)

    def config(self) -> dict:
        return {"type": "UniformPrior", "Ks": list(self.Ks), "n_categories": self.n_categories}


class NGramPrior(GammaPrior):
    """Conditional multinomial of order ``n`` with a symmetric Dirichlet(``α``) prior (eq. 7).

    ``γ^l`` depends on its *prefix*, the ``n - 1`` nearest upper variables: the last
    ``min(n - 1, L - l)`` entries of the history ``(category, γ^{L-1}, ..., γ^{l+1})``. So the
    category stands in above the top mixture layer, and near the top the prefix is shorter. Order 1
    is the unigram (no prefix); order ``L + 1`` or more conditions every layer on its whole history.

    The table of layer ``l`` has shape ``(sizes of the prefix variables..., K_l)``, where history
    entry 0 (the category) has size ``n_categories`` and entry ``j ≥ 1`` (``γ^{L-j}``) has size
    ``K_{L-j}``. Tables start uniform. :meth:`fit` sets them to the Dirichlet **posterior mean**
    ``log((count + α) / (total + K_l α))`` (not the MAP, which would need ``α ≥ 1``), so ``α > 0``.

    :param Sequence[int] Ks: K per layer, bottom-up (length ``L``).
    :param int n_categories: number of categories.
    :param int order: ``n ≥ 1``.
    :param float alpha: Dirichlet concentration ``α > 0`` (pseudo-count per component).
    """

    def __init__(self, Ks: Sequence[int], n_categories: int, order: int = 2, alpha: float = 1.0):
        super().__init__(Ks, n_categories)
        self.order: int = _positive_int("order", order)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha: expected a finite number > 0, got {alpha!r}")
        self.alpha: float = float(alpha)
        for layer, K in enumerate(self.Ks):
            table = self._uniform_table(K).expand(self.table_shape(layer)).clone()
            self.register_buffer(f"table_{layer}", table)

    def prefix_entries(self, layer: int) -> range:
        """Indices into the history of ``layer`` that form its prefix (the last ``min(n-1, L-layer)``)."""
        length = self.n_layers - self._check_layer(layer)
        return range(length - min(self.order - 1, length), length)

    def table_shape(self, layer: int) -> tuple[int, ...]:
        """``(sizes of the prefix variables..., K_layer)``."""
        sizes = self.history_sizes(layer)
        return tuple(sizes[j] for j in self.prefix_entries(layer)) + (self.Ks[layer],)

    def table(self, layer: int) -> torch.Tensor:
        """The log-probability table of ``layer``, shape :meth:`table_shape`."""
        return getattr(self, f"table_{self._check_layer(layer)}")

    def _log_prob_table(self, layer, history):
        table = self.table(layer)
        prefix = tuple(history[j].to(table.device) for j in self.prefix_entries(layer))
        # Advanced indexing with the prefix tensors broadcasts their shapes: (*prefix_batch, K).
        out = table[prefix] if prefix else table
        return out.expand(self._batch_shape(history) + (self.Ks[layer],))

    def counts(self, assignments: torch.Tensor) -> list[torch.Tensor]:
        """Raw count tables, one per layer (shape :meth:`table_shape`, int64, on the device of
        ``assignments``). They add up across shards, so a distributed run can all-reduce them
        before :meth:`set_counts`.

        :param torch.Tensor assignments: (N, L+1) integer assignments, columns top-first
            ``[category, γ^{L-1}, ..., γ^0]``.
        :rtype: list[torch.Tensor]
        """
        L = self.n_layers
        check_tensor("assignments", assignments)
        if assignments.dim() != 2:
            raise ValueError(f"assignments: expected a 2-D tensor (N, {L + 1}), got shape {tuple(assignments.shape)}")
        check_shape("assignments", assignments, (L + 1,))
        column_sizes = self.history_sizes(0) + (self.Ks[0],)
        for j, size in enumerate(column_sizes):
            check_index_range(f"assignments[:, {j}]", assignments[:, j], size)
        out = []
        for layer in range(L):
            # Row-major flat index over (prefix..., γ^layer); γ^layer is column L - layer.
            columns = list(self.prefix_entries(layer)) + [L - layer]
            shape = self.table_shape(layer)
            flat = torch.zeros(assignments.shape[0], dtype=torch.long, device=assignments.device)
            for column, size in zip(columns, shape):
                flat = flat * size + assignments[:, column].long()
            out.append(torch.bincount(flat, minlength=math.prod(shape)).view(shape))
        return out

    @torch.no_grad()
    def set_counts(self, counts: Sequence[torch.Tensor]) -> NGramPrior:
        """Set every table to ``log((count + α) / (total + K α))`` (posterior mean), computed in
        float64. Counts may be fractional (e.g. soft or all-reduced), but must be finite and ``≥ 0``.

        :param counts: one tensor per layer, shapes :meth:`table_shape`.
        :returns: ``self``.
        """
        if isinstance(counts, torch.Tensor) or not isinstance(counts, Sequence) or len(counts) != self.n_layers:
            got = type(counts).__name__ if not isinstance(counts, Sequence) else f"{len(counts)} entries"
            raise ValueError(f"counts: expected a sequence of {self.n_layers} tensors (one per layer), got {got}")
        for layer, c in enumerate(counts):
            name = f"counts[{layer}]"
            check_shape(name, c, self.table_shape(layer), trailing=False)
            c = check_finite(name, c).to(torch.float64)
            if bool((c < 0).any()):
                raise ValueError(f"{name}: expected counts >= 0, got minimum {c.min().item()}")
            K = self.Ks[layer]
            log_p = torch.log(c + self.alpha) - torch.log(c.sum(-1, keepdim=True) + K * self.alpha)
            table = self.table(layer)
            table.copy_(log_p.to(device=table.device, dtype=table.dtype))
        return self

    def fit(self, assignments: torch.Tensor) -> NGramPrior:
        """Closed-form M-step: ``set_counts(counts(assignments))``. See :meth:`counts`.

        :returns: ``self``.
        """
        return self.set_counts(self.counts(assignments))

    def config(self) -> dict:
        return {"type": type(self).__name__, "Ks": list(self.Ks), "n_categories": self.n_categories,
                "order": self.order, "alpha": self.alpha}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}, alpha={self.alpha}"


class UnigramPrior(NGramPrior):
    """:class:`NGramPrior` of order 1: ``P(γ^l = k)`` per layer, ignoring the upper assignments."""

    def __init__(self, Ks: Sequence[int], n_categories: int, alpha: float = 1.0):
        super().__init__(Ks, n_categories, order=1, alpha=alpha)
