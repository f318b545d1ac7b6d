"""Instance-mask rule: predicted region from f̃, gated by bottom-up/top-down agreement."""

import pytest
import torch

from models.activation import activation_model
from models.toy import toy_hierarchy
from pyro_backpass import sites
from pyro_backpass.inference import backward_pass
from pyro_backpass.vision import MaskConfig, agreement_map, instance_masks, top_down_prediction


def _pass(h, f_bu):
    return backward_pass(activation_model, h, f_bu, beam=2)


def _toy_scene(h, n=2):
    from pyro import poutine

    tr = poutine.trace(activation_model).get_trace(h, n=n)
    return [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]


def test_top_down_prediction_matches_phi_of_the_map():
    h = toy_hierarchy(seed=1)
    f_bu = _toy_scene(h)
    res = _pass(h, f_bu)
    pred = top_down_prediction(h, res, "conv1")
    l = h.layer_index("conv1")
    want = h.phi(l, res.f_td[l + 1][0], res.hidden["gamma/conv1"][0], res.hidden["delta/conv1"][0])
    assert pred.shape == (2,) + tuple(f_bu[l].shape)
    torch.testing.assert_close(pred[0], want)
    top = top_down_prediction(h, res, h.L - 1)
    assert top.shape[-3:] == h.specs[-1].shape


def test_strength_rule_without_gate_is_the_thresholded_norm():
    h = toy_hierarchy(seed=2)
    f_bu = _toy_scene(h)
    res = _pass(h, f_bu)
    cfg = MaskConfig(layer="conv1", fraction=0.5, gate="none")
    mask = instance_masks(h, f_bu, res, cfg)
    s = top_down_prediction(h, res, "conv1").norm(dim=-3)
    want = s >= 0.5 * s.flatten(-2).amax(-1)[..., None, None]
    assert mask.dtype == torch.bool and torch.equal(mask, want)


def test_agreement_gate_keeps_only_where_the_scene_matches_the_prediction():
    h = toy_hierarchy(seed=3)
    f_bu = _toy_scene(h, n=1)
    res = _pass(h, f_bu)
    l = h.layer_index("conv1")
    pred = top_down_prediction(h, res, l)[0]
    # A scene that shows the predicted object on the left half and nothing on the right half.
    scene = pred.clone()
    scene[..., 6:] = 0.0
    ratio = agreement_map(h, l, scene, pred.unsqueeze(0))[0, 0]
    strong = pred[0].norm(dim=0) > 0.5 * pred[0].norm(dim=0).max()
    assert (ratio[:, :6][strong[:, :6]] > 0).all()
    assert (ratio[:, 6:][strong[:, 6:]] < 0).all()
    maps = list(f_bu)
    maps[l] = scene
    mask = instance_masks(h, maps, res, MaskConfig(layer="conv1", fraction=0.5, gate="agreement", smooth=1))[0, 0]
    assert not mask[:, 7:].any()
    assert mask[:, :5].any()


def test_nonblack_gate_uses_the_image():
    h = toy_hierarchy(seed=4)
    f_bu = _toy_scene(h, n=1)
    res = _pass(h, f_bu)
    black = list(f_bu)
    black[0] = torch.zeros_like(f_bu[0])
    mask = instance_masks(h, black, res, MaskConfig(layer="conv1", fraction=0.0, gate="nonblack", gate_threshold=0.1))
    assert not mask.any()


@pytest.mark.parametrize("kwargs, match", [({"gate": "maybe"}, "gate"), ({"fraction": 2.0}, "fraction"),
                                           ({"smooth": 2}, "smooth"), ({"core_fraction": 0.2}, "core_fraction"),
                                           ({"core_prior": 1.0}, "core_prior"), ({"core_keep": 0.0}, "core_keep"),
                                           ({"line_iters": -1}, "line_iters"), ({"bg_components": 0}, "bg_components")])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskConfig(**kwargs)


def test_unknown_layer_is_a_clear_error():
    h = toy_hierarchy(seed=5)
    f_bu = _toy_scene(h, n=1)
    res = _pass(h, f_bu)
    with pytest.raises(ValueError, match="layer"):
        instance_masks(h, f_bu, res, MaskConfig(layer="conv9"))


def test_colour_gate_recovers_a_coloured_object_inside_a_loose_region():
    from pyro_backpass.vision.masks import colour_posterior

    img = torch.zeros(1, 3, 20, 20)
    img[:, 1] = 0.1 * torch.rand(20, 20, generator=torch.Generator().manual_seed(0))
    img[:, 0, 5:15, 5:15] = 1.0
    prior = torch.full((1, 1, 20, 20), 0.1)
    prior[..., 3:17, 3:17] = 0.9
    q = colour_posterior(img, prior)
    want = torch.zeros(20, 20, dtype=torch.bool)
    want[5:15, 5:15] = True
    assert torch.equal(q[0, 0] > 0.5, want)


def test_relative_rule_measures_against_the_background(tiny_trained, tiny_images):
    from pyro_backpass.vision import map_image

    res = map_image(activation_model, tiny_trained, tiny_images, mask_config=MaskConfig(relative=True, gate="colour"))
    assert res.mask.shape == (1, 3, 32, 32)
    bg = tiny_trained.background()
    assert [tuple(b.shape) for b in bg] == [s.shape for s in tiny_trained.hierarchy.specs]
    f_bu = tiny_trained.activations(tiny_images)
    h = tiny_trained.hierarchy
    # no background: the empty image's activations are zeros, so the rule is the plain one
    assert torch.equal(instance_masks(h, f_bu, res.backward, MaskConfig(relative=True)),
                       instance_masks(h, f_bu, res.backward, MaskConfig(relative=False)))
    zeros = [torch.zeros_like(b) for b in bg]
    assert torch.equal(instance_masks(h, f_bu, res.backward, MaskConfig(relative=True), zeros),
                       instance_masks(h, f_bu, res.backward, MaskConfig(relative=False)))


def _thin_object_scene():
    """A thin red bar on a noisy green background; the predicted region is a loose box mostly of
    background (like a blurry template over a thin airplane), strongest on part of the bar."""
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 3, 24, 24)
    img[:, 1] = 0.3 + 0.1 * torch.rand(24, 24, generator=g)
    img[:, 0, 11:13, 4:20] = 0.9
    img[:, 1, 11:13, 4:20] = 0.1
    strength = torch.zeros(1, 1, 24, 24)
    strength[..., 4:20, 2:22] = 0.5
    strength[..., 10:14, 8:16] = 1.0
    want = torch.zeros(24, 24, dtype=torch.bool)
    want[11:13, 4:20] = True
    return img, strength, want


def test_core_colour_gate_recovers_a_thin_object_in_a_region_of_mostly_background():
    from pyro_backpass.vision.masks import core_colour_posterior

    img, strength, want = _thin_object_scene()
    region = strength >= 0.4
    q = core_colour_posterior(img, strength, core=0.9, outside=0.4, prior=0.3)
    assert q.shape == strength.shape
    assert torch.equal(region[0, 0] & (q[0, 0] > 0.5), want)


def test_core_colour_posterior_is_the_two_gaussian_log_odds():
    from pyro_backpass.vision.masks import core_colour_posterior

    img, strength, _ = _thin_object_scene()
    img = img.double()
    q = core_colour_posterior(img, strength, core=0.9, outside=0.4, prior=0.3, floor=0.02)[0, 0]
    x = img[0].flatten(1)                                         # (3, P)
    st = strength.flatten()

    def log_density(sel):
        mu = x[:, sel].mean(1, keepdim=True)
        var = x[:, sel].var(1, unbiased=False, keepdim=True) + 0.02 ** 2
        return (-0.5 * (x - mu) ** 2 / var - 0.5 * var.log()).sum(0)

    log_odds = log_density(st >= 0.9) - log_density(st < 0.4) + torch.log(torch.tensor(0.3 / 0.7)).double()
    torch.testing.assert_close(q.flatten(), torch.sigmoid(log_odds))


def test_core_fraction_bounds_the_region_only_for_the_core_gate():
    assert MaskConfig(fraction=0.95, gate="none").fraction == 0.95
    with pytest.raises(ValueError, match="core_fraction"):
        MaskConfig(fraction=0.95, gate="core_colour")
