"""MAP on images and scene parsing: shapes, agreement with the plain backward pass, explaining away."""

import pytest
import torch
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy
from pyro_backpass import sites
from pyro_backpass.inference import backward_pass
from pyro_backpass.vision import MaskConfig, explain, map_image
from pyro_backpass.vision.parsing import ParseConfig, explain_away, parse_scene

MC = MaskConfig(layer="conv1")


def _scene(h, n=3, seed=0):
    import pyro

    pyro.set_rng_seed(seed)
    tr = poutine.trace(activation_model).get_trace(h, n=n)
    return [tr.nodes[sites.f_bu(s.name)]["value"] for s in h.specs]


def test_explain_is_the_backward_pass_plus_image_space_outputs():
    h = toy_hierarchy(seed=0)
    f_bu = _scene(h)
    res = explain(activation_model, h, f_bu, beam=2, mask_config=MC)
    ref = backward_pass(activation_model, h, f_bu, beam=2)
    for k, v in ref.hidden.items():
        assert torch.equal(res.hidden[k], v)
    torch.testing.assert_close(res.reconstruction, ref.f_td[0])
    assert res.mask.shape == (2, 3, 12, 12) and res.mask.dtype == torch.bool
    assert res.prediction.shape == res.reconstruction.shape
    custom = explain(activation_model, h, f_bu, mask_rule=lambda hh, f, r: torch.ones(1, 3, 12, 12, dtype=torch.bool))
    assert custom.mask.all()


def test_map_image_checks_the_image_size(tiny_trained, tiny_images):
    res = map_image(activation_model, tiny_trained, tiny_images)
    assert res.reconstruction.shape == (1, 3, 3, 32, 32)
    assert res.mask.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="images"):
        map_image(activation_model, tiny_trained, torch.rand(1, 3, 20, 20))


def test_explain_away_rules():
    h = toy_hierarchy(seed=0)
    f_bu = [torch.full((1,) + s.shape, 1.0) for s in h.specs]
    f_td = [torch.full((1,) + s.shape, 0.25) for s in h.specs]
    f_td[1][..., 0, 0] = 3.0
    sub = explain_away(h, f_bu, f_td, "subtract")
    assert sub[1][0, 0, 0, 0] == 0.0 and sub[1][0, 0, 1, 1] == pytest.approx(0.75)
    sup = explain_away(h, f_bu, f_td, "suppress")  # λ = 0 on the toy: every positive F_td unit is explained
    assert (sup[1] == 0).all()
    with pytest.raises(ValueError, match="rule"):
        explain_away(h, f_bu, f_td, "erase")


def test_one_path_parse_is_repeated_pass_and_subtraction():
    h = toy_hierarchy(seed=6)
    f_bu = _scene(h, n=2, seed=1)
    parsed = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=3), mask_config=MC)
    maps = [x.clone() for x in f_bu]
    for t in range(3):
        ref = backward_pass(activation_model, h, maps)
        for k, v in ref.hidden.items():
            assert torch.equal(parsed.hidden[k][:, t], v[0]), (t, k)
        torch.testing.assert_close(parsed.evidence[:, t], ref.evidence[0])
        maps = [torch.clamp(x - td[0], min=0) for x, td in zip(maps, ref.f_td)]
    assert parsed.masks.shape == (2, 3, 12, 12)
    assert parsed.reconstructions.shape == (2, 3, 4, 12, 12)
    torch.testing.assert_close(parsed.path_score, parsed.evidence.sum(1))


def test_stopping_rule_and_parse_paths():
    h = toy_hierarchy(seed=7)
    f_bu = _scene(h, n=2, seed=2)
    one = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=2), mask_config=MC)
    per_pixel = one.evidence / (12 * 12)
    thr = float(per_pixel[:, 0].min()) - 1e-3
    cut = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=2, evidence_threshold=thr), mask_config=MC)
    assert cut.accepted[:, 0].all()
    assert torch.equal(cut.accepted[:, 1], per_pixel[:, 1] >= thr)
    paths = parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=2, paths=3, branch=3), mask_config=MC)
    # With two steps the greedy sequence is always among the candidates (its steps are the top modes),
    # so the best kept path scores at least as well.
    assert (paths.path_score >= one.path_score - 1e-2).all()
    torch.testing.assert_close(paths.path_score, paths.evidence.sum(1))


@pytest.mark.parametrize("kwargs", [{"explain_away": "erase"}, {"paths": 0}, {"max_steps": 0}])
def test_bad_parse_config(kwargs):
    with pytest.raises(ValueError):
        ParseConfig(**kwargs)


def test_subtraction_with_a_background_removes_only_the_instance_increment():
    h = toy_hierarchy(seed=0)
    f_bu = [torch.full((1,) + s.shape, 1.0) for s in h.specs]
    bg = [torch.full(s.shape, 0.5) for s in h.specs]
    f_td = [torch.full((1,) + s.shape, 0.75) for s in h.specs]
    out = explain_away(h, f_bu, f_td, "subtract", background=bg)
    assert all(torch.allclose(o, torch.full_like(o, 0.75)) for o in out)


def test_evidence_against_the_background_explanation(tiny_trained, tiny_images):
    from pyro_backpass.vision.explain import background_score

    f_bu = tiny_trained.activations(tiny_images)
    bg = tiny_trained.background()
    res = explain(activation_model, tiny_trained.hierarchy, f_bu, background=bg)
    torch.testing.assert_close(res.evidence_vs_background,
                               res.total - background_score(tiny_trained.hierarchy, f_bu, bg))
    # An empty scene is explained by the background at least as well as by any instance minus a margin:
    empty = tiny_trained.activations(torch.zeros(1, 3, 32, 32))
    assert float(background_score(tiny_trained.hierarchy, empty, bg)) > float(
        explain(activation_model, tiny_trained.hierarchy, empty).total[0, 0]) - 1e-3 * abs(
        float(background_score(tiny_trained.hierarchy, empty, bg)))


@pytest.mark.parametrize("paths", [1, 2])
def test_mask_rule_reads_the_scene_or_the_explained_away_image(paths):
    h = toy_hierarchy(seed=0)
    f_bu = _scene(h, n=2)
    seen = {"scene": [], "explained": []}
    for mode in seen:
        def rule(hh, maps, result, mode=mode):
            seen[mode].append(maps[0].clone())
            return torch.zeros(result.f_td[0].shape[:2] + maps[0].shape[-2:], dtype=torch.bool)

        parse_scene(activation_model, h, f_bu, ParseConfig(max_steps=3, paths=paths, branch=2, mask_image=mode),
                    mask_rule=rule)
    for t, image in enumerate(seen["scene"]):
        reps = image.shape[0] // 2
        assert torch.equal(image, f_bu[0].repeat(reps, 1, 1, 1)), t
    assert torch.equal(seen["explained"][0], f_bu[0])
    assert not torch.equal(seen["explained"][1], seen["scene"][1])   # later steps read the explained-away image
    with pytest.raises(ValueError, match="mask_image"):
        ParseConfig(mask_image="pixels")
