"""Mask measures of DESIGN §8: instance IoU with the best-matching instance, parse recall@n and precision.

All masks are boolean ``(…, S, S)`` tensors. Conventions, fixed here once for every script:

* **IoU of two empty masks is 0**, not 1 or NaN: an empty prediction never "matches" anything, and
  a scene without ground-truth instances gives a best IoU of 0.
* **Instance IoU** (:func:`mask_iou`): IoU of one predicted mask with the ground-truth instance it
  overlaps best.
* **Parse matching** (:func:`match_parse`): parse steps are visited in order; step ``t`` matches the
  not-yet-matched instance with the highest IoU if that IoU is ``>= iou_threshold`` (0.5), and
  matches nothing otherwise. So two steps on the same instance count once (the second is a
  duplicate, not a hit).
* **Recall@n**: fraction of ground-truth instances matched within the first ``n`` steps.
  **Precision**: fraction of the parse's steps (the steps before it stopped) that matched an
  instance. :func:`parse_summary` pools counts over scenes (micro average), so every instance and
  every step weighs the same; a scene's own numbers come from :func:`parse_recall_at_n` and
  :func:`parse_precision`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_backpass.validation import check_tensor

__all__ = ["iou_matrix", "pairwise_iou", "greedy_suppression", "mask_iou", "instance_ious", "match_parse",
           "parse_recall_at_n", "parse_precision", "parse_summary"]


def _check_masks(name: str, x, dims: int) -> torch.Tensor:
    check_tensor(name, x)
    if x.dim() != dims:
        want = {2: "(S, S)", 3: "(n, S, S)"}.get(dims, "(N, M, S, S)")
        raise ValueError(f"{name}: expected a {dims}-d mask tensor of shape {want}, got shape {tuple(x.shape)}")
    if x.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool mask tensor, got dtype {x.dtype}")
    return x


def iou_matrix(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of every predicted mask with every ground-truth mask, as one matrix product.

    :param pred: bool ``(P, S, S)``.
    :param gt: bool ``(G, S, S)``.
    :returns: float32 ``(P, G)``; 0 where both masks are empty.
    """
    _check_masks("pred", pred, 3)
    _check_masks("gt", gt, 3)
    if pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"gt: expected masks of the prediction's size {tuple(pred.shape[1:])}, "
                         f"got {tuple(gt.shape[1:])}")
    p = pred.flatten(1).to(torch.float32)
    g = gt.flatten(1).to(torch.float32)
    # Counts up to S*S are exact in float32 for any image this project uses (< 2**24 pixels).
    inter = p @ g.T
    union = p.sum(1, keepdim=True) + g.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    """IoU between every two masks of each image, as one batched matrix product.

    :param masks: bool ``(N, M, S, S)``: ``M`` masks per image.
    :returns: float32 ``(N, M, M)``; 0 where both masks are empty.
    """
    _check_masks("masks", masks, 4)
    m = masks.flatten(2).to(torch.float32)
    inter = m @ m.transpose(1, 2)                      # exact counts, as in iou_matrix
    area = m.sum(-1)
    union = area.unsqueeze(2) + area.unsqueeze(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def greedy_suppression(iou: torch.Tensor, allowed: torch.Tensor, threshold: float,
                       inclusive: bool = False) -> torch.Tensor:
    """Greedy non-maximum suppression in the given order: entry ``m`` is kept when it is allowed and its
    IoU with every earlier kept entry is below ``threshold`` (at most it, unless ``inclusive``).

    :param torch.Tensor iou: (N, M, M) pairwise IoU (:func:`pairwise_iou`), entries in priority order.
    :param torch.Tensor allowed: (N, M) bool, the entries that may be kept at all.
    :param bool inclusive: an IoU equal to ``threshold`` also suppresses.
    :returns: (N, M) bool.
    """
    kept = torch.zeros_like(allowed)
    for m in range(allowed.shape[1]):  # each decision depends on the earlier ones; M is small
        over = iou[:, m, :m] >= threshold if inclusive else iou[:, m, :m] > threshold
        kept[:, m] = allowed[:, m] & ~(over & kept[:, :m]).any(1)
    return kept


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Instance IoU: IoU of ``pred`` with its best-matching ground-truth instance.

    :param pred: bool ``(S, S)``.
    :param gt: bool ``(n, S, S)``, one mask per instance (``n = 0`` gives 0).
    """
    _check_masks("pred", pred, 2)
    _check_masks("gt", gt, 3)
    if gt.shape[0] == 0:
        return 0.0
    return float(iou_matrix(pred[None], gt).max())


def instance_ious(preds: torch.Tensor, gts: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`mask_iou` for a batch of scenes whose instance counts differ.

    :param preds: bool ``(N, S, S)``, one predicted mask per scene.
    :param gts: ``N`` bool tensors ``(n_j, S, S)``.
    :returns: float32 ``(N,)``.
    """
    _check_masks("preds", preds, 3)
    if len(gts) != preds.shape[0]:
        raise ValueError(f"gts: expected one ground-truth stack per prediction ({preds.shape[0]}), got {len(gts)}")
    return torch.tensor([mask_iou(p, g) for p, g in zip(preds, gts)], dtype=torch.float32)


def match_parse(steps: torch.Tensor, gt: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Which instance each parse step finds, in order (see the module docstring for the rule).

    :param steps: bool ``(T, S, S)``, the masks of the parse steps in the order they were made.
    :param gt: bool ``(G, S, S)``.
    :param float iou_threshold: smallest IoU that counts as a match.
    :returns: long ``(T,)``: the matched instance's index, or -1 (no match, or a duplicate).
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold!r}")
    _check_masks("steps", steps, 3)
    _check_masks("gt", gt, 3)
    out = torch.full((steps.shape[0],), -1, dtype=torch.long)
    if steps.shape[0] == 0 or gt.shape[0] == 0:
        return out
    iou = iou_matrix(steps, gt)
    free = torch.ones(gt.shape[0], dtype=torch.bool)
    for t in range(steps.shape[0]):  # sequential by definition: a step can only take a still-free instance
        cand = torch.where(free, iou[t], torch.full_like(iou[t], -1.0))
        best = int(cand.argmax())
        if float(cand[best]) >= iou_threshold:
            out[t] = best
            free[best] = False
    return out


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0 (number of parse steps), got {n!r}")
    return n


def parse_recall_at_n(steps: torch.Tensor, gt: torch.Tensor, n: int, iou_threshold: float = 0.5) -> float:
    """Fraction of the ``G`` ground-truth instances matched within the first ``n`` steps (NaN if ``G = 0``)."""
    n = _check_n(n)
    matched = match_parse(steps, gt, iou_threshold)
    if gt.shape[0] == 0:
        return float("nan")
    return float((matched[:n] >= 0).sum()) / gt.shape[0]


def parse_precision(steps: torch.Tensor, gt: torch.Tensor, iou_threshold: float = 0.5) -> float:
    """Fraction of the ``T`` parse steps that matched a not-yet-matched instance (NaN if ``T = 0``)."""
    matched = match_parse(steps, gt, iou_threshold)
    if steps.shape[0] == 0:
        return float("nan")
    return float((matched >= 0).sum()) / steps.shape[0]


def parse_summary(steps: Sequence[torch.Tensor], gts: Sequence[torch.Tensor], ns: Sequence[int] = (1, 2, 3),
                  iou_threshold: float = 0.5) -> dict[str, float]:
    """Recall@n for each ``n`` in ``ns`` and precision, pooled over scenes (micro average).

    :param steps: per scene, bool ``(T_j, S, S)`` parse-step masks (the steps before stopping).
    :param gts: per scene, bool ``(G_j, S, S)`` ground-truth instance masks.
    :returns: ``{"recall@n": ..., "precision": ..., "n_instances": ..., "n_steps": ...}``;
        a ratio with nothing to count is NaN.
    """
    if len(steps) != len(gts):
        raise ValueError(f"gts: expected one ground-truth stack per scene of steps ({len(steps)}), got {len(gts)}")
    ns = [_check_n(n) for n in ns]
    hits_at = {n: 0 for n in ns}
    n_inst = n_steps = n_hits = 0
    for s, g in zip(steps, gts):
        matched = match_parse(s, g, iou_threshold)
        for n in ns:
            hits_at[n] += int((matched[:n] >= 0).sum())
        n_inst += g.shape[0]
        n_steps += s.shape[0]
        n_hits += int((matched >= 0).sum())
    nan = float("nan")
    out = {f"recall@{n}": (hits_at[n] / n_inst if n_inst else nan) for n in ns}
    out["precision"] = n_hits / n_steps if n_steps else nan
    out["n_instances"] = n_inst
    out["n_steps"] = n_steps
    return out
