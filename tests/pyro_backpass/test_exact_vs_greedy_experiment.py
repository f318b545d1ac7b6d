"""The exact-vs-greedy experiment's pieces: settings, scene constructions and one scene's record."""

import functools

import pytest
import torch

from guides.exact import map_bruteforce, map_bruteforce_layers, map_infer_discrete
from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.experiments import ExactVsGreedyConfig, positive_blobs, sample_scene, superimpose
from pyro_backpass.experiments.exact_vs_greedy import build_settings, evaluate_scene, run_exact_vs_greedy, summarise

TINY = ExactVsGreedyConfig(scenes=3, scenes_per_hierarchy=3, size=6, channels=(2, 3, 3, 3), K=2, beams=(2, 4))


@pytest.fixture(scope="module")
def settings():
    return build_settings(TINY, toy_hierarchy, toy_specs, seed=1)


def test_superimpose_is_the_elementwise_max():
    a = [torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.zeros(3)]
    b = [torch.tensor([[0.0, -1.0], [0.7, 2.0]]), torch.tensor([-1.0, 0.0, 2.0])]
    out = superimpose(a, b)
    assert torch.equal(out[0], torch.tensor([[1.0, -1.0], [0.7, 3.0]]))
    assert torch.equal(out[1], torch.tensor([0.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="maps_b"):
        superimpose(a, b[:1])


def test_blobs_are_positive_and_localised():
    torch.manual_seed(0)
    blobs = positive_blobs([(2, 3, 8, 8), (2, 4, 4, 4)], count=2, amplitude=1.0, width=1.0)
    assert [tuple(b.shape) for b in blobs] == [(2, 3, 8, 8), (2, 4, 4, 4)]
    assert all((b >= 0).all() and (b > 0.1).any() for b in blobs)
    assert blobs[0].amax() <= 2.0  # at most `count` blobs of amplitude < 1 overlap
    assert all(not b.any() for b in positive_blobs([(1, 2, 5, 5)], count=0, amplitude=1.0, width=1.0))


def test_hard_setting_weakens_the_top(settings):
    mod, hard = settings["moderate"], settings["hard"]
    assert mod.dtype == hard.dtype == torch.float64
    assert torch.allclose(mod.sigma0, torch.full((4,), 0.3, dtype=torch.float64))
    assert torch.allclose(hard.sigma0, torch.full((4,), 0.5, dtype=torch.float64))
    for l, factor in enumerate((1.0, 4.0, 1.0, 6.0)):
        assert torch.allclose(hard.obs_params(l)["sigma1"], mod.obs_params(l)["sigma1"] * factor)
        assert torch.allclose(hard.obs_params(l)["sigma2"], mod.obs_params(l)["sigma2"] * factor)
    assert torch.allclose(hard.topdown[3].template, 0.6 * mod.topdown[3].template)
    assert torch.equal(hard.topdown[0].weight, mod.topdown[0].weight)


def test_scene_kinds_share_the_main_object(settings):
    h = settings["moderate"]
    state = torch.get_rng_state()
    clean, truth = sample_scene(activation_model, h, "clean", seed=7)
    blobs, truth_b = sample_scene(activation_model, h, "blobs", seed=7)
    sup, truth_s = sample_scene(activation_model, h, "superimposed", seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    for other in (truth_b, truth_s):
        assert all(torch.equal(truth[k], other[k]) for k in h.hidden_site_names())
    for c, b, s, spec in zip(clean, blobs, sup, h.specs):
        assert c.shape == b.shape == s.shape == (1,) + spec.shape
        assert (b >= c).all() and (b > c).any()  # blobs only add
        assert not torch.equal(s, c)
    again, _ = sample_scene(activation_model, h, "superimposed", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(again, sup))
    with pytest.raises(ValueError, match="kind"):
        sample_scene(activation_model, h, "cluttered", seed=7)


def test_one_scene_record_and_summary(settings):
    recs = []
    layered = functools.partial(map_bruteforce_layers, search_dtype=torch.float32)
    for setting, kind, exact in (("moderate", "clean", map_bruteforce), ("hard", "superimposed", layered)):
        h = settings[setting]
        f_bu, truth = sample_scene(activation_model, h, kind, seed=3)
        rec = evaluate_scene(activation_model, h, f_bu, truth, exact, map_infer_discrete, beams=(2, 4))
        assert rec["agree/infer_discrete"] and rec["identical/infer_discrete"]
        assert rec["gap"] >= -1e-9 * abs(rec["score/exact"])
        assert rec["score/beam4"] >= rec["score/greedy"] - 1e-9 * abs(rec["score/exact"]) or not rec["agree/beam4"]
        recs.append(dict(rec, kind=kind))
    out = summarise(recs, beams=(2, 4))
    assert out["agreement_infer_discrete"] == 1.0 and out["n_scenes"] == 2
    assert set(out["agreement_beam"]) == {"2", "4"}
    assert set(out["agreement_by_kind"]) == {f"{k}/{m}" for k in ("clean", "superimposed")
                                             for m in ("greedy", "beam2", "beam4", "infer_discrete")}
    assert out["agreement_by_kind"]["clean/greedy"] == float(recs[0]["agree/greedy"])
    assert out["n_by_kind"] == {"clean": 1, "superimposed": 1}
    assert out["mean_gap_by_kind"]["superimposed"] == recs[1]["gap"]


@pytest.mark.parametrize("field, value", [("scenes", 0), ("n_categories", 1), ("radii", (0, 1)), ("beams", ()),
                                          ("hard_middle_layers", (3,)), ("rtol", 0.0),
                                          ("exact_dtype", "float16")])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ExactVsGreedyConfig(**{field: value})


def test_default_toy_maps_are_within_the_issue_bounds():
    cfg = ExactVsGreedyConfig()
    specs = toy_specs(size=cfg.size, channels=cfg.channels, K=cfg.K, radii=cfg.radii)
    assert [s.name for s in specs] == ["image", "conv1", "pool1", "top"]
    assert all(6 <= s.height <= 12 and 6 <= s.width <= 12 and 4 <= s.channels <= 8 for s in specs)
    assert [s.offset_radius for s in specs] == [0, 0, 1, 1] and cfg.hard_middle_layers == (1,)  # conv1


def test_same_seed_same_metrics():
    cfg = ExactVsGreedyConfig(scenes=2, scenes_per_hierarchy=1, size=6, channels=(2, 2, 2, 2), K=2, beams=(2,), seed=4)

    def run():
        recs = []
        out = run_exact_vs_greedy(cfg, activation_model, toy_hierarchy, toy_specs, map_bruteforce, map_infer_discrete,
                                  progress=False, records_out=recs)
        assert [(r["setting"], r["scene"], r["hierarchy"]) for r in recs] == [
            ("moderate", 0, 0), ("hard", 0, 0), ("moderate", 1, 1), ("hard", 1, 1)]
        return {s: {k: v for k, v in m.items() if not k.startswith("ms_")} for s, m in out.items()}

    assert run() == run()
