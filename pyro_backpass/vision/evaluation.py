"""Held-out evaluation of a trained model on cluttered scenes (DESIGN §8; ``scripts.evaluate``).

Scenes hold two held-out airplanes plus clutter on textured backgrounds (:class:`SceneConfig`'s
defaults, ``split="test"``); an occluded twin of every scene (same layout, an occluder over part of one
airplane) measures completion. Each scene yields a small record (:func:`evaluate_scenes`), records are
pooled by :func:`aggregate`, so a sharded run (one slice of scenes per process) gathers records and
writes the same numbers as one process.

Measures (DESIGN §8):

- ``instance_iou``: IoU of the first backward pass's mask with the best-matching visible instance;
  ``instance_iou_accepted``: the same for the first parse step the parse accepted (the first step
  when it accepted none), which differs from the first pass only under category verification
  (``verify_threshold``);
- ``parse_recall_at_2`` / ``parse_precision``: parse steps before the stopping rule fired, matched to
  instances at IoU ≥ 0.5 (:mod:`pyro_backpass.metrics`);
- ``query_accuracy``: the query's answer is right when, among the scene's instances, the target
  (smallest visible-mask centroid x; largest visible area; lowest mean colour) is the one the
  answer's mask overlaps most, with IoU at least ``query_match_iou``;
- ``completion_iou``: on the occluded twin, IoU of the accepted parse step that best matches the
  occluded airplane's *unoccluded* mask with that mask; ``visible_iou``: IoU of that airplane's
  visible part alone with its unoccluded mask (a perfect segmentation that imagines nothing); also
  ``visible_pred_iou``, the same step's mask with the occluder's pixels removed (the model's own
  visible part), so ``completion_iou > visible_pred_iou`` says the imagined pixels are mostly right;
- ``sample_plausibility``: fraction of noise-free prior samples the backbone classifies as the
  category;
- baselines: GradCAM and guided-backprop masks at their best threshold on a validation split;
- ``ms_per_backward_pass``: median wall time of one image's backward pass with its mask.
"""

from __future__ import annotations

import time

import torch

from ..data import SceneDataset
from ..data.categories import category_index
from ..metrics import iou_matrix, match_parse
from .evaluate_config import EvaluateConfig, scene_configs
from .explain import explain
from .masks import MaskConfig
from .parsing import parse_scene
from .queries import QueryConfig, answer_queries
from .sampling import sample_images
from .trained import TrainedModel
from .verify import category_verifier

__all__ = ["EvaluateConfig", "QUERIES", "scene_configs", "evaluate_scenes", "aggregate", "baseline_thresholds",
           "sample_plausibility", "time_backward_pass"]

QUERIES = ("leftmost", "largest", "darkest")


def _stack(ds: SceneDataset, idx: list[int]) -> tuple[torch.Tensor, list[dict]]:
    items = [ds[i] for i in idx]
    return torch.stack([it["image"] for it in items]), items


def _centroid_x(masks: torch.Tensor) -> torch.Tensor:
    xs = torch.arange(masks.shape[-1], dtype=torch.float32)
    return (masks.float().sum(-2) * xs).sum(-1) / masks.sum((-2, -1)).clamp_min(1)


def _query_targets(item: dict) -> dict[str, int]:
    return {"leftmost": int(_centroid_x(item["masks"]).argmin()), "largest": int(item["areas"].argmax()),
            "darkest": int(item["brightness"].argmin())}


def evaluate_scenes(model, trained: TrainedModel, config: EvaluateConfig, indices: list[int],
                    datasets: dict[str, SceneDataset], thresholds: dict[str, float] | None = None,
                    category: str = "airplane", progress=None) -> list[dict]:
    """One record per scene of ``indices`` (see the module docstring for what each number means).

    :param dict datasets: ``"test"`` and, if ``config.occluded``, ``"occluded"`` :class:`SceneDataset`.
    :param dict thresholds: baseline name → threshold (``None``: no baselines).
    :returns: a list of dicts, one per scene, in the order of ``indices``.
    """
    h, mc, bg = trained.hierarchy, config.mask_config(), trained.background()
    clamp = {"category": h.check_category(category)}
    qc = QueryConfig(n_modes=config.n_modes, candidates=config.query_candidates,
                     max_candidates=config.query_max_candidates)
    pc = config.parse_config()
    verifier = None if config.verify_threshold is None else category_verifier(trained.backbone,
                                                                              category_index(category))
    records = []
    for start in range(0, len(indices), config.batch_size):
        idx = indices[start:start + config.batch_size]
        images, items = _stack(datasets["test"], idx)
        f_bu = trained.activations(images)
        parsed = parse_scene(model, h, f_bu, pc, mask_config=mc, background=bg, clamp=clamp, verifier=verifier)
        # The scene's parse doubles as the queries' candidates (its first steps), so it is not run twice.
        answers = dict(zip(QUERIES, answer_queries(model, h, f_bu, list(QUERIES), qc, mask_config=mc, background=bg,
                                                    parsed=parsed, clamp=clamp)))
        base = {}
        if thresholds:
            from ..baselines import gradcam_maps, guided_backprop_maps

            target = category_index(category)
            base = {"gradcam": gradcam_maps(trained.backbone, images, target) >= thresholds["gradcam"],
                    "guided_backprop": guided_backprop_maps(trained.backbone, images, target)
                    >= thresholds["guided_backprop"]}
        occ = None
        if config.occluded:
            occ_images, occ_items = _stack(datasets["occluded"], idx)
            occ = (parse_scene(model, h, trained.activations(occ_images), pc, mask_config=mc, background=bg,
                               clamp=clamp, verifier=verifier), occ_items)
        for j, (i, item) in enumerate(zip(idx, items)):
            gt = item["masks"]
            steps = parsed.masks[j][parsed.accepted[j]]
            first = int(parsed.accepted[j].int().argmax())  # the first accepted step (0 when none is)
            rec = {"scene": i, "n_instances": int(gt.shape[0]), "n_steps": int(steps.shape[0]),
                   "instance_iou": float(iou_matrix(parsed.first_pass[j][None], gt).max()),
                   "instance_iou_accepted": float(iou_matrix(parsed.masks[j, first:first + 1], gt).max()),
                   "matched": match_parse(steps, gt).tolist(), "evidence": parsed.evidence[j].tolist()}
            targets = _query_targets(item)
            rec["query"] = {}
            for q in QUERIES:
                iou = iou_matrix(answers[q].mask[j][None], gt)[0]
                rec["query"][q] = bool(int(iou.argmax()) == targets[q] and float(iou.max()) >= config.query_match_iou)
            for name, masks in base.items():
                rec[f"baseline_{name}_iou"] = float(iou_matrix(masks[j][None], gt).max())
            if occ is not None:
                rec.update(_completion(occ[0], j, occ[1][j]))
            records.append(rec)
        if progress is not None:
            progress.update(len(idx))
    return records


def _completion(parsed, j: int, item: dict) -> dict:
    k = int(item["occluded_index"])
    full = item["full_masks"][k][None]
    keep = parsed.accepted[j].clone()
    keep[0] = True  # the first pass always counts: completion is measured even if the parse stops at once
    steps = parsed.masks[j][keep]
    ious = iou_matrix(steps, full)[:, 0]
    best = steps[int(ious.argmax())]
    visible_part = best & ~item["occluder_mask"]
    return {"completion_iou": float(ious.max()),
            "visible_iou": float(iou_matrix(item["masks"][k][None], full)[0, 0]),
            "visible_pred_iou": float(iou_matrix(visible_part[None], full)[0, 0])}


def _mean(records: list[dict], key: str) -> float | None:
    vals = [r[key] for r in records if key in r]
    return sum(vals) / len(vals) if vals else None


def aggregate(records: list[dict]) -> dict:
    """Pool per-scene records into the metrics of ``scripts.evaluate`` (micro averages for parsing)."""
    if not records:
        raise ValueError("records: expected at least one scene record, got none")
    n_inst = sum(r["n_instances"] for r in records)
    n_steps = sum(r["n_steps"] for r in records)
    hits = {n: sum(sum(1 for m in r["matched"][:n] if m >= 0) for r in records) for n in (1, 2, 3)}
    out = {
        "scenes": len(records),
        "instance_iou": _mean(records, "instance_iou"),
        "instance_iou_accepted": _mean(records, "instance_iou_accepted"),
        "instance_iou_at_least_0.5": sum(r["instance_iou"] >= 0.5 for r in records) / len(records),
        "parse_recall_at_1": hits[1] / n_inst, "parse_recall_at_2": hits[2] / n_inst,
        "parse_recall_at_3": hits[3] / n_inst,
        "parse_precision": (sum(sum(1 for m in r["matched"] if m >= 0) for r in records) / n_steps
                            if n_steps else None),
        "parse_steps_per_scene": n_steps / len(records),
        "query_accuracy": {q: sum(r["query"][q] for r in records) / len(records) for q in QUERIES},
    }
    for key in ("completion_iou", "visible_iou", "visible_pred_iou", "baseline_gradcam_iou",
                "baseline_guided_backprop_iou"):
        value = _mean(records, key)
        if value is not None:
            out[key] = value
    return out


def baseline_thresholds(trained: TrainedModel, val: SceneDataset, category: str = "airplane") -> dict:
    """Best thresholds of the saliency baselines on the validation scenes, and their validation IoU."""
    from ..baselines import best_threshold, gradcam_maps, guided_backprop_maps

    images, items = _stack(val, list(range(len(val))))
    gts = [it["masks"] for it in items]
    target = category_index(category)
    out = {}
    for name, fn in (("gradcam", gradcam_maps), ("guided_backprop", guided_backprop_maps)):
        thr, iou = best_threshold(fn(trained.backbone, images, target), gts)
        out[name] = {"threshold": thr, "val_iou": iou}
    return out


def sample_plausibility(model, trained: TrainedModel, n: int, category: str = "airplane") -> float:
    """Fraction of ``n`` noise-free prior samples of ``category`` the backbone classifies as it."""
    h = trained.hierarchy
    images, _ = sample_images(model, h, n, clamp={"category": h.check_category(category)})
    with torch.no_grad():
        pred = trained.backbone.classify(images.to(next(trained.backbone.parameters()).dtype)).argmax(-1)
    return float((pred == category_index(category)).float().mean())


def time_backward_pass(model, trained: TrainedModel, image: torch.Tensor, repeats: int = 5,
                       mask_config: MaskConfig | None = None) -> float:
    """Median milliseconds of one image's backward pass with its mask (after one warm-up run)."""
    f_bu = trained.activations(image[None])
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        explain(model, trained.hierarchy, f_bu, mask_config=mask_config, background=trained.background())
        times.append(1000 * (time.perf_counter() - t))
    return float(torch.tensor(times[1:]).median())
