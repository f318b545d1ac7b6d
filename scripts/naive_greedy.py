"""The naive greedy backward pass: the reference the benchmark's speed-up is measured against.

A straightforward implementation of eq. 11-13: Python loops over images, layers, categories, γ and δ,
and for every hypothesis ``(γ, δ)`` it recomputes that component's top-down convolution
``ReLU(conv(up(F^{l+1}); W_γ) + b_γ)``, shifts it with zero fill, evaluates the elementwise maximiser
(:func:`~pyro_backpass.distributions.max_joint`) over the whole map and sums it. It shares no batching,
gathering or scoring code with the handler, so it also serves as an independent check of the fast
pass (``tests/scripts/test_bench_script.py`` compares them on random hierarchies).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyro_backpass.distributions import max_joint
from pyro_backpass.hierarchy import Hierarchy
from pyro_backpass.topdown import TopDownConv, shift

__all__ = ["naive_greedy", "component_map"]


def component_map(module: TopDownConv, upper: torch.Tensor, g: int) -> torch.Tensor:
    """``ReLU(conv(up(upper); W_g) + b_g)`` for one image ``upper`` (C_in, h, w), recomputed from scratch."""
    C = module.out_channels
    x = upper.unsqueeze(0)
    bias = module.bias[g * C:(g + 1) * C]
    if module.upsample == "transposed":
        y = F.conv_transpose2d(x, module.weight[:, g * C:(g + 1) * C], bias, stride=2, padding=1)
        y = y[..., : module.out_size[0], : module.out_size[1]]
    else:
        if module.upsample == "nearest" and tuple(x.shape[-2:]) != module.out_size:
            x = F.interpolate(x, size=module.out_size, mode="nearest")
        y = F.conv2d(x, module.weight[g * C:(g + 1) * C], bias, padding=module.kernel_size // 2)
    return torch.relu(y)[0]


def naive_greedy(hierarchy: Hierarchy, f_bu: list[torch.Tensor], prior=None) -> tuple[dict, torch.Tensor]:
    """Greedy MAP (beam 1), one image and one hypothesis at a time.

    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l).
    :returns: ``(hidden, total)``: site name → (N,) long, and the (N,) total log scores.
    """
    prior = hierarchy.prior if prior is None else prior
    specs, L = hierarchy.specs, hierarchy.L
    N = f_bu[0].shape[0]
    log_pc = torch.log_softmax(hierarchy.category_logits, -1)
    hidden = {k: torch.zeros(N, dtype=torch.long) for k in hierarchy.hidden_site_names()}
    totals = torch.zeros(N, dtype=hierarchy.dtype)
    with torch.no_grad():
        for n in range(N):
            upper, history, total = None, None, 0.0
            for l in reversed(range(L)):
                spec, module = specs[l], hierarchy.topdown[l]
                sigma0, obs = hierarchy.sigma0[l], hierarchy.obs_params(l)
                best = (-math.inf, None)
                for c in (range(hierarchy.n_categories) if l == L - 1 else [None]):
                    hist = [torch.tensor(c)] if l == L - 1 else history
                    log_pg = prior.log_prob_table(l, hist)
                    for g in range(spec.K):
                        for d, (dy, dx) in enumerate(spec.offsets):
                            comp = (torch.relu(module.template[c, g]) if l == L - 1
                                    else component_map(module, upper, g))
                            f_star, value = max_joint(f_bu[l][n], shift(comp, dy, dx), sigma0, **obs)
                            s = float(value.sum() + log_pg[g]) - math.log(spec.n_offsets)
                            if l == L - 1:
                                s += float(log_pc[c])
                            if s > best[0]:
                                best = (s, (c, g, d, f_star))
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
