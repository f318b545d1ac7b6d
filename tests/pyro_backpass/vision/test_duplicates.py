"""Duplicate steps of a parse: a step that finds an earlier accepted step's instance again is rejected."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy
from pyro_backpass import sites
from pyro_backpass.metrics import iou_matrix
from pyro_backpass.vision import MaskConfig
from pyro_backpass.vision.parsing import ParseConfig, parse_scene, reject_duplicates


def _brute_force(masks, accepted, threshold):
    out = accepted.clone()
    for n in range(masks.shape[0]):
        kept = []
        for t in range(masks.shape[1]):
            if not out[n, t]:
                continue
            ious = [iou_matrix(masks[n, t][None], masks[n, u][None])[0, 0] for u in kept]
            if any(bool(i >= threshold) for i in ious):  # float32 comparisons, as reject_duplicates makes
                out[n, t] = False
            else:
                kept.append(t)
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.sampled_from([0.05, 0.3, 0.5, 1.0]))
def test_reject_duplicates_matches_a_step_by_step_loop(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    N, T, S = 3, 5, 6
    base = torch.rand(N, 2, S, S, generator=g) < 0.4
    # Steps are noisy copies of two instances, so that exact and near duplicates both occur.
    pick = torch.randint(2, (N, T), generator=g)
    masks = base[torch.arange(N)[:, None], pick] ^ (torch.rand(N, T, S, S, generator=g) < 0.1)
    masks[0, 0] = False                                    # an empty mask never duplicates anything
    accepted = torch.rand(N, T, generator=g) < 0.8
    got = reject_duplicates(masks, accepted, threshold)
    assert torch.equal(got, _brute_force(masks, accepted, threshold))
    assert not (got & ~accepted).any()                     # it only ever rejects


def test_reject_duplicates_keeps_the_first_of_identical_steps_and_checks_shapes():
    masks = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True                                 # three identical steps
    accepted = torch.tensor([[False, True, True]])
    assert reject_duplicates(masks, accepted, 0.5).tolist() == [[False, True, False]]
    with pytest.raises(ValueError, match="masks"):
        reject_duplicates(masks[0], accepted, 0.5)


def test_parse_rejects_the_duplicates_of_its_accepted_steps():
    h = toy_hierarchy(seed=0)
    tr = poutine.trace(activation_model).get_trace(h, n=3)
    f_bu = [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]
    mc = MaskConfig(layer="conv1")
    plain = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=3), mask_config=mc)
    dedup = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=3, duplicate_iou=0.5), mask_config=mc)
    assert torch.equal(dedup.masks, plain.masks) and torch.equal(dedup.evidence, plain.evidence)
    assert torch.equal(dedup.accepted, reject_duplicates(plain.masks, plain.accepted, 0.5))
    with pytest.raises(ValueError, match="duplicate_iou"):
        ParseConfig(duplicate_iou=0.0)
