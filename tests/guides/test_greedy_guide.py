import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive

from guides.greedy import greedy_guide, greedy_map, replay_at
from models.activation import activation_model
from models.toy import toy_hierarchy


def test_guide_replays_the_map_assignment_and_predictive_samples_at_it():
    h = toy_hierarchy(seed=0)
    pyro.set_rng_seed(0)
    tr = poutine.trace(activation_model).get_trace(h, n=2)
    f_bu = [tr.nodes[f"f_bu/{s.name}"]["value"] for s in h.specs]
    res = greedy_map(activation_model, h, f_bu)
    guide = greedy_guide(res)
    rtr = replay_at(activation_model, res, h, f_bu=f_bu, form="profile")
    for k, v in res.best().items():
        assert torch.equal(rtr.nodes[k]["value"], v), k
    pred = Predictive(activation_model, guide=guide, num_samples=3, return_sites=["gamma/top", "f_td/top"])
    out = pred(h, n=2)
    assert out["f_td/top"].shape == (3, 2) + h.specs[-1].shape
    assert (out["gamma/top"] == res.best()["gamma/top"]).all()
