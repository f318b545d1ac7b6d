"""MAP inference on images: one backward pass, read back in image space (Sec. 2.2.1, 3.2).

:func:`explain` runs the greedy backward pass of a model program on bottom-up maps and adds what a
user looks at: the reconstruction ``F^0_td`` (the MAP image, eq. 13 at the image layer), the purely
top-down prediction ``f̃^0``, and the instance mask (:mod:`pyro_backpass.vision.masks`).
:func:`map_image` does the same starting from pixels, through the trained model's backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..distributions import max_joint
from ..hierarchy import Hierarchy
from ..inference import BackwardResult, backward_pass
from .masks import MaskConfig, instance_masks, top_down_prediction
from .trained import TrainedModel

__all__ = ["InstanceResult", "explain", "map_image", "background_score"]


@dataclass
class InstanceResult:
    """A backward pass over ``N`` images with ``B`` kept assignments each (best first).

    :ivar BackwardResult backward: ``hidden`` (site → (B, N)), ``f_td`` (per layer (B, N, C, H, W)),
        ``layer_scores`` (B, N, L), ``total`` (B, N) and ``evidence`` (B, N).
    :ivar torch.Tensor reconstruction: (B, N, 3, S, S) the MAP ``F^0_td``.
    :ivar torch.Tensor prediction: (B, N, 3, S, S) the top-down mean ``f̃^0`` (no bottom-up term).
    :ivar torch.Tensor mask: (B, N, S, S) bool instance masks.
    :ivar torch.Tensor evidence_vs_background: (B, N) total log score minus that of the *background*
        explanation (every ``F^l_td`` at the backbone's response to an empty image, see
        :func:`background_score`), or ``None`` when no background was given.
    """

    backward: BackwardResult
    reconstruction: torch.Tensor
    prediction: torch.Tensor
    mask: torch.Tensor
    evidence_vs_background: torch.Tensor | None = None

    @property
    def hidden(self) -> dict:
        return self.backward.hidden

    @property
    def evidence(self) -> torch.Tensor:
        return self.backward.evidence

    @property
    def total(self) -> torch.Tensor:
        return self.backward.total

    @property
    def f_td(self) -> list:
        return self.backward.f_td

    @property
    def layer_scores(self) -> torch.Tensor:
        return self.backward.layer_scores

    def best(self) -> dict:
        """The top assignment per image: site → (N,)."""
        return self.backward.best()


def background_score(hierarchy: Hierarchy, f_bu: list[torch.Tensor], background: list[torch.Tensor]) -> torch.Tensor:
    """Log score of the background explanation: on every layer the top-down mean is the backbone's
    response to an empty image, ``Σ_l Σ_i max_f [log P(f_bu,i | f) + log N(f; bg_l,i, σ0_l)]`` (eq. 13).

    The training objects sit on black, so "no object here" is that response, not 0; evidence against
    it says whether an object explains the scene better than an empty scene does.

    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l).
    :param list background: ``L`` tensors (C_l, H_l, W_l).
    :returns: (N,).
    """
    total = 0.0
    for l, (x, b) in enumerate(zip(f_bu, background)):
        v = max_joint(x, b.expand_as(x), hierarchy.sigma0[l], **hierarchy.obs_params(l))[1]
        total = total + v.sum((-3, -2, -1))
    return total


MaskRule = Callable[[Hierarchy, list, BackwardResult], torch.Tensor]


def explain(model, hierarchy: Hierarchy, f_bu: list[torch.Tensor], beam: int = 1, topk: int | None = None,
            topk_layer: int | str | None = None, clamp: dict | None = None, mask_rule: MaskRule | None = None,
            mask_config: MaskConfig | None = None, background: list[torch.Tensor] | None = None,
            **model_kwargs) -> InstanceResult:
    """Backward pass plus reconstruction and instance mask.

    :param model: a model program with the signature of ``models.activation.activation_model``.
    :param list f_bu: ``L`` tensors (N, C_l, H_l, W_l), bottom-up; ``f_bu[0]`` is the image (N, 3, S, S).
    :param beam, topk, topk_layer, clamp: as in :func:`~pyro_backpass.inference.backward_pass`.
    :param mask_rule: ``rule(hierarchy, f_bu, result) -> (B, N, S, S)`` bool; default
        :func:`~pyro_backpass.vision.masks.instance_masks` with ``mask_config``.
    :param list background: the backbone's activations of an empty image, ``L`` maps (C_l, H_l, W_l)
        (:meth:`TrainedModel.background`), for mask rules that measure against it.
    :param model_kwargs: passed to the model (``prior=``, ``delta_logits=``).
    :returns: :class:`InstanceResult`.
    """
    f_bu = hierarchy.check_maps("f_bu", f_bu)
    result = backward_pass(model, hierarchy, f_bu, beam=beam, topk=topk, topk_layer=topk_layer, clamp=clamp,
                           **model_kwargs)
    if mask_rule is None:
        mask = instance_masks(hierarchy, f_bu, result, mask_config, background)
    else:
        mask = mask_rule(hierarchy, f_bu, result)
    ev_bg = None if background is None else result.total - background_score(hierarchy, f_bu, background)
    return InstanceResult(result, result.f_td[0], top_down_prediction(hierarchy, result, 0), mask, ev_bg)


def map_image(model, trained: TrainedModel, images: torch.Tensor, **kwargs) -> InstanceResult:
    """:func:`explain` on images.

    :param TrainedModel trained: hierarchy and backbone.
    :param torch.Tensor images: (N, 3, S, S) pixels in ``[0, 1]`` (or one image (3, S, S)).
    :param kwargs: as in :func:`explain`.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = images.unsqueeze(0)
    trained.backbone.check_images(images)
    kwargs.setdefault("background", trained.background())
    return explain(model, trained.hierarchy, trained.activations(images), **kwargs)
