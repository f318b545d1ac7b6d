"""The greedy backward pass as a guide: a point mass on each hidden site at its MAP value.

``greedy_guide(result)`` turns a :class:`~pyro_backpass.inference.BackwardResult` into a Pyro guide,
so the MAP assignment plugs into Pyro's machinery: ``pyro.infer.Predictive(model, guide=...)`` samples
``F_td``/``F_bu`` given the MAP ``H``, and ``poutine.replay(model, trace=...)`` reruns the model at it.
Integer sites get a one-hot ``Categorical`` (a Delta that keeps the value an integer, which the
model needs to index its tables).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_backpass.hierarchy import Hierarchy
from pyro_backpass.inference import BackwardResult, backward_pass

__all__ = ["greedy_map", "greedy_guide", "replay_at"]


def greedy_map(model, hierarchy: Hierarchy, f_bu, **kwargs) -> BackwardResult:
    """Run the greedy backward pass of ``model`` (see :func:`pyro_backpass.inference.backward_pass`)."""
    return backward_pass(model, hierarchy, f_bu, **kwargs)


def greedy_guide(result: BackwardResult, index: int = 0):
    """A guide that puts all mass on the ``index``-th assignment of ``result``.

    The guide has the model's signature and samples, in the image plate, every hidden site of the
    hierarchy at its MAP value (N images).
    """
    values = {name: v[index] for name, v in result.hidden.items()}

    def guide(hierarchy: Hierarchy, *args, **kwargs):
        sizes = {"category": hierarchy.n_categories}
        for s in hierarchy.specs:
            sizes[f"gamma/{s.name}"] = s.K
            sizes[f"delta/{s.name}"] = s.n_offsets
        n = next(iter(values.values())).shape[0]
        with pyro.plate("images", n, dim=-1):
            for name in hierarchy.hidden_site_names():
                probs = F.one_hot(values[name], sizes[name]).to(hierarchy.dtype)
                pyro.sample(name, dist.Categorical(probs=probs))
        return values

    return guide


def replay_at(model, result: BackwardResult, hierarchy: Hierarchy, *args, index: int = 0, **kwargs):
    """Run ``model`` with its hidden sites replayed at the ``index``-th MAP assignment; returns its trace."""
    guide_trace = pyro.poutine.trace(greedy_guide(result, index)).get_trace(hierarchy)
    with torch.no_grad():
        return pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(hierarchy, *args, **kwargs)
