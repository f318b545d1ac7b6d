"""Tests of the observation model (eq. 8-9) and the per-element maximiser (eq. 13)."""

import math

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal

from pyro_backpass.distributions import PiecewiseGaussian, max_joint, normal_log_density
from pyro_backpass.distributions.functional import _max_joint_functional

# ---------------------------------------------------------------------------------------------
# max_joint against a brute-force grid (float64)
# ---------------------------------------------------------------------------------------------


def _objective(f, f_bu, f_tilde, sigma0, lam, beta, sigma1, sigma2):
    """Brute-force objective, written independently of the library with torch's Normal: the
    better of the two branches allowed at ``f`` (both at ``f = λ``, the supplement's coin)."""
    top_down = Normal(f_tilde, sigma0, validate_args=False).log_prob(f)
    on = Normal(f, sigma1, validate_args=False).log_prob(f_bu) + top_down
    off = Normal(beta, sigma2, validate_args=False).log_prob(f_bu) + top_down
    neg_inf = torch.tensor(-math.inf, dtype=f.dtype)
    return torch.maximum(torch.where(f >= lam, on, neg_inf), torch.where(f <= lam, off, neg_inf))


def _check_against_grid(f_bu, f_tilde, sigma0, lam, beta, sigma1, sigma2, n_grid=2001):
    """All arguments are float64 tensors of shape (E,). The grid spans every candidate maximiser
    (both lie in [min(f̃, f_bu, λ), max(f̃, f_bu, λ)]), contains λ itself, and is refined around
    the returned maximiser."""
    args = (f_bu, f_tilde, sigma0, lam, beta, sigma1, sigma2)
    f_star, value = max_joint(*args)
    lo = torch.minimum(torch.minimum(f_bu, f_tilde), lam) - 1.0
    hi = torch.maximum(torch.maximum(f_bu, f_tilde), lam) + 1.0
    t = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64)
    step = (hi - lo) / (n_grid - 1)
    local = torch.linspace(-2.0, 2.0, 401, dtype=torch.float64)
    grid = torch.cat([lo[:, None] + (hi - lo)[:, None] * t, lam[:, None],
                      f_star[:, None] + step[:, None] * local], dim=1)
    col = [a[:, None] for a in args]
    grid_max = _objective(grid, *col).max(dim=1).values
    attained = _objective(f_star[:, None], *col)[:, 0]
    scale = value.abs().clamp(min=1.0)
    # The closed form is a true maximum: no grid point beats it.
    assert bool((grid_max <= value + 1e-9 * scale).all()), (grid_max - value).max()
    # It is attained at f_star ...
    torch.testing.assert_close(attained, value, rtol=1e-12, atol=1e-9)
    # ... and the (refined) grid comes close to it: spacing 1e-2 * step around f_star.
    curvature = 1.0 / sigma0**2 + 1.0 / sigma1**2
    tol = 0.5 * curvature * (step / 100) ** 2 + 1e-9 * scale
    assert bool((value <= grid_max + tol).all()), (value - grid_max - tol).max()


_SIGMAS = st.sampled_from([1e-3, 0.05, 0.3, 1.0, 2.5, 40.0, 1e3])
_VALUES = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False)


@st.composite
def _element(draw):
    lam = draw(st.floats(-2.0, 2.0))
    # Exact boundary cases are what the supplement's rule is about: draw them often.
    f_tilde = draw(st.one_of(_VALUES, st.just(lam)))
    f_bu = draw(st.one_of(_VALUES, st.just(lam), st.just(f_tilde)))
    beta = draw(st.one_of(st.floats(-3.0, 3.0), st.just(f_bu)))
    return f_bu, f_tilde, draw(_SIGMAS), lam, beta, draw(_SIGMAS), draw(_SIGMAS)


@settings(deadline=None, max_examples=60)
@given(st.lists(_element(), min_size=1, max_size=6))
def test_max_joint_matches_brute_force_hypothesis(elements):
    _check_against_grid(*(torch.tensor(column, dtype=torch.float64) for column in zip(*elements)))


def test_max_joint_matches_brute_force_seeded_batch():
    g = torch.Generator().manual_seed(1)
    E = 600

    def u(a, b):
        return a + (b - a) * torch.rand(E, generator=g, dtype=torch.float64)

    lam = u(-1.0, 1.0)
    f_tilde = u(-3.0, 3.0)
    f_bu = u(-3.0, 3.0)  # negative f_bu included
    f_tilde[:50] = lam[:50]  # f̃ exactly at λ
    f_bu[50:100] = lam[50:100]  # f_bu exactly at λ
    f_bu[100:150] = lam[100:150] - 2.0  # η below λ for most of these
    f_tilde[100:150] = lam[100:150] + 0.1
    log_sigma = u(math.log(1e-3), math.log(1e3)), u(math.log(1e-3), math.log(1e3)), u(-3.0, 1.0)
    sigma0, sigma1, sigma2 = (s.exp() for s in log_sigma)
    _check_against_grid(f_bu, f_tilde, sigma0, lam, u(-1.0, 1.0), sigma1, sigma2)


def test_max_joint_branch_formulas_on_hand_picked_cases():
    d = torch.float64
    # η = (1·3 + 1·1)/2 = 2 ≥ λ = 0: on branch at η; off branch would pay for β far from f_bu.
    f, v = max_joint(torch.tensor(3.0, dtype=d), torch.tensor(1.0, dtype=d), 1.0, 0.0, -10.0, 1.0, 1.0)
    assert f.item() == pytest.approx(2.0)
    assert v.item() == pytest.approx(2 * normal_log_density(torch.tensor(1.0, dtype=d), 0.0, 1.0).item())
    # f_bu = β, f̃ < λ: off branch at f̃ with value log N(β; β, σ2) + log N(f̃; f̃, σ0).
    f, v = max_joint(torch.tensor(0.0, dtype=d), torch.tensor(-1.0, dtype=d), 0.5, 0.0, 0.0, 1.0, 0.1)
    assert f.item() == -1.0
    assert v.item() == pytest.approx(-math.log(0.5) - math.log(0.1) - math.log(2 * math.pi))
    # η below λ and f̃ above λ: both branches meet at λ.
    f, _ = max_joint(torch.tensor(-5.0, dtype=d), torch.tensor(0.5, dtype=d), 1.0, 0.2, -5.0, 1.0, 1.0)
    assert f.item() == 0.2


def _layer_args(dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    f_tilde = torch.randn(4, 3, 1, 5, 6, 6, generator=g).relu().to(dtype)  # (hyps..., C, H, W)
    f_bu = torch.randn(5, 6, 6, generator=g).to(dtype)
    sigma1 = (torch.rand(5, 1, 1, generator=g) + 0.5).to(dtype)  # per channel
    params = [torch.tensor(x, dtype=dtype) for x in (0.3, 0.1, 0.05)] + [sigma1, torch.tensor(0.2, dtype=dtype)]
    if requires_grad:
        f_tilde.requires_grad_(True)
        params[0].requires_grad_(True)
    sigma0, lam, beta, sigma1, sigma2 = params
    return f_bu, f_tilde, sigma0, lam, beta, sigma1, sigma2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_joint_in_place_path_matches_functional_and_keeps_inputs(dtype):
    args = _layer_args(dtype)
    before = [a.clone() for a in args]
    f_star, value = max_joint(*args)
    ref_f, ref_v = _max_joint_functional(*args)
    assert f_star.shape == value.shape == (4, 3, 1, 5, 6, 6)
    assert f_star.dtype == value.dtype == dtype
    torch.testing.assert_close(f_star, ref_f)
    torch.testing.assert_close(value, ref_v)
    for a, b in zip(args, before):
        assert torch.equal(a, b), "max_joint must not write into its inputs"


def test_max_joint_differentiable_and_broadcasts_bigger_f_bu():
    args = _layer_args(torch.float64, requires_grad=True)
    f_star, value = max_joint(*args)
    value.sum().backward()
    assert torch.isfinite(args[1].grad).all() and torch.isfinite(args[2].grad).all()
    # f_bu with dims f_tilde lacks (a batch of scenes): the out-of-place path handles it.
    f_bu = torch.randn(2, 1, 1, 1, 5, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        f_star, value = max_joint(f_bu, *(a.detach() for a in args[1:]))
    assert f_star.shape == value.shape == (2, 4, 3, 1, 5, 6, 6)
    # Python floats for every parameter.
    f_star2, value2 = max_joint(f_bu[0, 0, 0, 0], args[1].detach()[0, 0, 0], 0.3, 0.1, 0.05, 0.7, 0.2)
    assert f_star2.shape == (5, 6, 6) and value2.dtype == torch.float64


def test_max_joint_without_bottom_up_term():
    f_tilde = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    sigma0 = torch.tensor([0.5, 2.0], dtype=torch.float64).view(2, 1, 1, 1, 1)
    f_star, value = max_joint(None, f_tilde, sigma0, 0.1, 0.0, torch.ones(4, 1, 1, dtype=torch.float64), 1.0)
    assert f_star.shape == value.shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(f_star, f_tilde.expand(2, 3, 4, 4, 4))
    torch.testing.assert_close(value, normal_log_density(f_tilde, f_tilde, sigma0).expand(2, 3, 4, 4, 4))
    f_star, value = max_joint(None, f_tilde.float(), 0.5, 0.1, 0.0, 1.0, 1.0)
    assert value.dtype == torch.float32 and value.shape == f_tilde.shape


def test_normal_log_density_matches_torch():
    x, loc, scale = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64), 0.7
    torch.testing.assert_close(normal_log_density(x, loc, scale), Normal(loc, scale).log_prob(x))


# ---------------------------------------------------------------------------------------------
# PiecewiseGaussian
# ---------------------------------------------------------------------------------------------


def _hand_log_prob(x, f_td, lam, beta, sigma1, sigma2):
    z_on = (x - f_td) / sigma1
    z_off = (x - beta) / sigma2
    on = -0.5 * z_on**2 - torch.log(torch.as_tensor(sigma1)) - 0.5 * math.log(2 * math.pi)
    off = -0.5 * z_off**2 - torch.log(torch.as_tensor(sigma2)) - 0.5 * math.log(2 * math.pi)
    return torch.where(f_td >= lam, on, off)


def test_log_prob_matches_hand_formula_including_boundary():
    lam, beta, s1, s2 = 0.25, -0.5, 0.7, 0.2
    f_td = torch.tensor([-1.0, 0.0, 0.25, 0.25 - 1e-12, 1.0, 3.0], dtype=torch.float64)
    x = torch.tensor([0.3, -0.4, 0.1, 0.1, 2.0, -1.0], dtype=torch.float64)
    d = PiecewiseGaussian(f_td, lam, beta, s1, s2)
    torch.testing.assert_close(d.log_prob(x), _hand_log_prob(x, f_td, lam, beta, s1, s2))
    # The boundary f_td = λ is on the object branch.
    assert d.log_prob(x)[2].item() == pytest.approx(Normal(0.25, s1).log_prob(torch.tensor(0.1)).item())
    assert d.log_prob(x)[3].item() == pytest.approx(Normal(beta, s2).log_prob(torch.tensor(0.1)).item())


def test_per_channel_broadcasting_and_to_event():
    f_td = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    sigma1 = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1)
    d = PiecewiseGaussian(f_td, torch.tensor(0.0), torch.tensor(0.1), sigma1, torch.tensor(0.3))
    assert d.batch_shape == (2, 3, 4, 5) and d.event_shape == ()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(d.log_prob(x), _hand_log_prob(x, f_td, 0.0, 0.1, sigma1, 0.3))
    ind = d.to_event(3)
    assert ind.batch_shape == (2,) and ind.event_shape == (3, 4, 5)
    torch.testing.assert_close(ind.log_prob(x), d.log_prob(x).sum((-3, -2, -1)))
    # Enumeration-style extra leading dims on a parameter.
    lam = torch.tensor([-10.0, 10.0]).view(2, 1, 1, 1, 1)
    e = PiecewiseGaussian(f_td.float(), lam, 0.1, sigma1.float(), 0.3).to_event(3)
    assert e.batch_shape == (2, 2) and e.log_prob(x.float()).shape == (2, 2)


def test_sample_shapes_and_moments():
    f_td = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    d = PiecewiseGaussian(f_td, 0.5, -0.3, torch.tensor([0.5, 0.5, 0.25], dtype=torch.float64), 0.1)
    torch.testing.assert_close(d.mean, torch.tensor([2.0, -0.3, 0.5], dtype=torch.float64))
    torch.testing.assert_close(d.variance, torch.tensor([0.25, 0.01, 0.0625], dtype=torch.float64))
    assert d.sample().shape == (3,)
    samples = d.sample((20000,))
    assert samples.shape == (20000, 3)
    torch.testing.assert_close(samples.mean(0), d.mean, atol=0.02, rtol=0)
    torch.testing.assert_close(samples.var(0), d.variance, atol=0.01, rtol=0.05)


def test_rsample_has_grad():
    f_td = torch.tensor([1.0, -1.0], requires_grad=True)
    sigma1 = torch.tensor(0.5, requires_grad=True)
    beta = torch.tensor(0.2, requires_grad=True)
    d = PiecewiseGaussian(f_td, 0.0, beta, sigma1, 0.3)
    assert d.has_rsample
    d.rsample((5,)).sum().backward()
    torch.testing.assert_close(f_td.grad, torch.tensor([5.0, 0.0]))  # only the on element moves
    assert beta.grad.item() == pytest.approx(5.0)
    assert sigma1.grad is not None


def test_expand():
    d = PiecewiseGaussian(torch.randn(3, 1), 0.0, 0.1, torch.ones(3, 1), 0.3)
    e = d.expand((4, 3, 2))
    assert type(e) is PiecewiseGaussian and e.batch_shape == (4, 3, 2)
    assert e.sample().shape == (4, 3, 2)
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x))
    assert e._validate_args == d._validate_args


def test_validation_rejects_bad_sigma_and_nan():
    with pytest.raises(ValueError, match="sigma1"):
        PiecewiseGaussian(torch.zeros(3), 0.0, 0.0, torch.tensor([1.0, 0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="sigma2"):
        PiecewiseGaussian(torch.zeros(3), 0.0, 0.0, 1.0, -1.0)
    d = PiecewiseGaussian(torch.zeros(3), 0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="f_td"):
        PiecewiseGaussian(torch.tensor([float("nan")]), 0.0, 0.0, 1.0, 1.0)


def test_works_as_observed_pyro_site():
    f_td = torch.randn(2, 3, 4, 4).relu()

    def model():
        return pyro.sample("f_bu", PiecewiseGaussian(f_td, 0.1, 0.0, 0.5, 0.2).to_event(3), obs=f_td)

    tr = pyro.poutine.trace(model).get_trace()
    tr.compute_log_prob()
    assert tr.nodes["f_bu"]["log_prob"].shape == (2,)


def _params(C, kind, dtype, g):
    """Observation parameters: Python numbers, 0-d tensors, or per channel (C, 1, 1), λ of either sign."""
    if kind == "float":
        return 0.4, 0.1, 0.2, 0.5, 0.3
    if kind == "scalar":
        return tuple(torch.tensor(v, dtype=dtype) for v in (0.4, -0.1, 0.2, 0.5, 0.3))
    lam = (torch.rand(C, 1, 1, generator=g, dtype=dtype) - 0.5) * 0.4
    rest = [torch.rand(C, 1, 1, generator=g, dtype=dtype) + 0.1 for _ in range(3)]
    return torch.tensor(0.3, dtype=dtype), lam, rest[0] * 0.5, rest[1], rest[2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["float", "scalar", "channel"])
@pytest.mark.parametrize("lead", [(), (2,), (3, 2)])
@pytest.mark.parametrize("C,H,W", [(1, 5, 7), (6, 9, 9), (40, 30, 30)])
def test_argmax_joint_is_max_joint_maximiser_bit_for_bit(dtype, kind, lead, C, H, W):
    from pyro_backpass.distributions import argmax_joint
    from pyro_backpass.distributions.functional import _chunkable

    g = torch.Generator().manual_seed(C + H + len(lead))
    # f_bu has the image dim only; f_tilde adds the beam dims, as under the greedy handler.
    f_bu = torch.relu(torch.randn(*lead[-1:], C, H, W, generator=g, dtype=dtype))
    f_bu[..., 0, 0] = 0.0
    f_tilde = torch.relu(torch.randn(*lead, C, H, W, generator=g, dtype=dtype) * 0.8)
    params = _params(C, kind, dtype, g)
    assert _chunkable(f_bu, f_tilde, params)  # the fast path is the one checked here
    got = argmax_joint(f_bu, f_tilde, *params)
    want = max_joint(f_bu, f_tilde, *params)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got, want)


def test_argmax_joint_falls_back_where_it_cannot_chunk():
    from pyro_backpass.distributions import argmax_joint
    from pyro_backpass.distributions.functional import _chunkable

    x, f = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    params = (0.3, 0.0, 0.1, 0.5, 0.2)
    assert not _chunkable(x, f.requires_grad_(), params)  # grad: the differentiable form
    f = f.detach()
    full = torch.rand(3, 4, 4)  # a per-element parameter
    assert not _chunkable(x, f, (0.3, full, 0.1, 0.5, 0.2))
    torch.testing.assert_close(argmax_joint(x, f, 0.3, full, 0.1, 0.5, 0.2),
                               max_joint(x, f, 0.3, full, 0.1, 0.5, 0.2)[0])
    assert not _chunkable(x.double(), f, params)  # mixed dtypes: torch's promotion
    assert not _chunkable(x, f, (0.3, torch.zeros(1, 1, 3, 1, 1), 0.1, 0.5, 0.2))  # more dims than the maps
    assert torch.equal(argmax_joint(None, f, *params), f)
