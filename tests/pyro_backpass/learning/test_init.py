import pyro
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.hierarchy import random_hierarchy
from pyro_backpass.learning import HardEMConfig, TensorActivations, hard_em
from pyro_backpass.learning.init import least_squares_fit, refine_partition, regression_errors
from pyro_backpass.learning.sources import as_sharded

SPECS = toy_specs(size=8, channels=(3, 4, 4, 4), K=3, radii=(0, 0, 1, 1))
CONV1 = 1  # radius 0, upsampled from pool1: the truth's γ there is identifiable at the centre offset


def _data(n, seed=0):
    truth_h = toy_hierarchy(seed=0, specs=SPECS, n_categories=1, sigma0=0.05, template_scale=2.0)
    pyro.set_rng_seed(seed)
    tr = poutine.trace(activation_model).get_trace(truth_h, n=n)
    f_td = [tr.nodes[f"f_td/{s.name}"]["value"].detach().double() for s in SPECS]
    return f_td, tr.nodes["gamma/conv1"]["value"]


def _purity(pred, true, K=3):
    table = torch.zeros(K, K)
    table.index_put_((pred, true), torch.ones(len(pred)), accumulate=True)
    return float(table.max(1).values.sum() / len(pred))


def _total_error(h, data, gamma):
    return float(regression_errors(h, CONV1, data).gather(1, gamma.unsqueeze(1)).sum())


def test_regression_errors_match_direct_computation():
    f_td, _ = _data(10)
    h = random_hierarchy(SPECS, n_categories=1, seed=3).to(dtype=torch.float64)
    errs = regression_errors(h, CONV1, as_sharded(TensorActivations(f_td)), batch_size=4)
    comp = h.topdown[CONV1].components(f_td[CONV1 + 1])  # (n, K, C, H, W)
    direct = ((comp - f_td[CONV1].unsqueeze(1)) ** 2).flatten(2).sum(2)
    assert errs.shape == (10, 3)
    assert torch.allclose(errs, direct)


def test_refine_partition_recovers_generating_components():
    f_td, truth = _data(120)
    data = as_sharded(TensorActivations(f_td))
    h = random_hierarchy(SPECS, n_categories=1, seed=3).to(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    # Start from the truth with 40% of the labels scrambled: an appearance partition is about this good.
    start = truth.clone()
    flip = torch.rand(len(truth), generator=g) < 0.4
    start[flip] = torch.randint(3, (int(flip.sum()),), generator=g)
    least_squares_fit(h, CONV1, data, start, g, max_rows=100_000)
    before = _total_error(h, data, start)
    refined = refine_partition(h, CONV1, data, start, g, rounds=5)
    after = _total_error(h, data, refined)
    assert _purity(start, truth) < 0.8
    assert _purity(refined, truth) >= 0.95
    assert after < before


def test_refine_partition_zero_rounds_is_identity():
    f_td, truth = _data(20)
    data = as_sharded(TensorActivations(f_td))
    h = random_hierarchy(SPECS, n_categories=1, seed=3).to(dtype=torch.float64)
    out = refine_partition(h, CONV1, data, truth.clone(), torch.Generator().manual_seed(0), rounds=0)
    assert torch.equal(out, truth)


def test_hard_em_init_rounds_refine_every_lower_layer(monkeypatch):
    from pyro_backpass.learning import init

    calls = []

    def spy(h, layer, data, gamma, generator, rounds, batch_size=32):
        calls.append((layer, rounds))
        return refine_partition(h, layer, data, gamma, generator, rounds, batch_size)

    monkeypatch.setattr(init, "refine_partition", spy)
    f_td, _ = _data(30, seed=1)
    src = TensorActivations([x.float() for x in f_td])
    for rounds in (0, 2):
        cfg = HardEMConfig(iterations=1, sgd_epochs=1, lr=1e-2, init_rounds=rounds, seed=2)
        _, history = hard_em(activation_model, random_hierarchy(SPECS, 1, seed=5), src, cfg, progress=False)
        assert history[0]["effective_components"]["conv1"] > 1.5
    assert calls == [(0, 2), (1, 2), (2, 2)]
