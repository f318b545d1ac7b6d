"""A γ prior given by any user function (eq. 7 with a hand-written or learned CPD)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .base import GammaPrior

__all__ = ["CallablePrior"]


class CallablePrior(GammaPrior):
    """Wraps ``fn(layer, history) -> scores`` as a γ prior.

    ``fn`` receives the validated query (``history`` is the tuple ``(category, γ^{L-1}, ...,
    γ^{layer+1})`` of integer tensors, see :meth:`GammaPrior.log_prob_table`) and returns a floating
    tensor ``(*batch, K_layer)`` whose batch dims broadcast to the history's broadcast shape (a
    constant ``(K_layer,)`` is fine). The result is **normalised with** ``log_softmax`` over the last
    dim, so ``fn`` may return unnormalised scores or log-probabilities alike, and is expanded to
    ``(*batch, K_layer)``. An ``nn.Module`` given as ``fn`` becomes a submodule (it moves with
    ``.to`` and is saved in ``state_dict``), but :meth:`config` cannot describe it.

    :param Callable fn: ``fn(layer: int, history: tuple[Tensor, ...]) -> Tensor``.
    :param Sequence[int] Ks: K per layer, bottom-up (length ``L``).
    :param int n_categories: number of categories.
    """

    def __init__(self, fn: Callable, Ks: Sequence[int], n_categories: int):
        super().__init__(Ks, n_categories)
        if not callable(fn):
            raise TypeError(f"fn: expected a callable fn(layer, history) -> log-probs, got {type(fn).__name__}")
        self.fn = fn

    def _log_prob_table(self, layer, history):
        out = self.fn(layer, history)
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            got = f"dtype {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"CallablePrior: {name}(layer={layer}, history) must return a floating tensor, got {got}")
        target = self._batch_shape(history) + (self.Ks[layer],)
        try:
            ok = out.dim() >= 1 and out.shape[-1] == target[-1] and torch.broadcast_shapes(out.shape, target) == target
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"CallablePrior: {name}(layer={layer}, history) returned shape {tuple(out.shape)}; "
                             f"expected (*batch, K_{layer}={self.Ks[layer]}) broadcastable to {tuple(target)}")
        return torch.log_softmax(out, dim=-1).expand(target)

    def config(self) -> dict:
        raise TypeError("CallablePrior.config: a prior that wraps a user callable cannot be saved as a config; "
                        "save the callable's own state and rebuild it with CallablePrior(fn, Ks, n_categories)")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fn={getattr(self.fn, '__name__', type(self.fn).__name__)}"
