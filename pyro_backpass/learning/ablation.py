"""Mixture ablation: does a layer need its components, or would its most used one do?

A layer that puts nearly every example in one component (effective components near 1) may still owe
its score to the few examples the others explain. :func:`mixture_ablation` answers that on held-out
data: it scores every example with the trained hierarchy, then again with the layer's mixture collapsed
to its most used component (every component a copy of that one, so the prior over γ and the rest of
the hierarchy are unchanged), and reports the per-layer log-likelihoods of both.
"""

from __future__ import annotations

import copy

import torch

from .. import sites
from ..hierarchy import Hierarchy
from ..topdown import TopDownConv
from .hard_em import e_step


def collapse_to_component(hierarchy: Hierarchy, layer: int, k: int) -> Hierarchy:
    """A copy of ``hierarchy`` in which every component of layer ``layer`` equals component ``k``.

    :param int layer: index of a layer below the top mixture layer (a top-down convolution).
    :param int k: the component to keep, ``0 <= k < K_l``.
    :raises ValueError: for the top layer (its templates are per category) or an out-of-range ``k``.
    """
    L = hierarchy.L
    if not 0 <= layer < L - 1:
        raise ValueError(f"layer: expected the index of a layer below the top mixture layer (0..{L - 2}), "
                         f"got {layer!r}")
    m = hierarchy.topdown[layer]
    if not isinstance(m, TopDownConv):
        raise ValueError(f"layer: expected a top-down convolution at index {layer}, got {type(m).__name__}")
    if not 0 <= k < m.K:
        raise ValueError(f"k: expected a component index in 0..{m.K - 1} of layer "
                         f"{hierarchy.specs[layer].name!r}, got {k!r}")
    out = copy.deepcopy(hierarchy)
    m = out.topdown[layer]
    C = m.out_channels
    with torch.no_grad():
        if m.upsample == "transposed":  # (C_in, K·C, 4, 4)
            w = m.weight.view(m.weight.shape[0], m.K, C, *m.weight.shape[2:])
            w.copy_(w[:, k:k + 1].clone().expand_as(w))
        else:  # (K·C, C_in, k, k)
            w = m.weight.view(m.K, C, *m.weight.shape[1:])
            w.copy_(w[k:k + 1].clone().expand_as(w))
        b = m.bias.view(m.K, C)
        b.copy_(b[k:k + 1].clone().expand_as(b))
    return out


def mixture_ablation(model, hierarchy: Hierarchy, source, layers: list[str], batch_size: int = 32) -> dict:
    """Held-out log-likelihood per layer, with and without each named layer's mixture.

    :param model: the activation model program (its E-step form is run by the greedy handler).
    :param source: an activation source (held-out masked objects, ``F_td`` on every layer).
    :param list layers: names of layers below the top mixture layer to collapse, one at a time.
    :returns: ``{"layer_log_likelihood": {name: mean}, "usage": {name: [counts]}, "collapsed": {name: {...}}}``;
        for each collapsed layer: ``component`` (the most used one), ``layer_log_likelihood`` (every
        layer's mean after collapsing), ``n_other`` (examples that chose another component) and
        ``loss_on_other`` (their mean drop in that layer's score, in nats; 0 when there are none).
    """
    names = [s.name for s in hierarchy.specs]
    unknown = [n for n in layers if n not in names[:-1]]
    if unknown:
        raise ValueError(f"layers: expected names among {names[:-1]} (below the top mixture layer), "
                         f"got {unknown}")
    hidden, _, scores = e_step(model, hierarchy, source, batch_size)
    out = {"layer_log_likelihood": {n: float(scores[:, i].mean()) for i, n in enumerate(names)},
           "usage": {}, "collapsed": {}}
    for s in hierarchy.specs:
        out["usage"][s.name] = torch.bincount(hidden[sites.gamma(s.name)], minlength=s.K).tolist()
    for name in layers:
        i = names.index(name)
        gamma = hidden[sites.gamma(name)]
        k = int(torch.bincount(gamma, minlength=hierarchy.specs[i].K).argmax())
        _, _, collapsed = e_step(model, collapse_to_component(hierarchy, i, k), source, batch_size)
        other = gamma != k
        drop = scores[:, i] - collapsed[:, i]
        out["collapsed"][name] = {
            "component": k,
            "layer_log_likelihood": {n: float(collapsed[:, j].mean()) for j, n in enumerate(names)},
            "n_other": int(other.sum()),
            "loss_on_other": float(drop[other].mean()) if other.any() else 0.0,
        }
    return out
