import json

import pyro
import pytest
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.hierarchy import random_hierarchy
from pyro_backpass.inference import impute
from pyro_backpass.learning import HardEMConfig, TensorActivations, hard_em, usage_stats
from pyro_backpass.learning.sources import ShardedSource

SPECS = toy_specs(size=8, channels=(3, 4, 4, 4), K=3, radii=(0, 0, 1, 1))


def _data(n, seed=0):
    truth_h = toy_hierarchy(seed=0, specs=SPECS, n_categories=1, sigma0=0.1, template_scale=2.0)
    pyro.set_rng_seed(seed)
    tr = poutine.trace(activation_model).get_trace(truth_h, n=n)
    f_td = [tr.nodes[f"f_td/{s.name}"]["value"].detach() for s in SPECS]
    truth = {k: tr.nodes[k]["value"] for k in truth_h.hidden_site_names()}
    return f_td, truth


def _purity(pred, true, K):
    table = torch.zeros(K, K)
    table.index_put_((pred, true), torch.ones(len(pred)), accumulate=True)
    return float(table.max(1).values.sum() / len(pred))


def test_hard_em_recovers_generating_assignments():
    f_td, truth = _data(150)
    h = random_hierarchy(SPECS, n_categories=1, seed=5)
    h, history = hard_em(activation_model, h, TensorActivations(f_td),
                         HardEMConfig(iterations=5, lr=1e-2, sgd_epochs=3), progress=False)
    res = impute(activation_model, h, f_td, clamp={"category": torch.zeros(150, dtype=torch.long)})
    purity = {s.name: _purity(res.best()[f"gamma/{s.name}"], truth[f"gamma/{s.name}"], 3) for s in SPECS}
    # The top mixture and the layers below it are recovered; the image layer is the hardest
    # (its components differ only through ReLU zeros of a 3-channel map) and is checked in the mean.
    assert purity["top"] >= 0.9 and purity["pool1"] >= 0.9 and purity["conv1"] >= 0.9, purity
    assert sum(purity.values()) / len(purity) >= 0.9, purity
    lls = [log["log_likelihood"] for log in history]
    assert lls[-1] > lls[0]
    assert all(b >= a - 0.02 * abs(a) for a, b in zip(lls, lls[1:])), lls
    assert all(log["effective_components"]["top"] > 2.5 for log in history[1:])


def test_resume_gives_identical_parameters(tmp_path):
    f_td, _ = _data(40, seed=1)
    src = TensorActivations(f_td)
    cfg = HardEMConfig(iterations=3, batch_size=16, sgd_epochs=1, lr=1e-2, seed=3)
    whole, _ = hard_em(activation_model, random_hierarchy(SPECS, 1, seed=7), src, cfg, tmp_path / "a", progress=False)
    short = HardEMConfig(**{**cfg.__dict__, "iterations": 1})
    # Simulate an interruption after one iteration: the checkpoint says one iteration of a 3-iteration run.
    hard_em(activation_model, random_hierarchy(SPECS, 1, seed=7), src, short, tmp_path / "b", progress=False)
    state = json.loads((tmp_path / "b" / "em_state.json").read_text())
    state["config"]["iterations"] = 3
    (tmp_path / "b" / "em_state.json").write_text(json.dumps(state))
    # ... killed while writing iteration 1's model: its folder is half-written, em_state.json still names 0's.
    assert state["model"] == "model-0000"
    (tmp_path / "b" / "model-0001").mkdir()
    (tmp_path / "b" / "model-0001" / "tensors.safetensors").write_bytes(b"\0" * 10)
    resumed, hist = hard_em(activation_model, random_hierarchy(SPECS, 1, seed=99), src, cfg, tmp_path / "b",
                            progress=False)
    assert len(hist) == 3
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    # Only the last iteration's model is kept.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["em_state.json", "model-0002"]


def test_bad_input_errors(tmp_path):
    f_td, _ = _data(4)
    with pytest.raises(ValueError, match="K of layer"):
        hard_em(activation_model, random_hierarchy(SPECS, 1), TensorActivations([m[:2] for m in f_td]),
                progress=False)
    with pytest.raises(ValueError, match="empty"):
        TensorActivations([m[:0] for m in f_td])
    src = TensorActivations(f_td)
    hard_em(activation_model, random_hierarchy(SPECS, 1), src, HardEMConfig(iterations=1, sgd_epochs=1),
            tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="another config"):
        hard_em(activation_model, random_hierarchy(SPECS, 1), src, HardEMConfig(iterations=2, lr=0.5),
                tmp_path / "c", progress=False)
    # A shard that leaves examples to nobody (here: one process holding half of them) is refused.
    with pytest.raises(ValueError, match="source: expected every example held by exactly one rank"):
        hard_em(activation_model, random_hierarchy(SPECS, 1), ShardedSource.of(src, torch.arange(2)),
                HardEMConfig(iterations=1), progress=False)


def test_legacy_checkpoint_folder_resumes(tmp_path):
    """Checkpoints written before the model-<iteration> layout keep the model in ``model``."""
    f_td, _ = _data(12, seed=2)
    src = TensorActivations(f_td)
    cfg = HardEMConfig(iterations=1, batch_size=6, sgd_epochs=1, init_epochs=1, seed=4)
    h, _ = hard_em(activation_model, random_hierarchy(SPECS, 1, seed=7), src, cfg, tmp_path, progress=False)
    (tmp_path / "model-0000").rename(tmp_path / "model")
    state = json.loads((tmp_path / "em_state.json").read_text())
    del state["model"]
    (tmp_path / "em_state.json").write_text(json.dumps(state))
    again, hist = hard_em(activation_model, random_hierarchy(SPECS, 1, seed=1), src, cfg, tmp_path, progress=False)
    assert len(hist) == 1 and all(torch.equal(a, b) for a, b in zip(h.state_dict().values(),
                                                                    again.state_dict().values()))


def test_usage_stats_effective_components():
    counts, eff = usage_stats(torch.tensor([0, 0, 1, 1]), 3)
    assert counts == [2, 2, 0] and eff == pytest.approx(2.0)
