"""Pyro effect handlers of pyro-backpass: the layer-boundary op and the greedy backward pass."""

from .greedy_messenger import GreedyMessenger, greedy
from .ops import layer_end

__all__ = ["GreedyMessenger", "greedy", "layer_end"]
