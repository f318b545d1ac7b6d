"""The backward pass: greedy MAP of ``P(F_td, H | F_bu)`` through a model program (eq. 10-13).

:func:`backward_pass` runs a model program's profile form under the greedy handler, optionally with
clamps (``pyro.condition``), a beam, or posterior modes at a chosen layer, and returns a
:class:`BackwardResult`. The model is an argument (as in ``SVI(model, guide)``); the library never
imports a particular model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch

from .. import sites
from ..handlers import GreedyMessenger
from ..hierarchy import Hierarchy
from ..validation import check_index_range

__all__ = ["BackwardResult", "backward_pass", "impute", "empty_score", "check_clamp"]


@dataclass
class BackwardResult:
    """Result of a backward pass over ``N`` images with ``B`` kept assignments (best first).

    :ivar dict hidden: site name (``category``, ``gamma/*``, ``delta/*``) → (B, N) integer tensor.
    :ivar list f_td: per layer, bottom-up, the top-down maps (B, N, C_l, H_l, W_l).
    :ivar torch.Tensor layer_scores: (B, N, L) per-layer scores ``S_l`` (eq. 12), bottom-up.
    :ivar torch.Tensor total: (B, N) total log score ``Σ_l S_l``.
    :ivar torch.Tensor evidence: (B, N) ``total`` minus the score of the empty explanation.
    """

    hidden: dict
    f_td: list
    layer_scores: torch.Tensor
    total: torch.Tensor
    evidence: torch.Tensor

    def best(self) -> dict:
        """The top assignment per image: site → (N,)."""
        return {k: v[0] for k, v in self.hidden.items()}


def check_clamp(hierarchy: Hierarchy, clamp: dict | None) -> dict:
    """Validate a clamp dict (site name → value) against the hierarchy; values become tensors."""
    if not clamp:
        return {}
    if not isinstance(clamp, dict):
        raise TypeError(f"clamp: expected a dict of site name -> value, got {type(clamp).__name__}")
    sizes = {sites.CATEGORY: hierarchy.n_categories}
    for s in hierarchy.specs:
        sizes[sites.gamma(s.name)] = s.K
        sizes[sites.delta(s.name)] = s.n_offsets
    out = {}
    for name, value in clamp.items():
        if name not in sizes:
            raise ValueError(f"clamp: expected site names among {sorted(sizes)}, got {name!r}")
        if name == sites.CATEGORY and isinstance(value, str):
            value = hierarchy.check_category(value)
        out[name] = check_index_range(f"clamp[{name!r}]", torch.as_tensor(value, device=hierarchy.device),
                                      sizes[name])
    return out


def empty_score(hierarchy: Hierarchy, f_bu: list[torch.Tensor]) -> torch.Tensor:
    """Log score of the empty explanation ``F_td = 0 = f̃`` on every layer (DESIGN §4, evidence).

    ``Σ_l Σ_i log P(f_bu,i | 0) + log N(0; 0, σ0_l)``: the observation term with no object plus the
    top-down term of a zero prediction, so that it is on the same footing as a layer value (eq. 13).

    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l).
    :returns: (N,).
    """
    total = 0.0
    for l, x in enumerate(f_bu):
        obs = hierarchy.obs_params(l)
        # PiecewiseGaussian(0) per channel: the object branch (N(0, σ1)) where 0 ≥ λ, else N(β, σ2). The
        # branch depends on the channel only, so the density is picked per channel, not per element.
        on = obs["lam"] <= 0
        loc = torch.where(on, torch.zeros_like(obs["beta"]), obs["beta"])
        scale = torch.where(on, obs["sigma1"], obs["sigma2"])
        # Σ_i log N(x_i; loc_c, scale_c), with the constants summed analytically (one map-sized temporary).
        H, W = x.shape[-2:]
        lp = torch.sub(x, loc).div_(scale).square_().sum((-3, -2, -1)).mul_(-0.5)
        lp = lp - H * W * (torch.log(scale).sum() + x.shape[-3] * 0.5 * math.log(2 * math.pi))
        const = -torch.log(hierarchy.sigma0[l]) - 0.5 * math.log(2 * math.pi)
        total = total + lp + const * x[0].numel()
    return total


def _run(model, hierarchy, beam, topk, topk_layer, clamp, **kwargs):
    if isinstance(topk_layer, str):
        topk_layer = hierarchy.layer_index(topk_layer)
    msngr = GreedyMessenger(beam=beam, topk=topk, topk_layer=topk_layer)
    conditioned = pyro.condition(model, data=check_clamp(hierarchy, clamp)) if clamp else model
    # Inputs and clamps are validated up front (check_maps, check_clamp); Pyro's per-site validation
    # (support checks of every enumerated value, each a host sync) is off inside the pass.
    with torch.no_grad(), pyro.validation_enabled(False), msngr:
        conditioned(hierarchy, **kwargs)
    res = msngr.get_result()
    L = hierarchy.L
    # Layers were visited top-down; store scores bottom-up to match the specs.
    order = [res.layers.index(l) for l in range(L)]
    layer_scores = res.layer_scores[..., order]
    hidden = {k: v for k, v in res.state.items() if not k.startswith("f_td/")}
    f_td = [res.state[sites.f_td(s.name)] for s in hierarchy.specs]
    return hidden, f_td, layer_scores, res.total


def backward_pass(model, hierarchy: Hierarchy, f_bu, beam: int = 1, topk: int | None = None,
                  topk_layer: int | str | None = None, clamp: dict | None = None, **model_kwargs) -> BackwardResult:
    """Greedy MAP inference (the backward pass) on a batch of images.

    :param model: a model program with the signature of ``models.activation.activation_model``.
    :param Hierarchy hierarchy: the trained hierarchy.
    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l) of bottom-up activations, bottom-up order.
    :param int beam: partial assignments kept per layer (1 = the paper's greedy pass).
    :param int topk: number of posterior modes to keep at ``topk_layer`` (each completed greedily).
    :param topk_layer: layer index or name for the modes.
    :param dict clamp: site name → value, applied with ``pyro.condition`` (e.g. ``{"category": 0}``).
    :param model_kwargs: passed to the model (e.g. ``prior=``).
    :returns: :class:`BackwardResult` with ``B = beam`` (or ``topk``) assignments per image.
    """
    f_bu = hierarchy.check_maps("f_bu", f_bu)
    hidden, f_td, layer_scores, total = _run(model, hierarchy, beam, topk, topk_layer, clamp,
                                             f_bu=f_bu, form="profile", validate=False, **model_kwargs)
    with torch.no_grad():
        evidence = total - empty_score(hierarchy, f_bu)
    return BackwardResult(hidden, f_td, layer_scores, total, evidence)


def impute(model, hierarchy: Hierarchy, f_td, beam: int = 1, clamp: dict | None = None,
           **model_kwargs) -> BackwardResult:
    """Hard-EM E-step: greedy assignment of ``H`` given observed ``F_td`` (no ``F_bu`` term, Sec. 2.3.2).

    :param list f_td: ``L`` tensors (N, C_l, H_l, W_l), bottom-up order.
    :returns: :class:`BackwardResult` whose ``f_td`` are the observed maps and ``evidence`` is NaN.
    """
    f_td = hierarchy.check_maps("f_td", f_td)
    hidden, f_out, layer_scores, total = _run(model, hierarchy, beam, None, None, clamp,
                                              f_td=f_td, form="estep", validate=False, **model_kwargs)
    return BackwardResult(hidden, f_out, layer_scores, total, torch.full_like(total, float("nan")))
