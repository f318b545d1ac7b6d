"""Tests of the swappable γ priors (eq. 7)."""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_backpass.priors import (
    CallablePrior,
    GammaPrior,
    NGramPrior,
    UniformPrior,
    UnigramPrior,
    prior_from_config,
)

KS = (2, 3, 4)  # K per layer, bottom-up: γ^0, γ^1, γ^2
N_CAT = 2
L = len(KS)
# Assignment columns, top-first: 0 = category, 1 = γ^2, 2 = γ^1, 3 = γ^0; γ^l is column L - l.
COLUMN_SIZES = (N_CAT, KS[2], KS[1], KS[0])
# Hand-written prefix columns per (order, layer): the n-1 nearest upper variables, shorter near the top.
PREFIX = {
    1: {2: [], 1: [], 0: []},
    2: {2: [0], 1: [1], 0: [2]},
    3: {2: [0], 1: [0, 1], 0: [1, 2]},
    4: {2: [0], 1: [0, 1], 0: [0, 1, 2]},
}


def _assignments(n=60, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, s, (n,), generator=g) for s in COLUMN_SIZES], dim=1)


def _hand_table(assignments, layer, prefix_columns, alpha):
    """Reference table by explicit counting in Python."""
    K = KS[layer]
    rows = [tuple(int(v) for v in row) for row in assignments]
    sizes = [COLUMN_SIZES[c] for c in prefix_columns]
    table = torch.empty(*sizes, K, dtype=torch.float64)
    for prefix in itertools.product(*(range(s) for s in sizes)):
        matching = [r for r in rows if tuple(r[c] for c in prefix_columns) == prefix]
        for k in range(K):
            count = sum(1 for r in matching if r[L - layer] == k)
            table[prefix + (k,)] = math.log((count + alpha) / (len(matching) + K * alpha))
    return table


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ngram_tables_equal_hand_counts(order):
    a = _assignments()
    prior = NGramPrior(KS, N_CAT, order=order, alpha=0.5).to(torch.float64).fit(a)
    for layer in range(L):
        expected = _hand_table(a, layer, PREFIX[order][layer], 0.5)
        assert prior.table_shape(layer) == tuple(expected.shape)
        torch.testing.assert_close(prior.table(layer), expected)


def test_counts_by_hand_on_a_tiny_example():
    # Two layers (K_0 = 2, K_1 = 2), one category, bigram: γ^0 given γ^1.
    a = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0]])
    prior = NGramPrior((2, 2), 1, order=2, alpha=1.0)
    counts = prior.counts(a)
    assert counts[1].tolist() == [[3, 1]]  # γ^1 given the category
    assert counts[0].tolist() == [[1, 2], [1, 0]]  # γ^0 given γ^1
    prior.fit(a)
    torch.testing.assert_close(prior.table(0).exp(), torch.tensor([[2 / 5, 3 / 5], [2 / 3, 1 / 3]]))


def test_every_row_normalises_and_counts_add_across_shards():
    a = _assignments(n=50)
    for order in (1, 2, 3):
        prior = NGramPrior(KS, N_CAT, order=order, alpha=0.3)
        shards = [prior.counts(a[:20]), prior.counts(a[20:])]
        total = [x + y for x, y in zip(*shards)]
        assert all(torch.equal(t, c) for t, c in zip(total, prior.counts(a)))
        prior.set_counts(total)
        for layer in range(L):
            lse = prior.table(layer).logsumexp(-1)
            torch.testing.assert_close(lse, torch.zeros_like(lse), atol=1e-6, rtol=0)


def test_uniform_equals_ngram_without_data():
    uniform = UniformPrior(KS, N_CAT)
    history = (torch.tensor([0, 1]).view(2, 1), torch.tensor([3, 0, 2]).view(3, 1, 1), torch.tensor(1))
    for ngram in (NGramPrior(KS, N_CAT, order=3), NGramPrior(KS, N_CAT, order=2).fit(torch.zeros(0, L + 1).long())):
        for layer in range(L):
            h = history[: L - layer]
            torch.testing.assert_close(ngram.log_prob_table(layer, h), uniform.log_prob_table(layer, h))
    assert torch.allclose(uniform.log_prob_table(0, history), torch.full((3, 2, 1, KS[0]), -math.log(KS[0])))


def test_broadcasting_with_enumeration_shapes():
    prior = NGramPrior(KS, N_CAT, order=3).fit(_assignments())
    category = torch.arange(N_CAT).view(N_CAT, 1, 1)  # enumerated in dim -3
    gamma2 = torch.arange(KS[2]).view(KS[2], 1, 1, 1)  # enumerated in dim -4
    gamma1 = torch.arange(KS[1]).view(KS[1], 1, 1, 1, 1)  # enumerated in dim -5
    out = prior.log_prob_table(1, (category, gamma2))
    assert out.shape == (KS[2], N_CAT, 1, 1, KS[1])
    for c, g in itertools.product(range(N_CAT), range(KS[2])):
        assert torch.equal(out[g, c, 0, 0], prior.table(1)[c, g])
    # Layer 0's prefix (γ^2, γ^1) does not include the category, but the batch shape still does.
    out = prior.log_prob_table(0, (category, gamma2, gamma1))
    assert out.shape == (KS[1], KS[2], N_CAT, 1, 1, KS[0])
    assert torch.equal(out[2, 1, 0, 0, 0], prior.table(0)[1, 2])
    # An observed (plated) category of shape (N,) with an enumerated γ^2.
    out = prior.log_prob_table(1, [torch.tensor([1, 0, 1]), gamma2.view(KS[2], 1)])
    assert out.shape == (KS[2], 3, KS[1])
    # Python ints are accepted too.
    assert prior.log_prob_table(2, [1]).shape == (KS[2],)


def test_priors_swap_inside_an_enumerated_pyro_model():
    """Exact marginal likelihood by TraceEnum_ELBO equals brute-force summation over all paths."""
    obs = torch.tensor(1.3)

    def make_model(prior):
        @config_enumerate
        def model():
            category = pyro.sample("category", dist.Categorical(logits=torch.zeros(N_CAT)))
            history = [category]
            for layer in reversed(range(L)):
                gamma = pyro.sample(f"gamma/{layer}", dist.Categorical(logits=prior.log_prob_table(layer, history)))
                history.append(gamma)
            pyro.sample("x", dist.Normal(history[-1].float() + 0.1 * history[1].float(), 1.0), obs=obs)

        return model

    def guide():
        pass

    for prior in (UniformPrior(KS, N_CAT), NGramPrior(KS, N_CAT, order=2).fit(_assignments()),
                  UnigramPrior(KS, N_CAT).fit(_assignments())):
        loss = TraceEnum_ELBO(max_plate_nesting=0).loss(make_model(prior), guide)
        total = 0.0
        for path in itertools.product(*(range(s) for s in COLUMN_SIZES)):
            logp = -math.log(N_CAT)
            for layer in reversed(range(L)):
                hist = [torch.tensor(v) for v in path[: L - layer]]
                logp += prior.log_prob_table(layer, hist)[path[L - layer]].item()
            logp += dist.Normal(path[-1] + 0.1 * path[1], 1.0).log_prob(obs).item()
            total += math.exp(logp)
        assert loss == pytest.approx(-math.log(total), rel=1e-5)


def test_callable_prior_normalises_and_checks_shape():
    def scores(layer, history):
        # Unnormalised scores that depend on the category: (*batch, K).
        return history[0].unsqueeze(-1).float() * torch.arange(KS[layer]).float() + 5.0

    prior = CallablePrior(scores, KS, N_CAT)
    category = torch.arange(N_CAT).view(N_CAT, 1)
    out = prior.log_prob_table(2, [category])
    assert out.shape == (N_CAT, 1, KS[2])
    torch.testing.assert_close(out, torch.log_softmax(scores(2, [category]), -1))
    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(N_CAT, 1))
    # A constant (K,) output is expanded to the batch.
    constant = CallablePrior(lambda layer, history: torch.zeros(KS[layer]), KS, N_CAT)
    assert constant.log_prob_table(1, [category, torch.tensor([0, 1, 2])]).shape == (N_CAT, 3, KS[1])

    def bad(layer, history):
        return torch.zeros(7, KS[layer] + 1)

    with pytest.raises(ValueError, match=r"bad\(layer=0, history\) returned shape \(7, 3\)"):
        CallablePrior(bad, KS, N_CAT).log_prob_table(0, [category, torch.tensor(0), torch.tensor(0)])
    with pytest.raises(TypeError, match="floating tensor"):
        CallablePrior(lambda layer, history: [0.0] * KS[layer], KS, N_CAT).log_prob_table(2, [category])
    with pytest.raises(TypeError, match="fn"):
        CallablePrior("not callable", KS, N_CAT)
    with pytest.raises(TypeError, match="cannot be saved"):
        prior.config()


def test_config_and_state_dict_round_trip():
    a = _assignments()
    for prior in (UniformPrior(KS, N_CAT), UnigramPrior(KS, N_CAT, alpha=0.25).fit(a),
                  NGramPrior(KS, N_CAT, order=3, alpha=2.0).fit(a)):
        config = json.loads(json.dumps(prior.config()))
        rebuilt = prior_from_config(config)
        assert type(rebuilt) is type(prior) and isinstance(rebuilt, GammaPrior)
        assert rebuilt.config() == prior.config()
        rebuilt.load_state_dict(prior.state_dict())
        for layer in range(L):
            h = [torch.tensor(1)] + [torch.tensor(0)] * (L - layer - 1)
            assert torch.equal(rebuilt.log_prob_table(layer, h), prior.log_prob_table(layer, h))
    assert NGramPrior(KS, N_CAT, order=2).config() == {
        "type": "NGramPrior", "Ks": list(KS), "n_categories": N_CAT, "order": 2, "alpha": 1.0}
    with pytest.raises(ValueError, match="expected one of"):
        prior_from_config({"type": "Bogus"})
    with pytest.raises(ValueError, match=r"\['order'\]"):
        prior_from_config({"type": "NGramPrior", "Ks": [2], "n_categories": 1, "alpha": 1.0})
    with pytest.raises(ValueError, match="CallablePrior"):
        prior_from_config({"type": "CallablePrior"})


def test_to_float64_moves_tables():
    for prior in (UniformPrior(KS, N_CAT), NGramPrior(KS, N_CAT, order=2).fit(_assignments())):
        before = prior.log_prob_table(0, [torch.tensor(0), torch.tensor(1), torch.tensor(2)])
        prior = prior.to(torch.float64)
        after = prior.log_prob_table(0, [torch.tensor(0), torch.tensor(1), torch.tensor(2)])
        assert before.dtype == torch.float32 and after.dtype == torch.float64
        assert all(b.dtype == torch.float64 for b in prior.buffers())
        torch.testing.assert_close(after.float(), before)


def test_bad_input_errors():
    prior = NGramPrior(KS, N_CAT, order=2)
    with pytest.raises(ValueError, match=r"layer: expected an int in \[0, 3\), got 3"):
        prior.log_prob_table(3, [])
    with pytest.raises(ValueError, match="expects 2 entries"):
        prior.log_prob_table(1, [torch.tensor(0)])
    with pytest.raises(TypeError, match=r"history\[0\]: expected an integer tensor"):
        prior.log_prob_table(2, [torch.tensor(0.0)])
    with pytest.raises(ValueError, match=r"history\[1\]: expected values in \[0, 4\)"):
        prior.log_prob_table(1, [torch.tensor(0), torch.tensor([4])])
    with pytest.raises(TypeError, match="Ks"):
        UniformPrior(3, N_CAT)
    with pytest.raises(ValueError, match=r"Ks\[1\]"):
        UniformPrior((2, 0), N_CAT)
    with pytest.raises(ValueError, match="order"):
        NGramPrior(KS, N_CAT, order=0)
    with pytest.raises(ValueError, match="alpha"):
        NGramPrior(KS, N_CAT, alpha=0.0)
    with pytest.raises(ValueError, match=r"assignments: expected trailing shape \(4,\)"):
        prior.counts(torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"assignments\[:, 2\]"):
        prior.fit(torch.tensor([[0, 0, 3, 0]]))
    with pytest.raises(ValueError, match=r"counts\[0\]: expected shape \(3, 2\)"):
        prior.set_counts([torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3)])
    with pytest.raises(ValueError, match=r"counts\[2\]: expected counts >= 0"):
        prior.set_counts([torch.zeros(3, 2), torch.zeros(4, 3), -torch.ones(2, 4)])


@pytest.mark.parametrize("shapes", [[(2,), (3,)], [(4, 1, 1), (2, 3)], [(), (5, 1)], [(1, 3), (2, 1, 1)]])
def test_batch_shape_matches_torch_broadcasting(shapes):
    history = [torch.zeros(s, dtype=torch.long) for s in shapes]
    try:
        expected = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        with pytest.raises(ValueError, match="broadcast together"):
            GammaPrior._batch_shape(history)
        return
    assert GammaPrior._batch_shape(history) == expected
