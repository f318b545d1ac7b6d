"""Argument checks that turn user mistakes into clear errors.

Each check names the argument, what was expected and what was given, so that a bad call fails at
the library's boundary instead of deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_tensor", "check_finite", "check_positive", "check_shape", "check_index_range"]


def check_tensor(name: str, x) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a ``torch.Tensor``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    check_tensor(name, x)
    # min and max propagate NaN and reach ±Inf: one reduction pass, no boolean map-sized temporary.
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name}: expected finite values, got {n_nan} NaN and {n_inf} Inf "
                         f"in a tensor of shape {tuple(x.shape)}")
    return x


def check_positive(name: str, x) -> torch.Tensor:
    """Raise ``ValueError`` unless every element of ``x`` is finite and ``> 0``."""
    t = torch.as_tensor(x)
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        shown = t.min().item() if t.numel() else "an empty tensor"
        raise ValueError(f"{name}: expected finite values > 0, got minimum {shown}")
    return t


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int], trailing: bool = True) -> torch.Tensor:
    """Raise ``ValueError`` unless ``x``'s (trailing) dims equal ``expected``.

    :param bool trailing: compare only the last ``len(expected)`` dims (leading batch dims allowed).
    """
    check_tensor(name, x)
    expected = tuple(int(e) for e in expected)
    got = tuple(x.shape[-len(expected):]) if trailing and expected else tuple(x.shape)
    if x.dim() < len(expected) or got != expected:
        what = f"trailing shape {expected}" if trailing else f"shape {expected}"
        raise ValueError(f"{name}: expected {what}, got shape {tuple(x.shape)}")
    return x


def check_index_range(name: str, x, n: int) -> torch.Tensor:
    """Raise ``ValueError`` unless the integer values of ``x`` lie in ``[0, n)``."""
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer values, got dtype {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"{name}: expected values in [0, {n}), got values in [{int(t.min())}, {int(t.max())}]")
    return t
