"""Queries among posterior modes, location priors, sampling from the prior."""

import pytest
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy
from pyro_backpass import sites
from pyro_backpass.vision import MaskConfig
from pyro_backpass.vision.queries import PREDICATES, QueryConfig, answer_query, distinct_modes, location_prior
from pyro_backpass.vision.sampling import render_hidden, sample_images

MC = MaskConfig(layer="conv1", gate="none")


def _scene(h, n=2):
    tr = poutine.trace(activation_model).get_trace(h, n=n)
    return [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]


def test_predicates_on_hand_made_masks():
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, 2:4, 0:2] = True      # small, left
    masks[1, 0:8, 4:10] = True     # large, right
    masks[2, 5:7, 5:7] = True      # small, middle
    rec = torch.ones(3, 3, 10, 10)
    rec[2] = 0.1
    assert int(PREDICATES["leftmost"](masks, rec).argmax()) == 0
    assert int(PREDICATES["rightmost"](masks, rec).argmax()) == 1
    assert int(PREDICATES["largest"](masks, rec).argmax()) == 1
    assert int(PREDICATES["darkest"](masks, rec).argmax()) == 2


def test_distinct_modes_and_answers():
    h = toy_hierarchy(seed=0)
    f_bu = _scene(h)
    cfg = QueryConfig(n_modes=6, nms_iou=0.5, max_candidates=3, candidates="modes")
    modes, cand = distinct_modes(activation_model, h, f_bu, cfg, mask_config=MC)
    assert cand.shape == (6, 2) and cand.any(0).all() and (cand.sum(0) <= 3).all()
    assert (modes.evidence[:-1] >= modes.evidence[1:] - 1e-3).all()  # best first
    ans = answer_query(activation_model, h, f_bu, "largest", cfg, mask_config=MC)
    n = torch.arange(2)
    areas = modes.mask.sum((-2, -1)).float().masked_fill(~cand, -1)
    assert torch.equal(ans.choice, areas.argmax(0))
    assert torch.equal(ans.mask, modes.mask[ans.choice, n])
    custom = answer_query(activation_model, h, f_bu, lambda m, r: -m.sum((-2, -1)).float(), cfg, mask_config=MC)
    assert cand[custom.choice, n].all()


def test_parse_candidates_are_the_first_parse_steps():
    from pyro_backpass.vision.parsing import ParseConfig, parse_scene

    h = toy_hierarchy(seed=0)
    f_bu = _scene(h, n=3)
    cfg = QueryConfig(max_candidates=2, candidates="parse")
    ans = answer_query(activation_model, h, f_bu, "largest", cfg, mask_config=MC)
    parsed = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=2), mask_config=MC)
    masks = parsed.masks.transpose(0, 1)                                       # (T, N, S, S)
    assert ans.modes is None and ans.candidates.shape == (2, 3)
    expected = masks.flatten(-2).any(-1) & (parsed.evidence.T > 0)
    expected[0] |= ~expected.any(0)
    assert torch.equal(ans.candidates, expected)
    n = torch.arange(3)
    assert torch.equal(ans.mask, masks[ans.choice, n])
    areas = masks.sum((-2, -1)).float().masked_fill(~expected, -torch.inf)
    assert torch.equal(ans.choice, areas.argmax(0))
    torch.testing.assert_close(ans.reconstruction, parsed.reconstructions.transpose(0, 1)[ans.choice, n])
    with pytest.raises(ValueError, match="candidates"):
        QueryConfig(candidates="votes")
    # A parse made beforehand (longer than needed) gives the same answer without parsing again.
    longer = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=3), mask_config=MC)
    reused = answer_query(activation_model, h, f_bu, "largest", cfg, mask_config=MC, parsed=longer)
    assert torch.equal(reused.choice, ans.choice) and torch.equal(reused.mask, ans.mask)
    assert torch.equal(reused.candidates, ans.candidates)


def test_unknown_query_is_a_clear_error():
    h = toy_hierarchy(seed=0)
    with pytest.raises(ValueError, match="query"):
        answer_query(activation_model, h, _scene(h), "tallest")
    with pytest.raises(TypeError, match="query"):
        answer_query(activation_model, h, _scene(h), 3)


def test_location_prior_moves_the_top_offset():
    h = toy_hierarchy(seed=1)
    f_bu = _scene(h, n=1)
    prior = location_prior(h, dy=-1, dx=-1, strength=1e4)
    assert prior["top"].shape == (9,) and int(prior["top"].argmax()) == 0
    ans = answer_query(activation_model, h, f_bu, "leftmost", QueryConfig(n_modes=3, candidates="modes"),
                       mask_config=MC, delta_logits=prior)
    assert int(ans.modes.hidden["delta/top"][0, 0]) == 0


def test_samples_respect_clamps_and_render_the_mean():
    h = toy_hierarchy(seed=2)
    images, hidden = sample_images(activation_model, h, 5, clamp={"gamma/top": 1, "delta/top": 4})
    assert images.shape == (5, 4, 12, 12) and (images >= 0).all() and (images <= 1).all()
    assert (hidden["gamma/top"] == 1).all() and (hidden["delta/top"] == 4).all()
    torch.testing.assert_close(images, render_hidden(h, hidden)[0].clamp(0, 1))
    noisy, _ = sample_images(activation_model, h, 5, noise="sample")
    assert noisy.shape == images.shape
    with pytest.raises(ValueError, match="noise"):
        sample_images(activation_model, h, 2, noise="blur")
    with pytest.raises(ValueError, match="clamp"):
        sample_images(activation_model, h, 2, clamp={"gamma/nowhere": 0})
    with pytest.raises(ValueError, match="n"):
        sample_images(activation_model, h, 0)
