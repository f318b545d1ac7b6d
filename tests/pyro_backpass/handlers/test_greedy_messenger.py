"""The greedy handler against the plain reference greedy, beams, modes and clamps (DESIGN §4)."""

import pyro
import pytest
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.handlers import GreedyMessenger, greedy
from pyro_backpass.inference import backward_pass, empty_score, impute, trace_log_score
from pyro_backpass.inference.reference import greedy_reference


def _scene(h, n=3, seed=0):
    pyro.set_rng_seed(seed)
    tr = poutine.trace(activation_model).get_trace(h, n=n)
    f_bu = [tr.nodes[f"f_bu/{s.name}"]["value"] for s in h.specs]
    f_td = [tr.nodes[f"f_td/{s.name}"]["value"] for s in h.specs]
    truth = {k: tr.nodes[k]["value"] for k in h.hidden_site_names()}
    return f_bu, f_td, truth


@pytest.mark.parametrize("seed", range(6))
def test_handler_equals_plain_reference(seed):
    h = toy_hierarchy(seed=seed, sigma0=0.5, sigma1=0.6, sigma2=0.6).double()
    f_bu, _, _ = _scene(h, n=2, seed=100 + seed)
    res = backward_pass(activation_model, h, f_bu)
    ref_hidden, ref_total = greedy_reference(h, f_bu)
    for k, v in ref_hidden.items():
        assert torch.equal(res.hidden[k][0], v), k
    torch.testing.assert_close(res.total[0], ref_total)
    # The recorded total is the model's own score of the chosen assignment.
    rescored = trace_log_score(activation_model, res.best(), h, f_bu=f_bu, form="profile")
    torch.testing.assert_close(rescored, res.total[0])
    torch.testing.assert_close(res.layer_scores.sum(-1), res.total)


def test_estep_handler_equals_reference():
    h = toy_hierarchy(seed=1).double()
    _, f_td, truth = _scene(h, n=2, seed=7)
    res = impute(activation_model, h, f_td)
    ref_hidden, ref_total = greedy_reference(h, None, f_td_observed=f_td)
    for k, v in ref_hidden.items():
        assert torch.equal(res.hidden[k][0], v), k
    torch.testing.assert_close(res.total[0], ref_total)


def test_batch_equals_one_image_at_a_time():
    h = toy_hierarchy(seed=2).double()
    f_bu, _, _ = _scene(h, n=3, seed=3)
    batch = backward_pass(activation_model, h, f_bu, beam=2)
    for n in range(3):
        one = backward_pass(activation_model, h, [x[n:n + 1] for x in f_bu], beam=2)
        torch.testing.assert_close(one.total[:, 0], batch.total[:, n])
        for k in batch.hidden:
            assert torch.equal(one.hidden[k][:, 0], batch.hidden[k][:, n])


def test_full_beam_is_exact_and_beams_are_sorted():
    specs = toy_specs(size=6, channels=(2, 3, 3, 3), K=2, radii=(0, 0, 0, 1))
    h = toy_hierarchy(seed=4, specs=specs, sigma0=0.6, sigma1=0.8, sigma2=0.8).double()
    f_bu, _, _ = _scene(h, n=2, seed=5)
    n_joint = 2 * 2 * 9 * 2 * 2 * 2  # category, top (γ, δ), pool1, conv1, image
    full = backward_pass(activation_model, h, f_bu, beam=n_joint)
    assert full.total.shape == (n_joint, 2)
    assert (full.total[:-1] >= full.total[1:]).all()
    # Every joint assignment appears once, so the best of the full beam is the exact MAP.
    cat = torch.stack([full.hidden[k] for k in h.hidden_site_names()], -1)
    assert len({tuple(r) for r in cat[:, 0].tolist()}) == n_joint
    from guides.exact import map_bruteforce
    _, exact = map_bruteforce(activation_model, h, f_bu)
    torch.testing.assert_close(full.total[0], exact)


def test_modes_are_distinct_top_hypotheses_each_completed_greedily():
    h = toy_hierarchy(seed=5).double()
    f_bu, _, _ = _scene(h, n=1, seed=9)
    modes = backward_pass(activation_model, h, f_bu, topk=5, topk_layer="top")
    tops = {(int(modes.hidden["category"][b, 0]), int(modes.hidden["gamma/top"][b, 0]),
             int(modes.hidden["delta/top"][b, 0])) for b in range(5)}
    assert len(tops) == 5
    assert (modes.total[:-1] >= modes.total[1:]).all()
    for b in range(5):
        clamp = {k: modes.hidden[k][b] for k in ("category", "gamma/top", "delta/top")}
        one = backward_pass(activation_model, h, f_bu, clamp=clamp)
        for k in modes.hidden:
            assert torch.equal(one.hidden[k][0], modes.hidden[k][b]), (b, k)
        torch.testing.assert_close(one.total[0], modes.total[b])
    greedy_best = backward_pass(activation_model, h, f_bu)
    torch.testing.assert_close(modes.total[0], greedy_best.total[0])


def test_clamps_through_condition_and_errors():
    h = toy_hierarchy(seed=6).double()
    f_bu, _, _ = _scene(h, n=2, seed=11)
    res = backward_pass(activation_model, h, f_bu, clamp={"gamma/pool1": 1, "category": 1})
    assert (res.hidden["gamma/pool1"] == 1).all() and (res.hidden["category"] == 1).all()
    with pytest.raises(ValueError, match="gamma/pool7"):
        backward_pass(activation_model, h, f_bu, clamp={"gamma/pool7": 0})
    with pytest.raises(ValueError, match=r"clamp\['gamma/pool1'\].*\[0, 3\)"):
        backward_pass(activation_model, h, f_bu, clamp={"gamma/pool1": 3})
    with pytest.raises(ValueError, match="category"):
        backward_pass(activation_model, h, f_bu, clamp={"category": 5})
    with pytest.raises(ValueError, match="beam"):
        GreedyMessenger(beam=0)
    bad = [x.clone() for x in f_bu]
    bad[2][0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        backward_pass(activation_model, h, bad)


def test_evidence_is_total_minus_empty_explanation():
    h = toy_hierarchy(seed=7).double()
    f_bu, _, _ = _scene(h, n=2, seed=13)
    res = backward_pass(activation_model, h, f_bu)
    torch.testing.assert_close(res.evidence, res.total - empty_score(h, f_bu))
    assert (res.evidence > 0).all()
    blank = [torch.zeros_like(x) for x in f_bu]
    assert (backward_pass(activation_model, h, blank).evidence < res.evidence).all()


def test_greedy_wrapper_as_decorator_and_context_manager():
    h = toy_hierarchy(seed=8).double()
    f_bu, _, _ = _scene(h, n=1, seed=15)
    handler = greedy(activation_model, beam=2)
    handler(h, f_bu=f_bu, form="profile")
    a = handler.get_result()
    with torch.no_grad(), greedy(beam=2) as g:
        activation_model(h, f_bu=f_bu, form="profile")
    torch.testing.assert_close(a.total, g.get_result().total)
    assert a.total.shape == (2, 1)


def test_runs_in_float32_and_keeps_dtype():
    h = toy_hierarchy(seed=9)
    f_bu, _, _ = _scene(h, n=1, seed=17)
    res = backward_pass(activation_model, h, f_bu)
    assert res.total.dtype == torch.float32 and res.f_td[0].dtype == torch.float32
    assert res.f_td[0].shape == (1, 1, 4, 12, 12)
