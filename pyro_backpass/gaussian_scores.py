"""``log N(F_obs; φ_l(F^{l+1}, γ, δ), σ0)`` for every ``(γ, δ)`` at once, by correlation (eq. 5).

The E-step of hard EM scores observed maps against all ``K·|Δ|`` hypotheses. Expanding the square,
``||F - shift(φ_γ, δ)||² = ||F||² - 2⟨F, shift(φ_γ, δ)⟩ + ||shift(φ_γ, δ)||²``, and both ``δ``-dependent
terms are cross-correlations evaluated at the ``(2r+1)²`` offsets: one grouped ``conv2d`` of the
padded observation with the components as kernels, and one of a padded ones-map with the squared
components. Nothing of size ``K·|Δ|·C·H·W`` is ever materialised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .hierarchy import Hierarchy

__all__ = ["gaussian_score_table"]


def _sq_dist_table(obs: torch.Tensor, comps: torch.Tensor, radius: int) -> torch.Tensor:
    """``||obs_b - shift(comps_{b,k}, δ)||²`` for all k and δ.

    :param torch.Tensor obs: (M, C, H, W), one observation per row of ``comps``.
    :param torch.Tensor comps: (M, K, C, H, W).
    :returns: (M, K, D), ``D = (2r+1)²`` in the row-major order of ``LayerSpec.offsets``.
    """
    M, K, C, H, W = comps.shape
    obs_sq = obs.pow(2).flatten(1).sum(1)  # (M,)
    if radius == 0:
        cross = (comps * obs.unsqueeze(1)).flatten(2).sum(2)
        norm = comps.pow(2).flatten(2).sum(2)
        return (obs_sq.unsqueeze(1) - 2 * cross + norm).unsqueeze(-1)
    r = radius
    padded = F.pad(obs, (r, r, r, r)).reshape(1, M * C, H + 2 * r, W + 2 * r)
    # out[m, k, j, i] = Σ obs[m, c, y + j - r, x + i - r] comps[m, k, c, y, x] = ⟨obs, shift(comp, (j-r, i-r))⟩
    cross = F.conv2d(padded, comps.reshape(M * K, C, H, W), groups=M).reshape(M, K, -1)
    ones = F.pad(obs.new_ones(1, 1, H, W), (r, r, r, r))
    norm = F.conv2d(ones, comps.pow(2).sum(2).reshape(M * K, 1, H, W)).reshape(M, K, -1)
    return obs_sq.reshape(M, 1, 1) - 2 * cross + norm


def gaussian_score_table(hierarchy: Hierarchy, layer: int, upper: torch.Tensor, observed: torch.Tensor,
                         sigma0: torch.Tensor | None = None) -> torch.Tensor:
    """Log-density of observed maps under every hypothesis of layer ``l`` (eq. 4-5), summed over elements.

    :param int layer: ``l``.
    :param torch.Tensor upper: ``F^{l+1}`` (*B, C_{l+1}, H, W) with ``B`` ending in the image dim ``N``; or,
        for the top layer, the category index (any integer shape broadcastable with ``N``).
    :param torch.Tensor observed: (N, C_l, H_l, W_l).
    :returns: for ``l < L-1``: (*B, K, D); for the top layer: (N, n_categories, K, D) — index it with
        ``[..., category, γ, δ]`` (``pyro.ops.indexing.Vindex``).
    """
    spec = hierarchy.specs[layer]
    sigma0 = hierarchy.sigma0[layer] if sigma0 is None else sigma0
    m = hierarchy.topdown[layer]
    n_el = observed[0].numel()
    const = -n_el * (torch.log(sigma0) + 0.5 * math.log(2 * math.pi))
    if layer == hierarchy.L - 1:
        comps = m.components()  # (n_cat, K, C, H, W)
        N = observed.shape[0]
        flat = comps.reshape(1, -1, *comps.shape[2:]).expand(N, -1, -1, -1, -1)
        sq = _sq_dist_table(observed, flat, spec.offset_radius)
        return (-0.5 * sq / sigma0**2 + const).reshape(N, comps.shape[0], comps.shape[1], -1)
    comps = m.components(upper)  # (*B, K, C, H, W)
    batch = comps.shape[:-4]
    obs = observed.expand(batch + observed.shape[1:]) if len(batch) else observed
    sq = _sq_dist_table(obs.reshape((-1,) + observed.shape[1:]), comps.reshape((-1,) + comps.shape[-4:]),
                        spec.offset_radius)
    return (-0.5 * sq / sigma0**2 + const).reshape(batch + sq.shape[-2:])
