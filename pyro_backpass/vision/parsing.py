"""Scene parsing: find the instances one by one by repeated backward passes (Sec. 3.2, DESIGN §4).

Each step runs a backward pass on the current bottom-up maps, records the instance it explains
(reconstruction, mask, ``H``, evidence) and *explains it away* before the next step:

- ``"subtract"`` (the paper's rule): ``F^l_bu ← max(F^l_bu - F^l_td, 0)`` on every layer; given the
  backbone's response ``bg`` to an empty image, the instance's own contribution ``max(F^l_td - bg, 0)``
  is what is subtracted (its ``F_td`` includes the empty scene's response everywhere);
- ``"suppress"``: ``F^l_bu ← 0`` wherever the instance drives the unit (``F^l_td > λ_l``), a harder
  rule that removes what was explained however strong the scene's activation there.

**Stopping rule.** A step is accepted while its evidence per image pixel is at least
``evidence_threshold``: the MAP score minus that of the background explanation
(:func:`~pyro_backpass.vision.explain.background_score`) when a background is given, else minus that
of the all-zero explanation (:func:`~pyro_backpass.inference.empty_score`); parsing stops
parsing stops at the first step below it or after ``max_steps``. Per-pixel normalisation makes one
threshold serve every input size. With ``verify_threshold`` set and a verifier given
(:func:`~pyro_backpass.vision.verify.category_verifier`), a step is also rejected when the verifier's
probability that its masked instance is the queried category is below the threshold; such a step is
explained away like the others, so parsing goes on past it, but it does not count as an instance.
With ``duplicate_iou`` set, a step whose mask overlaps the mask of an earlier accepted step with IoU at
least that much is rejected in the same way (:func:`reject_duplicates`): subtraction leaves part of a
found instance's activations behind, and the next pass often lands on it again.
All steps up to ``max_steps`` are computed for the whole batch at once; ``accepted`` says which count.

**Posterior modes instead of passes.** With ``strategy="modes"`` the steps are instead the distinct
posterior modes of one pass at the top layer, ranked by the verifier
(:mod:`~pyro_backpass.vision.mode_parse`); nothing is explained away.

**Parse paths.** With ``paths > 1`` the parse keeps the ``paths`` best sequences of instances (the
paper's "multiple parsing paths"): each step extends every path by its ``branch`` best posterior modes
at the top layer (each completed greedily below), scores a sequence by the sum of its steps'
evidence, and keeps the best ``paths`` sequences per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hierarchy import Hierarchy
from ..metrics import greedy_suppression, pairwise_iou
from .explain import MaskRule, explain
from .masks import MaskConfig, instance_masks
from .verify import Verifier

__all__ = ["ParseConfig", "ParseResult", "EXPLAIN_AWAY", "MASK_IMAGES", "STRATEGIES", "RANKS", "explain_away",
           "reject_duplicates", "parse_scene"]

EXPLAIN_AWAY = ("subtract", "suppress")
#: how the steps are found (:class:`ParseConfig`).
STRATEGIES = ("sequential", "modes")
#: what orders the usable modes of ``strategy="modes"`` (:class:`ParseConfig`).
RANKS = ("verifier", "evidence")
#: which pixels a step's mask rule sees (:class:`ParseConfig`).
MASK_IMAGES = ("scene", "explained")


@dataclass(frozen=True)
class ParseConfig:
    """Defaults of scene parsing.

    :param int max_steps: at most this many instances per scene.
    :param float evidence_threshold: accept a step while its evidence per image pixel is at least this
        (nats per pixel).
    :param str explain_away: one of :data:`EXPLAIN_AWAY`.
    :param int paths: parse paths kept (1: one greedy sequence).
    :param int branch: candidate instances per path and step when ``paths > 1``.
    :param int beam: beam of each backward pass.
    :param float verify_threshold: with a verifier given to :func:`parse_scene`, a step counts only if
        the verifier gives its instance at least this probability (``None``: no verification).
    :param str mask_image: the image the mask rule of every step reads: ``"explained"``, the image
        layer of the explained-away maps the step's pass ran on (after the first step, the scene minus
        the earlier instances' reconstructions, clamped at 0), or ``"scene"``, the scene's own pixels.
        The passes themselves run on the explained-away maps either way. ``"scene"`` measured better on
        validation scenes of the 2026-12-06 model (``scripts.evaluate --split val``, verification at 0.5,
        4 steps): recall@2 0.675 / 0.662 against 0.656 / 0.650, leftmost 0.738 / 0.625 against 0.700 /
        0.625 (80 scenes of seed 2 / 40 of seed 1).
    :param str strategy: ``"sequential"`` (the paper's: a backward pass per step, each explaining the
        found instances away) or ``"modes"``: the steps are distinct posterior modes of one pass, ranked
        (:mod:`~pyro_backpass.vision.mode_parse`, which uses ``n_modes``, ``nms_iou`` and ``rank``; not
        ``explain_away``, ``paths``, ``branch``, ``beam`` nor ``duplicate_iou``).
    :param int n_modes: posterior modes at the top layer for ``"modes"``.
    :param float nms_iou: ``"modes"`` keeps a mode only if its mask's IoU with every better kept mode is
        at most this.
    :param str rank: ``"modes"`` ranks the usable modes by the ``"verifier"``'s probability (the
        evidence without a verifier) or by their ``"evidence"``.
    :param int mode_chunk: ``"modes"`` completes at most about this many modes at once (images in chunks
        of ``mode_chunk // n_modes``, at least one): with 64, ``scripts.evaluate`` on 200 test scenes
        peaked at 2.5 GB in 457 s, against 5.1 GB in 675 s with all 192 modes of a batch of 8 at once,
        with the same results (2026-12-06, 2-core CPU).
    :param float duplicate_iou: reject a step whose mask has at least this IoU with an earlier accepted
        step's mask (``None``: keep duplicates); see :func:`reject_duplicates`. On validation scenes of the
        2026-12-06 model (``scripts.evaluate --split val``, 4 steps, verification at 0.5), about a quarter of
        all steps found an already-found airplane again; rejecting them at 0.5 raised the parse precision
        from 0.514 / 0.487 to 0.701 / 0.655 with recall@2 unchanged (0.675 / 0.662) and the queries the same
        or better (leftmost 0.738 / 0.650 against 0.738 / 0.625); 0.3 raised the precision further (0.752 /
        0.722) but moved recall@2 both ways (0.656 / 0.675) (80 scenes of seed 2 / 40 of seed 1).
    """

    max_steps: int = 3
    evidence_threshold: float = 0.0
    explain_away: str = "subtract"
    paths: int = 1
    branch: int = 4
    beam: int = 1
    verify_threshold: float | None = None
    mask_image: str = "scene"
    duplicate_iou: float | None = 0.5
    strategy: str = "sequential"
    n_modes: int = 24
    nms_iou: float = 0.3
    rank: str = "verifier"
    mode_chunk: int = 64

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {self.strategy!r}")
        if self.rank not in RANKS:
            raise ValueError(f"rank: expected one of {RANKS}, got {self.rank!r}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou: expected an IoU in [0, 1], got {self.nms_iou!r}")
        if self.mask_image not in MASK_IMAGES:
            raise ValueError(f"mask_image: expected one of {MASK_IMAGES}, got {self.mask_image!r}")
        if self.verify_threshold is not None and not 0.0 <= self.verify_threshold <= 1.0:
            raise ValueError(f"verify_threshold: expected a probability in [0, 1] or None, "
                             f"got {self.verify_threshold!r}")
        if self.duplicate_iou is not None and not 0.0 < self.duplicate_iou <= 1.0:
            raise ValueError(f"duplicate_iou: expected an IoU in (0, 1] or None, got {self.duplicate_iou!r}")
        if self.explain_away not in EXPLAIN_AWAY:
            raise ValueError(f"explain_away: expected one of {EXPLAIN_AWAY}, got {self.explain_away!r}")
        for name in ("max_steps", "paths", "branch", "beam", "n_modes", "mode_chunk"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {getattr(self, name)!r}")


@dataclass
class ParseResult:
    """The best parse of each of ``N`` scenes, ``T = max_steps`` steps.

    :ivar torch.Tensor masks: (N, T, S, S) bool instance masks, in parse order.
    :ivar torch.Tensor reconstructions: (N, T, 3, S, S) each step's ``F^0_td``.
    :ivar torch.Tensor evidence: (N, T) each step's evidence (nats).
    :ivar torch.Tensor accepted: (N, T) bool, the steps before the stopping rule fired that passed the
        verification (all of them without one).
    :ivar dict hidden: site → (N, T) the ``H`` of each step.
    :ivar torch.Tensor path_score: (N,) the sum of the chosen path's evidence.
    :ivar torch.Tensor verified: (N, T) the verifier's probability of each step (``None`` without one).
    :ivar torch.Tensor first_pass: (N, S, S) the mask of the scene's MAP, the first backward pass (the
        first step's mask unless the steps were ranked; ``None``: ``masks[:, 0]``).
    """

    masks: torch.Tensor
    reconstructions: torch.Tensor
    evidence: torch.Tensor
    accepted: torch.Tensor
    hidden: dict
    path_score: torch.Tensor
    verified: torch.Tensor | None = None
    first_pass: torch.Tensor | None = None

    def __post_init__(self):
        if self.first_pass is None:
            self.first_pass = self.masks[:, 0]

    @property
    def n_found(self) -> torch.Tensor:
        """(N,) the number of accepted steps."""
        return self.accepted.sum(1)


def explain_away(hierarchy: Hierarchy, f_bu: list[torch.Tensor], f_td: list[torch.Tensor],
                 rule: str = "subtract", background: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Remove an explained instance from the bottom-up maps.

    :param list f_bu: ``L`` tensors (N, C, H, W).
    :param list f_td: ``L`` tensors (N, C, H, W), the instance's ``F_td``.
    :param list background: ``L`` tensors (C, H, W), the empty image's response (``None``: zeros).
    :returns: ``L`` new tensors (N, C, H, W).
    """
    if rule == "subtract":
        if background is not None:
            f_td = [torch.clamp(t - b, min=0.0) for t, b in zip(f_td, background)]
        return [torch.clamp(x - t, min=0.0) for x, t in zip(f_bu, f_td)]
    if rule == "suppress":
        return [torch.where(t > hierarchy.obs_params(l)["lam"], torch.zeros_like(x), x)
                for l, (x, t) in enumerate(zip(f_bu, f_td))]
    raise ValueError(f"rule: expected one of {EXPLAIN_AWAY}, got {rule!r}")


def reject_duplicates(masks: torch.Tensor, accepted: torch.Tensor, threshold: float) -> torch.Tensor:
    """Reject the steps that find an instance again: in parse order, a step stays accepted only if its
    mask's IoU with every earlier step that stayed accepted is below ``threshold``.

    :param torch.Tensor masks: (N, T, S, S) bool, the steps' masks in parse order.
    :param torch.Tensor accepted: (N, T) bool, the steps accepted so far.
    :param float threshold: the IoU at which a step counts as a duplicate.
    :returns: (N, T) bool, ``accepted`` with the duplicates set to ``False``.
    """
    if masks.dim() != 4 or tuple(masks.shape[:2]) != tuple(accepted.shape):
        raise ValueError(f"masks: expected (N, T, S, S) matching accepted {tuple(accepted.shape)}, "
                         f"got {tuple(masks.shape)}")
    return greedy_suppression(pairwise_iou(masks), accepted, threshold, inclusive=True)


def verify_masks(config: ParseConfig, verifier: Verifier | None, images: torch.Tensor,
                 masks: torch.Tensor) -> torch.Tensor | None:
    """The verifier's probability of every mask, or ``None`` when ``config.verify_threshold`` is not set.

    :param torch.Tensor images: (*B, 3, S, S) the pixels each mask is read from; ``masks``: (*B, S, S) bool.
    :returns: (*B,).
    """
    if config.verify_threshold is None:
        return None
    if verifier is None:
        raise ValueError("verifier: config.verify_threshold is set, so a verifier is needed, got None")
    batch = masks.shape[:-2]
    return verifier(images.flatten(0, len(batch) - 1), masks.flatten(0, len(batch) - 1)).reshape(batch)


def parse_scene(model, hierarchy: Hierarchy, f_bu: list[torch.Tensor], config: ParseConfig | None = None,
                mask_rule: MaskRule | None = None, mask_config: MaskConfig | None = None,
                background: list[torch.Tensor] | None = None, verifier: Verifier | None = None,
                **model_kwargs) -> ParseResult:
    """Parse ``N`` scenes (batched).

    :param model: the model program.
    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l) of the scenes' bottom-up activations.
    :param ParseConfig config: steps, stopping rule, explaining-away rule and parse paths.
    :param verifier: ``verifier(images (N, 3, S, S), masks (N, S, S)) -> (N,)`` probabilities
        (:func:`~pyro_backpass.vision.verify.category_verifier`), used when
        ``config.verify_threshold`` is set; it sees ``f_bu[0]``, the scene's pixels.
    :param model_kwargs: passed to every backward pass (``clamp=``, ``prior=``, ``delta_logits=``).
    :returns: :class:`ParseResult`.
    """
    config = config or ParseConfig()
    if config.strategy == "modes":
        from .mode_parse import parse_modes  # late: mode_parse imports this module

        return parse_modes(model, hierarchy, f_bu, config, mask_rule=mask_rule, mask_config=mask_config,
                           background=background, verifier=verifier, **model_kwargs)
    f_bu = hierarchy.check_maps("f_bu", f_bu)
    N = f_bu[0].shape[0]
    S2 = f_bu[0].shape[-1] * f_bu[0].shape[-2]
    dev = f_bu[0].device
    # Paths are kept as a batch of P·N scenes, path-major: row p·N + n is path p of scene n. The
    # history holds (P, N, ...) tensors, reordered by each kept path's parent at every step.
    maps, P = f_bu, 1
    score = torch.zeros(1, N, device=dev, dtype=f_bu[0].dtype)
    hist: dict[str, list[torch.Tensor]] = {}
    branch = 1 if config.paths == 1 else config.branch
    kw = dict(beam=config.beam) if branch == 1 else dict(topk=branch, topk_layer=hierarchy.L - 1)
    rule = mask_rule
    if config.mask_image == "scene":
        base = mask_rule or (lambda h, f, r: instance_masks(h, f, r, mask_config, background))

        def rule(h, maps_, result):  # the scene's pixels, repeated for every path (rows are path-major)
            return base(h, [f_bu[0].repeat(maps_[0].shape[0] // N, 1, 1, 1)] + list(maps_[1:]), result)

    for _ in range(config.max_steps):
        res = explain(model, hierarchy, maps, mask_rule=rule, mask_config=mask_config, background=background, **kw,
                      **model_kwargs)
        Bc = res.evidence.shape[0] if branch > 1 else 1
        evidence = res.evidence if res.evidence_vs_background is None else res.evidence_vs_background
        cand = (score.unsqueeze(0) + evidence[:Bc].reshape(Bc, P, N)).reshape(Bc * P, N)  # c = b·P + p
        keep = min(config.paths, Bc * P)
        score, pick = cand.topk(keep, dim=0)                            # (P', N)
        b, parent = pick // P, pick % P
        n = torch.arange(N, device=dev).expand_as(pick)
        rows = parent * N + n                                            # into the P·N batch

        def take(x: torch.Tensor, b=b, rows=rows, keep=keep) -> torch.Tensor:  # (Bc, P·N, ...) → (P', N, ...)
            return x[b, rows].reshape((keep, N) + tuple(x.shape[2:]))

        new = {"mask": res.mask, "rec": res.reconstruction, "ev": evidence, **res.hidden}
        hist = {k: [h[parent, n] for h in hist.get(k, [])] + [take(v[:Bc])] for k, v in new.items()}
        f_td = [take(t[:Bc]).flatten(0, 1) for t in res.f_td]
        parents = [x.reshape((P, N) + tuple(x.shape[1:]))[parent, n].flatten(0, 1) for x in maps]
        maps = explain_away(hierarchy, parents, f_td, config.explain_away, background)
        P = keep
    # The best path per scene is path 0 (topk sorts).
    ev = torch.stack(hist["ev"], -1)[0]                                  # (N, T)
    accepted = (ev / S2 >= config.evidence_threshold).cumprod(-1).bool()
    masks = torch.stack(hist["mask"], 2)[0]                              # (N, T, S, S)
    T = masks.shape[1]
    verified = verify_masks(config, verifier, f_bu[0].unsqueeze(1).expand(-1, T, -1, -1, -1), masks)
    if verified is not None:
        accepted = accepted & (verified >= config.verify_threshold)
    if config.duplicate_iou is not None:
        accepted = reject_duplicates(masks, accepted, config.duplicate_iou)
    hidden = {k: torch.stack(v, -1)[0] for k, v in hist.items() if k not in ("mask", "rec", "ev")}
    return ParseResult(masks=masks, reconstructions=torch.stack(hist["rec"], 2)[0], evidence=ev, accepted=accepted,
                       hidden=hidden, path_score=score[0], verified=verified)
