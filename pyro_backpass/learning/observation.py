"""Fit the observation model ``P(F_bu | F_td)`` of one layer (eq. 9, Sec. 2.3.1).

Given pairs ``(F_bu, F_td)`` (a scene's activations and those of one masked instance in it), for each
candidate threshold ``λ`` on a dense grid of quantiles of ``F_td`` the on-branch (``f_td ≥ λ``) and
off-branch parameters have closed forms; the ``λ`` with the highest likelihood wins.

**ReLU zeros.** Activations after a ReLU are exactly 0 with positive probability, a point mass that
a Gaussian density cannot describe: fitted as Gaussian samples they drive ``σ2`` towards 0 and the
off-branch density towards infinity, which is why a naive maximum-likelihood fit puts ``λ`` at the
bottom of the grid (DESIGN §9). Here each branch gets a Bernoulli zero mass ``π_b`` and a Gaussian for
the non-zero values, ``P(f_bu) = π_b [f_bu = 0] + (1 - π_b) N(f_bu; μ_b, σ_b) [f_bu ≠ 0]``, and the
Gaussians (``σ1`` around ``f_td``, ``N(β, σ2)`` off) are fitted to the non-zero values only. So ``λ``
is chosen by how well it separates "the object drives this unit" from "it does not", not by how
many exact zeros fall on one side. Inference uses the fitted ``(λ, β, σ1, σ2)``; the zero masses are
reported. Standard deviations are floored at ``sigma_floor`` times the layer's activation scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..validation import check_finite, check_shape

__all__ = ["ObservationFitConfig", "ObservationFit", "fit_observation"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class ObservationFitConfig:
    """Defaults of the observation fit.

    :param int n_thresholds: size of the ``λ`` grid (quantiles of the positive ``F_td``, plus 0).
    :param bool per_channel_sigma1: fit ``σ1`` per channel (the paper found it more robust to clutter).
    :param bool zero_mass: model ReLU zeros of ``F_bu`` as a point mass (see module docstring).
    :param float sigma_floor: floor on σ's, relative to the RMS of ``F_td``.
    :param float max_quantile: highest quantile on the grid.
    :param int max_positions: at most this many (image, y, x) positions are used, drawn at random
        with a fixed seed (all channels of a position are kept, so per-channel fits stay paired).
    """

    n_thresholds: int = 48
    max_positions: int = 200_000
    per_channel_sigma1: bool = True
    zero_mass: bool = True
    sigma_floor: float = 1e-3
    max_quantile: float = 0.98


@dataclass
class ObservationFit:
    """Fitted parameters of one layer: ``sigma1`` is (C,) (all equal unless per channel)."""

    lam: float
    beta: float
    sigma1: torch.Tensor
    sigma2: float
    zero_mass_on: float
    zero_mass_off: float
    log_likelihood: float  # mean per element at the chosen λ
    grid: torch.Tensor
    grid_log_likelihood: torch.Tensor

    def summary(self) -> dict:
        return {"lam": self.lam, "beta": self.beta, "sigma1_mean": float(self.sigma1.mean()),
                "sigma1_min": float(self.sigma1.min()), "sigma1_max": float(self.sigma1.max()),
                "sigma2": self.sigma2, "zero_mass_on": self.zero_mass_on, "zero_mass_off": self.zero_mass_off,
                "log_likelihood_per_element": self.log_likelihood}


def _branch_loglik(sum_sq, n_nz, n_zero, n_total, sigma, zero_mass):
    """Log-likelihood of a branch with a Gaussian on its non-zeros (ML σ given) and a zero mass."""
    ll = -0.5 * sum_sq / sigma**2 - n_nz * (torch.log(sigma) + 0.5 * _LOG_2PI)
    if zero_mass:
        eps = 1e-12
        pi = n_zero / n_total.clamp_min(1)
        ll = ll + n_zero * torch.log(pi.clamp_min(eps)) + n_nz * torch.log((1 - pi).clamp_min(eps))
    return ll


def fit_observation(f_bu: torch.Tensor, f_td: torch.Tensor,
                    config: ObservationFitConfig | None = None) -> ObservationFit:
    """Maximum-likelihood ``(λ, β, σ1, σ2)`` of one layer from paired activations.

    :param torch.Tensor f_bu: (N, C, H, W) scene activations.
    :param torch.Tensor f_td: (N, C, H, W) the matching single-instance activations.
    :returns: :class:`ObservationFit`.
    """
    config = config or ObservationFitConfig()
    check_finite("f_bu", f_bu)
    check_finite("f_td", f_td)
    check_shape("f_bu", f_bu, tuple(f_td.shape), trailing=False)
    if f_td.dim() != 4 or f_td.numel() == 0:
        raise ValueError(f"f_td: expected a non-empty (N, C, H, W) tensor, got shape {tuple(f_td.shape)}")
    x = f_bu.detach().double().transpose(0, 1).reshape(f_bu.shape[1], -1)  # (C, M)
    t = f_td.detach().double().transpose(0, 1).reshape(f_td.shape[1], -1)
    C = x.shape[0]
    if x.shape[1] > config.max_positions:
        keep = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))[: config.max_positions]
        x, t = x[:, keep], t[:, keep]
    scale = float(t.pow(2).mean().sqrt().clamp_min(1e-6))
    floor = config.sigma_floor * scale
    pos = t[t > 0]
    qs = torch.linspace(0.0, config.max_quantile, config.n_thresholds, dtype=torch.float64)
    if pos.numel():
        sample = pos[torch.randperm(pos.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
        grid = torch.cat([torch.zeros(1, dtype=torch.float64), torch.quantile(sample, qs)]).unique()
    else:
        grid = torch.zeros(1, dtype=torch.float64)
    nz = x != 0 if config.zero_mass else torch.ones_like(x, dtype=torch.bool)
    lls, fits = [], []
    for lam in grid:
        on = t >= lam
        off = ~on
        # On branch: f_bu ~ N(f_td, σ1), per channel or pooled.
        r2 = torch.where(on & nz, (x - t) ** 2, 0.0)
        n_on_nz = (on & nz).sum(1).double()
        n_on = on.sum(1).double()
        if config.per_channel_sigma1:
            s1 = (r2.sum(1) / n_on_nz.clamp_min(1)).sqrt().clamp_min(floor)
            s1 = torch.where(n_on_nz > 0, s1, (r2.sum() / n_on_nz.sum().clamp_min(1)).sqrt().clamp_min(floor))
        else:
            s1 = (r2.sum() / n_on_nz.sum().clamp_min(1)).sqrt().clamp_min(floor).expand(C)
        ll_on = _branch_loglik(r2.sum(1), n_on_nz, n_on - n_on_nz, n_on, s1, config.zero_mass).sum()
        # Off branch: f_bu ~ N(β, σ2), one β and σ2 per layer.
        m_off = off & nz
        n_off_nz = m_off.sum().double()
        beta = (torch.where(m_off, x, 0.0).sum() / n_off_nz.clamp_min(1))
        s2 = (torch.where(m_off, (x - beta) ** 2, 0.0).sum() / n_off_nz.clamp_min(1)).sqrt().clamp_min(floor)
        n_off = off.sum().double()
        ll_off = _branch_loglik(torch.where(m_off, (x - beta) ** 2, 0.0).sum(), n_off_nz, n_off - n_off_nz, n_off,
                                s2, config.zero_mass)
        lls.append(float(ll_on + ll_off))
        pi_on = float((n_on - n_on_nz).sum() / n_on.sum().clamp_min(1))
        pi_off = float((n_off - n_off_nz) / n_off.clamp_min(1))
        fits.append((float(lam), float(beta), s1.float(), float(s2), pi_on, pi_off))
    lls_t = torch.tensor(lls, dtype=torch.float64)
    best = int(torch.argmax(lls_t))
    lam, beta, s1, s2, pi_on, pi_off = fits[best]
    return ObservationFit(lam=lam, beta=beta, sigma1=s1, sigma2=s2, zero_mass_on=pi_on, zero_mass_off=pi_off,
                          log_likelihood=lls[best] / x.numel(), grid=grid.float(), grid_log_likelihood=lls_t)
