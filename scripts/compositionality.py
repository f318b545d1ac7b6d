"""Feature compositionality of a trained backbone (paper supplement, Figs. 7-8).

    python -m scripts.compositionality --model runs/default/model --out runs/compositionality [--frames N] [--seed S]

A held-out airplane stays put while a distractor (a mug by default) slides in from the left until it
covers the plane (:mod:`pyro_backpass.compositionality_study`; every field of
:class:`~pyro_backpass.compositionality_study.CompositionalityConfig` is a ``--kebab-case`` flag).
``--model`` is a trained model folder holding ``backbone.safetensors`` (or that file itself).
Writes ``classifier_scores.png`` (Fig. 7: airplane and distractor logits per frame, key frames
marked and shown below), ``activation_change.png`` (Fig. 8: frames beside their top-conv change
maps on one scale, above the relative change curve), ``config.json`` and ``metrics.json``
(per-frame numbers and a summary), and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pyro_backpass.backbones import load_small_vgg  # noqa: E402
from pyro_backpass.cli import add_config_args, config_from_args  # noqa: E402
from pyro_backpass.compositionality_study import CompositionalityConfig, run_study  # noqa: E402
from pyro_backpass.io import atomic_save_figure, write_run_files  # noqa: E402

#: frames shown in activation_change.png (the key frames plus evenly spaced ones).
N_SHOWN = 8


def backbone_path(model: str) -> Path:
    """``model`` itself if it is a file, else ``model/backbone.safetensors`` (or ``model/model/...``)."""
    p = Path(model)
    if p.is_file():
        return p
    for cand in (p / "backbone.safetensors", p / "model" / "backbone.safetensors"):
        if cand.is_file():
            return cand
    raise ValueError(f"--model: expected a model folder holding backbone.safetensors (or the file), got {model!r}")


def _img(x: torch.Tensor):
    return x.permute(1, 2, 0).clamp(0, 1).numpy()


def plot_scores(result: dict, config: CompositionalityConfig):
    """Fig. 7: the two logits per frame with key frames as vertical lines, and those frames below."""
    pf, keys = result["metrics"]["per_frame"], result["key_frames"]
    touch = result["metrics"]["summary"]["touch_frame"]
    fig = plt.figure(figsize=(2.0 * max(len(keys), 3), 5.6))
    grid = fig.add_gridspec(2, len(keys), height_ratios=[2.2, 1])
    ax = fig.add_subplot(grid[0, :])
    t = range(len(pf["airplane_logit"]))
    ax.plot(t, pf["airplane_logit"], "o-", ms=3, label="airplane")
    ax.plot(t, pf[f"{config.distractor}_logit"], "s-", ms=3, label=config.distractor)
    if touch is not None:
        ax.axvspan(touch - 0.5, len(t) - 0.5, color="0.9", zorder=0, label="distractor overlaps the plane")
    for i, k in enumerate(keys):
        ax.axvline(k, color="k", ls="--", lw=0.8)
        ax.text(k, ax.get_ylim()[1], f" {chr(65 + i)}", va="top")
    ax.set_xlabel("frame")
    ax.set_ylabel("classifier logit (pre-softmax)")
    ax.legend(loc="lower left", fontsize=8)
    for i, k in enumerate(keys):
        a = fig.add_subplot(grid[1, i])
        a.imshow(_img(result["frames"][k]))
        a.set_title(f"{chr(65 + i)}: frame {k}", fontsize=8)
        a.axis("off")
    fig.tight_layout()
    return fig


def shown_frames(result: dict, n: int = N_SHOWN) -> list[int]:
    """Up to ``n`` frames: the key frames, topped up with evenly spaced ones, sorted."""
    T = result["frames"].shape[0]
    picks = set(result["key_frames"])
    for k in torch.linspace(0, T - 1, min(n, T)).round().long().tolist():
        if len(picks) >= n:
            break
        picks.add(k)
    return sorted(picks)


def plot_changes(result: dict, config: CompositionalityConfig):
    """Fig. 8: each shown frame beside its change map (one scale), and the relative change per frame."""
    shown = shown_frames(result)
    pf = result["metrics"]["per_frame"]
    cols = 4  # frame/map pairs per row
    rows = -(-len(shown) // cols)
    fig = plt.figure(figsize=(2.0 * 2 * cols, 2.1 * rows + 2.4))
    grid = fig.add_gridspec(rows + 1, 2 * cols, height_ratios=[1.0] * rows + [1.1])
    S = result["frames"].shape[-1]
    maps = F.interpolate(result["change_rgb"], size=(S, S), mode="nearest")  # cells as blocks, not blurred
    for i, k in enumerate(shown):
        r, c = divmod(i, cols)
        a = fig.add_subplot(grid[r, 2 * c])
        a.imshow(_img(result["frames"][k]))
        a.set_title(f"frame {k}", fontsize=8)
        a.axis("off")
        b = fig.add_subplot(grid[r, 2 * c + 1])
        b.imshow(_img(maps[k]))
        b.contour(result["plane_mask"].float().numpy(), levels=[0.5], colors="0.6", linewidths=0.4)
        b.set_title(f"change {pf['relative_change'][k]:.2f}", fontsize=8)
        b.axis("off")
    ax = fig.add_subplot(grid[rows, :])
    ax.plot(pf["relative_change"], "o-", ms=3, label=config.layer)
    ax.plot(shown, [pf["relative_change"][k] for k in shown], "k+", ms=9, label="shown above")
    touch = result["metrics"]["summary"]["touch_frame"]
    if touch is not None:
        ax.axvline(touch - 0.5, color="0.5", ls=":", label="distractor reaches the plane")
    ax.set_xlabel("frame")
    ax.set_ylabel("relative change in mask")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m scripts.compositionality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="trained model folder with backbone.safetensors")
    parser.add_argument("--out", default="runs/compositionality", help="run folder (default: runs/compositionality)")
    add_config_args(parser, CompositionalityConfig)
    args = parser.parse_args(argv)
    config = config_from_args(CompositionalityConfig, args)
    path = backbone_path(args.model)
    backbone = load_small_vgg(path)
    torch.manual_seed(config.seed)
    result = run_study(backbone, config)
    metrics = {**result["metrics"], "backbone": str(path)}
    out = Path(args.out)
    write_run_files(out, config, config.seed, metrics)
    for name, fig in (("classifier_scores.png", plot_scores(result, config)),
                      ("activation_change.png", plot_changes(result, config))):
        atomic_save_figure(fig, out / name, dpi=110)
        plt.close(fig)
    for key, value in metrics["summary"].items():
        print(f"{key:<30}{value}")
    print(f"wrote {out / 'metrics.json'}, {out / 'classifier_scores.png'}, {out / 'activation_change.png'}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
