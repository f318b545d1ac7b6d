"""Mixture ablation: collapsing a layer's mixture to one component, and what it costs on held-out data."""

import pyro
import pytest
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.learning import TensorActivations
from pyro_backpass.learning.ablation import collapse_to_component, mixture_ablation

SPECS = toy_specs(size=8, channels=(3, 4, 4, 4), K=3, radii=(0, 0, 1, 1))


def _truth_and_data(n=60, seed=0):
    h = toy_hierarchy(seed=0, specs=SPECS, n_categories=1, sigma0=0.1, template_scale=2.0)
    pyro.set_rng_seed(seed)
    tr = poutine.trace(activation_model).get_trace(h, n=n)
    f_td = [tr.nodes[f"f_td/{s.name}"]["value"].detach() for s in SPECS]
    return h, TensorActivations(f_td)


def test_collapse_copies_one_component_and_leaves_the_rest():
    h, _ = _truth_and_data(4)
    before = {k: v.clone() for k, v in h.state_dict().items()}
    out = collapse_to_component(h, 1, 2)
    m = out.topdown[1]
    w = m.weight.view(m.K, m.out_channels, *m.weight.shape[1:])
    b = m.bias.view(m.K, m.out_channels)
    for k in range(m.K):
        assert torch.equal(w[k], w[2]) and torch.equal(b[k], b[2])
    assert not torch.equal(w[0], h.topdown[1].weight.view_as(w)[0])       # it did change something
    for k, v in h.state_dict().items():                                       # the original is untouched
        assert torch.equal(v, before[k]), k
    others = {k: v for k, v in out.state_dict().items() if not k.startswith("topdown.1.")}
    for k, v in others.items():
        assert torch.equal(v, before[k]), k


def test_collapse_rejects_bad_layer_and_component():
    h, _ = _truth_and_data(4)
    with pytest.raises(ValueError, match="layer"):
        collapse_to_component(h, h.L - 1, 0)
    with pytest.raises(ValueError, match="k: expected a component index"):
        collapse_to_component(h, 0, 3)


def test_ablation_measures_the_loss_of_a_used_mixture():
    h, src = _truth_and_data(60)
    out = mixture_ablation(activation_model, h, src, ["conv1", "pool1"], batch_size=16)
    for name in ("conv1", "pool1"):
        r = out["collapsed"][name]
        usage = out["usage"][name]
        assert sum(usage) == 60 and r["n_other"] == 60 - usage[r["component"]]
        assert r["n_other"] > 0
        # The generating components differ, so the examples that used another one lose score there.
        assert r["loss_on_other"] > 1.0
        assert r["layer_log_likelihood"][name] < out["layer_log_likelihood"][name]


def test_ablation_of_identical_components_costs_nothing():
    h, src = _truth_and_data(30)
    same = collapse_to_component(h, 1, 0)
    out = mixture_ablation(activation_model, same, src, ["conv1"], batch_size=16)
    r = out["collapsed"]["conv1"]
    assert r["layer_log_likelihood"]["conv1"] == pytest.approx(out["layer_log_likelihood"]["conv1"], rel=1e-6)
    assert r["loss_on_other"] == pytest.approx(0.0, abs=1e-3)


def test_ablation_rejects_unknown_layers():
    h, src = _truth_and_data(4)
    with pytest.raises(ValueError, match="layers"):
        mixture_ablation(activation_model, h, src, ["top"])
