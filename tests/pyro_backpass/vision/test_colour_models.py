"""Colour models of the mask gates, against brute force: Gaussian and colour-line densities, the
connected-component filter, and the ``"colour_line"`` gate on a thin shaded object."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pyro_backpass.vision.colour_models import (
    colour_line_log_lik,
    colour_line_masks,
    core_colour_posterior,
    diagonal_log_lik,
    keep_connected,
)


def test_diagonal_log_lik_is_the_weighted_gaussian_density():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 50, generator=g, dtype=torch.float64)
    w = (torch.rand(2, 50, generator=g) > 0.4).double()
    got = diagonal_log_lik(x, w, floor=0.02)
    for i in range(2):
        sel = x[i][:, w[i] > 0]
        mu, var = sel.mean(1), sel.var(1, unbiased=False) + 0.02 ** 2
        want = torch.distributions.Normal(mu[:, None], var.sqrt()[:, None]).log_prob(x[i]).sum(0)
        torch.testing.assert_close(got[i], want)


def _shaded(albedo, n, g, noise=0.0):
    s = 0.3 + 0.7 * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.tensor(albedo, dtype=torch.float64)[:, None] * s + noise * torch.randn(3, n, generator=g,
                                                                                         dtype=torch.float64)


def test_colour_line_log_lik_is_the_density_around_the_fitted_line():
    g = torch.Generator().manual_seed(1)
    albedo = (0.8, 0.4, 0.1)
    x = _shaded(albedo, 200, g, noise=0.01)[None]                         # (1, 3, P)
    w = torch.ones(1, 200, dtype=torch.float64)
    got = colour_line_log_lik(x, w, floor=0.02)[0]
    # The direction maximising E[(uᵀx)²] is the top left singular vector of the pixel matrix (numpy's SVD).
    best = torch.from_numpy(np.abs(np.linalg.svd(x[0].numpy())[0][:, 0]))
    a = torch.tensor(albedo, dtype=torch.float64)
    assert torch.dot(best, a / a.norm()) > 0.999
    t = best @ x[0]
    across = ((x[0] - best[:, None] * t) ** 2).sum(0)
    var_a = across.mean() / 2 + 0.02 ** 2
    var_t = t.var(unbiased=False) + 0.02 ** 2
    want = (-0.5 * across / var_a - torch.log(2 * math.pi * var_a)
            - 0.5 * (t - t.mean()) ** 2 / var_t - 0.5 * torch.log(2 * math.pi * var_t))
    torch.testing.assert_close(got, want)
    # A colour of the same brightness off the line is far less likely than a shade on it.
    probe = torch.tensor([[[0.45], [0.45], [0.45]]], dtype=torch.float64)
    on = (a * 0.6)[None, :, None]
    ll = colour_line_log_lik(torch.cat([x, probe, on], -1), torch.cat([w, torch.zeros(1, 2, dtype=w.dtype)], -1))
    assert ll[0, -1] > ll[0, -2] + 20


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.2, 0.7))
def test_keep_connected_matches_scipy_labels(seed, density):
    rng = np.random.default_rng(seed)
    mask = rng.random((2, 17, 23)) < density
    seeds = rng.random((2, 17, 23)) < 0.02
    got = keep_connected(torch.from_numpy(mask), torch.from_numpy(seeds))
    for i in range(2):
        lab, _ = ndimage.label(mask[i], structure=np.ones((3, 3)))
        keep = np.unique(lab[seeds[i] & mask[i]])
        want = np.isin(lab, keep[keep > 0])
        assert np.array_equal(got[i].numpy(), want)


def _thin_shaded_scene():
    """A thin shaded orange bar (one albedo, shading varying along it) and a same-coloured blob away
    from it, on a noisy two-colour checker; the predicted region is a loose box of mostly background
    around both, strongest on part of the bar."""
    g = torch.Generator().manual_seed(0)
    S = 32
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    checker = ((yy // 4 + xx // 4) % 2).double()
    img = torch.stack([0.2 + 0.3 * checker, 0.5 - 0.2 * checker, 0.6 + 0 * checker])
    img = img + 0.03 * torch.randn(3, S, S, generator=g, dtype=torch.float64)
    shade = torch.linspace(0.4, 1.0, 20, dtype=torch.float64)
    albedo = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    img[:, 15:17, 6:26] = albedo[:, None, None] * shade
    img[:, 4:6, 24:27] = albedo[:, None, None] * 0.7                   # same colour, not connected
    strength = torch.zeros(1, 1, S, S, dtype=torch.float64)
    strength[..., 2:30, 2:30] = 0.5
    strength[..., 13:19, 10:20] = 1.0
    want = torch.zeros(S, S, dtype=torch.bool)
    want[15:17, 6:26] = True
    return img[None].clamp(0, 1), strength, want


def test_colour_line_gate_recovers_a_thin_shaded_object_and_drops_what_is_not_connected():
    img, strength, want = _thin_shaded_scene()
    mask = colour_line_masks(img, strength, fraction=0.3, core=0.9, prior=0.3, core_keep=0.2, iters=6)
    assert mask.shape == strength.shape and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], want)
    # The Gaussian core model cannot follow the shading: it loses the bar's dark end or keeps background.
    q = core_colour_posterior(img, strength, core=0.9, outside=0.3, prior=0.3)
    assert not torch.equal((strength >= 0.3)[0, 0] & (q[0, 0] > 0.5), want)


@pytest.mark.parametrize("iters", [0, 2])
def test_colour_line_gate_is_batched_over_assignments_and_images(iters):
    img, strength, _ = _thin_shaded_scene()
    imgs = torch.cat([img, img.flip(-1)])                                 # (2, 3, S, S)
    st2 = torch.cat([torch.cat([strength, strength.flip(-1)], 1), torch.cat([strength, strength.flip(-1)], 1)])
    both = colour_line_masks(imgs, st2, 0.3, 0.9, 0.3, 0.2, iters)      # (2 assignments, 2 images)
    one = colour_line_masks(imgs[1:], strength.flip(-1), 0.3, 0.9, 0.3, 0.2, iters)
    assert both.shape == (2, 2, 32, 32)
    assert torch.equal(both[0, 1], one[0, 0]) and torch.equal(both[1, 1], one[0, 0])


def test_mixture_log_lik_recovers_a_known_mixture_and_reduces_to_one_gaussian():
    from pyro_backpass.vision.colour_models import mixture_log_lik

    g = torch.Generator().manual_seed(3)
    mus = torch.tensor([[0.2, 0.6, 0.3], [0.8, 0.2, 0.5], [0.5, 0.5, 0.9]], dtype=torch.float64)
    sds = torch.tensor([0.03, 0.05, 0.04], dtype=torch.float64)
    pis = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    k = torch.multinomial(pis, 6000, replacement=True, generator=g)
    x = (mus[k] + sds[k, None] * torch.randn(6000, 3, generator=g, dtype=torch.float64)).T[None]   # (1, 3, P)
    w = torch.ones(1, 6000, dtype=torch.float64)
    truth = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(pis),
        torch.distributions.Independent(torch.distributions.Normal(mus, sds[:, None].expand(3, 3)), 1))
    want = truth.log_prob(x[0].T)
    got = mixture_log_lik(x, w, components=3, iters=20, subsample=2, floor=1e-3)[0]
    assert (got - want).abs().mean() < 0.1
    # Weights select the pixels fitted: the mixture of the first cluster's pixels alone is one bump there.
    first = mixture_log_lik(x, (k == 0).double()[None], components=3, iters=20, subsample=1, floor=1e-3)[0]
    assert first[k == 0].mean() > first[k == 1].mean() + 20
    torch.testing.assert_close(mixture_log_lik(x, w, components=1), diagonal_log_lik(x, w))


def test_colour_line_gate_with_a_background_mixture_still_recovers_the_thin_object():
    img, strength, want = _thin_shaded_scene()
    for k in (2, 6):
        mask = colour_line_masks(img, strength, fraction=0.3, core=0.9, prior=0.3, core_keep=0.2, iters=6,
                                 bg_components=k)
        assert torch.equal(mask[0, 0], want), k
