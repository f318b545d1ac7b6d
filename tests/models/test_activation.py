import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy
from pyro_backpass.distributions import PiecewiseGaussian
from pyro_backpass.priors import CallablePrior, NGramPrior, UniformPrior


def test_generative_sampling_under_trace_has_every_site():
    h = toy_hierarchy(seed=0)
    tr = poutine.trace(activation_model).get_trace(h, n=4)
    for name in h.site_names():
        if name.startswith("value/"):
            continue
        assert name in tr.nodes, name
    for s in h.specs:
        assert tr.nodes[f"f_td/{s.name}"]["value"].shape == (4,) + s.shape
        assert tr.nodes[f"f_bu/{s.name}"]["value"].shape == (4,) + s.shape
        assert tr.nodes[f"gamma/{s.name}"]["infer"]["layer"] == h.layer_index(s.name)
        assert tr.nodes[f"gamma/{s.name}"]["infer"]["enumerate"] == "parallel"
    assert isinstance(tr.nodes["f_bu/image"]["fn"].base_dist, PiecewiseGaussian)
    tr.compute_log_prob()


def test_condition_clamps_hidden_sites_and_category():
    h = toy_hierarchy(seed=1)
    data = {"category": torch.tensor(1), "gamma/top": torch.tensor(2), "delta/pool1": torch.tensor(4)}
    tr = poutine.trace(pyro.condition(activation_model, data=data)).get_trace(h, n=3)
    for k, v in data.items():
        assert (tr.nodes[k]["value"] == v).all()
        assert tr.nodes[k]["is_observed"]
    tr2 = poutine.trace(activation_model).get_trace(h, n=2, category="class1")
    assert (tr2.nodes["category"]["value"] == 1).all()
    with pytest.raises(ValueError, match="category"):
        activation_model(h, n=1, category=7)


def test_profile_and_estep_forms():
    h = toy_hierarchy(seed=2).double()
    tr = poutine.trace(activation_model).get_trace(h, n=2)
    f_bu = [tr.nodes[f"f_bu/{s.name}"]["value"] for s in h.specs]
    f_td = [tr.nodes[f"f_td/{s.name}"]["value"] for s in h.specs]
    hidden = {k: tr.nodes[k]["value"] for k in h.hidden_site_names()}
    prof = poutine.trace(pyro.condition(activation_model, data=hidden)).get_trace(h, f_bu=f_bu, form="profile")
    assert "value/image" in prof.nodes and "f_td/image" not in prof.nodes
    est = poutine.trace(pyro.condition(activation_model, data=hidden)).get_trace(h, f_td=f_td, form="estep")
    # The E-step factor is the Gaussian log-density of the observed F_td under the hypothesis (eq. 5).
    for l, s in enumerate(h.specs):
        phi = h.phi(l, hidden["category"] if l == h.L - 1 else f_td[l + 1], hidden[f"gamma/{s.name}"],
                    hidden[f"delta/{s.name}"])
        expected = dist.Normal(phi, h.sigma0[l]).to_event(3).log_prob(f_td[l])
        site = est.nodes[f"value/{s.name}"]
        torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected)
    with pytest.raises(ValueError, match="f_bu"):
        activation_model(h, form="profile")
    with pytest.raises(ValueError, match="f_td"):
        activation_model(h, form="estep")
    with pytest.raises(ValueError, match="form"):
        activation_model(h, form="variational")
    with pytest.raises(ValueError, match=r"f_bu\[image\]"):
        activation_model(h, f_bu=[torch.zeros(2, 4, 5, 5)] + f_bu[1:], form="profile")


def test_swapping_the_prior_needs_no_model_change():
    h = toy_hierarchy(seed=3)
    ngram = NGramPrior(h.Ks, h.n_categories, order=2, alpha=0.1)
    assignments = torch.zeros(50, h.L + 1, dtype=torch.long)  # everything picks component 0
    ngram.fit(assignments)
    fav = CallablePrior(lambda layer, hist: torch.log(torch.tensor([0.9, 0.05, 0.05])).expand(
        torch.broadcast_shapes(*[x.shape for x in hist]) + (3,)), h.Ks, h.n_categories)
    data = {"gamma/top": torch.tensor(0), "gamma/pool1": torch.tensor(0)}
    for prior, expected in ((UniformPrior(h.Ks, h.n_categories), 1 / 3), (ngram, None), (fav, 0.9)):
        tr = poutine.trace(pyro.condition(activation_model, data=data)).get_trace(h, n=1, prior=prior)
        p = tr.nodes["gamma/pool1"]["fn"].log_prob(torch.tensor(0)).exp().item()
        if expected is None:
            assert p > 0.9
        else:
            assert p == pytest.approx(expected, rel=1e-5)


def test_model_runs_under_enumeration():
    h = toy_hierarchy(seed=4)
    tr = poutine.trace(activation_model).get_trace(h, n=1)
    f_bu = [tr.nodes[f"f_bu/{s.name}"]["value"] for s in h.specs]
    model = poutine.enum(activation_model, first_available_dim=-2)
    etr = poutine.trace(model).get_trace(h, f_bu=f_bu, form="profile")
    assert etr.nodes["gamma/top"]["value"].shape[0] == 3
    assert isinstance(etr.nodes["category"]["fn"], dist.Categorical)
