"""Instance masks from a backward pass: where the top-down prediction says the object is (DESIGN §4).

The rule, measured better than the image layer's on-set in the feasibility runs (DESIGN §9): take the
top-down prediction ``f̃ = φ_l(F^{l+1}_td, γ^l, δ^l)`` (eq. 6) of a feature layer (conv3_2 by
default), call a pixel *predicted* where its per-pixel channel norm (by default of ``f̃`` minus the
backbone's response to an empty image) is above ``fraction`` of its maximum over the map, and keep
the predicted pixels that pass a bottom-up *gate*, a test that the
scene agrees with the prediction there. The gates:

- ``"agreement"``: the per-pixel log-likelihood ratio of the layer's observation under the
  prediction against the empty explanation, ``Σ_c [v(f_bu, f̃) - v(f_bu, 0)] > threshold`` where ``v``
  is the value of eq. 13 (:func:`~pyro_backpass.distributions.max_joint`). It asks the model itself
  whether the object explains the pixel better than nothing does, so it works on any background;
- ``"core_colour"`` (default): a two-class colour model fitted from the prediction's *core* and its
  *outside*: one diagonal Gaussian in RGB for the object, fitted to the pixels where the prediction is
  strongest (``‖f̃‖ ≥ core_fraction · max``), one for the rest of the scene, fitted to the pixels
  outside the predicted region; inside the region, a pixel is kept where the object class explains its
  colour better, with prior probability ``core_prior`` of "object". The core is nearly pure object and
  the outside nearly pure background, so neither class model is contaminated by the region's many
  background pixels (the predicted region of a thin airplane is mostly background: precision 0.37,
  recall 0.68 on validation scenes);
- ``"colour"``: a two-class colour model of the scene pixels (one diagonal Gaussian in RGB for the
  object, one for the rest), fitted by a few EM steps with the predicted region as the prior
  probability of "object" (``prior_in`` inside it, ``1 - prior_in`` outside): pixels whose colour
  the object class explains better than the background class stay. It needs no black background and
  sharpens the coarse predicted region towards the object's silhouette;
- ``"nonblack"``: the scene pixel is not black (the feasibility run's gate; only meaningful on black
  backgrounds, kept for comparison);
- ``"none"``: no gate.

Defaults measured on 120 validation scenes (split ``val``: 40 of seed 1 and 80 of seed 2) of the
default model (first-pass IoU; 2-core CPU): conv3_2, relative to the empty image, region at 0.4 of
the peak, core at 0.9, ``core_prior`` 0.3, ``"core_colour"`` gate: 0.502 / 0.512 (0.50-0.52 for cores
0.8-0.9 and priors 0.3-0.4; a mixture of 3-5 Gaussians for the background, or smoothing the
log-odds, measured no better); the earlier default, the ``"colour"`` gate on the region at 0.6,
0.398 / 0.395, and the best per-scene region fraction under it (an oracle) only 0.44.
An earlier model, 40 validation scenes (seed 1): conv3_2 at 0.6 of its peak, relative, colour gate 0.394; the
same at 0.5 0.388, at 0.4 0.346; not relative 0.26 at 0.4-0.5; pool3 0.38; conv1_2 and conv2_2 at
most 0.21; every pixel 0.073. With the compositional backbone the lower layers do as well
(conv2_2 at 0.6 with the colour gate 0.408, conv1_2 0.394).

The rule is one replaceable function with the signature of :func:`instance_masks`; any function
``rule(hierarchy, f_bu, result) -> (B, N, S, S) bool`` can be passed where a mask rule is taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import sites
from ..distributions import max_joint
from ..hierarchy import Hierarchy
from ..inference import BackwardResult

__all__ = ["MaskConfig", "GATES", "top_down_prediction", "instance_masks", "agreement_map", "colour_posterior",
           "core_colour_posterior"]

GATES = ("core_colour", "agreement", "colour", "nonblack", "none")


@dataclass(frozen=True)
class MaskConfig:
    """Defaults of the instance-mask rule.

    :param str layer: the feature layer whose top-down prediction defines the mask.
    :param float fraction: a pixel is predicted where ``‖f̃‖ ≥ fraction · max ‖f̃‖`` (per image).
    :param str gate: one of :data:`GATES`.
    :param str gate_layer: the layer the agreement gate is evaluated on (``""``: ``layer``).
    :param float gate_threshold: the agreement gate's threshold on the per-pixel log-likelihood ratio
        (nats); for ``"nonblack"``, the threshold on the pixel's largest channel.
    :param int smooth: side of a box filter applied to the gate's log-ratio map before thresholding
        (1: none); the ratio of one pixel is noisy, a small neighbourhood is not.
    :param bool relative: measure the prediction's strength against the backbone's response to an
        empty (black) image, given as ``background`` to :func:`instance_masks`, instead of against 0;
        with no ``background`` (a hierarchy without a backbone, e.g. a toy) the empty image's
        activations are taken to be 0, so the two rules agree.
    :param float prior_in: the colour gate's prior probability of "object" inside the predicted region.
    :param int colour_iters: EM steps of the colour gate.
    :param float core_fraction: the ``"core_colour"`` gate fits the object's colour where
        ``‖f̃‖ ≥ core_fraction · max ‖f̃‖`` (at least ``fraction`` for that gate).
    :param float core_prior: the ``"core_colour"`` gate's prior probability of "object" inside the region.
    """

    layer: str = "conv3_2"
    fraction: float = 0.4
    gate: str = "core_colour"
    gate_layer: str = ""
    gate_threshold: float = 0.0
    smooth: int = 3
    relative: bool = True
    prior_in: float = 0.9
    colour_iters: int = 5
    core_fraction: float = 0.9
    core_prior: float = 0.3

    def __post_init__(self):
        if self.gate not in GATES:
            raise ValueError(f"gate: expected one of {GATES}, got {self.gate!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction: expected a value in [0, 1], got {self.fraction!r}")
        if not isinstance(self.smooth, int) or self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"smooth: expected an odd int >= 1, got {self.smooth!r}")
        if not 0.5 < self.prior_in < 1.0:
            raise ValueError(f"prior_in: expected a probability in (0.5, 1), got {self.prior_in!r}")
        # The core must lie inside the region only where it is used: other gates take any fraction.
        low = self.fraction if self.gate == "core_colour" else 0.0
        if not low <= self.core_fraction <= 1.0:
            raise ValueError(f"core_fraction: expected a value in [{low}, 1] (at least fraction for the "
                             f"'core_colour' gate), got {self.core_fraction!r}")
        if not 0.0 < self.core_prior < 1.0:
            raise ValueError(f"core_prior: expected a probability in (0, 1), got {self.core_prior!r}")


def top_down_prediction(hierarchy: Hierarchy, result: BackwardResult, layer: int | str) -> torch.Tensor:
    """``f̃^l = φ_l(F^{l+1}_td, γ^l, δ^l)`` (eq. 6) under every kept assignment of ``result``.

    :returns: (B, N, C_l, H_l, W_l).
    """
    l = hierarchy.layer_index(layer) if isinstance(layer, str) else int(layer)
    spec = hierarchy.specs[l]
    gamma = result.hidden[sites.gamma(spec.name)]
    delta = result.hidden[sites.delta(spec.name)]
    upper = result.hidden[sites.CATEGORY] if l == hierarchy.L - 1 else result.f_td[l + 1]
    with torch.no_grad():
        return hierarchy.phi(l, upper, gamma, delta)


def agreement_map(hierarchy: Hierarchy, layer: int, f_bu: torch.Tensor, f_tilde: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``Σ_c [v(f_bu, f̃) - v(f_bu, 0)]``: how much better the prediction explains the scene
    than the empty explanation does, in nats (positive: the object is there).

    :param torch.Tensor f_bu: (N, C, H, W).
    :param torch.Tensor f_tilde: (B, N, C, H, W).
    :returns: (B, N, H, W).
    """
    obs = hierarchy.obs_params(layer)
    s0 = hierarchy.sigma0[layer]
    v_obj = max_joint(f_bu, f_tilde, s0, **obs)[1]
    v_empty = max_joint(f_bu, torch.zeros_like(f_bu), s0, **obs)[1]
    return (v_obj - v_empty).sum(-3)


def _colour_log_lik(x: torch.Tensor, w: torch.Tensor, floor: float) -> torch.Tensor:
    """Log density (up to a shared constant) of every pixel under the diagonal RGB Gaussian fitted to
    the pixels with weights ``w``.

    :param torch.Tensor x: (1, N, 3, P) pixels; ``w``: (B, N, P) weights. :returns: (B, N, P).
    """
    ws = w.sum(-1, keepdim=True).clamp_min(1e-6)
    mu = (x * w.unsqueeze(2)).sum(-1) / ws                                   # (B, N, 3)
    var = ((x - mu.unsqueeze(-1)) ** 2 * w.unsqueeze(2)).sum(-1) / ws + floor ** 2
    return (-0.5 * (x - mu.unsqueeze(-1)) ** 2 / var.unsqueeze(-1) - 0.5 * var.log().unsqueeze(-1)).sum(2)


def core_colour_posterior(images: torch.Tensor, strength: torch.Tensor, core: float, outside: float,
                          prior: float, floor: float = 0.02) -> torch.Tensor:
    """Posterior probability of "object" per pixel under the ``"core_colour"`` model.

    :param torch.Tensor images: (N, 3, S, S) pixels.
    :param torch.Tensor strength: (B, N, S, S) the prediction's strength relative to its peak, in [0, 1].
    :param float core: the object's colour is fitted where ``strength >= core``.
    :param float outside: the background's colour is fitted where ``strength < outside``.
    :param float prior: prior probability of "object".
    :returns: (B, N, S, S).
    """
    x = images.flatten(2).unsqueeze(0)                                      # (1, N, 3, P)
    st = strength.flatten(2)
    ll_obj = _colour_log_lik(x, (st >= core).to(x.dtype), floor)
    ll_bg = _colour_log_lik(x, (st < outside).to(x.dtype), floor)
    log_odds = ll_obj - ll_bg + math.log(prior / (1.0 - prior))
    return torch.sigmoid(log_odds).reshape(strength.shape)


def colour_posterior(images: torch.Tensor, prior: torch.Tensor, iters: int = 5, floor: float = 0.02) -> torch.Tensor:
    """Posterior probability of "object" per pixel under a two-class colour model (see ``"colour"``).

    :param torch.Tensor images: (N, 3, S, S) pixels.
    :param torch.Tensor prior: (B, N, S, S) prior probabilities of "object", in (0, 1).
    :param float floor: floor on the classes' colour standard deviations.
    :returns: (B, N, S, S).
    """
    x = images.flatten(2).unsqueeze(0)                                      # (1, N, 3, P)
    p = prior.flatten(2).clamp(1e-4, 1 - 1e-4)                              # (B, N, P)
    log_odds_prior = torch.log(p) - torch.log1p(-p)
    q = p
    for _ in range(iters):
        q = torch.sigmoid(_colour_log_lik(x, q, floor) - _colour_log_lik(x, 1 - q, floor) + log_odds_prior)
    return q.reshape(prior.shape)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N, H, W) → (B, N, size, size), nearest (masks stay crisp at the layer's resolution)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    B, N = x.shape[:2]
    return F.interpolate(x.reshape(B * N, 1, *x.shape[-2:]).float(), size=(size, size), mode="nearest").reshape(
        B, N, size, size)


def instance_masks(hierarchy: Hierarchy, f_bu: list[torch.Tensor], result: BackwardResult,
                   config: MaskConfig | None = None, background: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The instance mask of every kept assignment of a backward pass.

    :param list f_bu: the ``L`` bottom-up maps the pass ran on, each (N, C_l, H_l, W_l); ``f_bu[0]``
        is the image (N, 3, S, S).
    :param BackwardResult result: its result.
    :param list background: ``L`` maps (C_l, H_l, W_l), the backbone's activations of an empty image
        (used when ``config.relative``; ``None``: zeros).
    :returns: (B, N, S, S) bool.
    """
    config = config or MaskConfig()
    S = hierarchy.specs[0].height
    l = hierarchy.layer_index(config.layer)
    f_tilde = top_down_prediction(hierarchy, result, l)
    if config.relative and background is not None:
        strength = (f_tilde - background[l]).norm(dim=-3)
    else:
        strength = f_tilde.norm(dim=-3)                                        # (B, N, H, W)
    peak = strength.flatten(-2).amax(-1).clamp_min(1e-12)[..., None, None]
    mask = _resize(strength >= config.fraction * peak, S) > 0.5
    if config.gate == "none":
        return mask
    if config.gate == "core_colour":
        relative = _resize(strength / peak, S)
        q = core_colour_posterior(f_bu[0], relative, config.core_fraction, config.fraction, config.core_prior)
        return mask & (q > 0.5)
    if config.gate == "colour":
        prior = torch.where(mask, config.prior_in, 1.0 - config.prior_in)
        return mask & (colour_posterior(f_bu[0], prior, config.colour_iters) > 0.5)
    if config.gate == "nonblack":
        gate = (f_bu[0].amax(-3) > config.gate_threshold).unsqueeze(0)
        return mask & gate
    g = hierarchy.layer_index(config.gate_layer) if config.gate_layer else l
    if g != l:
        f_tilde = top_down_prediction(hierarchy, result, g)
    ratio = agreement_map(hierarchy, g, f_bu[g], f_tilde)
    if config.smooth > 1:
        B, N = ratio.shape[:2]
        ratio = F.avg_pool2d(ratio.reshape(B * N, 1, *ratio.shape[-2:]), config.smooth, stride=1,
                             padding=config.smooth // 2, count_include_pad=False).reshape(ratio.shape)
    return mask & (_resize((ratio > config.gate_threshold).float(), S) > 0.5)
