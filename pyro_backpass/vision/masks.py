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
- ``"colour_line"`` (default): the object's colours lie on a *colour line* through black (one albedo
  under varying shading, :mod:`~pyro_backpass.vision.colour_models`), the background's are a mixture
  of ``bg_components`` diagonal Gaussians fitted outside the region; the line is first fitted to the
  ``core_keep`` fraction of the core's pixels (``‖f̃‖ ≥ core_fraction · max``) that the background
  explains worst, then ``line_iters`` times the region's pixels are classified (prior ``core_prior``
  of "object") and both models refitted to the result, as GrabCut does; only the parts connected to
  the core are kept;
- ``"core_colour"``: a two-class colour model fitted from the prediction's *core* and its
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

Defaults measured on validation scenes (split ``val``, first-pass IoU of the model trained on
2026-12-06, 2-core AMD EPYC CPU; ``python -m scripts.mask_study --seed S --scenes N`` compares the rules
on the same passes): conv3_2, relative, region at 0.3, core at 0.9, ``"colour_line"`` gate with
``core_keep`` 0.2, 6 refits, ``core_prior`` 0.3 and 6 background components: 0.666 / 0.661 / 0.656 on
seeds 2 / 1 / 3 (80 / 40 / 80 scenes), against 0.583 / 0.646 / 0.606 with one background Gaussian and
0.474 / 0.483 / 0.412 for the ``"core_colour"`` gate below. The line's settings were chosen on seeds 1
and 2 with one background Gaussian; one change at a time on seed 2 there: the colour line alone 0.489,
with 4 refits 0.547, with the connected components 0.558, seeded from the core's least
background-like pixels 0.567, then region 0.3 and 6 refits 0.583, against 0.463 for the object's
Gaussian with refits. The background mixture was then chosen on all three seeds: 2, 3, 4, 6, 8 and 10
components gave means over the 200 scenes of 0.61-0.66 (1: 0.605, 6: 0.661; fitted on every 4th pixel with 4 EM
steps, 18 ms per image, as good as on every pixel with 8 steps at 58 ms). A colour histogram for
either class, a trimmed fit of the line, a soft spatial prior on the strength, a lower region fraction
or a bilinear upsampling of the strength measured worse or no better.

The previous defaults, measured on the same 120 scenes with an earlier model (2026-12-02): conv3_2,
relative to the empty image, region at 0.4 of the peak, core at 0.9, ``core_prior`` 0.3,
``"core_colour"`` gate: 0.502 / 0.512 (0.50-0.52 for cores 0.8-0.9 and priors 0.3-0.4; a mixture of
3-5 Gaussians for the background, or smoothing the log-odds, measured no better); the earlier default,
the ``"colour"`` gate on the region at 0.6, 0.398 / 0.395, and the best per-scene region fraction under
it (an oracle) only 0.44.
An earlier model, 40 validation scenes (seed 1): conv3_2 at 0.6 of its peak, relative, colour gate 0.394; the
same at 0.5 0.388, at 0.4 0.346; not relative 0.26 at 0.4-0.5; pool3 0.38; conv1_2 and conv2_2 at
most 0.21; every pixel 0.073. With the compositional backbone the lower layers do as well
(conv2_2 at 0.6 with the colour gate 0.408, conv1_2 0.394).

The rule is one replaceable function with the signature of :func:`instance_masks`; any function
``rule(hierarchy, f_bu, result) -> (B, N, S, S) bool`` can be passed where a mask rule is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import sites
from ..distributions import max_joint
from ..hierarchy import Hierarchy
from ..inference import BackwardResult
from .colour_models import colour_line_masks, colour_posterior, core_colour_posterior

__all__ = ["MaskConfig", "GATES", "top_down_prediction", "instance_masks", "agreement_map", "colour_posterior",
           "core_colour_posterior", "colour_line_masks"]

GATES = ("colour_line", "core_colour", "agreement", "colour", "nonblack", "none")


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
    :param float core_fraction: the ``"colour_line"`` and ``"core_colour"`` gates fit the object's colour
        where ``‖f̃‖ ≥ core_fraction · max ‖f̃‖`` (at least ``fraction`` for those gates).
    :param float core_prior: their prior probability of "object" inside the region.
    :param float core_keep: the ``"colour_line"`` gate seeds the object's line with this fraction of the
        core's pixels, those the background model explains worst.
    :param int line_iters: classify-and-refit rounds of the ``"colour_line"`` gate.
    :param int bg_components: diagonal Gaussians in the ``"colour_line"`` gate's background mixture
        (:func:`~pyro_backpass.vision.colour_models.mixture_log_lik`; 1: one Gaussian).
    """

    layer: str = "conv3_2"
    fraction: float = 0.3
    gate: str = "colour_line"
    gate_layer: str = ""
    gate_threshold: float = 0.0
    smooth: int = 3
    relative: bool = True
    prior_in: float = 0.9
    colour_iters: int = 5
    core_fraction: float = 0.9
    core_prior: float = 0.3
    core_keep: float = 0.2
    line_iters: int = 6
    bg_components: int = 6

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
        low = self.fraction if self.gate in ("colour_line", "core_colour") else 0.0
        if not low <= self.core_fraction <= 1.0:
            raise ValueError(f"core_fraction: expected a value in [{low}, 1] (at least fraction for the "
                             f"'colour_line' and 'core_colour' gates), got {self.core_fraction!r}")
        if not 0.0 < self.core_prior < 1.0:
            raise ValueError(f"core_prior: expected a probability in (0, 1), got {self.core_prior!r}")
        if not 0.0 < self.core_keep <= 1.0:
            raise ValueError(f"core_keep: expected a fraction in (0, 1], got {self.core_keep!r}")
        if not isinstance(self.line_iters, int) or self.line_iters < 0:
            raise ValueError(f"line_iters: expected an int >= 0, got {self.line_iters!r}")
        if not isinstance(self.bg_components, int) or self.bg_components < 1:
            raise ValueError(f"bg_components: expected an int >= 1, got {self.bg_components!r}")


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
    if config.gate in ("colour_line", "core_colour"):
        relative = _resize(strength / peak, S)
    if config.gate == "colour_line":  # it thresholds the region itself
        return colour_line_masks(f_bu[0], relative, config.fraction, config.core_fraction, config.core_prior,
                                 config.core_keep, config.line_iters, config.bg_components)
    mask = _resize(strength >= config.fraction * peak, S) > 0.5
    if config.gate == "none":
        return mask
    if config.gate == "core_colour":
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
