"""The closed-form parts of the hard-EM M-step, as sufficient statistics summed over ranks (Sec. 2.3.2).

Each function walks the global minibatches, processes the examples this rank holds and sums its
statistics with the other ranks' (:func:`pyro_backpass.distributed.all_reduce_sum`): CPD counts and
component usage (exact integers), template sums, residual and signal energies (float sums, equal to one
process's up to rounding). Per-example values that a later step ranks or averages (errors, scores) are
gathered exactly instead (:func:`pyro_backpass.distributed.gather_by_index`). In one process every
reduction is the identity and the arithmetic is the one-process arithmetic.
"""

from __future__ import annotations

import math

import torch

from .. import distributed, sites
from ..hierarchy import Hierarchy
from ..priors import NGramPrior
from ..topdown import shift
from .init import least_squares_fit
from .residuals import squared_error
from .sources import iterate_batches

__all__ = ["usage_counts", "fit_prior", "residual_pass", "reseed_dead", "m_step_templates", "set_sigma0",
           "init_sigma0"]


def usage_counts(h: Hierarchy, data, hidden: dict) -> dict[str, torch.Tensor]:
    """Examples per component of every layer over all ranks: name → (K,) int64."""
    counts = {s.name: torch.bincount(hidden[sites.gamma(s.name)][data.owned], minlength=s.K) for s in h.specs}
    flat = distributed.all_reduce_sum(torch.cat(list(counts.values())), "usage counts")
    return dict(zip(counts, flat.split([s.K for s in h.specs])))


def fit_prior(h: Hierarchy, data, hidden: dict, order: int, alpha: float) -> NGramPrior:
    """The n-gram CPD tables in closed form from the count tables summed over ranks."""
    assign = torch.stack([hidden[sites.CATEGORY][data.owned]]
                         + [hidden[sites.gamma(s.name)][data.owned] for s in reversed(h.specs)], 1)
    prior = NGramPrior(h.Ks, h.n_categories, order=order, alpha=alpha).to(h.device, h.dtype)
    counts = prior.counts(assign.to(h.device))
    if distributed.is_distributed():
        flat = distributed.all_reduce_sum(torch.cat([c.flatten() for c in counts]), "CPD count all-reduce")
        counts = [f.view_as(c) for f, c in zip(flat.split([c.numel() for c in counts]), counts)]
    return prior.set_counts(counts)


def residual_pass(h: Hierarchy, data, hidden: dict, batch_size: int):
    """Per-layer residual energy, signal energy and element counts (L,) under the assignments, summed over
    ranks, and the per-example mean squared error (N, L), gathered."""
    L = h.L
    stats = torch.zeros(3, L, dtype=torch.float64)  # residual, signal, elements
    per_example = torch.zeros(len(data.owned), L, dtype=torch.float64)
    with torch.no_grad():
        for idx in iterate_batches(len(data), batch_size):
            mine = data.local(idx)
            if not len(mine):
                continue
            maps = [m.to(h.device, h.dtype) for m in data.batch(mine)]
            for l in range(L):
                spec = h.specs[l]
                upper = data.categories[mine].to(h.device) if l == L - 1 else maps[l + 1]
                r = squared_error(h, l, upper, hidden[sites.gamma(spec.name)][mine].to(h.device),
                                  hidden[sites.delta(spec.name)][mine].to(h.device), maps[l]).double().cpu()
                stats[0, l] += r.sum()
                per_example[data.position[mine], l] = r / maps[l][0].numel()
                stats[1, l] += maps[l].pow(2).sum().double().cpu()
                stats[2, l] += maps[l].numel()
    distributed.all_reduce_sum(stats, "residual statistics")
    per_example = distributed.gather_by_index(per_example, data.owned, len(data), "per-example errors")
    return stats[0], stats[1], stats[2], per_example


def _example_map(h: Hierarchy, data, layer: int, example: int) -> torch.Tensor:
    """Layer ``layer``'s map of one global example, on every rank (read by the rank that holds it)."""
    out = torch.zeros(h.specs[layer].shape, dtype=h.dtype, device=h.device)
    if bool(data.mask[example]):
        out.copy_(data.batch(torch.tensor([example]))[layer][0].to(h.device, h.dtype))
    return distributed.all_reduce_sum(out, "worst-fit example map")


def reseed_dead(h: Hierarchy, data, hidden: dict, usage: dict, per_example_error: torch.Tensor,
                generator: torch.Generator) -> dict[int, list[int]]:
    """Give every empty component the examples its layer fits worst; returns layer → re-seeded components.

    Top layer: the template becomes a worst-fit example's map. Lower layers: the component is fitted by
    ridge least squares to the layer's worst-fit examples (a split of what the used components explain
    worst); a noisy copy of a used component would lose every tie in the next E-step and stay empty.

    :param dict usage: layer name → (K,) global usage counts (:func:`usage_counts`).
    :param torch.Tensor per_example_error: (N, L) mean squared error per global example and layer.
    """
    reseeded = {}
    with torch.no_grad():
        for l, spec in enumerate(h.specs):
            dead = (usage[spec.name] == 0).nonzero().flatten().tolist()
            if not dead:
                continue
            reseeded[l] = dead
            worst = per_example_error[:, l].argsort(descending=True)
            if l == h.L - 1:
                for j, k in enumerate(dead):
                    ex = int(worst[j % len(worst)])
                    h.topdown[l].template[int(data.categories[ex]), k].copy_(_example_map(h, data, l, ex))
                continue
            # Split the worst-fit examples (the worst ``N/K`` of them) among the dead components.
            share = max(1, len(worst) // spec.K)
            owner = torch.full((len(data),), -1, dtype=torch.long)
            for j, k in enumerate(dead):
                owner[worst[j * share:(j + 1) * share]] = k
            least_squares_fit(h, l, data, owner, generator, components=dead)
    return reseeded


def m_step_templates(h: Hierarchy, data, hidden: dict, batch_size: int) -> None:
    """Closed-form M-step of the top templates: the mean of the assigned maps, shifted back by ``-δ``.

    Under eq. 5 with ``φ = shift(ReLU(T_{c,γ}), δ)`` and non-negative maps this mean is the exact
    maximiser where the shifted template overlaps the map; cells never covered keep their value.
    """
    L, top = h.L, h.topdown[h.L - 1]
    name = h.specs[L - 1].name
    total = torch.zeros_like(top.template)
    count = torch.zeros(top.template.shape[:2] + (1,) + top.template.shape[3:], dtype=top.template.dtype,
                        device=top.template.device)
    offsets = h.specs[L - 1].offsets
    with torch.no_grad():
        for idx in iterate_batches(len(data), batch_size):
            mine = data.local(idx)
            if not len(mine):
                continue
            maps = data.batch(mine)[L - 1].to(h.device, h.dtype)
            cats, g, d = data.categories[mine], hidden[sites.gamma(name)][mine], hidden[sites.delta(name)][mine]
            for i in range(len(mine)):  # a scatter per example; the top layer is small
                dy, dx = offsets[int(d[i])]
                back = shift(maps[i], -dy, -dx)
                valid = shift(torch.ones_like(maps[i][:1]), -dy, -dx)
                total[cats[i], g[i]] += back
                count[cats[i], g[i]] += valid
        distributed.all_reduce_sum(total, "template sums")
        distributed.all_reduce_sum(count, "template counts")
        used = count > 0
        top.template.copy_(torch.where(used, total / count.clamp_min(1), top.template))


def set_sigma0(h: Hierarchy, res, sig, n_el, floor: float) -> None:
    """``σ0_l`` = RMS residual, floored at ``floor`` × the RMS of the layer's ``F_td``."""
    rms_signal = (sig / n_el).sqrt()
    sigma0 = (res / n_el).sqrt()
    sigma0 = torch.maximum(sigma0, floor * rms_signal).clamp_min(1e-6)
    h.set_sigma0(sigma0.to(h.dtype))


def init_sigma0(h: Hierarchy, data, batch_size: int) -> None:
    """Start ``σ0_l`` at half the layer's RMS activation, a scale-aware guess refined by the M-steps."""
    stats = torch.zeros(2, h.L, dtype=torch.float64)  # squares, elements
    for idx in iterate_batches(len(data), batch_size):
        mine = data.local(idx)
        if not len(mine):
            continue
        for l, m in enumerate(data.batch(mine)):
            stats[0, l] += m.double().pow(2).sum()
            stats[1, l] += m.numel()
    distributed.all_reduce_sum(stats, "activation scale")
    rms = (stats[0] / stats[1]).sqrt().clamp_min(1e-3)
    h.set_sigma0((0.5 * rms).to(h.dtype))
    if not math.isfinite(float(h.sigma0.sum())):
        raise ValueError("source: activations give a non-finite scale")
