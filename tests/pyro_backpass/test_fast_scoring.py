"""The fast scorer of the backward pass against the plain per-hypothesis computation (DESIGN §4)."""

import pytest
import torch

from pyro_backpass import relu_sums
from pyro_backpass.distributions import max_joint
from pyro_backpass.scoring import score_hypotheses, score_table
from pyro_backpass.specs import offsets_for_radius
from pyro_backpass.topdown import select_hypotheses, shift


def _params(C, g, lam_scale=0.0, per_channel=True):
    n = C if per_channel else 1
    lam = (torch.rand(n, 1, 1, generator=g, dtype=torch.float64) - 0.3) * lam_scale
    beta = torch.rand(n, 1, 1, generator=g, dtype=torch.float64) * 0.2
    s1 = 0.1 + torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    s2 = 0.1 + torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    return torch.tensor(0.2 + torch.rand(1, generator=g).item(), dtype=torch.float64), lam, beta, s1, s2


def _naive_table(x, comps, radius, params):
    P, Np, K = comps.shape[:3]
    offs = offsets_for_radius(radius)
    out = torch.empty(P, x.shape[0], K, len(offs), dtype=x.dtype)
    for p in range(P):
        for n in range(x.shape[0]):
            for k in range(K):
                for d, (dy, dx) in enumerate(offs):
                    f = shift(comps[p, n if Np > 1 else 0, k], dy, dx)
                    out[p, n, k, d] = max_joint(x[n], f, *params)[1].sum()
    return out


@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("shared_components", [True, False])
@pytest.mark.parametrize("lam_scale", [0.0, 1.0])
def test_score_table_equals_max_joint_of_every_shifted_hypothesis(radius, shared_components, lam_scale):
    g = torch.Generator().manual_seed(int(radius * 10 + lam_scale * 3 + shared_components))
    N, C, H, W, K, P = 2, 3, 5, 6, 4, 2
    # Negative and positive values on both sides, zeros as ReLU leaves them.
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64).mul(0.8).add(0.3)
    comps = torch.relu(torch.randn(P, 1 if shared_components else N, K, C, H, W, generator=g, dtype=torch.float64))
    params = _params(C, g, lam_scale)
    ref = _naive_table(x, comps, radius, params)
    for fast in (None, False):
        torch.testing.assert_close(score_table(x, comps, radius, *params, fast=fast), ref)
    if lam_scale == 0.0:
        # The fast formula (no clamp term) where x ≥ λ and f ≥ λ, with λ = 0 and with λ < 0.
        for lam in (params[1], -params[1] - 0.1):
            p = (params[0], lam) + params[2:]
            torch.testing.assert_close(score_table(x.abs(), comps, radius, *p, fast=True),
                                       _naive_table(x.abs(), comps, radius, p))
            torch.testing.assert_close(score_table(x.abs(), comps, radius, *p, nonnegative=True),
                                       _naive_table(x.abs(), comps, radius, p))


def test_score_table_chunks_give_the_same_numbers(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 4, 6, 6, generator=g, dtype=torch.float64)
    comps = torch.rand(1, 3, 5, 4, 6, 6, generator=g, dtype=torch.float64)
    params = _params(4, g, 1.0)
    for fast in (None, False):
        whole = score_table(x, comps, 1, *params, fast=fast)
        with monkeypatch.context() as m:
            m.setattr(relu_sums, "CHUNK_ELEMENTS", 7)
            torch.testing.assert_close(score_table(x, comps, 1, *params, fast=fast), whole)


@pytest.mark.parametrize("float_params", [False, True])
def test_score_hypotheses_gathers_enumerated_and_clamped_hypotheses(float_params):
    g = torch.Generator().manual_seed(2)
    N, C, H, W, K, r = 3, 2, 5, 5, 4, 1
    x = torch.rand(N, C, H, W, generator=g, dtype=torch.float64)
    params = (0.5, 0.0, 0.1, 0.6, 0.4) if float_params else _params(C, g, 1.0)

    def direct(comps, index, delta):
        return max_joint(x, select_hypotheses(comps, r, index, delta), *params)[1].sum((-3, -2, -1))

    # Lower layer, enumerated as by the greedy handler: comps (B, N, K, C, H, W), γ at -3, δ at -4.
    comps = torch.rand(2, N, K, C, H, W, generator=g, dtype=torch.float64)
    gam = torch.arange(K).reshape(K, 1, 1)
    dl = torch.arange(9).reshape(9, 1, 1, 1)
    out = score_hypotheses(x, comps, r, (gam,), dl, *params)
    assert out.shape == (9, K, 2, N)
    torch.testing.assert_close(out, direct(comps, (gam,), dl))
    # Top layer: templates (n_cat, K, C, H, W) with no image dim; category at -3, γ at -4, δ at -5.
    tmpl = torch.rand(2, K, C, H, W, generator=g, dtype=torch.float64)
    cat = torch.arange(2).reshape(2, 1, 1)
    gam4, dl5 = gam.unsqueeze(-1), dl.unsqueeze(-1)
    out = score_hypotheses(x, tmpl, r, (cat, gam4), dl5, *params)
    assert out.shape == (9, K, 2, 1, N)
    torch.testing.assert_close(out, direct(tmpl, (cat, gam4), dl5))
    # A few clamped hypotheses per image take the direct path and agree too.
    one = (torch.tensor([1, 0, 3]),)
    torch.testing.assert_close(score_hypotheses(x, comps[:1], r, one, torch.tensor([4, 0, 8]), *params),
                               direct(comps[:1], one, torch.tensor([4, 0, 8])))


def test_score_table_float32_close_to_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 16, 12, 12, generator=g, dtype=torch.float64)
    comps = torch.rand(1, 1, 6, 16, 12, 12, generator=g, dtype=torch.float64)
    params = _params(16, g)
    t64 = score_table(x, comps, 2, *params)
    t32 = score_table(x.float(), comps.float(), 2, *(p.float() for p in params))
    torch.testing.assert_close(t32.double(), t64, rtol=1e-5, atol=1e-2)


def _classes(x, comps, params):
    """How many map cells the split puts in each class (on / x = 0 / gathered), recomputed here."""
    sigma0, lam, beta, s1, s2 = params
    k0, c = -0.5 / sigma0**2, -0.5 / (sigma0**2 + s1**2)
    h = 0.5 / s2**2
    a = (c + h) * x * x - 2 * h * beta * x + h * beta * beta + torch.log(s2 / s1) - k0 * lam * lam
    b = -2 * c * x + 2 * k0 * lam
    e = c - k0
    v = torch.clamp(-b / (2 * e), min=0.0)
    on = a + b * v + e * v * v >= 0
    return int(on.sum()), int(((x == 0) & ~on).sum()), int(((x != 0) & ~on).sum())


@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("beam", [1, 2])
@pytest.mark.parametrize("shared_components", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cell_classes_equal_the_dense_loop_and_every_hypothesis(radius, beam, shared_components, channels_last):
    # ReLU maps on both sides (exact zeros), parameters under which the on branch wins at some cells for
    # every component, never at others (x = 0) and depends on the component elsewhere: all three classes.
    if channels_last and radius:
        pytest.skip("channels-last components come from offset-free layers only")
    g = torch.Generator().manual_seed(10 * radius + 3 * beam + shared_components + 7 * channels_last)
    N, C, H, W, K = 2, 3, 6, 5, 4
    x = torch.relu(torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * 1.5 + 0.2)
    Np = 1 if shared_components else N
    comps = torch.relu(torch.randn(beam, Np, K, C, H, W, generator=g, dtype=torch.float64) + 0.3)
    if channels_last:
        # (P, N', K, C, H, W) with (H, W, K, C) blocks per image, as a channels-last convolution leaves them.
        comps = comps.permute(0, 1, 4, 5, 2, 3).contiguous().permute(0, 1, 4, 5, 2, 3)
    params = (torch.tensor(0.5, dtype=torch.float64), torch.zeros(C, 1, 1, dtype=torch.float64),
              torch.full((C, 1, 1), 0.4, dtype=torch.float64), torch.tensor([0.9, 1.2, 1.5]).double().reshape(C, 1, 1),
              torch.full((C, 1, 1), 0.5, dtype=torch.float64))
    on, zero, rest = _classes(x, comps, params)
    assert on and zero and rest, (on, zero, rest)
    ref = _naive_table(x, comps.contiguous(), radius, params)
    split = score_table(x, comps, radius, *params, nonnegative=True)   # classes, gathered rest
    torch.testing.assert_close(split, ref)
    torch.testing.assert_close(score_table(x, comps, radius, *params, fast=False), ref)   # general form
    monkey = relu_sums.GATHER_MAX_FRACTION
    try:
        relu_sums.GATHER_MAX_FRACTION = 0.0                          # too many undecided: the dense loop
        torch.testing.assert_close(score_table(x, comps, radius, *params, nonnegative=True), ref)
    finally:
        relu_sums.GATHER_MAX_FRACTION = monkey


def test_cell_classes_in_float32_stay_close_to_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.relu(torch.randn(1, 16, 12, 12, generator=g, dtype=torch.float64))
    comps = torch.relu(torch.randn(1, 1, 6, 16, 12, 12, generator=g, dtype=torch.float64))
    params = (torch.tensor(0.3, dtype=torch.float64), torch.zeros(16, 1, 1, dtype=torch.float64),
              torch.full((16, 1, 1), 0.2, dtype=torch.float64), torch.full((16, 1, 1), 0.6, dtype=torch.float64),
              torch.full((16, 1, 1), 0.3, dtype=torch.float64))
    t64 = score_table(x, comps, 2, *params, nonnegative=True)
    t32 = score_table(x.float(), comps.float(), 2, *(p.float() for p in params), nonnegative=True)
    torch.testing.assert_close(t32.double(), t64, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("size", [(6, 6), (5, 7)])
def test_polyphase_components_equal_upsample_then_convolve(size):
    # At inference the nearest ×2 + 3×3 convolution runs as one 2×2 convolution of the small map.
    from pyro_backpass.topdown import TopDownConv

    torch.manual_seed(0)
    m = TopDownConv(4, 3, 5, (2 * size[0], 2 * size[1]), upsample="nearest").double()
    with torch.no_grad():
        m.bias.normal_()
    x = torch.relu(torch.randn(2, 3, 4, *size, dtype=torch.float64))
    for _ in range(2):
        with torch.enable_grad():
            plain = m.components(x).detach()                 # upsample, then convolve
        with torch.no_grad():
            assert m._polyphase_applies(x.reshape(-1, 4, *size))
            torch.testing.assert_close(m.components(x), plain)
            m.weight.mul_(-0.5)                              # an in-place update: the cached kernels follow
