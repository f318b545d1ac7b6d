"""Exact MAP of the profile objective on small hierarchies (DESIGN §4).

Two independent ways, which must agree exactly:

- :func:`map_infer_discrete`: Pyro's ``infer_discrete(config_enumerate(model), temperature=0)``
  (max-product variable elimination over the enumerated sites);
- :func:`map_bruteforce`: every joint assignment scored in one run of the program under
  ``pyro.condition``, and the argmax of the full joint score table taken.

Both cost ``Π_l K_l|Δ_l|`` against the greedy pass's ``Σ_l``, so they are for toy hierarchies.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate, infer_discrete

from pyro_backpass.inference import check_clamp, enumerated_sites, trace_log_score

__all__ = ["map_infer_discrete", "map_bruteforce"]


def map_infer_discrete(model, hierarchy, f_bu, clamp: dict | None = None, **model_kwargs) -> dict:
    """Exact joint MAP of the hidden sites with ``infer_discrete`` at temperature 0.

    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l).
    :returns: site name → (N,) MAP values, for ``category`` and every ``gamma/*``, ``delta/*``.
    """
    clamp = check_clamp(hierarchy, clamp)
    fn = pyro.condition(model, data=clamp) if clamp else model
    fn = infer_discrete(config_enumerate(fn), first_available_dim=-2, temperature=0)
    with torch.no_grad():
        tr = poutine.trace(fn).get_trace(hierarchy, f_bu=f_bu, form="profile", **model_kwargs)
    n = f_bu[0].shape[0]
    return {name: tr.nodes[name]["value"].reshape(-1).expand(n) for name in hierarchy.hidden_site_names()}


def map_bruteforce(model, hierarchy, f_bu, clamp: dict | None = None, **model_kwargs) -> tuple[dict, torch.Tensor]:
    """Exact joint MAP by scoring every assignment of the hidden sites.

    Each free site is conditioned on its whole support placed in a dim of its own (left of the
    image plate), so one run of the program yields the full joint score table
    ``(|site_S|, ..., |site_1|, N)``, whose argmax is taken directly: no message passing.

    :returns: ``(hidden, score)``: site name → (N,) MAP values and the (N,) maximum log score.
    """
    clamp = check_clamp(hierarchy, clamp)
    fn = pyro.condition(model, data=clamp) if clamp else model
    kwargs = dict(f_bu=f_bu, form="profile", **model_kwargs)
    free = enumerated_sites(fn, hierarchy, **kwargs)
    n = f_bu[0].shape[0]
    data = {name: torch.arange(size, device=hierarchy.device).reshape((size,) + (1,) * (j + 1))
            for j, (name, size) in enumerate(free)}
    table = trace_log_score(fn, data, hierarchy, **kwargs)
    sizes = tuple(size for _, size in reversed(free))
    table = table.expand(sizes + (n,)).reshape(-1, n)
    score, flat = table.max(dim=0)
    hidden = {}
    for name, size in free:  # the first free site is the innermost (rightmost) enumerated dim
        hidden[name] = flat % size
        flat = torch.div(flat, size, rounding_mode="floor")
    for name, value in clamp.items():
        hidden[name] = value.expand(n) if value.dim() == 0 else value
    return hidden, score
