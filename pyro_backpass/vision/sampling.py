"""Samples from the model's prior, in image space (Sec. 2.2.2, 3.1; Figs. 3-4).

The model program's generative form, run under ``pyro.poutine.trace``, draws the category, every
``γ^l, δ^l`` top-down from the prior (eq. 7) and ``F^l_td ~ N(φ_l, σ0_l)`` (eq. 4-5); clamps go
through ``pyro.condition`` (Fig. 4 clamps the top layer's ``(γ, δ)``). ``noise="sample"`` returns
that trace's ``F^0_td``. ``noise="mean"`` (the default for figures) keeps the sampled ``H`` and
renders it without the Gaussian noise: ``F^l = φ_l(F^{l+1}, γ^l, δ^l)`` all the way down, the mode of
``P(F_td | H)``. The per-element noise of eq. 5 is independent across pixels, so a sample's image is
its mean plus white noise of scale ``σ0_0``; the mean shows what the hidden variables encode.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine

from .. import sites
from ..hierarchy import Hierarchy
from ..inference import check_clamp

__all__ = ["NOISE", "sample_hidden", "render_hidden", "sample_images"]

NOISE = ("mean", "sample")


def sample_hidden(model, hierarchy: Hierarchy, n: int, clamp: dict | None = None, **model_kwargs):
    """Run the generative form for ``n`` images.

    :returns: ``(hidden, trace)``: site → (n,) for ``category`` and every ``gamma/*``, ``delta/*``,
        and the Pyro trace (which holds every ``f_td/*`` and ``f_bu/*`` sample).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    data = check_clamp(hierarchy, clamp)
    data = {k: v.expand(n) if v.dim() == 0 else v for k, v in data.items()}
    fn = pyro.condition(model, data=data) if data else model
    with torch.no_grad():
        trace = poutine.trace(fn).get_trace(hierarchy, n=n, form="generative", **model_kwargs)
    hidden = {name: trace.nodes[name]["value"] for name in hierarchy.hidden_site_names()}
    return hidden, trace


def render_hidden(hierarchy: Hierarchy, hidden: dict) -> list[torch.Tensor]:
    """Noise-free top-down maps of given hidden values: ``F^l = φ_l(F^{l+1}, γ^l, δ^l)``.

    :param dict hidden: site → (n,) (``category`` and every ``gamma/*``, ``delta/*``).
    :returns: ``L`` tensors (n, C_l, H_l, W_l), bottom-up.
    """
    upper = hidden[sites.CATEGORY]
    out = []
    with torch.no_grad():
        for l in reversed(range(hierarchy.L)):
            name = hierarchy.specs[l].name
            upper = hierarchy.phi(l, upper, hidden[sites.gamma(name)], hidden[sites.delta(name)])
            out.append(upper)
    return out[::-1]


def sample_images(model, hierarchy: Hierarchy, n: int, clamp: dict | None = None, noise: str = "mean",
                  **model_kwargs) -> tuple[torch.Tensor, dict]:
    """``n`` image-space samples.

    :param dict clamp: site → value held fixed (e.g. ``{"gamma/pool3": 3, "delta/pool3": 12}``).
    :param str noise: ``"mean"`` or ``"sample"`` (see the module docstring).
    :returns: ``(images (n, C_0, S, S), hidden site → (n,))``; images are clamped to ``[0, 1]``.
    """
    if noise not in NOISE:
        raise ValueError(f"noise: expected one of {NOISE}, got {noise!r}")
    hidden, trace = sample_hidden(model, hierarchy, n, clamp, **model_kwargs)
    if noise == "sample":
        image = trace.nodes[sites.f_td(hierarchy.specs[0].name)]["value"]
    else:
        image = render_hidden(hierarchy, hidden)[0]
    return image.clamp(0.0, 1.0), hidden
