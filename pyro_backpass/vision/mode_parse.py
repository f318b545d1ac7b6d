"""Scene parsing from the posterior modes of one backward pass (``ParseConfig.strategy="modes"``).

The paper's parse (:func:`~pyro_backpass.vision.parsing.parse_scene`, ``"sequential"``) finds one
instance per backward pass and explains it away before the next. Subtraction leaves part of an
instance's activations behind, so later passes often land on it again or on clutter. Fig. 5 of the
paper reads the other instances off the *posterior modes* of one pass instead: the ``n_modes`` best
hypotheses at the top mixture layer, each completed greedily below (one batched pass). This module
parses that way:

1. the ``n_modes`` modes of one pass, with their masks and evidence;
2. with a verifier (:mod:`~pyro_backpass.vision.verify`), each mode's masked pixels are shown to the
   backbone's classifier;
3. the modes are ranked: usable ones first (non-empty mask, evidence per pixel at least the stopping
   rule's threshold, verified when there is a verifier), then by ``rank`` (``"verifier"``: the
   classifier's probability of the category; ``"evidence"``: the model's evidence);
4. greedy non-maximum suppression in that order keeps a mode only if its mask overlaps no kept mode's
   with IoU above ``nms_iou``;
5. the first ``max_steps`` kept modes are the parse's steps, in that order, and the usable ones among
   them are accepted.

Why rank by the classifier: the top templates of a model trained on isolated airplanes also fit
clutter, and the evidence ranks an airplane's sub-parts and near-duplicates above a second airplane,
while a mode's masked pixels, shown to the classifier, say whether it is an airplane. On validation
scenes of the 2026-12-06 model (seeds 2 / 1, 80 / 40 scenes; 2-core CPU), 82% of the airplanes had a
mode among the best 24 with mask IoU ≥ 0.5, against 71% for any of 4 sequential steps; ranked by the
verifier the first two kept modes found 0.731 / 0.713 of the airplanes, ranked by evidence 0.688 /
0.713, against 0.675 / 0.662 for the sequential parse (seed 3, held back to confirm: 0.744 against
0.669; see :class:`~pyro_backpass.vision.evaluate_config.EvaluateConfig` for the other measures). The
README's table has the test scenes.
"""

from __future__ import annotations

import torch

from ..hierarchy import Hierarchy
from ..metrics import greedy_suppression, pairwise_iou
from .explain import MaskRule, explain
from .masks import MaskConfig
from .parsing import RANKS, ParseConfig, ParseResult, verify_masks
from .verify import Verifier

__all__ = ["RANKS", "parse_modes", "rank_modes"]


def rank_modes(masks: torch.Tensor, score: torch.Tensor, usable: torch.Tensor, nms_iou: float,
               steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order the modes of each image and keep the distinct ones (steps 3-5 of the module docstring).

    :param torch.Tensor masks: (M, N, S, S) bool, the modes' masks.
    :param torch.Tensor score: (M, N), higher first among the usable modes.
    :param torch.Tensor usable: (M, N) bool.
    :param float nms_iou: a mode overlapping a kept mode with IoU above this is suppressed.
    :param int steps: how many modes to return per image (``T``).
    :returns: ``(order, kept)``: (T, N) indices into the modes, the kept modes first in rank order,
        then (when fewer than ``T`` were kept) the suppressed ones in rank order; and (T, N) bool,
        whether each was kept.
    """
    M, N = score.shape
    if masks.shape[:2] != (M, N) or usable.shape != (M, N):
        raise ValueError(f"masks, usable: expected (M, N) = {(M, N)} leading dims like score, "
                         f"got {tuple(masks.shape[:2])} and {tuple(usable.shape)}")
    # Usable modes before the others, each group by score, ties in mode order (best total first): two
    # stable sorts, the second by the primary key.
    order = torch.sort(score.T, dim=1, descending=True, stable=True).indices    # (N, M)
    n = torch.arange(N, device=score.device).unsqueeze(1)
    order = order.gather(1, torch.sort((~usable.T[n, order]).to(torch.int8), dim=1, stable=True).indices)
    iou = pairwise_iou(masks.transpose(0, 1))[n.unsqueeze(-1), order.unsqueeze(-1), order.unsqueeze(1)]  # ranked
    kept = greedy_suppression(iou, masks.flatten(-2).any(-1).T[n, order], nms_iou)  # (N, M), non-empty only
    # Kept ones first (stable, so each group stays in rank order).
    pos = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices[:, :steps]
    return order.gather(1, pos).T, kept.gather(1, pos).T


def parse_modes(model, hierarchy: Hierarchy, f_bu: list[torch.Tensor], config: ParseConfig,
                mask_rule: MaskRule | None = None, mask_config: MaskConfig | None = None,
                background: list[torch.Tensor] | None = None, verifier: Verifier | None = None,
                **model_kwargs) -> ParseResult:
    """Parse ``N`` scenes from the posterior modes of one pass (module docstring).

    Arguments as in :func:`~pyro_backpass.vision.parsing.parse_scene`; ``config`` supplies
    ``max_steps``, ``evidence_threshold``, ``verify_threshold``, ``n_modes``, ``nms_iou`` and ``rank``.
    Mask rules read ``f_bu[0]``, the scene's pixels. The images are parsed in chunks of
    ``mode_chunk // n_modes`` (each image's modes are completed as one batch of the pass; the chunks
    bound the memory), unless a model argument holds a tensor per image.

    :returns: :class:`~pyro_backpass.vision.parsing.ParseResult` with ``T = max_steps`` steps (fewer when
        the hierarchy's top layer has fewer hypotheses); ``first_pass`` is the mask of the greedy pass's
        MAP (the mode best at the top layer; the modes themselves are sorted by total score).
    """
    f_bu = hierarchy.check_maps("f_bu", f_bu)
    N = f_bu[0].shape[0]
    step = max(1, config.mode_chunk // config.n_modes)
    if N <= step or any(_per_image(v, N) for v in model_kwargs.values()):
        return _parse_modes(model, hierarchy, f_bu, config, mask_rule, mask_config, background, verifier,
                            **model_kwargs)
    # Every image is parsed on its own, so chunks of images give the same steps with less memory.
    parts = [_parse_modes(model, hierarchy, [x[i:i + step] for x in f_bu], config, mask_rule, mask_config,
                          background, verifier, **model_kwargs) for i in range(0, N, step)]

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return ParseResult(**{name: cat(name) for name in ("masks", "reconstructions", "evidence", "accepted",
                                                       "path_score", "verified", "first_pass")},
                       hidden={k: torch.cat([p.hidden[k] for p in parts]) for k in parts[0].hidden})


def _per_image(value, N: int) -> bool:
    """Whether a model argument (a tensor, or a dict of them) may hold one entry per image."""
    if isinstance(value, torch.Tensor):
        return value.dim() > 0 and value.shape[0] == N
    return isinstance(value, dict) and any(_per_image(v, N) for v in value.values())


def _parse_modes(model, hierarchy, f_bu, config, mask_rule, mask_config, background, verifier,
                 **model_kwargs) -> ParseResult:
    S2 = f_bu[0].shape[-1] * f_bu[0].shape[-2]
    modes = explain(model, hierarchy, f_bu, topk=config.n_modes, topk_layer=hierarchy.L - 1, mask_rule=mask_rule,
                    mask_config=mask_config, background=background, **model_kwargs)
    M, N = modes.evidence.shape
    evidence = modes.evidence if modes.evidence_vs_background is None else modes.evidence_vs_background
    usable = evidence / S2 >= config.evidence_threshold
    verified = verify_masks(config, verifier, f_bu[0].unsqueeze(0).expand(M, -1, -1, -1, -1), modes.mask)
    if verified is not None:
        usable = usable & (verified >= config.verify_threshold)
    score = verified if (config.rank == "verifier" and verified is not None) else evidence
    order, kept = rank_modes(modes.mask, score, usable, config.nms_iou, min(config.max_steps, M))
    n = torch.arange(N, device=order.device).expand_as(order)
    # The modes are sorted by their total score; the greedy pass would have taken the one best at the
    # top layer (each mode is completed below as the greedy pass completes it), so that one is the MAP.
    greedy = modes.backward.layer_scores[..., -1].argmax(0)                     # (N,)

    def take(x: torch.Tensor) -> torch.Tensor:  # (M, N, ...) → (N, T, ...)
        return x[order, n].transpose(0, 1)

    accepted = take(usable) & kept.T
    return ParseResult(masks=take(modes.mask), reconstructions=take(modes.reconstruction), evidence=take(evidence),
                       accepted=accepted, hidden={k: take(v) for k, v in modes.hidden.items()},
                       path_score=(take(evidence) * accepted).sum(1),
                       verified=None if verified is None else take(verified),
                       first_pass=modes.mask[greedy, torch.arange(N, device=order.device)])
