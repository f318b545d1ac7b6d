"""The one non-separable term of a layer value, ``Σ relu(Δ)``, for every hypothesis (eq. 13).

:func:`~pyro_backpass.scoring.score_table` splits the layer value of a hypothesis (component ``k``,
offset ``δ``) into sums over one map or over a rectangle, plus
``M[k, δ] = Σ_{c, j} relu(Δ_c(x_{c, j+δ}, f_{k, c, j}))`` over the component cells ``j`` whose shifted
position is inside the map, where ``x`` is ``f_bu`` and ``Δ = v_on - v_off`` is the on branch's margin
over the off branch. This module computes ``M`` in two ways:

- :func:`dense_relu_sums`: every ``(k, δ, c, j)`` elementwise, in cache-sized chunks of views (no copy of
  the ``K·|Δ|`` shifted maps);
- :func:`split_relu_sums`, for the fast form ``Δ = a(x) + b(x)·f + e·f²`` (``e > 0``) that holds where
  ``x ≥ λ`` and ``f ≥ λ``: ``relu(Δ) = Δ + relu(-Δ)``; the first term is linear in ``(1, f, f²)``, so a
  cross-correlation, one matrix product for all ``(k, δ)``; the second vanishes at map cells where the on
  branch wins for every component, is a correlation again at ReLU zeros (``x = 0``, where ``Δ`` depends
  on ``f`` alone), and is evaluated elementwise, gathered, at the remaining cells only.

Both are exact up to floating-point reordering.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

__all__ = ["dense_relu_sums", "split_relu_sums", "windows", "window_sums", "stacked_windows", "channel_sums",
           "clear_scratch",
           "CHUNK_ELEMENTS", "CHUNK_ELEMENTS_CUDA", "GATHER_MAX_FRACTION"]

#: elements per chunk of the elementwise loops on CPU (512 kB in float32, so a chunk and its scratch stay
#: in L2): measured on this project's 2-core CPU, 2-3x faster per element than 1M-element chunks, and
#: large enough that the loop's per-chunk Python overhead stays small.
CHUNK_ELEMENTS = 1 << 17
#: the same on CUDA, where what matters is the number of kernel launches, not the cache.
CHUNK_ELEMENTS_CUDA = 1 << 26
#: :func:`split_relu_sums` gathers the undecided cells only while they are at most this fraction of the
#: map; above it the gather (one more pass per element) costs more than the dense loop.
GATHER_MAX_FRACTION = 0.5

_SCRATCH = threading.local()


def clear_scratch() -> None:
    """Free the scratch buffers the loops keep between calls (this thread's)."""
    _SCRATCH.buffers = {}


def _scratch(like: torch.Tensor, slot: int, numel: int) -> torch.Tensor:
    """A reusable 1-D buffer (per thread, device, dtype and slot) of at least ``numel`` elements.

    Fresh multi-megabyte CPU allocations are served page by page and the page faults cost more than
    the arithmetic done in them, so window copies and chunks reuse these (see :func:`clear_scratch`).
    """
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    key = (like.device, like.dtype, slot)
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = cache[key] = like.new_empty(numel)
    return buf


def _chunk(x: torch.Tensor) -> int:
    return CHUNK_ELEMENTS if x.device.type == "cpu" else CHUNK_ELEMENTS_CUDA


def windows(x_pad: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``(..., H+2r, W+2r)`` → ``(..., Dy, Dx, H, W)`` where window ``[δ_y + r, δ_x + r]`` holds ``x[j + δ]``:
    the map seen from the frame of a component shifted by ``δ`` (a strided view; flattening ``(Dy, Dx)``
    gives the offset order ``d = (δ_y + r)(2r + 1) + (δ_x + r)``)."""
    return x_pad.unfold(-2, H, 1).unfold(-2, W, 1)


def window_sums(m: torch.Tensor, r: int) -> torch.Tensor:
    """(N, H, W) → (N, D): for each offset, the sum of ``m`` over the map cells it covers."""
    H, W = m.shape[-2:]
    return windows(F.pad(m, (r,) * 4), H, W).sum((-2, -1)).flatten(-2) if r else m.sum((-2, -1)).unsqueeze(-1)


def channel_sums(t: torch.Tensor) -> torch.Tensor:
    """(N, C, S) → (N, S): the sum over channels as a product with a ones vector (a reduction over an
    outer axis is several times slower on CPU than one over contiguous memory; measured)."""
    return torch.matmul(t.new_ones(t.shape[1]), t)


def stacked_windows(x: torch.Tensor, r: int, fill: float = 0.0, slot: int | None = None) -> torch.Tensor:
    """(N, C, H, W) → (N, D, C·H·W): every offset's window of the map (``fill`` outside), in one copy
    (into scratch ``slot`` if given: valid until the slot is reused)."""
    N, C, H, W = x.shape
    D = (2 * r + 1) ** 2
    v = windows(F.pad(x, (r,) * 4, value=fill), H, W).permute(0, 2, 3, 1, 4, 5)  # (N, Dy, Dx, C, H, W)
    if slot is None:
        return v.reshape(N, D, C * H * W)
    out = _scratch(x, slot, N * D * C * H * W)[: N * D * C * H * W]
    return out.view(v.shape).copy_(v).view(N, D, C * H * W)


def dense_relu_sums(alpha_w: torch.Tensor, xhat_w: torch.Tensor, f: torch.Tensor, e: torch.Tensor,
                    general: tuple | None = None) -> torch.Tensor:
    """``M[p, n, k, d] = Σ_q relu(Δ)`` elementwise over the cells ``q = (c, j)``, in chunks of about
    :data:`CHUNK_ELEMENTS`.

    The fast form is ``Δ = α + f·(x̂ + e·f)``; with ``general = (c, k0, λ, g, b_x)`` it is
    ``Δ = α + x̂·f + β(f) - relu(g·(λ - f) - b_x)²`` with ``β(f) = c f² - k0 relu(f - λ)²``
    (:func:`~pyro_backpass.scoring.score_table`). Component-side terms are computed per chunk, in cache:
    on a memory-bound machine a full-size temporary costs more than the arithmetic done in it.

    :param torch.Tensor alpha_w: (N, D, Q) ``α`` in every offset's window (``-inf`` outside the map);
        ``xhat_w``, ``b_x`` likewise (zero outside).
    :param torch.Tensor f: (P, N', K, Q) components, ``N' ∈ {1, N}``.
    :param torch.Tensor e: (Q,) per-cell ``e``; ``c``, ``k0``, ``λ``, ``g`` likewise.
    :returns: (P, N, K, D).
    """
    N, D, Q = alpha_w.shape
    P, Np, K, _ = f.shape
    M = alpha_w.new_empty(P, N, D, K)
    chunk = _chunk(alpha_w)
    qb = min(Q, max(1, chunk // K))
    db = min(D, max(1, chunk // (K * qb)))
    nb = min(N, max(1, chunk // (K * qb * db)))
    buf, tmp = _scratch(alpha_w, 0, nb * db * K * qb), _scratch(alpha_w, 1, nb * db * K * qb)
    fsize = (nb if Np > 1 else 1) * K * qb
    fbuf = _scratch(alpha_w, 5, 2 * fsize) if general is not None else None
    views: dict = {}

    def scratch(shape):  # views of the chunk buffers, cached per shape (all chunks but the last share one)
        v = views.get(shape)
        if v is None:
            n = math.prod(shape)
            v = views[shape] = (buf[:n].view(shape), tmp[:n].view(shape))
        return v

    for p in range(P):
        for n0 in range(0, N, nb):
            n1 = min(N, n0 + nb)
            fn = slice(n0, n1) if Np > 1 else slice(0, 1)
            parts: dict = {d0: [] for d0 in range(0, D, db)}
            for q0 in range(0, Q, qb):
                q1 = min(Q, q0 + qb)
                fk = f[p, fn, None, :, q0:q1]                                        # (n|1, 1, K, qb)
                if general is not None:
                    c, k0, lam, g, bx_w = general
                    # β(f) and g·(λ - f) once per cell chunk, reused by every offset chunk.
                    n_f = fk.numel()
                    beta_k, af_k = fbuf[:n_f].view(fk.shape), fbuf[fsize:fsize + n_f].view(fk.shape)
                    torch.sub(fk, lam[q0:q1], out=af_k).clamp_(min=0.0).square_().mul_(k0[q0:q1])
                    torch.mul(fk, c[q0:q1], out=beta_k).mul_(fk).sub_(af_k)
                    torch.sub(lam[q0:q1], fk, out=af_k).mul_(g[q0:q1])
                for d0, out in parts.items():
                    d1 = min(D, d0 + db)
                    z, u = scratch((n1 - n0, d1 - d0, K, q1 - q0))
                    a_w, x_w = alpha_w[n0:n1, d0:d1, None, q0:q1], xhat_w[n0:n1, d0:d1, None, q0:q1]
                    if general is None:
                        torch.addcmul(x_w, e[q0:q1], fk, out=u)                      # x̂ + e·f
                        torch.addcmul(a_w, u, fk, out=z)                             # α + f·(x̂ + e·f)
                    else:
                        torch.addcmul(a_w, x_w, fk, out=z).add_(beta_k)
                        torch.sub(af_k, bx_w[n0:n1, d0:d1, None, q0:q1], out=u)
                        z.sub_(u.clamp_(min=0.0).square_())
                    out.append(z.clamp_(min=0.0).sum(-1))
            for d0, out in parts.items():
                M[p, n0:n1, d0:min(D, d0 + db)] = out[0] if len(out) == 1 else torch.stack(out).sum(0)
    return M.transpose(-1, -2)


def split_relu_sums(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, e: torch.Tensor, lo: torch.Tensor,
                    a0: torch.Tensor, b0: torch.Tensor, f: torch.Tensor, radius: int, e_term: torch.Tensor,
                    ) -> torch.Tensor | None:
    """``M`` of :func:`dense_relu_sums` for the fast form ``Δ = a + b·f + e·f²``, by cell classes; ``None``
    when too many cells are undecided for this to pay (then use the dense loop).

    ``relu(Δ) = Δ + relu(-Δ)``, so ``M`` is the sum of ``Δ`` itself, which is linear in ``(1, f, f²)``, plus
    ``relu(-Δ)`` over the map cells where it can be non-zero. ``Σ Δ`` is ``Σ a`` over the rectangle each
    offset covers, plus the correlation of ``b`` with ``f`` (one matrix product for all ``(k, δ)``), plus
    ``e_term``. For a map cell, ``Δ`` is a convex parabola in ``f`` (``e > 0``) and every component value is
    ``≥ lo``, so the cell is *on* (``relu(-Δ) = 0`` for all of them) when ``Δ`` at ``max(vertex, lo)`` is
    ``≥ 0``. With offsets, cells with ``x = 0`` (ReLU zeros) have ``Δ = Δ(0, f)``, a function of ``f`` alone,
    so their term is the correlation of ``[x = 0]`` with ``relu(-Δ(0, f))``; the remaining cells are
    gathered and evaluated elementwise. CPU only (it reads the class sizes).

    :param torch.Tensor a: (N, C, H·W) ``a(x)``; ``b``, ``x`` likewise.
    :param torch.Tensor e: (C, 1) ``e > 0``.
    :param torch.Tensor lo: (C, 1) lower bound of the component values.
    :param torch.Tensor a0: (C, 1) ``a(0)``; ``b0`` likewise.
    :param torch.Tensor f: (P, N', K, C, H, W) contiguous components, ``N' ∈ {1, N}``.
    :param torch.Tensor e_term: (P, N', K, D) ``Σ_{c, j valid} e_c f_j²``.
    :returns: (P, N, K, D) or ``None``.
    """
    P, Np, K, C, H, W = f.shape
    N, S, r = a.shape[0], H * W, radius
    D = (2 * r + 1) ** 2
    v = torch.clamp(b / (-2.0 * e), min=lo)                    # where Δ is least over f ≥ lo
    on = torch.addcmul(b, e, v).mul_(v).add_(a) >= 0           # a + v (b + e v) ≥ 0
    zero = ((x == 0) & ~on) if r else None
    rest = ~on if zero is None else ~(on | zero)
    n_rest = int(rest.sum())
    if n_rest > GATHER_MAX_FRACTION * rest.numel():
        return None
    fl = f.reshape(P, Np, K, C * S)
    M = window_sums(channel_sums(a).reshape(N, H, W), r).reshape(1, N, 1, D) + e_term
    if r:
        M = M + _correlate(b.reshape(N, C, H, W), fl, r, slot=2)
        if bool(zero.any()):
            g0 = torch.addcmul(b0, e, f.reshape(P, Np, K, C, S)).mul_(f.reshape(P, Np, K, C, S)).add_(a0)
            g0 = g0.clamp_(max=0.0).reshape(P, Np, K, C * S)                       # min(Δ(0, f), 0)
            M = M - _correlate(zero.to(a.dtype).reshape(N, C, H, W), g0, r, slot=3)
    else:
        M = M + torch.matmul(fl, b.reshape(N, C * S, 1))                           # Σ b f, one product
    if n_rest:
        M = M - _gathered(a, b, e, rest, f, H, W, r)                                # - Σ min(Δ, 0)
    return M


def _correlate(xm: torch.Tensor, fm: torch.Tensor, r: int, slot: int) -> torch.Tensor:
    """``Σ_{c,j} fm[p, n', k, (c, j)] · xm[n, c, j + δ]`` for every offset ``δ``: (P, N, K, D), one matrix
    product over the stacked windows (``xm`` is zero outside the map)."""
    N = xm.shape[0]
    P, Np, K, CS = fm.shape
    xw = stacked_windows(xm, r, slot=slot)                                   # (N, D, C·S)
    D = xw.shape[1]
    if Np == 1:
        return (fm.reshape(P * K, CS) @ xw.reshape(N * D, CS).T).reshape(P, K, N, D).transpose(1, 2)
    return torch.matmul(fm, xw.transpose(1, 2))                              # (P, N, K, D)


def _gathered(a, b, e, cells, f, H: int, W: int, r: int) -> torch.Tensor:
    """``Σ min(a + b f + e f², 0)`` over the given map cells only, gathered: (P, N, K, D)."""
    P, Np, K, C = f.shape[:4]
    N = a.shape[0]
    side = 2 * r + 1
    D = side * side
    n_i, c_i, s_i = cells.nonzero(as_tuple=True)
    y, x = torch.div(s_i, W, rounding_mode="floor").unsqueeze(1), (s_i % W).unsqueeze(1)
    if r:
        dy = torch.arange(-r, r + 1, device=a.device).repeat_interleave(side)  # offsets in the order of d
        dx = torch.arange(-r, r + 1, device=a.device).repeat(side)
        jy, jx = y - dy, x - dx                                             # the component cell j = i - δ
        valid = (jy >= 0) & (jy < H) & (jx >= 0) & (jx < W)                 # (n, D)
        jy, jx = jy.clamp(0, H - 1), jx.clamp(0, W - 1)
        # Invalid (cell, offset) pairs read some component cell but get a = +inf: min(Δ, 0) = 0 there.
        a_pair = torch.where(valid, a[n_i, c_i, s_i].unsqueeze(1), math.inf).unsqueeze(-1)  # (n, D, 1)
    else:
        jy, jx, a_pair = y, x, a[n_i, c_i, s_i].reshape(-1, 1, 1)
    b_i, e_i = b[n_i, c_i, s_i].reshape(-1, 1, 1), e.reshape(C)[c_i].reshape(-1, 1, 1)
    # One transposing copy makes each (image, channel, cell) a contiguous row of P·K component values,
    # so that the gather reads whole rows instead of values a map apart.
    ft = f.permute(1, 3, 4, 5, 0, 2).contiguous().view(-1, P * K)        # (N'·C·H·W, P·K)
    rows = (c_i.unsqueeze(1) * H + jy) * W + jx
    if Np > 1:
        rows = rows + (n_i * (C * H * W)).unsqueeze(1)
    out = a.new_zeros(N, D, P * K)
    step = max(1, 4 * _chunk(a) // (P * K * D))
    size = min(step, n_i.shape[0]) * D * P * K
    gbuf, ubuf = _scratch(a, 6, size), _scratch(a, 7, size)  # fresh chunk-sized tensors would page-fault
    for i0 in range(0, n_i.shape[0], step):
        i1 = min(n_i.shape[0], i0 + step)
        shape = (i1 - i0, D, P * K)
        fg = gbuf[: math.prod(shape)].view(-1, P * K)
        torch.index_select(ft, 0, rows[i0:i1].reshape(-1), out=fg)                        # gathered rows
        fg = fg.view(shape)
        u = torch.addcmul(b_i[i0:i1], e_i[i0:i1], fg, out=ubuf[: math.prod(shape)].view(shape))
        z = torch.addcmul(a_pair[i0:i1], u, fg, out=u).clamp_(max=0.0)
        out.index_add_(0, n_i[i0:i1], z)
    return out.reshape(N, D, P, K).permute(2, 0, 3, 1)
