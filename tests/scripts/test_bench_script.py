"""``python -m scripts.bench --quick`` smoke test, and the fast greedy pass against the naive one."""

import json

import pytest
import torch

from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.inference import backward_pass
from scripts.naive_greedy import naive_greedy

# Observation settings: the on branch wins everywhere (all cells "on": correlations only); trained-like
# (σ1 = 2σ0, β > 0: on, ReLU-zero and gathered cells, dense fallback on offset-free layers); λ > 0 with
# per-channel σ1 (ReLU zeros below λ: the general form, elementwise everywhere).
_SETTINGS = {
    "on": dict(sigma0=0.4, sigma1=0.3, sigma2=0.5),
    "trained_like": dict(sigma0=0.3, sigma1=0.6, sigma2=0.3, beta=0.3),
    "lambda_positive": dict(sigma0=0.4, sigma1=0.5, sigma2=0.4, beta=0.2, lam=0.15),
}


@pytest.mark.parametrize("setting", sorted(_SETTINGS))
@pytest.mark.parametrize("seed", range(4))
def test_greedy_pass_equals_naive_on_random_hierarchies(seed, setting):
    # Nearest (polyphase convolution at inference) and transposed upsampling, radii up to 2 on the top
    # layer, nonnegative maps with exact zeros (as a CNN's).
    specs = toy_specs(size=8, channels=(3, 4, 5, 6), K=3, radii=(0, 0, 1, 2))
    h = toy_hierarchy(n_categories=2, seed=seed, specs=specs, upsample="transposed" if seed % 2 else "nearest",
                      **_SETTINGS[setting]).double()
    if setting == "lambda_positive":
        for l, spec in enumerate(specs):
            h.set_observation(l, sigma1=torch.linspace(0.3, 0.7, spec.channels, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    f_bu = [torch.relu(torch.randn((2,) + s.shape, generator=g, dtype=torch.float64)) for s in specs]
    res = backward_pass(activation_model, h, f_bu)
    hidden, total = naive_greedy(h, f_bu)
    for k, v in hidden.items():
        assert torch.equal(res.hidden[k][0], v), k
    torch.testing.assert_close(res.total[0], total)


def test_bench_quick_writes_metrics(tmp_path):
    from scripts.bench import main

    out = tmp_path / "bench"
    metrics = main(["--out", str(out), "--quick", "--repeats", "1", "--batch-sizes", "1,2"])
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("ms_backward", "ms_floor", "backward_over_floor", "ms_floor_polyphase", "backward_over_floor_polyphase",
                "ms_naive", "speedup_vs_naive", "naive_over_floor", "ms_backward_mixed", "mixed_over_floor", "peak_mb",
                "ms_greedy", "ms_infer_discrete", "speedup_vs_infer_discrete", "batch_gain", "floor_batch_gain"):
        assert on_disk[key] > 0, key
    assert set(on_disk["images_per_s"]) == {"1", "2"} == set(on_disk["floor_images_per_s"])
    assert on_disk["naive_agrees"] is True and on_disk["naive_agrees_mixed"] is True
    assert on_disk["clock"] == "cpu" and on_disk["threads"] == 1
    assert on_disk["keep_freed_memory"] in (True, False)
    assert metrics["device"] == "cpu" and "CPU" in on_disk["machine"]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["quick"] is True and config["config"]["vgg16"] is False


def test_bench_rejects_bad_flags(tmp_path):
    from scripts.bench import main

    with pytest.raises(ValueError, match="device"):
        main(["--out", str(tmp_path), "--device", "tpu"])
    with pytest.raises(ValueError, match="repeats"):
        main(["--out", str(tmp_path), "--repeats", "0"])
    with pytest.raises(ValueError, match="clock"):
        main(["--out", str(tmp_path), "--clock", "sundial"])
