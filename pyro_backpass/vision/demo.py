"""The paper's figures from a trained model (``scripts.demo``): data, samples, parsing, completion, queries.

- ``fig2_data.png``: held-out training-style objects with their masks (Fig. 2);
- ``fig3_samples.png``: noise-free samples from the prior (Fig. 3);
- ``fig4_clamped.png``: groups of samples sharing the top layer's ``(γ, δ)`` (Fig. 4);
- ``fig5_parse.png``: a two-airplane cluttered test scene: the first pass, the log scores of the top
  posterior modes at the top layer with the modes that lie on a true airplane in red, and the second
  pass after the first instance was subtracted from every layer (Fig. 5);
- ``completion.png``: an occluded airplane and what the backward pass fills in;
- ``query.png``: the answers to "leftmost", "largest" and "darkest" on the same scene, among the
  instances of a parse from posterior modes (:mod:`~pyro_backpass.vision.mode_parse`), as
  ``scripts.evaluate`` answers them.

The scene is test scene ``scene`` of the default test split, not chosen by how well it works.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .. import sites
from ..data import SceneConfig, SceneDataset
from ..data.categories import category_index
from ..io import atomic_save_figure
from ..metrics import iou_matrix
from .explain import explain
from .parsing import ParseConfig, parse_scene
from .plots import image_grid, overlay, parse_figure, to_rgb
from .queries import QueryConfig, answer_queries
from .sampling import sample_images
from .trained import TrainedModel
from .verify import category_verifier

__all__ = ["DemoConfig", "demo_figures"]


@dataclass(frozen=True)
class DemoConfig:
    """Defaults of ``scripts.demo``.

    :param str model: trained model folder; trained with the default config if missing.
    :param str out: where the figures and ``metrics.json`` go.
    :param int scene: index of the held-out test scene shown in Figs. 5 and the query figure.
    :param int seed: seed of the samples.
    :param int samples: prior samples in Fig. 3.
    :param int groups: clamped top-layer hypotheses in Fig. 4, ``per_group`` samples each.
    :param int n_modes: posterior modes in Fig. 5's bar plot.
    """

    model: str = "runs/default/model"
    out: str = "runs/demo"
    scene: int = 0
    seed: int = 0
    samples: int = 24
    groups: int = 4
    per_group: int = 5
    n_modes: int = 15


def _save(fig, path: Path) -> None:
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def _samples(model, trained: TrainedModel, config: DemoConfig, out: Path) -> dict:
    h = trained.hierarchy
    top = h.specs[-1].name
    images, hidden = sample_images(model, h, config.samples)
    _save(image_grid(images, 8, suptitle="samples from the prior (noise-free, Fig. 3)"), out / "fig3_samples.png")
    # Fig. 4: the most probable top components under the γ prior (eq. 7), each at the centre offset.
    top_spec = h.specs[-1]
    logp = h.prior.log_prob_table(h.L - 1, [torch.tensor(0, device=h.device)])
    groups = logp.reshape(-1).argsort(descending=True)[: config.groups].tolist()
    centre = top_spec.offsets.index((0, 0))
    rows, titles = [], []
    for g in groups:
        d = centre
        imgs, _ = sample_images(model, h, config.per_group, clamp={sites.gamma(top): g, sites.delta(top): d})
        rows.append(imgs)
        titles += [f"γ={g} δ={d}"] + [""] * (config.per_group - 1)
    _save(image_grid(torch.cat(rows), config.per_group, titles, "samples sharing the top layer's (γ, δ) (Fig. 4)"),
          out / "fig4_clamped.png")
    with torch.no_grad():
        pred = trained.backbone.classify(images).argmax(-1)
    target = category_index(h.categories[0])
    return {"fig3_classified_as_category": float((pred == target).float().mean()), "fig4_groups": groups}


def _parse(model, trained: TrainedModel, item: dict, config: DemoConfig, out: Path) -> dict:
    h = trained.hierarchy
    scene = item["image"]
    f_bu = trained.activations(scene[None])
    clamp = {"category": 0}
    bg = trained.background()
    parsed = parse_scene(model, h, f_bu, ParseConfig(max_steps=2), background=bg, clamp=clamp)
    modes = explain(model, h, f_bu, topk=config.n_modes, topk_layer=h.L - 1, background=bg, clamp=clamp)
    gt = item["masks"]
    true = iou_matrix(modes.mask[:, 0], gt).amax(1) >= 0.5
    steps_iou = iou_matrix(parsed.masks[0], gt)
    steps = [{"reconstruction": parsed.reconstructions[0, t], "mask": parsed.masks[0, t],
              "title": f"pass {t + 1}: F_td (IoU {float(steps_iou[t].max()):.2f})"} for t in range(2)]
    _save(parse_figure(scene, steps, modes.total[:, 0], true), out / "fig5_parse.png")
    return {"fig5_step_iou": steps_iou.amax(1).tolist(), "fig5_step_evidence": parsed.evidence[0].tolist(),
            "fig5_accepted": parsed.accepted[0].tolist(), "fig5_true_modes": int(true.sum()),
            "fig5_mode_instances": sorted({int(i) for i, t in zip(iou_matrix(modes.mask[:, 0], gt).argmax(1), true)
                                           if t})}


def _completion(model, trained: TrainedModel, item: dict, out: Path) -> dict:
    h = trained.hierarchy
    res = explain(model, h, trained.activations(item["image"][None]), background=trained.background(),
                  clamp={"category": 0})
    k = int(item["occluded_index"])
    full = item["full_masks"][k]
    mask = res.mask[0, 0]
    fig, axes = plt.subplots(1, 4, figsize=(8.4, 2.4))
    panels = [(item["image"], "occluded scene"), (res.reconstruction[0, 0], "MAP F_td (image layer)"),
              (overlay(item["image"], mask), "instance mask"),
              (overlay(overlay(torch.zeros_like(item["image"]), full, (0.3, 0.3, 1.0), 1.0), mask & ~full),
               "truth (blue), mask outside (red)")]
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(to_rgb(img))
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out / "completion.png")
    hidden = full & item["occluder_mask"]
    return {"completion_iou": float(iou_matrix(mask[None], full[None])[0, 0]),
            "visible_iou": float(iou_matrix(item["masks"][k][None], full[None])[0, 0]),
            "hidden_pixels_recovered": float((mask & hidden).sum() / hidden.sum().clamp_min(1))}


def _queries(model, trained: TrainedModel, item: dict, out: Path) -> dict:
    h = trained.hierarchy
    f_bu = trained.activations(item["image"][None])
    fig, axes = plt.subplots(1, 4, figsize=(8.4, 2.4))
    axes[0].imshow(to_rgb(item["image"]))
    axes[0].set_title("scene", fontsize=8)
    found = {}
    queries = ("leftmost", "largest", "darkest")
    # Candidates as scripts.evaluate takes them: the verified posterior modes of one pass, ranked.
    bg, clamp = trained.background(), {"category": 0}
    verifier = category_verifier(trained.backbone, category_index(h.categories[0]))
    parsed = parse_scene(model, h, f_bu, ParseConfig(strategy="modes", max_steps=2, verify_threshold=0.5),
                         background=bg, clamp=clamp, verifier=verifier)
    answers = answer_queries(model, h, f_bu, list(queries), QueryConfig(), background=bg, parsed=parsed, clamp=clamp)
    for ax, q, ans in zip(axes[1:], queries, answers):
        iou = iou_matrix(ans.mask, item["masks"])[0]
        found[q] = {"instance": int(iou.argmax()), "iou": float(iou.max())}
        ax.imshow(to_rgb(overlay(item["image"], ans.mask[0])))
        ax.set_title(f"{q}: instance {found[q]['instance']} (IoU {found[q]['iou']:.2f})", fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out / "query.png")
    return {"queries": found}


def demo_figures(model, trained: TrainedModel, config: DemoConfig) -> dict:
    """Write every figure of the module docstring to ``config.out``; returns the numbers behind them."""
    out = Path(config.out)
    torch.manual_seed(config.seed)
    metrics = _samples(model, trained, config, out)
    scenes = SceneDataset(SceneConfig(n=config.scene + 1, size=trained.size, split="test"), progress=False)
    occluded = SceneDataset(SceneConfig(n=config.scene + 1, size=trained.size, split="test", occluder=True),
                            progress=False)
    item = scenes[config.scene]
    metrics.update(_parse(model, trained, item, config, out))
    metrics.update(_completion(model, trained, occluded[config.scene], out))
    metrics.update(_queries(model, trained, item, out))
    return metrics

