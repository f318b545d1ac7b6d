"""The activation hierarchy as one Pyro program (eq. 2-9, DESIGN §3).

``activation_model(hierarchy, ...)`` walks the layers top-down. Per layer ``l`` it samples
``gamma/<l>`` (prior eq. 7 from the hierarchy's swappable γ prior), ``delta/<l>`` (uniform), builds the
top-down mean ``φ_l`` (eq. 6) and then, by ``form``:

- ``"generative"``: samples ``f_td/<l> ~ N(φ, σ0)`` (eq. 5) and ``f_bu/<l> ~ PiecewiseGaussian``
  (eq. 9), observed when ``f_bu`` is given (sampling, Sec. 2.2.2);
- ``"profile"``: sets ``F_td^l`` to the elementwise maximiser given ``φ`` and adds the layer value
  as the factor ``value/<l>`` (eq. 12-13): the objective the greedy pass and exact MAP maximise;
- ``"estep"``: observes ``f_td/<l> ~ N(φ, σ0)`` (hard EM's E-step, no ``F_bu`` term).

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

from pyro_backpass import sites
from pyro_backpass.distributions import PiecewiseGaussian, max_joint
from pyro_backpass.handlers import layer_end
from pyro_backpass.hierarchy import Hierarchy

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
                     category=None, prior=None, validate: bool = True):
    """The generative model of CNN activations as a Pyro program.

    :param Hierarchy hierarchy: specs and parameters.
    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l) bottom-up, observed (required for ``profile``).
    :param list f_td: ``L`` tensors (N, C_l, H_l, W_l) top-down, observed (required for ``estep``).
    :param str form: ``"generative"``, ``"profile"`` or ``"estep"``.
    :param int n: number of images when neither ``f_bu`` nor ``f_td`` is given (sampling).
    :param category: clamp ``F^L``: a category index or name, or an integer tensor (N,).
    :param prior: a γ prior overriding ``hierarchy.prior`` (any object with ``log_prob_table``).
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
            delta = pyro.sample(sites.delta(spec.name),
                                dist.Categorical(logits=hierarchy.sigma0.new_zeros(spec.n_offsets)), infer=infer)
            phi = hierarchy.phi(l, upper, gamma, delta)
            sigma0 = hierarchy.sigma0[l]
            obs = hierarchy.obs_params(l)
            if form == "generative":
                ftd = pyro.sample(sites.f_td(spec.name), dist.Normal(phi, sigma0).to_event(3))
                pyro.sample(sites.f_bu(spec.name), PiecewiseGaussian(ftd, **obs).to_event(3),
                            obs=None if f_bu is None else f_bu[l])
            elif form == "profile":
                ftd, value = max_joint(f_bu[l], phi, sigma0, **obs)
                pyro.factor(sites.value(spec.name), value.sum((-3, -2, -1)))
            else:
                ftd = pyro.sample(sites.f_td(spec.name), dist.Normal(phi, sigma0).to_event(3), obs=f_td[l])
            state.update({sites.gamma(spec.name): gamma, sites.delta(spec.name): delta, sites.f_td(spec.name): ftd})
            event_dims.update({sites.gamma(spec.name): 0, sites.delta(spec.name): 0, sites.f_td(spec.name): 3})
            state = layer_end(l, state, event_dims)
            upper = state[sites.f_td(spec.name)]
    return state
