"""Initialisation of the top-down mixtures before hard EM (Sec. 2.3.2).

**Top layer**: k-means++ seeding (D² sampling with a shift-invariant distance, the minimum over the
layer's offsets) per category on the top-layer maps; each template is set to its seed example's map
(maps are non-negative, so ``ReLU(T) = T``).

**Lower layers**: each example is assigned to its nearest seed of a k-means++ seeding on that layer's
maps (a data-driven partition, so the ``K`` components start from different examples instead of
copies of one), and each component is fitted to its part by ridge least squares. That partition is by
appearance, not by how well a component *predicts* the layer from the one above, which is what the
E-step scores; so it is refined by a few rounds of clusterwise regression ("k-regressions"): every
example moves to the component whose prediction from its observed upper map (centre offset) has the
least squared error, and each component is refitted by least squares to its new part. Without these
rounds the component fitted to the largest part predicts almost every example best at the first E-step
(pool1 of the default run: 796 of 800), and hard EM's few Adam epochs per iteration win the others back
slowly. Last, a few Adam epochs on the observed upper maps; hard EM then refines the partition.

In a distributed run every rank holds a shard of the examples (a
:class:`~pyro_backpass.learning.sources.ShardedSource`). Every random choice (k-means++ draws, subsamples,
least-squares rows, minibatch order) is drawn from one generator in the same order on every rank, as if
by one process over all examples, and each rank evaluates it on the examples it holds: per-example
distances are gathered exactly, least-squares normal equations and gradients are summed across ranks.
So 2 ranks choose the same seeds as 1 and fit the same weights up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed
from ..hierarchy import Hierarchy
from .kmeans import fetch_rows, frame_templates, kmeanspp_seeds, potential
from .residuals import fit_topdown
from .sources import as_sharded, iterate_batches

__all__ = ["kmeanspp_seeds", "least_squares_fit", "regression_errors", "refine_partition", "initialise"]


def least_squares_fit(hierarchy: Hierarchy, layer: int, source, gamma: torch.Tensor, generator: torch.Generator,
                      batch_size: int = 32, max_rows: int = 60_000, ridge: float = 1e-3,
                      components: list[int] | None = None) -> None:
    """Set each component of layer ``l`` to the ridge-regression fit of its examples (before the ReLU).

    The top-down convolution is linear in its weights, so given a partition of the examples each
    component's weights have a closed-form least-squares fit from the (upsampled) upper-layer patches
    to the layer's maps, at offset 0. It gives every layer, the image layer included, a prediction
    at the right scale before the first E-step, which a few Adam epochs from a random start do not.
    Transposed-convolution layers are left to Adam. ``components`` restricts the fit to those
    components (examples with ``gamma = -1`` belong to none). The sampled rows are drawn for every global
    minibatch on every rank; the normal equations are summed across ranks.

    :param torch.Tensor gamma: (N,) component of every global example (read where held here).
    """
    m = hierarchy.topdown[layer]
    if m.upsample == "transposed":
        return
    data = as_sharded(source)
    k = m.kernel_size
    C_out = m.out_channels
    n_out = m.out_size[0] * m.out_size[1]
    xs, ys, owners = [], [], []
    per_batch = max(1, max_rows // max(1, (len(data) + batch_size - 1) // batch_size))
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            rows = torch.randint(n_out, (len(idx), max(1, per_batch // len(idx))), generator=generator)
            keep = data.mask[idx]
            if not bool(keep.any()):
                continue
            idx, rows = idx[keep], rows[keep]
            maps = data.batch(idx)
            up = maps[layer + 1].float()
            if m.upsample == "nearest" and tuple(up.shape[-2:]) != m.out_size:
                up = F.interpolate(up, size=m.out_size, mode="nearest")
            patches = F.unfold(up, k, padding=k // 2).transpose(1, 2)  # (n, HW, C_in k²)
            target = maps[layer].float().flatten(2).transpose(1, 2)  # (n, HW, C_out)
            if patches.shape[1] != n_out:
                raise ValueError(f"layer {layer}: expected {n_out} output cells from the upper map, got "
                                 f"{patches.shape[1]}")
            xs.append(torch.gather(patches, 1, rows.unsqueeze(-1).expand(-1, -1, patches.shape[2])).flatten(0, 1))
            ys.append(torch.gather(target, 1, rows.unsqueeze(-1).expand(-1, -1, C_out)).flatten(0, 1))
            owners.append(gamma[idx].unsqueeze(1).expand_as(rows).flatten())
        dim = m.in_channels * k * k + 1
        if xs:
            X, Y, owner = torch.cat(xs).double(), torch.cat(ys).double(), torch.cat(owners)
            X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)  # bias column
        else:  # this rank holds no example: it contributes zeros to the sums
            X, Y = torch.zeros(0, dim, dtype=torch.float64), torch.zeros(0, C_out, dtype=torch.float64)
            owner = torch.zeros(0, dtype=torch.long)
        weight = m.weight.view(m.K, C_out, -1)
        bias = m.bias.view(m.K, C_out)
        for c in (range(m.K) if components is None else components):
            sel = owner == c
            A = X[sel]
            n_rows = torch.tensor([len(A)], dtype=torch.float64)
            gram_xy = torch.cat([A.T @ A, A.T @ Y[sel]], 1)  # (dim, dim + C_out)
            distributed.all_reduce_sum(n_rows, "least-squares row count")
            distributed.all_reduce_sum(gram_xy, "least-squares normal equations")
            n_c = int(n_rows)
            if n_c < dim:
                continue  # too few rows for a stable fit: keep the random start
            gram = gram_xy[:, :dim] + ridge * n_c * torch.eye(dim, dtype=A.dtype)
            sol = torch.linalg.solve(gram, gram_xy[:, dim:])  # (C_in k² + 1, C_out)
            weight[c].copy_(sol[:-1].T.to(weight))
            bias[c].copy_(sol[-1].to(bias))


def _layer_maps(data, layer: int, batch_size: int, rows: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Maps (m, *shape) of layer ``layer`` of the held examples ``rows`` (global indices), read in minibatches."""
    if len(rows) == 0:
        return torch.zeros((0,) + tuple(shape))
    return torch.cat([data.batch(rows[i:i + batch_size])[layer].float() for i in range(0, len(rows), batch_size)])


def _held(data, candidates: torch.Tensor) -> torch.Tensor:
    """Positions in the global candidate list ``candidates`` (n,) of the ones held here, (m,)."""
    return data.mask[candidates].nonzero().flatten()


def regression_errors(hierarchy: Hierarchy, layer: int, data, batch_size: int = 32) -> torch.Tensor:
    """Squared error (N, K) of every component's prediction of layer ``l`` from the observed layer above,
    at the centre offset, for every global example (rows not held here are zero; summed over ranks).

    :param data: a :class:`~pyro_backpass.learning.sources.ShardedSource`.
    """
    m = hierarchy.topdown[layer]
    out = torch.zeros(len(data), m.K, dtype=torch.float64)
    with torch.no_grad():
        for idx in iterate_batches(len(data), batch_size):
            rows = data.local(idx)
            if not len(rows):
                continue
            maps = data.batch(rows)
            up = maps[layer + 1].to(hierarchy.device, hierarchy.dtype)
            target = maps[layer].to(hierarchy.device, hierarchy.dtype)
            comp = m.components(up)  # (n, K, C, H, W)
            out[rows] = (comp - target.unsqueeze(1)).pow(2).flatten(2).sum(2).double().cpu()
    distributed.all_reduce_sum(out, "k-regressions errors")
    return out


def refine_partition(hierarchy: Hierarchy, layer: int, data, gamma: torch.Tensor, generator: torch.Generator,
                     rounds: int, batch_size: int = 32) -> torch.Tensor:
    """``rounds`` rounds of clusterwise regression on layer ``l``: reassign every example to the component
    predicting it best (:func:`regression_errors`), refit the components by :func:`least_squares_fit`.

    Stops early when no example moves. A component left with no example keeps its weights (hard EM
    re-seeds it if it stays empty).

    :param torch.Tensor gamma: (N,) the starting partition.
    :returns: (N,) the refined partition.
    """
    for _ in range(rounds):
        new = regression_errors(hierarchy, layer, data, batch_size).argmin(1)
        if torch.equal(new, gamma):
            break
        gamma = new
        least_squares_fit(hierarchy, layer, data, gamma, generator, batch_size)
    return gamma


def initialise(hierarchy: Hierarchy, source, generator: torch.Generator, epochs: int = 2, lr: float = 1e-3,
               batch_size: int = 32, max_rows: int = 4096, n_init: int = 4,
               regression_rounds: int = 0) -> dict[str, torch.Tensor]:
    """Seed every layer's mixture from data; returns the initial partition γ per layer (N,).

    :param int regression_rounds: rounds of :func:`refine_partition` per lower layer after the
        least-squares fit to the k-means++ partition (0: none).

    :param source: an activation source (see :mod:`pyro_backpass.learning.sources`), or this rank's
        :class:`~pyro_backpass.learning.sources.ShardedSource` in a distributed run.
    """
    data = as_sharded(source)
    L, N = hierarchy.L, len(data)
    cats = data.categories
    top = hierarchy.topdown[L - 1]
    r2 = 2 * top.offset_radius  # two examples of one shape differ by up to 2r cells
    partition = {}
    # Top templates from k-means++ seeds of each category's top maps.
    with torch.no_grad():
        for c in range(hierarchy.n_categories):
            idx = (cats == c).nonzero().flatten()
            if idx.numel() == 0:
                continue
            pos = _held(data, idx)
            x = _layer_maps(data, L - 1, batch_size, idx[pos], hierarchy.specs[L - 1].shape)
            # Best of a few seedings by k-means potential: one bad seeding splits a shape for good.
            tries = []
            for _ in range(n_init):
                cand = kmeanspp_seeds(x, top.K, generator, r2, positions=pos, n=len(idx))
                maps = fetch_rows(x, pos, cand.tolist())
                tries.append((potential(x, maps, r2, pos, len(idx)), maps))
            for k, seed_map in enumerate(min(tries, key=lambda t: t[0])[1]):
                top.template[c, k].copy_(seed_map.to(top.template))
            frame_templates(top, c, x, pos, len(idx))
    # Lower layers: partition by nearest k-means++ seed, then fit each component to its part.
    for l in range(L - 1):
        sub = torch.randperm(N, generator=generator)[:max_rows]
        pos = _held(data, sub)
        spec = hierarchy.specs[l]
        x = _layer_maps(data, l, batch_size, sub[pos], spec.shape).flatten(1)
        seeds = kmeanspp_seeds(x.reshape((len(pos),) + spec.shape), spec.K, generator, positions=pos, n=len(sub))
        seed_maps = fetch_rows(x, pos, seeds.tolist())
        gamma = torch.zeros(len(data.owned), dtype=torch.long)
        for idx in iterate_batches(N, batch_size):
            rows = data.local(idx)
            if len(rows):
                gamma[data.position[rows]] = torch.cdist(data.batch(rows)[l].flatten(1).float(), seed_maps).argmin(1)
        partition[l] = distributed.gather_by_index(gamma, data.owned, N, "initial partition")
    for l in range(L - 1):
        least_squares_fit(hierarchy, l, data, partition[l], generator, batch_size)
        if regression_rounds > 0 and hierarchy.topdown[l].K > 1 and hierarchy.topdown[l].upsample != "transposed":
            partition[l] = refine_partition(hierarchy, l, data, partition[l], generator, regression_rounds,
                                            batch_size)
    centre = {l: torch.full((N,), hierarchy.specs[l].n_offsets // 2, dtype=torch.long) for l in range(L - 1)}
    fit_topdown(hierarchy, data, partition, centre, epochs, lr, batch_size, generator, desc="init")
    return partition
