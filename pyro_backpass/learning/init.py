"""Initialisation of the top-down mixtures before hard EM (Sec. 2.3.2).

**Top layer**: k-means++ seeding (D² sampling with a shift-invariant distance, the minimum over the
layer's offsets) per category on the top-layer maps; each template is set to its seed example's map
(maps are non-negative, so ``ReLU(T) = T``).

**Lower layers**: each example is assigned to its nearest seed of a k-means++ seeding on that layer's
maps (a data-driven partition, so the ``K`` components start from different examples instead of
copies of one), and each component is fitted to its part with a few Adam epochs on the observed
upper maps. Hard EM then refines the partition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..hierarchy import Hierarchy
from ..topdown import shift, shifted_views
from .residuals import squared_error
from .sources import iterate_batches

__all__ = ["kmeanspp_seeds", "initialise"]


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


def kmeanspp_seeds(x: torch.Tensor, k: int, generator: torch.Generator, radius: int = 0) -> torch.Tensor:
    """Indices of ``k`` examples of ``x`` (n, C, H, W) chosen by k-means++ D² sampling.

    With ``radius > 0`` the distance is shift-invariant (minimum over offsets in ``[-r, r]²``), so two
    seeds are not the same shape at two positions.
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"K: expected at most the number of training examples ({n}), got {k}")
    # Greedy k-means++ (as in scikit-learn): draw a few candidates per step and keep the one that
    # lowers the potential most; plain D² sampling too often puts two seeds in one cluster.
    trials = 2 + int(math.log(k)) if k > 1 else 1
    first = int(torch.randint(n, (1,), generator=generator))
    seeds = [first]
    d2 = shift_distances(x, x[first], radius)
    for _ in range(1, k):
        p = d2.clamp_min(0).double()
        if float(p.sum()) <= 0:
            p = torch.ones_like(p)
            p[seeds] = 0
        cands = torch.multinomial(p / p.sum(), trials, replacement=True, generator=generator).tolist()
        best = None
        for c in cands:
            new = torch.minimum(d2, shift_distances(x, x[c], radius))
            if best is None or float(new.sum()) < best[0]:
                best = (float(new.sum()), c, new)
        _, nxt, d2 = best
        seeds.append(nxt)
    return torch.tensor(seeds)


def frame_templates(top, category: int, maps: torch.Tensor) -> None:
    """Put each seed template of ``category`` in the frame of its cluster.

    A seed is one example at its own offset, so members of its cluster sit at relative offsets of up
    to ``2r``, beyond what the E-step searches. Each template is moved to the median relative offset
    of its members (found by a ``2r`` search), so that the members' offsets centre on ``(0, 0)``
    and all of them can be aligned within ``[-r, r]²``.
    """
    r = top.offset_radius
    if r == 0:
        return
    with torch.no_grad():
        seeds = torch.relu(top.template[category]).float()
        found = [shift_distances(maps, seeds[k], 2 * r, return_offsets=True) for k in range(top.K)]
        dist = torch.stack([d for d, _ in found], 1)
        owner = dist.argmin(1)
        for k in range(top.K):
            mine = found[k][1][owner == k]
            if mine.numel() == 0:
                continue
            dy, dx = (int(v) for v in mine.float().median(0).values.round())
            top.template[category, k].copy_(shift(top.template[category, k], dy, dx))


def least_squares_fit(hierarchy: Hierarchy, layer: int, source, gamma: torch.Tensor, generator: torch.Generator,
                      batch_size: int = 32, max_rows: int = 60_000, ridge: float = 1e-3,
                      components: list[int] | None = None) -> None:
    """Set each component of layer ``l`` to the ridge-regression fit of its examples (before the ReLU).

    The top-down convolution is linear in its weights, so given a partition of the examples each
    component's weights have a closed-form least-squares fit from the (upsampled) upper-layer patches
    to the layer's maps, at offset 0. It gives every layer, the image layer included, a prediction
    at the right scale before the first E-step, which a few Adam epochs from a random start do not.
    Transposed-convolution layers are left to Adam. ``components`` restricts the fit to those
    components (examples with ``gamma = -1`` belong to none).
    """
    m = hierarchy.topdown[layer]
    if m.upsample == "transposed":
        return
    k = m.kernel_size
    C_out = m.out_channels
    xs, ys, owners = [], [], []
    per_batch = max(1, max_rows // max(1, (len(source) + batch_size - 1) // batch_size))
    with torch.no_grad():
        for start in range(0, len(source), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(source)))
            maps = source.batch(idx)
            up = maps[layer + 1].float()
            if m.upsample == "nearest" and tuple(up.shape[-2:]) != m.out_size:
                up = F.interpolate(up, size=m.out_size, mode="nearest")
            patches = F.unfold(up, k, padding=k // 2).transpose(1, 2)  # (n, HW, C_in k²)
            target = maps[layer].float().flatten(2).transpose(1, 2)  # (n, HW, C_out)
            rows = torch.randint(patches.shape[1], (len(idx), max(1, per_batch // len(idx))), generator=generator)
            xs.append(torch.gather(patches, 1, rows.unsqueeze(-1).expand(-1, -1, patches.shape[2])).flatten(0, 1))
            ys.append(torch.gather(target, 1, rows.unsqueeze(-1).expand(-1, -1, C_out)).flatten(0, 1))
            owners.append(gamma[idx].unsqueeze(1).expand_as(rows).flatten())
        X, Y, owner = torch.cat(xs).double(), torch.cat(ys).double(), torch.cat(owners)
        X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)  # bias column
        weight = m.weight.view(m.K, C_out, -1)
        bias = m.bias.view(m.K, C_out)
        for c in (range(m.K) if components is None else components):
            sel = owner == c
            if int(sel.sum()) < X.shape[1]:
                continue  # too few rows for a stable fit: keep the random start
            A = X[sel]
            gram = A.T @ A + ridge * len(A) * torch.eye(A.shape[1], dtype=A.dtype)
            sol = torch.linalg.solve(gram, A.T @ Y[sel])  # (C_in k² + 1, C_out)
            weight[c].copy_(sol[:-1].T.to(weight))
            bias[c].copy_(sol[-1].to(bias))


def _layer_maps(source, layer: int, batch_size: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    index = torch.arange(len(source)) if rows is None else rows
    return torch.cat([source.batch(index[i:i + batch_size])[layer].float() for i in range(0, len(index), batch_size)])


def initialise(hierarchy: Hierarchy, source, generator: torch.Generator, epochs: int = 2, lr: float = 1e-3,
               batch_size: int = 32, max_rows: int = 4096, n_init: int = 4) -> dict[str, torch.Tensor]:
    """Seed every layer's mixture from data; returns the initial partition γ per layer (N,).

    :param source: an activation source (see :mod:`pyro_backpass.learning.sources`).
    """
    L, N = hierarchy.L, len(source)
    cats = source.categories
    top = hierarchy.topdown[L - 1]
    partition = {}
    # Top templates from k-means++ seeds of each category's top maps.
    top_maps = _layer_maps(source, L - 1, batch_size)
    with torch.no_grad():
        for c in range(hierarchy.n_categories):
            idx = (cats == c).nonzero().flatten()
            if idx.numel() == 0:
                continue
            # Two examples of one shape differ by up to 2r cells, hence the doubled radius.
            # Best of a few seedings by k-means potential: one bad seeding splits a shape for good.
            tries = []
            for _ in range(n_init):
                cand = kmeanspp_seeds(top_maps[idx], top.K, generator, 2 * top.offset_radius)
                pot = torch.stack([shift_distances(top_maps[idx], top_maps[idx][j], 2 * top.offset_radius)
                                   for j in cand.tolist()], 1).min(1).values.sum()
                tries.append((float(pot), cand))
            seeds = idx[min(tries, key=lambda t: t[0])[1]]
            for k, i in enumerate(seeds.tolist()):
                top.template[c, k].copy_(top_maps[i].to(top.template))
            frame_templates(top, c, top_maps[idx])
    # Lower layers: partition by nearest k-means++ seed, then fit each component to its part.
    for l in range(L - 1):
        sub = torch.randperm(N, generator=generator)[:max_rows]
        x = _layer_maps(source, l, batch_size, sub).flatten(1)
        seeds = kmeanspp_seeds(x.reshape((len(sub),) + hierarchy.specs[l].shape), hierarchy.specs[l].K, generator)
        gamma = torch.zeros(N, dtype=torch.long)
        for i in range(0, N, batch_size):
            rows = torch.arange(i, min(i + batch_size, N))
            gamma[rows] = torch.cdist(source.batch(rows)[l].flatten(1).float(), x[seeds]).argmin(1)
        partition[l] = gamma
    for l in range(L - 1):
        least_squares_fit(hierarchy, l, source, partition[l], generator, batch_size)
    params = [p for l in range(L - 1) for p in hierarchy.topdown[l].parameters()]
    if params and epochs > 0:
        opt = torch.optim.Adam(params, lr=lr)
        centre = {l: hierarchy.specs[l].n_offsets // 2 for l in range(L - 1)}
        for _ in range(epochs):
            for idx in iterate_batches(N, batch_size, generator):
                maps = [m.to(hierarchy.device, hierarchy.dtype) for m in source.batch(idx)]
                loss = 0.0
                for l in range(L - 1):
                    err = squared_error(hierarchy, l, maps[l + 1], partition[l][idx].to(hierarchy.device),
                                        torch.full((len(idx),), centre[l], device=hierarchy.device), maps[l])
                    loss = loss + err.sum() / (2 * hierarchy.sigma0[l] ** 2)
                opt.zero_grad()
                (loss / len(idx)).backward()
                opt.step()
    return partition
