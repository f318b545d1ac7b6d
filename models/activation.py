"""The activation hierarchy as one Pyro program (eq. 2-9, DESIGN §3).

``activation_model(hierarchy, ...)`` walks the layers top-down. Per layer ``l`` it samples
``gamma/<l>`` (prior eq. 7 from the hierarchy's swappable γ prior), ``delta/<l>`` (uniform), builds the
top-down mean ``φ_l`` (eq. 6) and then, by ``form``:

- ``"generative"``: samples ``f_td/<l> ~ N(φ, σ0)`` (eq. 5) and ``f_bu/<l> ~ PiecewiseGaussian``
  (eq. 9), observed when ``f_bu`` is given (sampling, Sec. 2.2.2);
- ``"profile"``: sets ``F_td^l`` to the elementwise maximiser given ``φ`` and adds the layer value
  as the factor ``value/<l>`` (eq. 12-13): the objective the greedy pass and exact MAP maximise.
  The factor is ``max_joint(f_bu, φ)``'s value summed over the map, computed for every enumerated
  ``(γ, δ)`` at once by :func:`pyro_backpass.scoring.score_hypotheses` from the unshifted components
  (same numbers up to rounding, no copy of the ``K·|Δ|`` shifted maps); ``F_td^l`` is built after the
  layer's end, so under the greedy handler only for the kept hypotheses;
- ``"estep"``: ``F_td^l`` observed, scored by the factor ``value/<l> = log N(F_td^l; φ, σ0)`` (eq. 5;
  hard EM's E-step, no ``F_bu`` term).

The discrete sites carry ``infer={"enumerate": "parallel", "layer": l}`` so Pyro's enumeration
(``infer_discrete``) and the greedy handler can enumerate them; the category is tagged with the top
layer, so the greedy pass chooses it jointly with ``γ^{L-1}, δ^{L-1}``. After each layer the program
calls :func:`pyro_backpass.handlers.layer_end` with everything it carries down, so a greedy handler
can collapse the layer's hypotheses. The program returns that state: ``category``, every
``gamma/*``, ``delta/*`` and ``f_td/*``.

Images live in the plate ``"images"`` at dim ``-1``; dim ``-2`` is left for a beam.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from pyro_backpass import sites
from pyro_backpass.distributions import PiecewiseGaussian, argmax_joint
from pyro_backpass.gaussian_scores import gaussian_score_table
from pyro_backpass.handlers import layer_end
from pyro_backpass.hierarchy import Hierarchy
from pyro_backpass.scoring import score_hypotheses
from pyro_backpass.topdown import select_hypotheses

__all__ = ["activation_model", "FORMS"]

FORMS = ("generative", "profile", "estep")


def _batch_size(hierarchy: Hierarchy, f_bu, f_td, n):
    for maps in (f_bu, f_td):
        if maps is not None:
            return maps[0].shape[0]
    if n is None:
        return 1
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    return n


def activation_model(hierarchy: Hierarchy, f_bu=None, f_td=None, form: str = "generative", n: int | None = None,
                     category=None, prior=None, delta_logits: dict | None = None, validate: bool = True):
    """The generative model of CNN activations as a Pyro program.

    :param Hierarchy hierarchy: specs and parameters.
    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l) bottom-up, observed (required for ``profile``).
    :param list f_td: ``L`` tensors (N, C_l, H_l, W_l) top-down, observed (required for ``estep``).
    :param str form: ``"generative"``, ``"profile"`` or ``"estep"``.
    :param int n: number of images when neither ``f_bu`` nor ``f_td`` is given (sampling).
    :param category: clamp ``F^L``: a category index or name, or an integer tensor (N,).
    :param prior: a γ prior overriding ``hierarchy.prior`` (any object with ``log_prob_table``).
    :param dict delta_logits: layer name → unnormalised log-probabilities over that layer's offsets,
        (|Δ_l|,) or (N, |Δ_l|), replacing the uniform ``P(δ^l)`` of eq. 7: a top-down location
        query (Sec. 3.2) is a prior over the top layer's δ. Layers not named keep the uniform prior.
    :param bool validate: check ``f_bu``/``f_td`` against the specs (turn off inside tight loops).
    :returns: dict of the final state: ``category`` and every ``gamma/*``, ``delta/*``, ``f_td/*``.
    """
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    if validate:
        if f_bu is not None:
            f_bu = hierarchy.check_maps("f_bu", f_bu)
        if f_td is not None:
            f_td = hierarchy.check_maps("f_td", f_td)
    if form == "profile" and f_bu is None:
        raise ValueError("f_bu: the profile form needs bottom-up maps, got None")
    if form == "estep" and f_td is None:
        raise ValueError("f_td: the estep form needs observed top-down maps, got None")
    if category is not None:
        category = hierarchy.check_category(category)
    prior = hierarchy.prior if prior is None else prior
    specs, L = hierarchy.specs, hierarchy.L
    N = _batch_size(hierarchy, f_bu, f_td, n)
    delta_logits = _check_delta_logits(hierarchy, delta_logits, N)
    enum = {"enumerate": "parallel", "layer": L - 1}

    with pyro.plate("images", N, dim=-1):
        category = pyro.sample(sites.CATEGORY, dist.Categorical(logits=hierarchy.category_logits), infer=enum,
                               obs=category)
        state: dict[str, torch.Tensor] = {sites.CATEGORY: category}
        event_dims: dict[str, int] = {sites.CATEGORY: 0}
        upper = category
        for l in reversed(range(L)):
            spec = specs[l]
            infer = {"enumerate": "parallel", "layer": l}
            history = [state[sites.CATEGORY]] + [state[sites.gamma(specs[j].name)] for j in range(L - 1, l, -1)]
            gamma = pyro.sample(sites.gamma(spec.name),
                                dist.Categorical(logits=prior.log_prob_table(l, history)), infer=infer)
            d_logits = delta_logits.get(spec.name)
            if d_logits is None:
                d_logits = hierarchy.sigma0.new_zeros(spec.n_offsets)
            delta = pyro.sample(sites.delta(spec.name), dist.Categorical(logits=d_logits), infer=infer)
            sigma0 = hierarchy.sigma0[l]
            obs = hierarchy.obs_params(l)
            state.update({sites.gamma(spec.name): gamma, sites.delta(spec.name): delta})
            event_dims.update({sites.gamma(spec.name): 0, sites.delta(spec.name): 0, sites.f_td(spec.name): 3})
            if form == "profile":
                state = _profile_layer(hierarchy, l, upper, gamma, delta, f_bu[l], sigma0, obs, state, event_dims)
                upper = state[sites.f_td(spec.name)]
                continue
            if form == "generative":
                phi = hierarchy.phi(l, upper, gamma, delta)
                ftd = pyro.sample(sites.f_td(spec.name), dist.Normal(phi, sigma0).to_event(3))
                pyro.sample(sites.f_bu(spec.name), PiecewiseGaussian(ftd, **obs).to_event(3),
                            obs=None if f_bu is None else f_bu[l])
            else:
                ftd = _estep_layer(hierarchy, l, upper, gamma, delta, f_td[l])
            state[sites.f_td(spec.name)] = ftd
            state = layer_end(l, state, event_dims)
            upper = state[sites.f_td(spec.name)]
    return state


def _check_delta_logits(hierarchy: Hierarchy, delta_logits, N: int) -> dict:
    """Validate ``delta_logits`` (layer name → (|Δ|,) or (N, |Δ|) logits); returns them on the hierarchy."""
    if not delta_logits:
        return {}
    if not isinstance(delta_logits, dict):
        raise TypeError(f"delta_logits: expected a dict of layer name -> logits, got {type(delta_logits).__name__}")
    out = {}
    for name, logits in delta_logits.items():
        spec = hierarchy.specs[hierarchy.layer_index(name)]
        t = torch.as_tensor(logits, dtype=hierarchy.dtype, device=hierarchy.device)
        if t.shape not in ((spec.n_offsets,), (N, spec.n_offsets)):
            raise ValueError(f"delta_logits[{name!r}]: expected shape ({spec.n_offsets},) or ({N}, {spec.n_offsets}), "
                             f"got {tuple(t.shape)}")
        if torch.isnan(t).any() or (t == float("inf")).any() or bool((t == -float("inf")).all()):
            raise ValueError(f"delta_logits[{name!r}]: expected finite logits (-inf allowed, not everywhere), got {t}")
        out[name] = t
    return out


def _estep_layer(hierarchy: Hierarchy, l: int, upper, gamma, delta, f_td_obs):
    """One layer of the E-step form: ``F_td^l`` is observed, scored against every hypothesis.

    The factor ``value/<l>`` is ``log N(F_td^l; φ_l(F^{l+1}, γ, δ), σ0)`` summed over the map (eq. 4-5),
    read from a table over all ``(γ, δ)`` computed by correlation
    (:func:`~pyro_backpass.gaussian_scores.gaussian_score_table`), so no ``K·|Δ|`` maps are built.
    """
    table = gaussian_score_table(hierarchy, l, upper, f_td_obs)
    if l == hierarchy.L - 1:
        value = Vindex(table)[..., upper, gamma, delta]
    else:
        value = Vindex(table)[..., gamma, delta]
    pyro.factor(sites.value(hierarchy.specs[l].name), value)
    return f_td_obs


_COMPONENTS = "_components"


def _profile_layer(hierarchy: Hierarchy, l: int, upper, gamma, delta, f_bu, sigma0, obs, state, event_dims):
    """One layer of the profile form: the factor ``value/<l>`` over every hypothesis, the layer's end,
    then ``F_td^l``, the elementwise maximiser (eq. 13) under the hypotheses that are left.

    The factor is ``max_joint(f_bu, φ)``'s value summed over the map, computed by
    :func:`~pyro_backpass.scoring.score_hypotheses` from the unshifted top-down components (no copy of
    the ``K·|Δ|`` shifted maps). ``F_td`` is only built after :func:`layer_end`: under the greedy
    handler that is for the kept hypotheses alone; without it (``infer_discrete``, tracing) it has the
    full broadcast shape as before. The components travel through ``layer_end`` (so the handler gathers
    them for the kept beam entries) and are dropped from the state after it; ``F_td^l`` is added to the
    returned state, which the greedy handler keeps as its record of the pass.
    """
    spec = hierarchy.specs[l]
    top = l == hierarchy.L - 1
    module = hierarchy.topdown[l]
    if top:
        comps = module.components()  # (n_categories, K, C, H, W), the same for every image
        index = (upper, gamma)
    else:
        comps = module.components(upper)  # (*B, K, C, H, W)
        index = (gamma,)
    # Top-down maps are ReLU outputs (eq. 6), hence nonnegative.
    value = score_hypotheses(f_bu, comps, spec.offset_radius, index, delta, sigma0, **obs, nonnegative=True)
    pyro.factor(sites.value(spec.name), value)
    if not top:
        state[_COMPONENTS] = comps
        event_dims[_COMPONENTS] = 4
    state = layer_end(l, state, event_dims)
    gamma, delta = state[sites.gamma(spec.name)], state[sites.delta(spec.name)]
    if top:
        index = (state[sites.CATEGORY], gamma)
    else:
        comps = state.pop(_COMPONENTS)
        index = (gamma,)
    # Gather the kept components first, then shift only those (no padded copy of all K components).
    if spec.offset_radius:
        chosen = select_hypotheses(comps, 0, index, torch.zeros_like(delta))
        phi = select_hypotheses(chosen, spec.offset_radius, (), delta)
    else:
        phi = select_hypotheses(comps, 0, index, delta)
    state[sites.f_td(spec.name)] = argmax_joint(f_bu, phi, sigma0, **obs)
    return state
