"""The layer value of every hypothesis of a layer, without materialising the shifted maps (eq. 12-13).

:func:`score_hypotheses` is the fast scorer of the backward pass: the layer value
``Σ_i max_f [log P(f_bu,i | f) + log N(f; φ_i, σ0)]`` of every hypothesis ``(γ, δ)``, computed from the
unshifted top-down components scored against shifted windows of ``f_bu`` (see :func:`score_table`).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from .distributions import max_joint
from .distributions.functional import broadcast_shape
from .topdown import select_hypotheses

__all__ = ["score_hypotheses", "score_table", "clear_scratch", "broadcast_shape", "CHUNK_ELEMENTS",
           "CHUNK_ELEMENTS_CUDA"]

#: elements per scratch chunk of :func:`score_table` on CPU (about 4 MB in float32: cache-sized; smaller
#: chunks lose more to per-op overhead than they gain in cache, measured on this project's 2-core CPU).
CHUNK_ELEMENTS = 1 << 20
#: the same on CUDA, where what matters is the number of kernel launches, not the cache.
CHUNK_ELEMENTS_CUDA = 1 << 26


_SCRATCH = threading.local()


def clear_scratch() -> None:
    """Free the scratch buffers :func:`score_table` keeps between calls (this thread's)."""
    _SCRATCH.buffers = {}


def _scratch(like: torch.Tensor, slot: int, numel: int) -> torch.Tensor:
    """A reusable 1-D scratch buffer (per thread, device, dtype and slot) of at least ``numel`` elements.

    Fresh multi-megabyte CPU allocations are served by the OS page by page, and the page faults cost
    more than the arithmetic done in them; reusing the chunk and window buffers keeps them in memory
    (and cache). They hold at most a few map-sized windows per offset plus two chunks; see
    :func:`clear_scratch`.
    """
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    key = (like.device, like.dtype, slot)
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = cache[key] = like.new_empty(numel)
    return buf


def _per_channel(p, C: int, like: torch.Tensor) -> torch.Tensor:
    """A parameter (Python number, scalar or ``(C, 1, 1)``-broadcastable tensor) as a ``(C, 1)`` tensor."""
    t = torch.as_tensor(p, dtype=like.dtype, device=like.device)
    return torch.broadcast_to(t.reshape(t.shape[-3:] if t.dim() >= 3 else t.shape), (C, 1, 1)).reshape(C, 1)


def _window_masks(H: int, W: int, radius: int, like: torch.Tensor) -> torch.Tensor:
    """(D, H·W) 0/1: entry ``[d, j]`` is 1 where template cell ``j`` shifted by offset ``d`` is in the map."""
    ones = F.pad(like.new_ones(1, 1, H, W), (radius,) * 4)
    return _windows(ones, H, W).reshape(-1, H * W)


def _windows(x_pad: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``(..., H+2r, W+2r)`` → ``(..., D, H, W)`` where window ``d = (δ_y + r)(2r + 1) + (δ_x + r)`` holds
    ``x[j + δ]``: the map seen from the frame of a template shifted by ``δ`` (a strided view)."""
    v = x_pad.unfold(-2, H, 1).unfold(-2, W, 1)  # (..., Dy, Dx, H, W)
    return v.flatten(-4, -3)


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
    everything but the ``relu(Δ)`` term is a sum over a rectangle or over one map. The ``relu(Δ)`` term
    is the only per-element work: two multiply-adds, a ReLU and a sum per element on cache-sized
    chunks, with no copy of the ``K·|Δ|`` shifted maps. ``clamp(x, f)`` (the on-branch maximiser pinned
    at ``λ``) is zero whenever ``x ≥ λ`` and ``f ≥ λ``; that check (``fast=None``) is done on CPU only, so
    that CUDA never synchronises here, and CUDA always takes the general formula (a few more passes).

    Exact up to floating-point reordering (checked against :func:`max_joint` on random inputs).

    :param torch.Tensor f_bu: (N, C, H, W).
    :param torch.Tensor components: (P, N', K, C, H, W) unshifted top-down maps, ``N' ∈ {1, N}``.
    :param int radius: offsets ``[-r, r]²`` in the order of :func:`~pyro_backpass.specs.offsets_for_radius`.
    :param fast: force (``True``) or forbid (``False``) dropping the ``clamp`` term; ``None`` decides as above.
    :param bool nonnegative: the components are known to be ``>= 0`` (ReLU outputs), which saves a pass
        over them when deciding ``fast``.
    :returns: (P, N, K, D) with ``D = (2r+1)²``.
    """
    x = f_bu
    P, Np, K, C, H, W = components.shape
    N = x.shape[0]
    S, D, CS = H * W, (2 * radius + 1) ** 2, C * H * W
    s0 = torch.as_tensor(sigma0, dtype=x.dtype, device=x.device)
    lam, beta, s1, s2 = (_per_channel(p, C, x) for p in (lam, beta, sigma1, sigma2))
    if fast is None:
        fast = x.device.type == "cpu" and bool((x >= lam.unsqueeze(-1)).all()) and bool(
            (lam <= 0).all() if nonnegative else (components >= lam.unsqueeze(-1)).all())
    # Per-channel constants (C, 1): see the docstring.
    w = 1.0 / (1.0 + (s1 / s0) ** 2)                       # weight of f_bu in η
    k0 = -0.5 / (s0 * s0)
    c = -0.5 / (s0 * s0 + s1 * s1)
    root = torch.sqrt(0.5 / (s0 * s0) + 0.5 / (s1 * s1))  # sqrt(-(k0 + k1))
    shared = -torch.log(s0) - math.log(2 * math.pi)
    p0 = k0 * torch.clamp(-lam, min=0.0) ** 2               # P(0)

    # Map side (N, C, S).
    xf = x.reshape(N, C, S)
    q = torch.sub(xf, beta).div_(s2).square_().mul_(-0.5).sub_(torch.log(s2))   # Q(x) = log N(x; β, σ2) + ½log2π
    alpha = torch.mul(xf, c).mul_(xf).sub_(torch.log(s1)).sub_(q)             # α(x)
    x_hat = torch.mul(xf, -2.0 * c)                                           # x̂
    if fast and not bool((lam > 0).any()):
        # With f ≥ λ: β(f) = (c - k0) f² + 2 k0 λ f - k0 λ², so Δ = α'' + x̂''·f + e·f²; with λ ≤ 0 also
        # P(0) = k0 λ² and Δ(x, 0) = α - P(0) = α'' (its clamp term vanishes: x ≥ λ ≥ 0·(1-w) + λ·w).
        b_x = None
        alpha.sub_(p0)
        x_hat.add_(2.0 * k0 * lam)
        r0 = torch.clamp(alpha, min=0.0)
    else:
        b_x = root * w * (xf - lam)                                           # clamp term, x side
        delta0 = alpha - p0 - torch.clamp(root * (1.0 - w) * lam - b_x, min=0.0) ** 2   # Δ(x, 0)
        r0 = torch.clamp(delta0, min=0.0)
        if fast:
            alpha = alpha - k0 * lam * lam
            x_hat = x_hat + 2.0 * k0 * lam
    v0_total = q.sum((1, 2)) + r0.sum((1, 2)) + S * p0.sum()                 # Σ_i v0(x_i), (N,)
    r0 = r0.sum(1).reshape(N, 1, H, W)                                        # Σ_c relu(Δ(x, 0))
    if fast:
        e = (c - k0).expand(C, S).reshape(CS)

    # Windows of the map for every offset (N, D, C·S); outside the map α = -inf so relu(Δ) = 0 there.
    def win(t, fill, slot):
        if not radius:
            return t.reshape(N, 1, CS)
        t = F.pad(t.reshape(N, C, H, W), (radius,) * 4, value=fill)
        out = _scratch(x, slot, N * D * CS)[: N * D * CS].view(N, D, C, H, W)
        return out.copy_(_windows(t, H, W).transpose(1, 2)).view(N, D, CS)

    alpha_w, xhat_w = win(alpha, -math.inf, 2), win(x_hat, 0.0, 3)
    bx_w = None if fast else win(b_x, 0.0, 4)
    r0_w = (_windows(F.pad(r0, (radius,) * 4), H, W).sum((-2, -1)).reshape(N, D) if radius
            else r0.sum((-3, -2, -1)).reshape(N, 1))

    # Component side: Σ_c [P(f) - P(0)] per cell, then summed over the cells inside the map per offset.
    f = components.reshape(P, Np, K, C, S)
    ef2 = None
    if fast and not bool(lam.any()):
        if radius:
            f2 = f * f
            p_sum = f2.sum(3).mul_(k0)                                        # (P, N', K, S)
            ef2 = f2.reshape(P, Np, K, CS).mul_(e)                            # e·f², reused by every offset
        else:
            fr = f.reshape(P, Np, K, 1, CS)
            p_sum = (fr @ fr.transpose(-1, -2)).reshape(P, Np, K, 1).mul_(k0)  # Σ f² as a dot product
    else:
        p_sum = (k0 * torch.clamp(f - lam, min=0.0) ** 2 - p0).sum(3)
    p_t = p_sum @ _window_masks(H, W, radius, x).T if radius else p_sum.sum(-1, keepdim=True)  # (P, N', K, D)
    f = f.reshape(P, Np, K, CS)
    if fast:
        if D > 1 and ef2 is None:
            ef2 = torch.mul(f, e).mul_(f)
    else:
        fl = components.reshape(P, Np, K, C, S)
        beta_f = (c * fl * fl - k0 * torch.clamp(fl - lam, min=0.0) ** 2).reshape(P, Np, K, CS)  # β(f)
        a_f = (root * (1.0 - w) * (lam - fl)).reshape(P, Np, K, CS)                              # clamp, f side

    # Σ relu(Δ) over (c, j) for every (p, n, d, k), in chunks of about CHUNK_ELEMENTS.
    M = x.new_zeros(P, N, D, K)
    chunk = CHUNK_ELEMENTS if x.device.type == "cpu" else CHUNK_ELEMENTS_CUDA
    cb = min(CS, max(1, chunk // K))
    db = min(D, max(1, chunk // (K * cb)))
    nb = min(N, max(1, chunk // (K * cb * db)))
    buf = _scratch(x, 0, nb * db * K * cb)
    tmp = _scratch(x, 1, nb * db * K * cb) if (not fast or D == 1) else None
    for p in range(P):
        for n0 in range(0, N, nb):
            n1 = min(N, n0 + nb)
            fn = slice(n0, n1) if Np > 1 else slice(0, 1)
            for d0 in range(0, D, db):
                d1 = min(D, d0 + db)
                for c0 in range(0, CS, cb):
                    c1 = min(CS, c0 + cb)
                    shape = (n1 - n0, d1 - d0, K, c1 - c0)
                    z = buf[: math.prod(shape)].view(shape)
                    fk = f[p, fn, None, :, c0:c1]                            # (n|1, 1, K, cb)
                    a_w, x_w = alpha_w[n0:n1, d0:d1, None, c0:c1], xhat_w[n0:n1, d0:d1, None, c0:c1]
                    if fast and D == 1:
                        u = tmp[: z.numel()].view(shape)
                        torch.addcmul(x_w, e[c0:c1], fk, out=u)              # x̂'' + e·f
                        torch.addcmul(a_w, u, fk, out=z)                     # α'' + f·(x̂'' + e·f)
                    elif fast:
                        torch.addcmul(a_w, x_w, fk, out=z).add_(ef2[p, fn, None, :, c0:c1])
                    else:
                        torch.addcmul(a_w, x_w, fk, out=z).add_(beta_f[p, fn, None, :, c0:c1])
                        u = tmp[: z.numel()].view(shape)
                        torch.sub(a_f[p, fn, None, :, c0:c1], bx_w[n0:n1, d0:d1, None, c0:c1], out=u)
                        z.sub_(u.clamp_(min=0.0).square_())
                    M[p, n0:n1, d0:d1] += z.clamp_(min=0.0).sum(-1)
    return M.transpose(-1, -2) + p_t - r0_w.unsqueeze(1) + (v0_total + CS * shared).reshape(N, 1, 1)


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
