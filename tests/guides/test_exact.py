import pyro
import pytest
import torch
from pyro import poutine

from guides.exact import (
    _all_shifts,
    decode_assignment,
    map_bruteforce,
    map_bruteforce_layers,
    map_infer_discrete,
    score_all_layers,
)
from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.inference import backward_pass, trace_log_score
from pyro_backpass.specs import LayerSpec
from pyro_backpass.topdown import select_hypotheses

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


def test_layered_bruteforce_agrees_with_the_program_in_float64_and_float32():
    # float64 in many chunks per layer; a float32 table in one chunk, its candidates rescored in float64
    for seed, dtype, chunk in ((0, None, 5000), (1, torch.float32, 1 << 17)):
        h = toy_hierarchy(seed=seed, specs=SMALL, sigma0=0.4, sigma1=0.3, sigma2=0.5).double()
        f_bu = _scene(h, 2, 10 + seed)
        brute, score = map_bruteforce(activation_model, h, f_bu)
        layered, s = map_bruteforce_layers(activation_model, h, f_bu, search_dtype=dtype, chunk_elements=chunk)
        assert s.dtype == torch.float64
        for k in h.hidden_site_names():
            assert torch.equal(layered[k], brute[k]), (seed, k)
        torch.testing.assert_close(s, score, rtol=1e-12, atol=1e-9)


def test_layered_table_rows_are_the_program_scores_of_their_assignments():
    h = toy_hierarchy(seed=3, specs=SMALL).double()
    f_bu = _scene(h, 1, 3)
    table = score_all_layers(h, f_bu)  # (M, 1)
    assert table.shape == (2 * (2 * 9) * (2 * 9) * 2 * 2, 1)
    rows = torch.tensor([0, 1, 7, 100, 555, table.shape[0] - 1])
    hidden = decode_assignment(h, rows)
    assert set(hidden) == set(h.hidden_site_names())
    data = {k: v.reshape(-1, 1) for k, v in hidden.items()}
    program = trace_log_score(activation_model, data, h, f_bu=f_bu, form="profile")
    torch.testing.assert_close(program.reshape(-1), table[rows, 0], rtol=1e-12, atol=1e-9)


def test_all_shifts_follow_the_offset_order_of_select_hypotheses():
    comps = torch.rand(2, 3, 4, 5)
    shifts = _all_shifts(comps, 1)
    assert shifts.shape == (2, 9, 3, 4, 5)
    for d in range(9):
        assert torch.equal(shifts[:, d], select_hypotheses(comps, 1, (), torch.tensor(d)))
    assert torch.equal(_all_shifts(comps, 0)[:, 0], comps)


def test_layered_bruteforce_respects_per_image_clamps():
    h = toy_hierarchy(seed=6, specs=SMALL).double()
    f_bu = _scene(h, 2, 6)
    clamp = {"gamma/top": torch.tensor([0, 1]), "category": 1, "delta/pool1": torch.tensor([4, 8])}
    hidden, score = map_bruteforce_layers(activation_model, h, f_bu, clamp=clamp, search_dtype=torch.float32)
    brute, expected = map_bruteforce(activation_model, h, f_bu, clamp={"category": 1})
    for n in range(2):
        assert int(hidden["gamma/top"][n]) == n and int(hidden["category"][n]) == 1
        assert int(hidden["delta/pool1"][n]) == (4, 8)[n]
        one = {k: v[n:n + 1] for k, v in clamp.items() if k != "category"}
        one["category"] = 1
        ref, ref_score = map_bruteforce(activation_model, h, [x[n:n + 1] for x in f_bu], clamp=one)
        assert all(torch.equal(hidden[k][n:n + 1], ref[k]) for k in h.hidden_site_names())
        torch.testing.assert_close(score[n:n + 1], ref_score)
    assert (score <= expected + 1e-9).all()  # more clamps cannot score higher


def test_layered_bruteforce_detects_a_model_that_scores_otherwise():
    h = toy_hierarchy(seed=2, specs=SMALL).double()
    f_bu = _scene(h, 1, 2)

    def skewed(hierarchy, **kwargs):  # a location prior the layered table does not know about
        return activation_model(hierarchy, delta_logits={"top": torch.arange(9.0)}, **kwargs)

    with pytest.raises(RuntimeError, match="profile form"):
        map_bruteforce_layers(skewed, h, f_bu)
