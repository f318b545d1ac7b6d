"""Squared error of one chosen hypothesis per example, for the M-step (eq. 5).

Training needs ``φ_l(F^{l+1}, γ_n, δ_n)`` for one ``(γ_n, δ_n)`` per example, not all ``K·|Δ|``: the
chosen component's weights are gathered per example and applied as one grouped convolution
(groups = examples), and instead of shifting ``φ`` by ``δ`` the target is shifted back by ``-δ``
with a mask of the cells that stay inside the map. Cells outside that mask are zero-filled in
``shift(φ, δ)``, so their error does not depend on the weights and is added as a constant.

:func:`fit_topdown` runs the M-step's Adam epochs on that error. In a distributed run every rank walks
the same global minibatches, computes the gradient of its part of each, and the parts are summed across
ranks before the step, so the update is the one-process update up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed
from ..hierarchy import Hierarchy
from ..topdown import TopDownConv, shifted_views
from .sources import iterate_batches

__all__ = ["selected_components", "squared_error", "fit_topdown"]


def selected_components(m: TopDownConv, f_up: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``ReLU(conv(up(F^{l+1}_n); W_{γ_n}) + b_{γ_n})`` per example, before the shift.

    :param torch.Tensor f_up: (N, C_in, H', W').
    :param torch.Tensor gamma: (N,) component per example.
    :returns: (N, C_out, H, W).
    """
    N, C = f_up.shape[0], m.out_channels
    bias = m.bias.view(m.K, C)[gamma].reshape(-1)
    if m.upsample == "transposed":
        w = m.weight.view(m.in_channels, m.K, C, 4, 4)[:, gamma]  # (C_in, N, C, 4, 4)
        w = w.permute(1, 0, 2, 3, 4).reshape(N * m.in_channels, C, 4, 4)
        y = F.conv_transpose2d(f_up.reshape(1, -1, *f_up.shape[-2:]), w, bias, stride=2, padding=1, groups=N)
        y = y[..., : m.out_size[0], : m.out_size[1]]
    else:
        x = f_up
        if m.upsample == "nearest" and tuple(x.shape[-2:]) != m.out_size:
            x = F.interpolate(x, size=m.out_size, mode="nearest")
        w = m.weight.view(m.K, C, *m.weight.shape[1:])[gamma].reshape(N * C, *m.weight.shape[1:])
        y = F.conv2d(x.reshape(1, -1, *x.shape[-2:]), w, bias, padding=m.kernel_size // 2, groups=N)
    return torch.relu(y.reshape(N, C, *y.shape[-2:]))


def _shift_back(target: torch.Tensor, radius: int, delta: torch.Tensor):
    """``shift(target_n, -δ_n)`` and its in-map mask, for every example at once (one gather).

    View ``[j, k]`` of :func:`shifted_views` is the shift ``(r - j, r - k)``, so ``-δ`` is ``j = r + δ_y``,
    i.e. the row/column index of ``δ`` in ``LayerSpec.offsets``.
    """
    side = 2 * radius + 1
    iy, ix = delta // side, delta % side
    n = torch.arange(target.shape[0], device=target.device)
    back = shifted_views(target, radius).permute(0, 2, 3, 1, 4, 5)[n, iy, ix]
    ones = torch.ones_like(target[:, :1])
    mask = shifted_views(ones, radius).permute(0, 2, 3, 1, 4, 5)[n, iy, ix]
    return back, mask


def squared_error(h: Hierarchy, layer: int, upper: torch.Tensor, gamma: torch.Tensor, delta: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    """Per-example ``||F^l_td - φ_l(F^{l+1}, γ, δ)||²`` (differentiable in the top-down weights).

    :param torch.Tensor upper: (N, C_{l+1}, ...) upper maps, or (N,) categories for the top layer.
    :param torch.Tensor target: (N, C_l, H_l, W_l) observed ``F^l_td``.
    :returns: (N,).
    """
    m = h.topdown[layer]
    if layer == h.L - 1:
        comp = torch.relu(m.template[upper, gamma])
    else:
        comp = selected_components(m, upper, gamma)
    spec = h.specs[layer]
    if spec.offset_radius == 0:
        return (comp - target).pow(2).flatten(1).sum(1)
    with torch.no_grad():
        back, mask = _shift_back(target, spec.offset_radius, delta)
        # Target cells that the shifted φ does not cover (zero fill there): their error is the target.
        const = target.pow(2).flatten(1).sum(1) - (back.pow(2) * mask).flatten(1).sum(1)
    return ((comp - back).pow(2) * mask).flatten(1).sum(1) + const


def fit_topdown(h: Hierarchy, data, gamma: dict, delta: dict, epochs: int, lr: float, batch_size: int,
                generator: torch.Generator, progress: bool = False, desc: str = "M-step") -> float:
    """A fresh Adam on the top-down convolutions of layers ``0..L-2`` for ``epochs`` shuffled epochs.

    The loss of a minibatch is ``Σ_l ||F^l_td - φ_l||² / 2σ0_l²`` averaged over its examples (eq. 5).

    :param data: a :class:`~pyro_backpass.learning.sources.ShardedSource` (all examples in one process).
    :param dict gamma: layer index → (N,) components per global example (valid where held here).
    :param dict delta: layer index → (N,) offset indices, likewise.
    :returns: the loss of the last minibatch (per example).
    """
    params = [p for m in h.topdown[:-1] for p in m.parameters()]
    if not params or epochs <= 0:
        return 0.0
    opt = torch.optim.Adam(params, lr=lr)
    shared = distributed.is_distributed()
    last = 0.0
    for _ in range(epochs):
        batches = list(iterate_batches(len(data), batch_size, generator))
        for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
            mine = data.local(idx)
            opt.zero_grad()
            loss = torch.zeros((), device=h.device, dtype=h.dtype)
            if len(mine):
                maps = [m.to(h.device, h.dtype) for m in data.batch(mine)]
                loss = 0.0
                for l in range(h.L - 1):
                    err = squared_error(h, l, maps[l + 1], gamma[l][mine].to(h.device), delta[l][mine].to(h.device),
                                        maps[l])
                    loss = loss + err.sum() / (2 * h.sigma0[l] ** 2)
                # Divided by the global minibatch size: the ranks' gradients then add up to the mean's.
                (loss / len(idx)).backward()
            if shared:
                loss = _sum_gradients(params, loss.detach())
            opt.step()
            last = float(loss.detach()) / len(idx)
    return last


def _sum_gradients(params: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
    """All-reduce every gradient (zeros where this rank had no example) and the loss, in one flat buffer."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0])])
    distributed.all_reduce_sum(flat, "M-step gradient all-reduce")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    return flat[-1]
