"""The layer-boundary effect the model programs call after each layer (DESIGN §4)."""

from __future__ import annotations

from pyro.poutine.runtime import effectful

__all__ = ["layer_end"]


def _identity(layer: int, state: dict, event_dims: dict):
    return state


_layer_end = effectful(_identity, type="layer_end")


def layer_end(layer: int, state: dict, event_dims: dict) -> dict:
    """Mark the end of layer ``l`` of a top-down pass.

    Without a handler this returns ``state`` unchanged. The greedy handler
    (:class:`~pyro_backpass.handlers.GreedyMessenger`) replaces it by its values under the best
    hypotheses found so far, collapsing the layer's enumerated dims into a beam dim.

    :param int layer: the layer index (bottom-up).
    :param dict state: name → tensor carried down the pass (hidden values and top-down maps).
    :param dict event_dims: name → number of event dims of each state tensor (3 for maps, 0 for
        discrete values).
    :returns: the (possibly collapsed) state.
    """
    return _layer_end(layer, state, event_dims)
