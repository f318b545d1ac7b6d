"""The layer value of every hypothesis of a layer, without materialising the shifted maps (eq. 12-13).

:func:`score_hypotheses` is the fast scorer of the backward pass: the layer value
``Σ_i max_f [log P(f_bu,i | f) + log N(f; φ_i, σ0)]`` of every hypothesis ``(γ, δ)``, computed from the
unshifted top-down components scored against shifted windows of ``f_bu`` (see :func:`score_table`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .distributions import max_joint
from .distributions.functional import broadcast_shape
from .relu_sums import (
    CHUNK_ELEMENTS,
    CHUNK_ELEMENTS_CUDA,
    channel_sums,
    clear_scratch,
    dense_relu_sums,
    split_relu_sums,
    stacked_windows,
    window_sums,
    windows,
)
from .topdown import select_hypotheses

__all__ = ["score_hypotheses", "score_table", "clear_scratch", "broadcast_shape", "CHUNK_ELEMENTS",
           "CHUNK_ELEMENTS_CUDA"]

_CONSTANTS: OrderedDict = OrderedDict()
_CONSTANTS_SIZE = 64


def _per_channel(p, C: int, like: torch.Tensor) -> torch.Tensor:
    """A parameter (Python number, scalar or ``(C, 1, 1)``-broadcastable tensor) as a ``(C, 1)`` tensor."""
    t = torch.as_tensor(p, dtype=like.dtype, device=like.device)
    return torch.broadcast_to(t.reshape(t.shape[-3:] if t.dim() >= 3 else t.shape), (C, 1, 1)).reshape(C, 1)


def _window_masks(H: int, W: int, radius: int, like: torch.Tensor) -> torch.Tensor:
    """(D, H·W) 0/1: entry ``[d, j]`` is 1 where template cell ``j`` shifted by offset ``d`` is in the map."""
    ones = F.pad(like.new_ones(1, 1, H, W), (radius,) * 4)
    return windows(ones, H, W).reshape(-1, H * W)  # (Dy, Dx, H, W) → (D, H·W)


def _key(p):
    """Cache key of a parameter: its value for a number; storage, layout and version for a tensor."""
    if not isinstance(p, torch.Tensor):
        return ("value", float(p))
    return (p.data_ptr(), p._version, tuple(p.shape), p.stride(), p.dtype, p.device)


def _constants(params: tuple, C: int, like: torch.Tensor) -> SimpleNamespace:
    """Per-channel ``(C, 1)`` parameters and constants of the closed forms (see :func:`score_table`).

    Cached: they are a few dozen tiny tensor operations per layer, which cost more than the arithmetic
    on small maps. The key holds each tensor's storage and version counter (so in-place updates such as
    ``Hierarchy.set_sigma0`` miss) and the entry holds the tensors themselves, so that their storage
    cannot be reused by another tensor while cached.
    """
    try:
        key = (C, like.dtype, like.device) + tuple(_key(p) for p in params)
    except RuntimeError:  # inference-mode tensors have no version counter: compute every time
        return _compute_constants(params, C, like)
    hit = _CONSTANTS.get(key)
    if hit is not None:
        _CONSTANTS.move_to_end(key)
        return hit[1]
    k = _compute_constants(params, C, like)
    _CONSTANTS[key] = (params, k)
    if len(_CONSTANTS) > _CONSTANTS_SIZE:
        _CONSTANTS.popitem(last=False)
    return k


def _compute_constants(params: tuple, C: int, like: torch.Tensor) -> SimpleNamespace:
    sigma0, lam, beta, s1, s2 = params
    s0 = torch.as_tensor(sigma0, dtype=like.dtype, device=like.device)
    lam, beta, s1, s2 = (_per_channel(p, C, like) for p in (lam, beta, s1, s2))
    k0 = -0.5 / (s0 * s0)
    c = -0.5 / (s0 * s0 + s1 * s1)
    h = 0.5 / (s2 * s2)
    k = SimpleNamespace(
        lam=lam, beta=beta, s1=s1, s2=s2, k0=k0, c=c, e=c - k0, k0c=k0 + 0.0 * lam,
        w=1.0 / (1.0 + (s1 / s0) ** 2),                         # weight of f_bu in η
        root=torch.sqrt(0.5 / (s0 * s0) + 0.5 / (s1 * s1)),     # sqrt(-(k0 + k1))
        shared=-torch.log(s0) - math.log(2 * math.pi),
        p0=k0 * torch.clamp(-lam, min=0.0) ** 2,                # P(0)
        # α(x) = c x² - log σ1 - Q(x) with Q(x) = -h (x - β)² - log σ2: a quadratic A x² + B x + const.
        h=h, A=c + h, B=-2.0 * h * beta, const=h * beta * beta + torch.log(s2) - torch.log(s1),
        xhat_shift=2.0 * k0 * lam, log_s2_sum=torch.log(s2).sum(), flags=None, at0=None)
    k.const_fast = k.const - k0 * lam * lam                     # the fast form's α'' = α - k0 λ²
    k.p0_sum = k.p0.sum()
    return k


def _flags(k: SimpleNamespace) -> SimpleNamespace:
    """Host-side facts about ``λ`` (read once per cached entry; only on the paths that may take the fast
    form, so that CUDA does not synchronise)."""
    if k.flags is None:
        lam = k.lam
        k.flags = SimpleNamespace(pos=bool((lam > 0).any()), nonzero=bool(lam.any()), max=float(lam.max()),
                                  le0=bool((lam <= 0).all()))
    return k.flags


def _map_side(xf: torch.Tensor, k: SimpleNamespace, fast: bool) -> SimpleNamespace:
    """The ``f_bu``-only arrays of :func:`score_table` for maps ``xf`` (N, C, S).

    ``alpha``, ``x_hat``: ``α``, ``x̂`` (in the fast form ``Δ = α + x̂ f + e f²`` when ``fast``); ``b_x``: the
    clamp term's map side (``None`` where it vanishes); ``r0 = relu(Δ(x, 0))``; ``q_sum = Σ_{c,i} Q(x)``.
    """
    # α is a quadratic in x per channel: two passes (Horner) instead of one pass per operation.
    alpha = torch.addcmul(k.B, k.A, xf).mul_(xf).add_(k.const_fast if fast else k.const)
    x_hat = torch.mul(xf, -2.0 * k.c)
    if fast:
        x_hat.add_(k.xhat_shift)
    # Σ Q(x) from Σx and Σx² per channel: a per-image constant, the same for every hypothesis.
    S = xf.shape[-1]
    sx, sx2 = xf.sum(-1, keepdim=True), torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_()
    q_sum = (-k.h * (sx2 - 2.0 * k.beta * sx + S * k.beta * k.beta)).sum((1, 2)) - S * k.log_s2_sum
    if fast and not _flags(k).pos:
        # With f ≥ λ: β(f) = (c - k0) f² + 2 k0 λ f - k0 λ², so Δ = α'' + x̂''·f + e·f² with α'' = α - k0 λ²;
        # with λ ≤ 0 also P(0) = k0 λ² and Δ(x, 0) = α'' (its clamp term vanishes: x ≥ λ ≥ 0·(1-w) + λ·w).
        return SimpleNamespace(q_sum=q_sum, alpha=alpha, x_hat=x_hat, b_x=None, r0=torch.clamp(alpha, min=0.0))
    b_x = k.root * k.w * (xf - k.lam)                                                # clamp term, x side
    raw = alpha + k.k0 * k.lam * k.lam if fast else alpha                           # α(x)
    delta0 = raw - k.p0 - torch.clamp(k.root * (1.0 - k.w) * k.lam - b_x, min=0.0) ** 2   # Δ(x, 0)
    return SimpleNamespace(q_sum=q_sum, alpha=alpha, x_hat=x_hat, b_x=b_x, r0=torch.clamp(delta0, min=0.0))


def score_table(f_bu: torch.Tensor, components: torch.Tensor, radius: int, sigma0, lam, beta, sigma1,
                sigma2, fast: bool | None = None, nonnegative: bool = False) -> torch.Tensor:
    """Layer values of every ``(component, offset)`` hypothesis, without building the shifted maps.

    ``table[p, n, k, d] = Σ_{c,i} value(f_bu[n], shift(components[p, n', k], offsets[d]))[c, i]`` where
    ``value`` is the second output of :func:`~pyro_backpass.distributions.max_joint` (the maximum over
    ``f`` of eq. 13) and ``n' = n`` (or ``0`` when ``components`` has a size-1 image dim).

    **How.** Write ``v(x, f)`` for the value of one element with bottom-up ``x`` and top-down mean ``f``.
    Both branches of eq. 13 are closed-form: the off branch is separable,
    ``v_off = P(f) + Q(x)`` with ``P(f) = -relu(f-λ)²/2σ0²`` and ``Q(x) = log N(x; β, σ2)``, and the on branch
    is ``c(x-f)² - relu(λ-η)²(1/σ0² + 1/σ1²)/2`` with ``c = -1/2(σ0²+σ1²)`` and ``η`` of eq. 13. So
    ``v = v_off + relu(Δ)`` with ``Δ = v_on - v_off = α(x) + β(f) + x̂·f - clamp(x, f)``, where ``α``, ``x̂``
    depend on ``x`` only and ``β`` on ``f`` only. A zero ``f`` (the shift's zero fill) gives
    ``v0(x) = v(x, 0)``, so a hypothesis scores
    ``Σ_i v0(x_i) + Σ_{j valid} [P(f_j) - P(0) + relu(Δ(x_{j+δ}, f_j)) - relu(Δ(x_{j+δ}, 0))]``: the shift
    moves the map instead of the component, only the component's cells inside the map are visited, and
    everything but the ``relu(Δ)`` term is a sum over a rectangle or over one map. ``clamp(x, f)`` (the
    on-branch maximiser pinned at ``λ``) is zero whenever ``x ≥ λ`` and ``f ≥ λ``, which leaves the fast
    form ``Δ = α'' + x̂''·f + e·f²``. The ``relu(Δ)`` term is computed by :mod:`pyro_backpass.relu_sums`:
    in the fast form mostly as matrix products (correlations) over cell classes, otherwise elementwise
    on cache-sized chunks; neither copies the ``K·|Δ|`` shifted maps. Whether the fast form holds
    (``fast=None``) is checked on CPU only, so that CUDA never synchronises here; CUDA always takes the
    general formula (a few more passes).

    Exact up to floating-point reordering (checked against :func:`max_joint` on random inputs).

    :param torch.Tensor f_bu: (N, C, H, W).
    :param torch.Tensor components: (P, N', K, C, H, W) unshifted top-down maps, ``N' ∈ {1, N}``
        (non-contiguous ones are copied once).
    :param int radius: offsets ``[-r, r]²`` in the order of :func:`~pyro_backpass.specs.offsets_for_radius`.
    :param fast: force (``True``) or forbid (``False``) dropping the ``clamp`` term; ``None`` decides as above.
    :param bool nonnegative: the components are known to be ``>= 0`` (ReLU outputs), which saves a pass
        over them when deciding ``fast``.
    :returns: (P, N, K, D) with ``D = (2r+1)²``.
    """
    x = f_bu
    components = components.contiguous()
    P, Np, K, C, H, W = components.shape
    N = x.shape[0]
    S, CS = H * W, C * H * W
    cpu = x.device.type == "cpu"
    k = _constants((sigma0, lam, beta, sigma1, sigma2), C, x)
    lam = k.lam
    if fast is None:
        # x ≥ max λ settles "x ≥ λ" with one reduction; only otherwise compare per channel.
        fast = cpu and (float(x.min()) >= _flags(k).max or bool((x >= lam.unsqueeze(-1)).all())) and (
            _flags(k).le0 if nonnegative else bool((components >= lam.unsqueeze(-1)).all()))
    xf = x.reshape(N, C, S)
    m = _map_side(xf, k, fast)
    v0_total = m.q_sum + m.r0.sum((1, 2)) + S * k.p0_sum                              # Σ_i v0(x_i), (N,)
    r0_w = window_sums(channel_sums(m.r0).reshape(N, H, W), radius)                   # Σ_{c, j valid} relu(Δ(x, 0))
    M = None
    if fast and cpu:
        sq = _square_sums(components, radius, k, x)                                   # (P, N', K, 2, D)
        p_t = sq[..., 0, :] if not _flags(k).nonzero else _component_sums(components, radius, k, fast, x)
        lo = torch.clamp(lam, min=0.0) if nonnegative else lam
        if k.at0 is None:  # Δ's coefficients at x = 0, per channel (the same for every call)
            at0 = _map_side(xf.new_zeros(1, C, 1), k, True)
            k.at0 = (at0.alpha.reshape(C, 1), at0.x_hat.reshape(C, 1))
        M = split_relu_sums(m.alpha, m.x_hat, xf, k.e, lo, *k.at0, components, radius, sq[..., 1, :])
    else:
        p_t = _component_sums(components, radius, k, fast, x)                         # (P, N', K, D)
    if M is None:
        M = _dense(m, components, radius, k, fast)
    return M + p_t - r0_w.unsqueeze(1) + (v0_total + CS * k.shared).reshape(N, 1, 1)


def _square_sums(components, radius: int, k, like) -> torch.Tensor:
    """``Σ_{c, j valid} w_c f_j²`` for ``w = k0`` (the component sums of :func:`_component_sums` when
    ``λ = 0``) and ``w = e`` (the split's ``e_term``), from one pass over the squares: (P, N', K, 2, D)."""
    P, Np, K, C, H, W = components.shape
    wts = torch.cat([k.k0c, k.e], 1)                                                    # (C, 2)
    if not radius:
        sq = torch.linalg.vector_norm(components, dim=(-2, -1)).square_()              # (P, N', K, C)
        return (sq @ wts).unsqueeze(-1)
    per_cell = torch.matmul(wts.T, components.reshape(P, Np, K, C, H * W).square())    # (P, N', K, 2, S)
    return per_cell @ _window_masks(H, W, radius, like).T


def _component_sums(components, radius: int, k, fast: bool, like) -> torch.Tensor:
    """``Σ_{c, j valid} [P(f_j) - P(0)]`` for every component and offset: (P, N', K, D)."""
    P, Np, K, C, H, W = components.shape
    f = components.reshape(P, Np, K, C, H * W)
    if fast and not _flags(k).nonzero and not radius:
        fr = f.reshape(P, Np, K, 1, C * H * W)
        return (fr @ fr.transpose(-1, -2)).reshape(P, Np, K, 1).mul_(k.k0)            # Σ f² as a dot product
    if fast and not _flags(k).nonzero:
        p_sum = (f * f).sum(3).mul_(k.k0)                                             # (P, N', K, S)
    else:
        p_sum = (k.k0 * torch.clamp(f - k.lam, min=0.0) ** 2 - k.p0).sum(3)
    return p_sum @ _window_masks(H, W, radius, like).T if radius else p_sum.sum(-1, keepdim=True)


def _dense(m, components, radius: int, k, fast: bool) -> torch.Tensor:
    """``M`` by the elementwise loop of :func:`~pyro_backpass.relu_sums.dense_relu_sums`: (P, N, K, D)."""
    P, Np, K, C, H, W = components.shape
    N, S, CS = m.alpha.shape[0], H * W, C * H * W
    slots = iter(range(2, 5))

    def side(t, fill=0.0):  # a map-side array in every offset's window, cells flattened: (N, D, C·S)
        if not radius:
            return t.reshape(N, 1, CS)
        return stacked_windows(t.reshape(N, C, H, W), radius, fill, slot=next(slots))

    def const(t):  # a per-channel constant per cell: (C·S,)
        return t.expand(C, S).reshape(CS)

    # Outside the map α = -inf, so relu(Δ) = 0 there.
    alpha_w, xhat_w, f = side(m.alpha, -math.inf), side(m.x_hat), components.reshape(P, Np, K, CS)
    if fast:
        return dense_relu_sums(alpha_w, xhat_w, f, const(k.e))
    general = (const(k.c), const(k.k0c), const(k.lam), const(k.root * (1.0 - k.w)), side(m.b_x))
    return dense_relu_sums(alpha_w, xhat_w, f, const(k.e), general=general)


def score_hypotheses(f_bu: torch.Tensor, components: torch.Tensor, radius: int, index: tuple[torch.Tensor, ...],
                     delta: torch.Tensor, sigma0, lam, beta, sigma1, sigma2, nonnegative: bool = False) -> torch.Tensor:
    """The layer value of broadcast hypotheses: ``max_joint(f_bu, φ, ...)[1].sum((-3, -2, -1))`` with
    ``φ = select_hypotheses(components, radius, index, delta)``, same shape and (up to rounding) value.

    When the hypotheses cover (nearly) every ``(component, offset)`` of every image, as under Pyro's
    parallel enumeration or the greedy handler, all of them are scored by :func:`score_table` and
    gathered; otherwise (a few clamped or replayed hypotheses) ``φ`` is built and scored directly.

    :param torch.Tensor f_bu: (N, C, H, W).
    :param torch.Tensor components: (*B, *S, C, H, W) as in :func:`select_hypotheses`, where the last
        dim of ``B`` (if any) is the image dim, of size ``N`` or 1.
    :param bool nonnegative: the components are ReLU outputs (see :func:`score_table`).
    :returns: broadcast(B, index, delta, (N,)) values.
    """
    n_sel = len(index)
    batch = tuple(components.shape[: components.dim() - 3 - n_sel])
    sel = tuple(components.shape[components.dim() - 3 - n_sel: -3])
    N = f_bu.shape[0] if f_bu.dim() == 4 else None
    idx_shape = broadcast_shape(*(t.shape for t in index), delta.shape)
    usable = (N is not None and f_bu.dtype == components.dtype and (not batch or batch[-1] in (1, N))
              and not (torch.is_grad_enabled() and (f_bu.requires_grad or components.requires_grad)))
    if usable:
        prefix = batch[:-1]
        last = batch[-1] if batch else 1
        n_out = math.prod(broadcast_shape(batch, idx_shape, (N,)))
        n_table = math.prod(prefix) * N * math.prod(sel) * (2 * radius + 1) ** 2
        usable = 8 * n_out >= n_table
    if not usable:
        phi = select_hypotheses(components, radius, index, delta)
        return max_joint(f_bu, phi, sigma0, lam, beta, sigma1, sigma2)[1].sum((-3, -2, -1))
    P, K = math.prod(prefix), math.prod(sel)
    comps = components.reshape((P, last, K) + tuple(components.shape[-3:]))
    table = score_table(f_bu, comps, radius, sigma0, lam, beta, sigma1, sigma2, nonnegative=nonnegative)
    # delta indexes offsets_for_radius: d = (δ_y + r)(2r + 1) + (δ_x + r), the window order of the table.
    k = index[0] if n_sel == 1 else _ravel(index, sel)
    p = torch.arange(P, device=f_bu.device).reshape(prefix + (1,)) if prefix else torch.zeros(
        (), dtype=torch.long, device=f_bu.device)
    n = torch.arange(N, device=f_bu.device)
    return table[p, n, k, delta]


def _ravel(index: tuple[torch.Tensor, ...], sizes: tuple[int, ...]) -> torch.Tensor:
    flat = torch.zeros((), dtype=torch.long, device=index[0].device)
    for i, s in zip(index, sizes):
        flat = flat * s + i
    return flat
