"""A plain, slow greedy backward pass: Python loops over images, γ and δ, no Pyro (eq. 11-13).

It is the reference that the batched Pyro handler is checked against, and the naive baseline of
the benchmark. It recomputes each hypothesis's top-down map with :func:`~pyro_backpass.topdown.shift`
one at a time, so it shares no batching or gathering code with the handler.
"""

from __future__ import annotations

import math

import torch

from ..distributions import max_joint
from ..hierarchy import Hierarchy
from ..topdown import shift

__all__ = ["greedy_reference"]


def greedy_reference(hierarchy: Hierarchy, f_bu: list[torch.Tensor], prior=None, f_td_observed=None,
                     category: int | None = None) -> tuple[dict, torch.Tensor]:
    """Greedy MAP, one image, one hypothesis at a time.

    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l), or ``None`` with ``f_td_observed`` (E-step).
    :param list f_td_observed: ``L`` observed top-down maps for the E-step form.
    :param int category: clamp the category.
    :returns: ``(hidden, total)``: site name → (N,) long and (N,) total scores.
    """
    prior = hierarchy.prior if prior is None else prior
    specs, L = hierarchy.specs, hierarchy.L
    maps = f_bu if f_bu is not None else f_td_observed
    N = maps[0].shape[0]
    log_pc = torch.log_softmax(hierarchy.category_logits, -1)
    hidden = {k: torch.zeros(N, dtype=torch.long) for k in hierarchy.hidden_site_names()}
    totals = torch.zeros(N, dtype=hierarchy.dtype)
    with torch.no_grad():
        for n in range(N):
            upper, history, total = None, None, 0.0
            for l in reversed(range(L)):
                spec = specs[l]
                sigma0, obs = hierarchy.sigma0[l], hierarchy.obs_params(l)
                cats = [None] if l < L - 1 else ([category] if category is not None else range(hierarchy.n_categories))
                best = (-math.inf, None)
                for c in cats:
                    hist = history if l < L - 1 else [torch.tensor(c)]
                    comps = (hierarchy.topdown[l].components()[c] if l == L - 1
                             else hierarchy.topdown[l].components(upper))
                    log_pg = prior.log_prob_table(l, hist)
                    for g in range(spec.K):
                        for d, (dy, dx) in enumerate(spec.offsets):
                            f_tilde = shift(comps[g], dy, dx)
                            if f_bu is not None:
                                f_star, value = max_joint(f_bu[l][n], f_tilde, sigma0, **obs)
                            else:
                                f_star = f_td_observed[l][n]
                                z = (f_star - f_tilde) / sigma0
                                value = -0.5 * z * z - torch.log(sigma0) - 0.5 * math.log(2 * math.pi)
                            s = value.sum() + log_pg[g] - math.log(spec.n_offsets)
                            if l == L - 1:
                                s = s + log_pc[c]
                            if s > best[0]:
                                best = (float(s), (c, g, d, f_star))
                score, (c, g, d, f_star) = best
                if l == L - 1:
                    hidden["category"][n] = c
                    history = [torch.tensor(c)]
                hidden[f"gamma/{spec.name}"][n] = g
                hidden[f"delta/{spec.name}"][n] = d
                history = history + [torch.tensor(g)]
                upper = f_star
                total += score
            totals[n] = total
    return hidden, totals
