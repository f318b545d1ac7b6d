import pytest
import torch

from pyro_backpass.learning import ObservationFitConfig, fit_observation


def _draw(n=64, zero_fraction=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = 4
    f_td = torch.relu(torch.randn(n, C, 8, 8, generator=g) + 0.2)
    lam, beta, s2 = 0.5, 0.3, 0.25
    s1 = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, C, 1, 1)
    on = f_td >= lam
    f_bu = torch.where(on, f_td + s1 * torch.randn(f_td.shape, generator=g),
                       beta + s2 * torch.randn(f_td.shape, generator=g))
    if zero_fraction:
        zero = torch.rand(f_td.shape, generator=g) < zero_fraction
        f_bu = torch.where(zero & ~on, torch.zeros_like(f_bu), f_bu)
    return f_bu, f_td, (lam, beta, s1.flatten(), s2)


@pytest.mark.parametrize("zero_mass", [False, True])
def test_fit_recovers_parameters_of_model_data(zero_mass):
    f_bu, f_td, (lam, beta, s1, s2) = _draw()
    fit = fit_observation(f_bu, f_td, ObservationFitConfig(zero_mass=zero_mass, n_thresholds=200))
    assert fit.lam == pytest.approx(lam, rel=0.03)
    assert fit.beta == pytest.approx(beta, rel=0.03)
    assert fit.sigma2 == pytest.approx(s2, rel=0.03)
    torch.testing.assert_close(fit.sigma1, s1, rtol=0.05, atol=0)


def test_relu_zeros_do_not_drag_lambda_to_the_bottom():
    # A third of the off-branch scene activations are exact ReLU zeros.
    f_bu, f_td, (lam, *_rest) = _draw(zero_fraction=0.35, seed=1)
    with_mass = fit_observation(f_bu, f_td, ObservationFitConfig(zero_mass=True, n_thresholds=200))
    assert with_mass.lam == pytest.approx(lam, rel=0.05)
    assert with_mass.zero_mass_off > 0.2


def test_pooled_sigma1_and_errors():
    f_bu, f_td, _ = _draw()
    fit = fit_observation(f_bu, f_td, ObservationFitConfig(per_channel_sigma1=False))
    assert torch.all(fit.sigma1 == fit.sigma1[0])
    with pytest.raises(ValueError, match="f_bu"):
        fit_observation(f_bu[:, :2], f_td)
    bad = f_bu.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="f_bu.*NaN"):
        fit_observation(bad, f_td)
