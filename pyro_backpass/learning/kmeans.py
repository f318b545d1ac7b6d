"""k-means++ seeding with a shift-invariant distance, over examples that may be spread across ranks.

The candidates are a global ordered list of ``n`` examples (e.g. the examples of one category); each rank
passes the maps it holds, ``x`` (m, C, H, W), and their ``positions`` (m,) in that list. Per-example
distances are computed where the maps are and assembled in global order on every rank
(:func:`pyro_backpass.distributed.gather_by_index`, exact), so the D² sampling, driven by one generator with
the same state on every rank, draws the same seeds as one process holding all ``n`` maps. Only the few
chosen maps travel (:func:`fetch_rows`). Without torch.distributed the defaults (``positions = 0..m-1``,
``n = m``) give the one-process algorithm.
"""

from __future__ import annotations

import math

import torch

from .. import distributed
from ..topdown import shift, shifted_views

__all__ = ["shift_distances", "kmeanspp_seeds", "fetch_rows", "frame_templates"]


def shift_distances(x: torch.Tensor, seed: torch.Tensor, radius: int, return_offsets: bool = False):
    """``min_δ ||x_i - shift(seed, δ)||²`` for maps ``x`` (n, C, H, W) and one ``seed`` (C, H, W); (n,).

    With ``return_offsets`` also the minimising ``(δ_y, δ_x)`` per example, (n, 2).
    """
    views = shifted_views(seed, radius).movedim(-3, 0).movedim(-3, 0).reshape(-1, seed.numel())  # (D, CHW)
    xf = x.flatten(1)
    d2 = xf.pow(2).sum(1, keepdim=True) - 2 * xf @ views.T + views.pow(2).sum(1)
    best, arg = d2.min(1)
    if not return_offsets:
        return best.clamp_min(0)
    side = 2 * radius + 1  # view index [j, k] is the shift (r - j, r - k)
    return best.clamp_min(0), torch.stack([radius - arg // side, radius - arg % side], 1)


def _layout(x: torch.Tensor, positions: torch.Tensor | None, n: int | None) -> tuple[torch.Tensor, int]:
    if positions is None:
        return torch.arange(x.shape[0]), x.shape[0]
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.shape != (x.shape[0],):
        raise ValueError(f"positions: expected shape ({x.shape[0]},) like x, got {tuple(positions.shape)}")
    if n is None:
        raise ValueError("n: expected the global number of candidates with positions, got None")
    return positions, n


def fetch_rows(x: torch.Tensor, positions: torch.Tensor, wanted: list[int]) -> torch.Tensor:
    """The maps of the global candidates ``wanted``, on every rank: (len(wanted), *x.shape[1:]).

    Each is copied in by the rank that holds it and summed with zeros elsewhere, so the values are exact.
    """
    out = torch.zeros((len(wanted),) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    where = {int(p): i for i, p in enumerate(positions.tolist())}
    for j, w in enumerate(wanted):
        if int(w) in where:
            out[j] = x[where[int(w)]]
    return distributed.all_reduce_sum(out, "k-means++ seed maps")


def kmeanspp_seeds(x: torch.Tensor, k: int, generator: torch.Generator, radius: int = 0,
                   positions: torch.Tensor | None = None, n: int | None = None) -> torch.Tensor:
    """Global positions of ``k`` candidates chosen by k-means++ D² sampling (the same on every rank), (k,).

    With ``radius > 0`` the distance is shift-invariant (minimum over offsets in ``[-r, r]²``), so two
    seeds are not the same shape at two positions.

    :param torch.Tensor x: (m, C, H, W) the maps of the candidates this rank holds.
    :param torch.Tensor positions: (m,) their positions among the ``n`` global candidates (default ``0..m-1``).
    :param int n: the number of global candidates (default ``m``).
    """
    positions, n = _layout(x, positions, n)
    if k > n:
        raise ValueError(f"K: expected at most the number of training examples ({n}), got {k}")
    # Greedy k-means++ (as in scikit-learn): draw a few candidates per step and keep the one that
    # lowers the potential most; plain D² sampling too often puts two seeds in one cluster.
    trials = 2 + int(math.log(k)) if k > 1 else 1
    first = int(torch.randint(n, (1,), generator=generator))
    seeds = [first]
    seed_map = fetch_rows(x, positions, [first])[0]
    d2 = distributed.gather_by_index(shift_distances(x, seed_map, radius), positions, n, "k-means++ distances")
    for _ in range(1, k):
        p = d2.clamp_min(0).double()
        if float(p.sum()) <= 0:
            p = torch.ones_like(p)
            p[seeds] = 0
        cands = torch.multinomial(p / p.sum(), trials, replacement=True, generator=generator).tolist()
        maps = fetch_rows(x, positions, cands)
        local = torch.stack([shift_distances(x, maps[j], radius) for j in range(len(cands))], 1)
        dc = distributed.gather_by_index(local, positions, n, "k-means++ distances")  # (n, trials)
        best = None
        for j, c in enumerate(cands):
            new = torch.minimum(d2, dc[:, j])
            if best is None or float(new.sum()) < best[0]:
                best = (float(new.sum()), c, new)
        _, nxt, d2 = best
        seeds.append(nxt)
    return torch.tensor(seeds)


def potential(x: torch.Tensor, seed_maps: torch.Tensor, radius: int, positions: torch.Tensor | None = None,
              n: int | None = None) -> float:
    """k-means potential ``Σ_i min_k d(x_i, seed_k)`` over all global candidates (the same on every rank)."""
    positions, n = _layout(x, positions, n)
    local = torch.stack([shift_distances(x, s, radius) for s in seed_maps], 1).min(1).values
    return float(distributed.gather_by_index(local, positions, n, "k-means potential").sum())


def frame_templates(top, category: int, maps: torch.Tensor, positions: torch.Tensor | None = None,
                    n: int | None = None) -> None:
    """Put each seed template of ``category`` in the frame of its cluster.

    A seed is one example at its own offset, so members of its cluster sit at relative offsets of up
    to ``2r``, beyond what the E-step searches. Each template is moved to the median relative offset
    of its members (found by a ``2r`` search), so that the members' offsets centre on ``(0, 0)``
    and all of them can be aligned within ``[-r, r]²``. ``maps`` (m, C, H, W) are the category's maps
    held here, at ``positions`` among its ``n`` examples (defaults: all of them).
    """
    r = top.offset_radius
    if r == 0:
        return
    positions, n = _layout(maps, positions, n)
    with torch.no_grad():
        seeds = torch.relu(top.template[category]).float()
        found = [shift_distances(maps, seeds[k], 2 * r, return_offsets=True) for k in range(top.K)]
        dist = torch.stack([d for d, _ in found], 1)
        owner = dist.argmin(1)
        offsets = torch.stack([found[k][1] for k in range(top.K)], 1)[torch.arange(len(owner)), owner]  # (m, 2)
        both = distributed.gather_by_index(torch.cat([owner[:, None], offsets], 1), positions, n,
                                           "template offsets")
        owner, offsets = both[:, 0], both[:, 1:]
        for k in range(top.K):
            mine = offsets[owner == k]
            if mine.numel() == 0:
                continue
            dy, dx = (int(v) for v in mine.float().median(0).values.round())
            top.template[category, k].copy_(shift(top.template[category, k], dy, dx))
