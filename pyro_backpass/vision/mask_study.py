"""Compare instance-mask rules on the same backward passes (``scripts.mask_study``).

A mask rule only reads a finished pass (:func:`~pyro_backpass.vision.masks.instance_masks`), so rules
are compared by running the first backward pass of every scene once and applying each rule to it:
the differences are the rules', not the passes'. Scenes come from a validation split, so the choice
of a default rule never sees the test scenes that ``scripts.evaluate`` reports.
"""

from __future__ import annotations

import statistics

import torch

from ..inference import backward_pass
from ..metrics import iou_matrix
from .masks import MaskConfig, instance_masks
from .trained import TrainedModel

__all__ = ["RULES", "first_pass_ious", "summarise_ious"]

# The default rule, the previous one, and the default with one part changed at a time.
RULES: dict[str, MaskConfig] = {
    "colour_line (default)": MaskConfig(),
    "colour_line, one background Gaussian": MaskConfig(bg_components=1),
    "colour_line, no refits": MaskConfig(line_iters=0),
    "colour_line, whole core as seed": MaskConfig(core_keep=1.0),
    "colour_line, region at 0.4": MaskConfig(fraction=0.4),
    "core_colour, region at 0.4 (previous default)": MaskConfig(gate="core_colour", fraction=0.4),
    "no gate, region at 0.4": MaskConfig(gate="none", fraction=0.4),
}


def first_pass_ious(model, trained: TrainedModel, scenes, rules: dict[str, MaskConfig], batch_size: int = 8,
                    category: str = "airplane") -> dict[str, list[float]]:
    """IoU of each rule's first-pass mask with the best-matching visible instance, per scene.

    :param model: the model program.
    :param scenes: a :class:`~pyro_backpass.data.SceneDataset` (items with ``image`` (3, S, S) and
        ``masks`` (n, S, S)).
    :param dict rules: name → :class:`MaskConfig`.
    :returns: name → one IoU per scene, in scene order.
    """
    if not rules:
        raise ValueError("rules: expected at least one named MaskConfig, got none")
    if len(scenes) == 0:
        raise ValueError("scenes: expected at least one scene, got an empty data set")
    h, bg = trained.hierarchy, trained.background()
    clamp = {"category": h.check_category(category)}
    out: dict[str, list[float]] = {name: [] for name in rules}
    for start in range(0, len(scenes), batch_size):
        items = [scenes[i] for i in range(start, min(len(scenes), start + batch_size))]
        f_bu = trained.activations(torch.stack([it["image"] for it in items]))
        res = backward_pass(model, h, f_bu, clamp=clamp)
        for name, config in rules.items():
            masks = instance_masks(h, f_bu, res, config, bg)[0]
            out[name] += [float(iou_matrix(m[None], it["masks"]).max()) for m, it in zip(masks, items)]
    return out


def summarise_ious(ious: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Mean IoU and the fraction of scenes at IoU >= 0.5 per rule."""
    return {name: {"mean_iou": statistics.fmean(v), "at_least_0.5": sum(x >= 0.5 for x in v) / len(v)}
            for name, v in ious.items()}
