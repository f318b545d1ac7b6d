"""Parsing from posterior modes: ranking and suppression against a plain loop, and the parse's wiring."""

import dataclasses

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
from pyro_backpass.vision.explain import explain
from pyro_backpass.vision.mode_parse import rank_modes
from pyro_backpass.vision.parsing import ParseConfig, parse_scene

MC = MaskConfig(layer="conv1")


def _loop(masks, score, usable, nms, steps):
    """One image at a time, in plain Python: the order and suppression rank_modes documents."""
    M, N = score.shape
    orders, kepts = [], []
    for n in range(N):
        ranked = sorted(range(M), key=lambda m: (not bool(usable[m, n]), -float(score[m, n]), m))
        kept = []
        for m in ranked:
            # Compared as float32 tensors, as rank_modes does (0.3 vs an IoU of 3/10 is a tie there).
            clash = any(bool(iou_matrix(masks[m, n][None], masks[u, n][None])[0, 0] > nms) for u in kept)
            if bool(masks[m, n].any()) and not clash:
                kept.append(m)
        rest = [m for m in ranked if m not in kept]
        seq = (kept + rest)[:steps]
        orders.append(seq)
        kepts.append([m in kept for m in seq])
    return torch.tensor(orders).T, torch.tensor(kepts).T


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), nms=st.sampled_from([0.0, 0.3, 0.5, 1.0]), steps=st.integers(1, 6))
def test_rank_modes_matches_a_plain_loop(seed, nms, steps):
    g = torch.Generator().manual_seed(seed)
    M, N, S = 6, 3, 5
    base = torch.rand(N, 3, S, S, generator=g) < 0.4
    pick = torch.randint(3, (M, N), generator=g)
    masks = base[torch.arange(N)[None], pick] ^ (torch.rand(M, N, S, S, generator=g) < 0.1)
    masks[2, 0] = False                                          # an empty mode is never kept
    score = torch.randint(4, (M, N), generator=g).float()        # ties: the better mode (lower index) first
    usable = torch.rand(M, N, generator=g) < 0.7
    order, kept = rank_modes(masks, score, usable, nms, min(steps, M))
    want_order, want_kept = _loop(masks, score, usable, nms, min(steps, M))
    assert torch.equal(order, want_order) and torch.equal(kept, want_kept)


def test_rank_modes_checks_shapes():
    with pytest.raises(ValueError, match="usable"):
        rank_modes(torch.zeros(3, 2, 4, 4, dtype=torch.bool), torch.zeros(3, 2), torch.ones(2, 3, dtype=torch.bool),
                   0.3, 2)


def test_mode_parse_steps_are_ranked_posterior_modes():
    h = toy_hierarchy(seed=0)
    tr = poutine.trace(activation_model).get_trace(h, n=3)
    f_bu = [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]
    cfg = ParseConfig(strategy="modes", n_modes=6, max_steps=3, rank="evidence", evidence_threshold=-1e9)
    parsed = parse_scene(activation_model, h, f_bu, cfg, mask_config=MC)
    modes = explain(activation_model, h, f_bu, topk=6, topk_layer=h.L - 1, mask_config=MC)
    order, kept = rank_modes(modes.mask, modes.evidence, torch.ones(6, 3, dtype=torch.bool), 0.3, 3)
    n = torch.arange(3).expand_as(order)
    assert torch.equal(parsed.masks, modes.mask[order, n].transpose(0, 1))
    assert torch.equal(parsed.evidence, modes.evidence[order, n].T)
    assert torch.equal(parsed.accepted, kept.T)
    greedy = explain(activation_model, h, f_bu, mask_config=MC)
    assert torch.equal(parsed.first_pass, greedy.mask[0])         # the greedy pass's MAP, whatever the ranking
    # Ranked by evidence, the first kept step is the best non-empty mode.
    assert (parsed.evidence[:, 0] >= modes.evidence.masked_fill(~modes.mask.flatten(-2).any(-1), -1e30).amax(0)).all()


def test_mode_parse_ranks_by_the_verifier_and_needs_one():
    h = toy_hierarchy(seed=0)
    tr = poutine.trace(activation_model).get_trace(h, n=2)
    f_bu = [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]
    probs = torch.linspace(0.05, 0.95, 8 * 2)                   # mode-major: later modes are trusted more

    def verifier(images, masks):
        assert images.shape[0] == masks.shape[0] == 16
        return probs

    cfg = ParseConfig(strategy="modes", n_modes=8, max_steps=2, verify_threshold=0.5, evidence_threshold=-1e9,
                      nms_iou=1.0)
    parsed = parse_scene(activation_model, h, f_bu, cfg, mask_config=MC, verifier=verifier)
    nonempty = explain(activation_model, h, f_bu, topk=8, topk_layer=h.L - 1, mask_config=MC).mask.flatten(-2).any(-1)
    for n in range(2):
        best = [m for m in range(7, -1, -1) if nonempty[m, n]][:2]   # highest probability first
        assert torch.equal(parsed.verified[n], probs.reshape(8, 2)[best, n])
        assert parsed.accepted[n].tolist() == [float(probs.reshape(8, 2)[m, n]) >= 0.5 for m in best]
    with pytest.raises(ValueError, match="verifier"):
        parse_scene(activation_model, h, f_bu, cfg, mask_config=MC)
    for bad in (dict(strategy="beam"), dict(rank="area"), dict(nms_iou=1.5), dict(n_modes=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ParseConfig(**bad)


def test_mode_parse_in_chunks_of_images_is_the_same_parse():
    h = toy_hierarchy(seed=0)
    tr = poutine.trace(activation_model).get_trace(h, n=5)
    f_bu = [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]
    cfg = ParseConfig(strategy="modes", n_modes=6, max_steps=3, rank="evidence")
    whole = parse_scene(activation_model, h, f_bu, cfg, mask_config=MC)               # 5 images <= 64 // 6
    chunked = parse_scene(activation_model, h, f_bu, dataclasses.replace(cfg, mode_chunk=12),
                          mask_config=MC)                                                # chunks of 2, 2, 1
    for name in ("masks", "reconstructions", "evidence", "accepted", "path_score", "first_pass"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=0, atol=0)
    assert all(torch.equal(chunked.hidden[k], whole.hidden[k]) for k in whole.hidden)
    # A per-image model argument is not split: the images go through in one batch.
    per_image = parse_scene(activation_model, h, f_bu, dataclasses.replace(cfg, mode_chunk=12),
                            mask_config=MC, category=torch.zeros(5, dtype=torch.long))
    assert per_image.masks.shape == whole.masks.shape
