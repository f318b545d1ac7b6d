"""Category verification: the classifier on masked instances, and the parse's acceptance rule with it."""

import dataclasses

import pytest
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy
from pyro_backpass import sites
from pyro_backpass.vision import MaskConfig
from pyro_backpass.vision.parsing import ParseConfig, parse_scene
from pyro_backpass.vision.queries import QueryConfig, parsed_candidates
from pyro_backpass.vision.verify import category_verifier

MC = MaskConfig(layer="conv1")


def _scene(h, n=3):
    tr = poutine.trace(activation_model).get_trace(h, n=n)
    return [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]


def test_category_verifier_is_the_classifier_on_the_masked_image(tiny_trained, tiny_images):
    backbone = tiny_trained.backbone
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    masks[1] = True
    p = category_verifier(backbone, 0)(tiny_images, masks)
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    want = backbone.classify(tiny_images * masks[:, None]).softmax(-1)[:, 0]
    torch.testing.assert_close(p, want.detach())
    # An empty mask shows the classifier a black image, whatever the scene.
    empty = category_verifier(backbone, 2)(tiny_images, torch.zeros(3, 32, 32, dtype=torch.bool))
    torch.testing.assert_close(empty, empty[:1].expand(3))


def test_category_verifier_rejects_bad_arguments(tiny_trained, tiny_images):
    with pytest.raises(TypeError, match="backbone"):
        category_verifier(torch.nn.Linear(2, 2), 0)
    with pytest.raises(ValueError, match="category"):
        category_verifier(tiny_trained.backbone, -1)
    with pytest.raises(ValueError, match="category"):
        category_verifier(tiny_trained.backbone, 99)(tiny_images, torch.ones(3, 32, 32, dtype=torch.bool))


def test_rejected_steps_are_explained_away_but_not_accepted():
    h = toy_hierarchy(seed=0)
    f_bu = _scene(h)
    calls = []

    def reject_second_step(images, masks):             # sees the scene's pixels and every step's mask
        calls.append((images.shape, masks.shape))
        return torch.tensor([1.0, 0.2, 0.9] * 3)       # (N·T,), scene-major

    plain = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=3), mask_config=MC)
    cfg = ParseConfig(max_steps=3, verify_threshold=0.5)
    checked = parse_scene(activation_model, h, f_bu, cfg, mask_config=MC, verifier=reject_second_step)
    assert calls == [((9, 4, 12, 12), (9, 12, 12))]
    assert torch.equal(checked.masks, plain.masks) and torch.equal(checked.evidence, plain.evidence)
    assert torch.equal(checked.accepted, plain.accepted & torch.tensor([True, False, True]))
    torch.testing.assert_close(checked.verified, torch.tensor([[1.0, 0.2, 0.9]] * 3))
    assert plain.verified is None


def test_query_candidates_pass_over_steps_the_parse_did_not_accept():
    from pyro_backpass.vision.parsing import ParseResult

    g = torch.Generator().manual_seed(0)
    N, T, S = 3, 3, 8
    masks = torch.rand(N, T, S, S, generator=g) > 0.5
    recs = torch.rand(N, T, 3, S, S, generator=g)
    accepted = torch.tensor([[True, False, True], [False, True, True], [False, False, False]])
    parsed = ParseResult(masks=masks, reconstructions=recs, evidence=torch.ones(N, T), accepted=accepted,
                         hidden={}, path_score=torch.zeros(N))
    h = toy_hierarchy(seed=0)
    got_masks, got_recs, keep = parsed_candidates(activation_model, h, None, QueryConfig(max_candidates=2),
                                                  parsed=parsed)
    steps = torch.tensor([[0, 2], [1, 2], [0, 1]])            # scene 2 accepted none: its first steps
    n = torch.arange(N)[:, None]
    assert torch.equal(got_masks, masks[n, steps].transpose(0, 1))
    assert torch.equal(got_recs, recs[n, steps].transpose(0, 1))
    assert torch.equal(keep, torch.tensor([[True, True, True], [True, True, False]]))


def test_verification_needs_a_verifier_and_a_probability():
    h = toy_hierarchy(seed=0)
    f_bu = _scene(h, n=1)
    with pytest.raises(ValueError, match="verifier"):
        parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=1, verify_threshold=0.5), mask_config=MC)
    with pytest.raises(ValueError, match="verify_threshold"):
        ParseConfig(verify_threshold=1.5)
    assert dataclasses.replace(ParseConfig(), verify_threshold=None).verify_threshold is None
