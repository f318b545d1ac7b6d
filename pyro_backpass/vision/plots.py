"""Figures of the paper's kind from tensors (matplotlib, no display): samples, parses, modes, diagnostics.

Each function returns a ``matplotlib.figure.Figure``; save it with
:func:`pyro_backpass.io.atomic_save_figure`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["to_rgb", "overlay", "image_grid", "mode_bars", "parse_figure", "layer_norm_map"]


def to_rgb(x: torch.Tensor):
    """(3, S, S) or (S, S) tensor → an (S, S, 3) / (S, S) numpy array for ``imshow``, clipped to [0, 1]."""
    x = x.detach().float().cpu().clamp(0, 1)
    return x.permute(1, 2, 0).numpy() if x.dim() == 3 else x.numpy()


def overlay(image: torch.Tensor, mask: torch.Tensor, colour=(1.0, 0.2, 0.1), alpha: float = 0.55) -> torch.Tensor:
    """``image`` (3, S, S) with ``mask`` (S, S) tinted in ``colour``; returns (3, S, S)."""
    c = torch.tensor(colour, dtype=image.dtype).view(3, 1, 1)
    m = mask.to(image.dtype).unsqueeze(0) * alpha
    return image * (1 - m) + c * m


def image_grid(images: torch.Tensor, ncols: int, titles: list[str] | None = None, suptitle: str | None = None,
               cell: float = 1.4):
    """A grid of images (N, 3, S, S) with optional per-image titles."""
    n = images.shape[0]
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_rgb(images[i]), interpolation="nearest")
            if titles:
                ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def mode_bars(ax, scores: torch.Tensor, true: torch.Tensor | None = None, label: str = "log score"):
    """Bar plot of posterior modes' scores (best first), true hypotheses in red (Fig. 5)."""
    s = scores.detach().float().cpu()
    colours = ["tab:gray"] * len(s)
    if true is not None:
        colours = ["tab:red" if bool(t) else "tab:gray" for t in true]
    ax.bar(range(len(s)), (s - s.min()).numpy() + 1e-3 * float(s.abs().max()), color=colours)
    ax.set_xlabel("posterior mode (top layer)")
    ax.set_ylabel(f"{label} − min")
    ax.set_xticks(range(len(s)))
    ax.tick_params(labelsize=6)


def parse_figure(scene: torch.Tensor, steps: list[dict], modes: torch.Tensor | None = None,
                 true_modes: torch.Tensor | None = None):
    """Fig. 5: the scene, each parse step's reconstruction and mask, and the first pass's mode bars.

    :param torch.Tensor scene: (3, S, S).
    :param list steps: per step ``{"reconstruction": (3, S, S), "mask": (S, S), "title": str}``.
    :param modes: (M,) log scores of the first pass's posterior modes; ``true_modes`` (M,) bool.
    """
    cols = 1 + 2 * len(steps) + (modes is not None)
    fig, axes = plt.subplots(1, cols, figsize=(2.2 * cols, 2.6), squeeze=False)
    axes = list(axes[0])
    axes[0].imshow(to_rgb(scene))
    axes[0].set_title("scene", fontsize=8)
    for t, step in enumerate(steps):
        axes[1 + 2 * t].imshow(to_rgb(step["reconstruction"]))
        axes[1 + 2 * t].set_title(step.get("title", f"pass {t + 1}: F_td"), fontsize=8)
        axes[2 + 2 * t].imshow(to_rgb(overlay(scene, step["mask"])))
        axes[2 + 2 * t].set_title(f"pass {t + 1}: mask", fontsize=8)
    for ax in axes[: cols - (modes is not None)]:
        ax.axis("off")
    if modes is not None:
        mode_bars(axes[-1], modes, true_modes)
        axes[-1].set_title("first pass: posterior modes", fontsize=8)
    fig.tight_layout()
    return fig


def layer_norm_map(x: torch.Tensor) -> torch.Tensor:
    """A feature map (C, H, W) as a (H, W) image: the per-position channel norm scaled to [0, 1]."""
    n = x.detach().float().norm(dim=0)
    return n / n.max().clamp_min(1e-12)
