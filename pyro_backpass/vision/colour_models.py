"""Colour models of the instance-mask gates (:mod:`pyro_backpass.vision.masks`).

A gate decides, inside the region the top-down prediction marks, which pixels are the object's and
which the background's, from their colours. Three two-class models live here:

- :func:`colour_posterior`: one diagonal Gaussian in RGB per class, fitted by EM from a spatial prior;
- :func:`core_colour_posterior`: the same Gaussians, the object's fitted on the prediction's core and
  the background's outside the region;
- :func:`colour_line_masks` (the ``"colour_line"`` gate): the object's colours lie on a *colour line*
  through black, the background is a mixture of diagonal Gaussians (:func:`mixture_log_lik`), the fit
  alternates with the classification (as GrabCut does), and only the parts of the mask connected to
  the core are kept.

Why a line: a Lambertian object of one albedo ``a`` shows the colours ``s·a`` for shading ``s`` in
``[ambient, 1]`` (the renderer's shading, :mod:`pyro_backpass.data.render`, and a fair first model of
any matte object), so its pixels spread along the ray ``{s·a}`` from black and only thinly across it.
A diagonal Gaussian fitted to them is wide in every direction and swallows background colours of
similar brightness; the line does not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["diagonal_log_lik", "mixture_log_lik", "colour_line_log_lik", "colour_posterior", "core_colour_posterior",
           "colour_line_masks", "keep_connected"]

_LOG_2PI = math.log(2 * math.pi)


def diagonal_log_lik(x: torch.Tensor, w: torch.Tensor, floor: float = 0.02) -> torch.Tensor:
    """Log density of every pixel under the diagonal RGB Gaussian fitted to the pixels with weights ``w``.

    :param torch.Tensor x: (..., 3, P) pixels.
    :param torch.Tensor w: (..., P) nonnegative weights (all zero: the fit falls back to mean 0 and
        variance ``floor²``; callers keep the weights nonzero where it matters).
    :param float floor: floor on the standard deviations.
    :returns: (..., P) log densities (normalised in RGB).
    """
    ws = w.sum(-1, keepdim=True).clamp_min(1e-6)
    mu = (x * w.unsqueeze(-2)).sum(-1) / ws                                 # (..., 3)
    var = ((x - mu.unsqueeze(-1)) ** 2 * w.unsqueeze(-2)).sum(-1) / ws + floor ** 2
    z = (x - mu.unsqueeze(-1)) ** 2 / var.unsqueeze(-1)
    return -0.5 * (z + (var.log() + _LOG_2PI).unsqueeze(-1)).sum(-2)


def mixture_log_lik(x: torch.Tensor, w: torch.Tensor, components: int, iters: int = 4, subsample: int = 4,
                    floor: float = 0.02) -> torch.Tensor:
    """Log density of every pixel under a mixture of diagonal RGB Gaussians fitted by weighted EM to the
    pixels with weights ``w``.

    A textured background (a gradient under stripes, a two-colour checker) is several colours, which
    one Gaussian covers only by being wide. The fit is deterministic: component ``j`` starts with the
    ``j``-th brightness quantile of the weighted pixels, then ``iters`` EM steps (at least one) on every
    ``subsample``-th pixel (the statistics of a few thousand pixels need not all of them), and the
    densities of all pixels come from the fitted mixture.

    :param torch.Tensor x: (..., C, P) pixels (C = 3 for RGB); ``w``: (..., P) nonnegative weights.
    :param int components: mixture components (1: :func:`diagonal_log_lik`).
    :param float floor: floor on the components' standard deviations.
    :returns: (..., P) log densities (normalised in RGB).
    """
    if components == 1:
        return diagonal_log_lik(x, w, floor)
    shape = w.shape
    x = x.reshape(-1, x.shape[-2], x.shape[-1])                             # (B, C, P)
    w = w.reshape(-1, w.shape[-1])                                          # (B, P)
    xs, ws = x[..., ::subsample], w[..., ::subsample]
    k = components
    # Brightness rank among the weighted pixels -> quantile bins (unweighted pixels carry no weight).
    bright = torch.where(ws > 0, xs.mean(1), torch.full_like(ws, float("inf")))
    rank = bright.argsort(-1).argsort(-1)
    n_w = (ws > 0).sum(-1, keepdim=True).clamp_min(1)
    resp = F.one_hot((rank * k // n_w).clamp_max(k - 1), k).to(x.dtype).transpose(1, 2)   # (B, k, P')

    def log_components(pixels, mu, var, log_pi):
        # Σ_c (x_c - μ_kc)² / v_kc expanded, so no (B, k, 3, P) tensor is built.
        quad = (torch.bmm(1 / var, pixels * pixels) - 2 * torch.bmm(mu / var, pixels)
                + (mu * mu / var).sum(-1, keepdim=True))
        return -0.5 * (quad + (var.log() + _LOG_2PI).sum(-1, keepdim=True)) + log_pi.unsqueeze(-1)

    for step in range(max(iters, 1)):
        r = resp * ws.unsqueeze(1)
        rs = r.sum(-1).clamp_min(1e-6)                                      # (B, k)
        mu = torch.bmm(r, xs.transpose(1, 2)) / rs.unsqueeze(-1)            # (B, k, 3)
        var = (torch.bmm(r, (xs * xs).transpose(1, 2)) / rs.unsqueeze(-1) - mu * mu).clamp_min(0) + floor ** 2
        log_pi = (rs / rs.sum(-1, keepdim=True)).log()
        if step < max(iters, 1) - 1:
            comp = log_components(xs, mu, var, log_pi)
            resp = (comp - torch.logsumexp(comp, 1, keepdim=True)).exp()
    return torch.logsumexp(log_components(x, mu, var, log_pi), 1).reshape(shape)


def colour_line_log_lik(x: torch.Tensor, w: torch.Tensor, floor: float = 0.02) -> torch.Tensor:
    """Log density of every pixel under the colour line fitted to the pixels with weights ``w``.

    The line's direction ``u`` is the principal axis of the weighted *uncentred* second moment
    ``E[x xᵀ]`` (the line passes through black); a pixel's distance from it is an isotropic Gaussian
    in the ``C - 1`` (two, in RGB) directions across it, and its position ``t = uᵀx`` along it a Gaussian.

    :param torch.Tensor x: (..., C, P) pixels (C = 3 for RGB, C >= 2); ``w``: (..., P) nonnegative weights.
    :param float floor: floor on the standard deviations across and along the line.
    :returns: (..., P) log densities (normalised in RGB).
    """
    ws = w.sum(-1).clamp_min(1e-6)                                          # (...)
    moment = torch.einsum("...cp,...dp,...p->...cd", x, x, w) / ws[..., None, None]
    u = torch.linalg.eigh(moment)[1][..., -1]                               # (..., 3), largest eigenvalue
    u = u * torch.where(u.sum(-1, keepdim=True) < 0, -1.0, 1.0)
    t = torch.einsum("...cp,...c->...p", x, u)
    across = ((x - t.unsqueeze(-2) * u.unsqueeze(-1)) ** 2).sum(-2)         # squared distance from the line
    d = x.shape[-2] - 1                                                     # directions across the line
    var_across = (across * w).sum(-1) / ws / d + floor ** 2                 # per direction across
    mu_t = (t * w).sum(-1) / ws
    var_t = ((t - mu_t.unsqueeze(-1)) ** 2 * w).sum(-1) / ws + floor ** 2
    return (-0.5 * across / var_across.unsqueeze(-1) - 0.5 * d * (var_across.log() + _LOG_2PI).unsqueeze(-1)
            - 0.5 * (t - mu_t.unsqueeze(-1)) ** 2 / var_t.unsqueeze(-1) - 0.5 * (var_t.log() + _LOG_2PI).unsqueeze(-1))


def core_colour_posterior(images: torch.Tensor, strength: torch.Tensor, core: float, outside: float,
                          prior: float, floor: float = 0.02) -> torch.Tensor:
    """Posterior probability of "object" per pixel under the ``"core_colour"`` model.

    :param torch.Tensor images: (N, 3, S, S) pixels.
    :param torch.Tensor strength: (B, N, S, S) the prediction's strength relative to its peak, in [0, 1].
    :param float core: the object's colour is fitted where ``strength >= core``.
    :param float outside: the background's colour is fitted where ``strength < outside``.
    :param float prior: prior probability of "object".
    :returns: (B, N, S, S).
    """
    x = images.flatten(2).unsqueeze(0)                                      # (1, N, 3, P)
    st = strength.flatten(2)
    ll_obj = diagonal_log_lik(x, (st >= core).to(x.dtype), floor)
    ll_bg = diagonal_log_lik(x, (st < outside).to(x.dtype), floor)
    log_odds = ll_obj - ll_bg + math.log(prior / (1.0 - prior))
    return torch.sigmoid(log_odds).reshape(strength.shape)


def colour_posterior(images: torch.Tensor, prior: torch.Tensor, iters: int = 5, floor: float = 0.02) -> torch.Tensor:
    """Posterior probability of "object" per pixel under a two-class colour model (the ``"colour"`` gate).

    :param torch.Tensor images: (N, 3, S, S) pixels.
    :param torch.Tensor prior: (B, N, S, S) prior probabilities of "object", in (0, 1).
    :param float floor: floor on the classes' colour standard deviations.
    :returns: (B, N, S, S).
    """
    x = images.flatten(2).unsqueeze(0)                                      # (1, N, 3, P)
    p = prior.flatten(2).clamp(1e-4, 1 - 1e-4)                              # (B, N, P)
    log_odds_prior = torch.log(p) - torch.log1p(-p)
    q = p
    for _ in range(iters):
        q = torch.sigmoid(diagonal_log_lik(x, q, floor) - diagonal_log_lik(x, 1 - q, floor) + log_odds_prior)
    return q.reshape(prior.shape)


def keep_connected(mask: torch.Tensor, seeds: torch.Tensor, check_every: int = 8) -> torch.Tensor:
    """The pixels of ``mask`` 8-connected to a pixel of ``seeds & mask`` (morphological reconstruction).

    Grows the seeds by 3×3 dilations inside the mask until nothing changes; batched and on the
    tensors' device (convergence is checked every ``check_every`` dilations, to spare host syncs).

    :param torch.Tensor mask: (..., H, W) bool.
    :param torch.Tensor seeds: (..., H, W) bool, broadcastable to ``mask``.
    :returns: (..., H, W) bool.
    """
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-2:]).float()
    grown = (seeds.expand(shape).reshape(m.shape).float() * m)
    while True:
        before = grown
        for _ in range(check_every):
            grown = F.max_pool2d(grown, 3, stride=1, padding=1) * m
        if torch.equal(grown, before):
            return grown.reshape(shape) > 0.5


def colour_line_masks(images: torch.Tensor, strength: torch.Tensor, fraction: float, core: float, prior: float,
                      core_keep: float, iters: int, bg_components: int = 1, floor: float = 0.02) -> torch.Tensor:
    """The ``"colour_line"`` gate's masks (see the module docstring).

    1. The background is a mixture of ``bg_components`` diagonal Gaussians (:func:`mixture_log_lik`)
       fitted outside the region (``strength < fraction``).
    2. The object's colour line is fitted to the ``core_keep`` fraction of the core's pixels
       (``strength >= core``) that the background explains worst: a thin object's core, 4 px cells at
       conv3_2, is largely background.
    3. ``iters`` times: keep the region's pixels whose colour the object explains better (prior
       ``prior`` of "object"), refit the line to them and the background to all the others.
    4. Keep what is connected to the core.

    :param torch.Tensor images: (N, 3, S, S) pixels.
    :param torch.Tensor strength: (B, N, S, S) the prediction's strength relative to its peak, in [0, 1].
    :returns: (B, N, S, S) bool.
    """
    x = images.flatten(2).unsqueeze(0).to(strength.dtype)                   # (1, N, 3, P)
    st = strength.flatten(2)                                                 # (B, N, P)
    x = x.expand(st.shape[0], -1, -1, -1)
    region, in_core = st >= fraction, st >= core
    w_bg = (~region).to(x.dtype)
    ll_bg = mixture_log_lik(x, w_bg, bg_components, floor=floor)
    # The core pixels the background explains worst: below the core_keep quantile of their ll_bg.
    masked = torch.where(in_core, ll_bg, torch.full_like(ll_bg, float("inf")))
    n_core = in_core.sum(-1, keepdim=True)
    rank = masked.argsort(-1).argsort(-1)
    w_obj = (in_core & (rank < (core_keep * n_core).ceil().clamp_min(1))).to(x.dtype)
    log_prior = math.log(prior / (1.0 - prior))
    for it in range(iters + 1):
        keep = region & (colour_line_log_lik(x, w_obj, floor) - ll_bg + log_prior > 0)
        if it < iters:
            w_obj, w_bg = keep.to(x.dtype), (~keep).to(x.dtype)
            ll_bg = mixture_log_lik(x, w_bg, bg_components, floor=floor)
    keep = keep.reshape(strength.shape)
    return keep_connected(keep, in_core.reshape(strength.shape))
