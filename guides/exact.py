"""Exact MAP of the profile objective on small hierarchies (DESIGN §4).

Three ways, which must agree exactly:

- :func:`map_infer_discrete`: Pyro's ``infer_discrete(config_enumerate(model), temperature=0)``
  (max-product variable elimination over the enumerated sites);
- :func:`map_bruteforce`: every joint assignment scored in one run of the program under
  ``pyro.condition``, and the argmax of the full joint score table taken;
- :func:`map_bruteforce_layers`: every joint assignment scored too, but layer by layer straight from
  the hierarchy's parameters (top-down components, :func:`~pyro_backpass.distributions.max_joint`, the
  γ prior), in chunks of batched tensors; several times faster than the program run, whose hypothesis
  scorer is built for few upper assignments and many ``(γ, δ)``, not thousands of upper assignments.

All cost ``Π_l K_l|Δ_l|`` against the greedy pass's ``Σ_l``, so they are for toy hierarchies.
"""

from __future__ import annotations

import copy
import math

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate, infer_discrete

from pyro_backpass import sites
from pyro_backpass.distributions import max_joint
from pyro_backpass.inference import check_clamp, enumerated_sites, trace_log_score
from pyro_backpass.topdown import shifted_views

__all__ = ["map_infer_discrete", "map_bruteforce", "map_bruteforce_layers"]


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


def _all_shifts(components: torch.Tensor, radius: int) -> torch.Tensor:
    """``(..., C, H, W)`` → ``(..., D, C, H, W)``: every shift, in the order of ``offsets_for_radius``
    (``d = (δ_y + r)(2r + 1) + (δ_x + r)``; ``shifted_views`` index ``[j, k]`` is ``δ = (r - j, r - k)``)."""
    if radius == 0:
        return components.unsqueeze(-4)
    views = shifted_views(components, radius).flip(-4, -3)  # (..., C, Dy, Dx, H, W), δ_y = j - r now
    return views.movedim(-5, -3).flatten(-5, -4)


def _clamp_mask(clamp: dict, name: str, size: int, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """(size, N) of 0 where value ``j`` of site ``name`` is allowed for image ``n`` by ``clamp``, -inf where not;
    ``None`` when the site is free."""
    if name not in clamp:
        return None
    values = torch.arange(size, device=like.device).unsqueeze(-1)
    return torch.where(values == clamp[name].reshape(-1).expand(n), 0.0, -math.inf).to(like)


def score_all_layers(hierarchy, f_bu, clamp: dict | None = None, chunk_elements: int = 1 << 17) -> torch.Tensor:
    """The joint log score of every assignment of the hidden sites, top-down, layer by layer.

    The joint score of ``H`` is ``log P(category) + Σ_l [log P(γ^l | upper γ's) + log P(δ^l) + value_l]``
    with ``value_l = Σ_i max_f [log P(f_bu,i | f) + log N(f; φ_l(F^{l+1}_td, γ^l, δ^l)_i, σ0_l)]`` and
    ``F^l_td`` the elementwise maximiser (eq. 12-13): the profile form of
    ``models.activation.activation_model`` with the hierarchy's own γ prior and uniform δ. Every
    partial assignment of the layers above is kept (nothing is pruned); at layer ``l`` all ``K_l·|Δ_l|``
    children of a chunk of parents are scored as one ``(P_chunk, N, K_l, |Δ_l|, C_l, H_l, W_l)`` tensor,
    and ``F^l_td`` of every child is kept for the layer below (not on the image layer, which needs only
    its value). Runs in the hierarchy's dtype.

    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l).
    :param dict clamp: site name → value (scalar or (N,)); other values of that site score ``-inf``.
    :param int chunk_elements: elements of one chunk's top-down tensor (memory and cache bound).
    :returns: (M, N) with ``M = n_categories · Π_l K_l|Δ_l|``; row ``m`` is the assignment
        :func:`decode_assignment` gives for ``m``.
    """
    clamp = check_clamp(hierarchy, clamp)
    f_bu = hierarchy.check_maps("f_bu", f_bu)
    specs, L, n = hierarchy.specs, hierarchy.L, f_bu[0].shape[0]
    dev = hierarchy.device
    with torch.no_grad():
        cats = torch.arange(hierarchy.n_categories, device=dev)
        score = torch.log_softmax(hierarchy.category_logits, -1).unsqueeze(-1).expand(-1, n).clone()  # (P, N)
        mask = _clamp_mask(clamp, sites.CATEGORY, hierarchy.n_categories, n, score)
        if mask is not None:
            score = score + mask
        history = [cats]                    # per parent: category, γ^{L-1}, ..., γ^{l+1}, each (P,)
        upper = None                        # F^{l+1}_td of every parent, (P, N, C, H, W)
        for l in reversed(range(L)):
            spec, module = specs[l], hierarchy.topdown[l]
            K, D, P = spec.K, spec.n_offsets, score.shape[0]
            obs = hierarchy.obs_params(l)
            x = f_bu[l].reshape((n, 1, 1) + spec.shape)
            log_gamma = torch.log_softmax(hierarchy.prior.log_prob_table(l, history), -1)  # (P, K)
            step = max(1, chunk_elements // (n * K * D * math.prod(spec.shape)))
            values, maps = [], []
            for p0 in range(0, P, step):
                p1 = min(P, p0 + step)
                comps = (module.components()[history[0][p0:p1]].unsqueeze(1) if l == L - 1
                         else module.components(upper[p0:p1]))             # (Pc, N|1, K, C, H, W)
                f_star, value = max_joint(x, _all_shifts(comps, spec.offset_radius), hierarchy.sigma0[l], **obs)
                values.append(value.sum((-3, -2, -1)))                     # (Pc, N, K, D)
                if l > 0:
                    maps.append(f_star.expand((p1 - p0, n, K, D) + spec.shape).permute(0, 2, 3, 1, 4, 5, 6)
                                .reshape((-1, n) + spec.shape))
            total = (score.reshape(P, n, 1, 1) + torch.cat(values) + log_gamma.reshape(P, 1, K, 1)
                     - math.log(D))                                         # (P, N, K, D)
            for name, size, shape in ((sites.gamma(spec.name), K, (1, n, K, 1)),
                                      (sites.delta(spec.name), D, (1, n, 1, D))):
                mask = _clamp_mask(clamp, name, size, n, total)
                if mask is not None:
                    total = total + mask.T.reshape(shape)
            score = total.permute(0, 2, 3, 1).reshape(P * K * D, n)
            gammas = torch.arange(K, device=dev).repeat_interleave(D).repeat(P)
            history = [h.repeat_interleave(K * D) for h in history] + [gammas]
            upper = torch.cat(maps) if l > 0 else None
    return score


def decode_assignment(hierarchy, flat: torch.Tensor) -> dict:
    """Row indices of :func:`score_all_layers`'s table → site name → values (the shape of ``flat``).

    The image layer's ``(γ, δ)`` are the innermost (fastest) digits, the category the outermost.
    """
    hidden = {}
    for spec in hierarchy.specs:
        hidden[sites.delta(spec.name)] = flat % spec.n_offsets
        flat = torch.div(flat, spec.n_offsets, rounding_mode="floor")
        hidden[sites.gamma(spec.name)] = flat % spec.K
        flat = torch.div(flat, spec.K, rounding_mode="floor")
    hidden[sites.CATEGORY] = flat
    return {name: hidden[name] for name in hierarchy.hidden_site_names()}


def map_bruteforce_layers(model, hierarchy, f_bu, clamp: dict | None = None, search_dtype: torch.dtype | None = None,
                          margin: float | None = None, chunk_elements: int = 1 << 17) -> tuple[dict, torch.Tensor]:
    """Exact joint MAP of the profile form: every assignment scored by :func:`score_all_layers`, the
    best rescored by ``model``.

    The table is computed in ``search_dtype`` (default: the hierarchy's dtype) on a copy of the
    hierarchy. Every assignment whose table score is within ``margin`` of the image's maximum is a
    candidate; the candidates are rescored in the hierarchy's dtype by one batched run of ``model``'s
    profile form (:func:`~pyro_backpass.inference.trace_log_score`) and the best of them is returned.
    This is exact as long as the table's rounding error stays below ``margin / 2`` on every entry;
    the rescoring checks that bound on the candidates and raises ``RuntimeError`` if it fails (or if
    the hierarchy is not scored by this model's profile form at all, e.g. under another prior). In
    the hierarchy's own dtype the margin is 0 (candidates: the ties at the maximum) and the check
    uses ``sqrt(eps)`` relative. With float64 hierarchies a float32 table is about 2.5× faster (the
    float64 convolutions take CPU's slow path); its error measured on the exact-vs-greedy toys was at
    most 3e-3 (≤ 5e-6 relative), so the default ``margin`` is ``0.05 + 1e-4·|max|``.

    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l).
    :param dict clamp: site name → value (scalar or (N,)).
    :param torch.dtype search_dtype: dtype of the table, e.g. ``torch.float32`` for a float64 hierarchy.
    :param float margin: candidate margin of the table scores (see above).
    :returns: ``(hidden, score)``: site name → (N,) MAP values and their (N,) log score in the
        hierarchy's dtype.
    """
    f_bu = hierarchy.check_maps("f_bu", f_bu)
    reduced = search_dtype is not None and search_dtype != hierarchy.dtype
    search = copy.deepcopy(hierarchy).to(search_dtype) if reduced else hierarchy
    table = score_all_layers(search, [x.to(search.dtype) for x in f_bu], clamp, chunk_elements)  # (M, N)
    top = table.max(dim=0).values.to(hierarchy.dtype)
    if margin is None:
        margin = 0.05 + 1e-4 * float(top.abs().max()) if reduced else 0.0
    candidates = table >= (top - margin).to(table.dtype)                   # (M, N)
    rows = candidates.any(dim=1).nonzero().squeeze(1)                      # (R,)
    hidden = decode_assignment(hierarchy, rows)
    data = {name: v.reshape(-1, 1) for name, v in hidden.items()}
    rescored = trace_log_score(model, data, hierarchy, f_bu=f_bu, form="profile", validate=False)
    rescored = rescored.expand(rows.shape[0], -1)                          # (R, N)
    found = table[rows].to(rescored.dtype)
    tol = margin / 2 if reduced else torch.finfo(hierarchy.dtype).eps ** 0.5 * (1.0 + float(top.abs().max()))
    err = torch.where(candidates[rows], (rescored - found).abs(), torch.zeros_like(rescored)).max()
    if not bool(err <= tol):
        raise RuntimeError(f"model: rescores the candidates up to {float(err):.3g} away from their table scores "
                           f"(allowed {tol:.3g}): the table is too coarse or the hierarchy is not scored by this "
                           "model's profile form")
    score, j = torch.where(candidates[rows], rescored, rescored.new_full((), -math.inf)).max(dim=0)
    return {name: v[j] for name, v in hidden.items()}, score
