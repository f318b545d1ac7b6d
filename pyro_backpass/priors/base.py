"""The interface every prior over mixture indices ``P(γ^l | γ^{(l+1):})`` implements (eq. 7).

Layers are indexed bottom-up ``0 .. L-1`` (``0`` is the image, ``L-1`` the top mixture layer); the
category is layer ``L``. A query for layer ``l`` passes the *history* of upper assignments top-first:
``(category, γ^{L-1}, γ^{L-2}, ..., γ^{l+1})``, of length ``L - l``. The model only ever calls
:meth:`GammaPrior.log_prob_table`, so priors can be swapped without touching it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import pyro.poutine.util
import torch
from torch import nn

from ..distributions.functional import broadcast_shape
from ..validation import check_index_range, check_tensor

__all__ = ["GammaPrior"]


def _positive_int(name: str, value) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected a positive int, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class GammaPrior(nn.Module):
    """Base class of the γ priors: an ``nn.Module`` whose tables are buffers, so they move with
    ``.to(device, dtype)`` and are saved in ``state_dict``.

    :param Sequence[int] Ks: number of mixture components per layer, bottom-up (length ``L``).
    :param int n_categories: number of categories (the size of layer ``L``).
    """

    def __init__(self, Ks: Sequence[int], n_categories: int):
        super().__init__()
        if isinstance(Ks, (str, bytes)) or not isinstance(Ks, Sequence) or len(Ks) == 0:
            raise TypeError(f"Ks: expected a non-empty sequence of positive ints (K per layer, bottom-up), got {Ks!r}")
        self.Ks: tuple[int, ...] = tuple(_positive_int(f"Ks[{l}]", K) for l, K in enumerate(Ks))
        self.n_categories: int = _positive_int("n_categories", n_categories)

    @property
    def n_layers(self) -> int:
        """``L``, the number of mixture layers."""
        return len(self.Ks)

    def history_sizes(self, layer: int) -> tuple[int, ...]:
        """Sizes of the history entries of ``layer``: ``(n_categories, K_{L-1}, ..., K_{layer+1})``."""
        self._check_layer(layer)
        return (self.n_categories,) + tuple(self.Ks[self.n_layers - j] for j in range(1, self.n_layers - layer))

    def log_prob_table(self, layer: int, history: Sequence[torch.Tensor]) -> torch.Tensor:
        """``log P(γ^layer = k | upper assignments)`` for every ``k``.

        :param int layer: ``0 <= layer < L``.
        :param history: ``(category, γ^{L-1}, ..., γ^{layer+1})`` top-first, ``L - layer`` integer
            tensors (or ints) whose shapes broadcast (e.g. Pyro enumeration's ``(3, 1, 1)`` and
            ``(4, 1, 1, 1)``). Their values are range-checked while Pyro validation is enabled.
        :returns: (*batch, K_layer) log-probabilities, ``batch`` the broadcast shape of ``history``;
            may be a broadcast view of a table (do not write into it).
        :rtype: torch.Tensor
        """
        history = self._check_history(layer, history)
        return self._log_prob_table(layer, history)

    def _log_prob_table(self, layer: int, history: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able description from which :func:`~pyro_backpass.priors.prior_from_config` rebuilds
        an empty prior of the same shapes (``load_state_dict`` then fills its tables)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"Ks={self.Ks}, n_categories={self.n_categories}"

    # -- helpers for subclasses ----------------------------------------------------------------

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer: expected an int in [0, {self.n_layers}), got {layer!r}")
        return layer

    def _check_history(self, layer: int, history) -> tuple[torch.Tensor, ...]:
        sizes = self.history_sizes(layer)
        if isinstance(history, torch.Tensor) or not isinstance(history, Sequence):
            raise TypeError(f"history: expected a sequence of {len(sizes)} integer tensors "
                            f"(category, γ^{self.n_layers - 1}, ..., γ^{layer + 1}), got {type(history).__name__}")
        if len(history) != len(sizes):
            raise ValueError(f"history: layer {layer} of {self.n_layers} expects {len(sizes)} entries "
                             f"(category, γ^{self.n_layers - 1}, ..., γ^{layer + 1}), got {len(history)}")
        validate = pyro.poutine.util.is_validation_enabled()
        out = []
        for j, (h, size) in enumerate(zip(history, sizes)):
            if isinstance(h, int) and not isinstance(h, bool):
                h = torch.as_tensor(h)
            check_tensor(f"history[{j}]", h)
            if h.is_floating_point() or h.is_complex() or h.dtype == torch.bool:
                raise TypeError(f"history[{j}]: expected an integer tensor, got dtype {h.dtype}")
            if validate:  # costs a device sync, hence only while validating
                check_index_range(f"history[{j}]", h, size)
            out.append(h)
        return tuple(out)

    @staticmethod
    def _batch_shape(history: Sequence[torch.Tensor]) -> torch.Size:
        try:  # the shared plain-Python broadcast: torch.broadcast_shapes cost ~0.25 ms per call here
            return torch.Size(broadcast_shape(*(h.shape for h in history)))
        except RuntimeError:
            shapes = [tuple(h.shape) for h in history]
            raise ValueError(f"history: expected shapes that broadcast together, got {shapes}") from None

    @staticmethod
    def _uniform_table(K: int) -> torch.Tensor:
        return torch.full((K,), -math.log(K))
