import pyro
import pytest
import torch
from pyro import poutine

from guides.exact import map_bruteforce, map_infer_discrete
from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.inference import backward_pass, trace_log_score
from pyro_backpass.specs import LayerSpec

SMALL = toy_specs(size=6, channels=(2, 3, 3, 3), K=2, radii=(0, 0, 1, 1))


def _scene(h, n, seed):
    pyro.set_rng_seed(seed)
    tr = poutine.trace(activation_model).get_trace(h, n=n)
    return [tr.nodes[f"f_bu/{s.name}"]["value"] for s in h.specs]


@pytest.mark.parametrize("seed", range(3))
def test_infer_discrete_agrees_with_bruteforce(seed):
    h = toy_hierarchy(seed=seed, specs=SMALL, sigma0=0.8, sigma1=1.0, sigma2=1.0).double()
    f_bu = _scene(h, 2, seed)
    brute, score = map_bruteforce(activation_model, h, f_bu)
    viterbi = map_infer_discrete(activation_model, h, f_bu)
    for k in h.hidden_site_names():
        assert torch.equal(brute[k], viterbi[k]), k
    torch.testing.assert_close(trace_log_score(activation_model, viterbi, h, f_bu=f_bu, form="profile"), score)
    greedy = backward_pass(activation_model, h, f_bu)
    assert (greedy.total[0] <= score + 1e-9).all()


def test_greedy_equals_exact_on_one_layer_hierarchies():
    for seed in range(4):
        specs = [LayerSpec("top", "pool", 3, 5, 5, K=3, offset_radius=1)]
        h = toy_hierarchy(seed=seed, specs=specs, n_categories=2, sigma0=0.5, sigma1=0.7, sigma2=0.7).double()
        f_bu = _scene(h, 3, seed)
        greedy = backward_pass(activation_model, h, f_bu)
        exact, score = map_bruteforce(activation_model, h, f_bu)
        for k in h.hidden_site_names():
            assert torch.equal(greedy.hidden[k][0], exact[k]), k
        torch.testing.assert_close(greedy.total[0], score)


def test_exact_respects_clamps():
    h = toy_hierarchy(seed=5, specs=SMALL).double()
    f_bu = _scene(h, 1, 5)
    hidden, _ = map_bruteforce(activation_model, h, f_bu, clamp={"gamma/top": 1})
    assert int(hidden["gamma/top"]) == 1
    viterbi = map_infer_discrete(activation_model, h, f_bu, clamp={"gamma/top": 1})
    assert int(viterbi["gamma/top"]) == 1
    assert all(torch.equal(hidden[k], viterbi[k]) for k in h.hidden_site_names())
