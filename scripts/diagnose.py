"""Per-layer diagnostics of backward passes: ``python -m scripts.diagnose --model DIR --out DIR``.

For a few held-out scenes, one figure each (``scene_<j>.png``): a row per layer of the hierarchy with
``F_bu``, the top-down prediction ``f̃``, the MAP ``F_td`` (per-position channel norms; RGB on the
image layer) and the on-set, the positions where the prediction explains the scene better than the
empty explanation (:func:`~pyro_backpass.vision.agreement_map` > 0). ``metrics.json`` holds the
per-layer scores and on-set fractions of every scene shown. This is where a pass that goes wrong shows
where it went wrong (DESIGN §9).
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from models.activation import activation_model  # noqa: E402
from pyro_backpass.cli import THREADS_HELP, set_threads  # noqa: E402
from pyro_backpass.data import SceneConfig, SceneDataset  # noqa: E402
from pyro_backpass.io import atomic_save_figure, write_run_files  # noqa: E402
from pyro_backpass.vision import agreement_map, explain, load_trained, top_down_prediction  # noqa: E402
from pyro_backpass.vision.plots import layer_norm_map, overlay, to_rgb  # noqa: E402


def diagnose_figure(h, scene, f_bu, res, j: int):
    L = h.L
    fig, axes = plt.subplots(L, 4, figsize=(7.2, 1.8 * L), squeeze=False)
    rows = []
    for l in range(L):
        name = h.specs[l].name
        ft = top_down_prediction(h, res, l)[0, j]
        td = res.f_td[l][0, j]
        on = agreement_map(h, l, f_bu[l][j:j + 1], ft[None, None])[0, 0] > 0
        panels = [f_bu[l][j], ft, td]
        for c, x in enumerate(panels):
            axes[l, c].imshow(to_rgb(x) if l == 0 else to_rgb(layer_norm_map(x)), cmap="magma")
        axes[l, 3].imshow(to_rgb(overlay(scene, torch.nn.functional.interpolate(
            on[None, None].float(), size=scene.shape[-2:], mode="nearest")[0, 0] > 0.5)))
        axes[l, 0].set_ylabel(name, fontsize=8)
        rows.append({"layer": name, "score": float(res.layer_scores[0, j, l]), "on_fraction": float(on.float().mean())})
    for c, title in enumerate(("F_bu", "f̃ (top-down)", "F_td (MAP)", "on-set")):
        axes[0, c].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig, rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained model folder")
    parser.add_argument("--out", default="runs/diagnose")
    parser.add_argument("--scenes", type=int, default=4, help="held-out scenes to show")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.scenes < 1:
        raise ValueError(f"--scenes: expected a positive number of scenes, got {args.scenes}")
    trained = load_trained(args.model)
    h = trained.hierarchy
    ds = SceneDataset(SceneConfig(n=args.scenes, size=trained.size, split="test", seed=args.seed),
                      progress=not args.quiet)
    images = torch.stack([ds[j]["image"] for j in range(len(ds))])
    f_bu = trained.activations(images)
    res = explain(activation_model, h, f_bu, clamp={"category": 0})
    metrics = {"scenes": []}
    for j in range(len(ds)):
        fig, rows = diagnose_figure(h, images[j], f_bu, res, j)
        atomic_save_figure(fig, f"{args.out}/scene_{j}.png", dpi=110)
        plt.close(fig)
        metrics["scenes"].append({"scene": j, "evidence": float(res.evidence[0, j]), "layers": rows})
    write_run_files(args.out, vars(args), args.seed, metrics)
    if not args.quiet:
        for s in metrics["scenes"]:
            print(f"scene {s['scene']}: evidence {s['evidence']:.0f}; on-set " +
                  ", ".join(f"{r['layer']} {r['on_fraction']:.2f}" for r in s["layers"]))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
