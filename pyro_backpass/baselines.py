"""Saliency baselines for instance masks (DESIGN §8): GradCAM and guided backprop, via captum.

Both explain the backbone's classifier logit of one class (the airplane, in this project) and give
a per-image saliency map in ``[0, 1]`` at the image's size; a mask is the map thresholded at one
value, chosen by :func:`best_threshold` on a validation split to maximise the mean instance IoU
(:func:`pyro_backpass.metrics.mask_iou`) and then applied unchanged to the test scenes.

* :func:`gradcam_maps`: captum's ``LayerGradCam`` on a conv layer (by default the backbone's top
  conv, ``conv3_2`` on the default SmallVGG), ReLU of the channel-weighted sum, bilinearly upsampled to the image.
* :func:`guided_backprop_maps`: captum's ``GuidedBackprop`` (ReLU backward hooks pass only
  positive gradients), ``|·|``, max over the colour channels, then a Gaussian blur of
  ``smooth_sigma`` pixels. Why blur: guided backprop lights up edges and fine texture, so a
  threshold of the raw map gives a scatter of edge pixels, never a filled object; a light blur
  (2 px at 96×96, thin compared with a wing) fills the outline without blobbing neighbours together.

**Normalisation.** Each map is min-max scaled to ``[0, 1]`` per image, so one threshold means the
same relative level on every image; a constant map (e.g. GradCAM all zero) becomes all zeros.

The backbone is run in eval mode (BatchNorm's running statistics; restored afterwards) with
gradients on, whatever the caller's grad mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pyro_backpass.backbones.small_vgg import SmallVGG
from pyro_backpass.data.categories import category_index
from pyro_backpass.metrics import iou_matrix, mask_iou

__all__ = ["BaselineConfig", "gradcam_maps", "guided_backprop_maps", "normalise_maps", "saliency_masks",
           "best_threshold", "mask_iou"]


@dataclass(frozen=True)
class BaselineConfig:
    """Defaults of the saliency baselines.

    :param str gradcam_layer: layer GradCAM explains, a conv layer name of the backbone; ``""`` for
        its top conv layer (``conv3_2`` on the default SmallVGG).
    :param float smooth_sigma: Gaussian blur of guided-backprop maps, in pixels (0: none).
    :param tuple thresholds: candidate thresholds on the normalised maps for :func:`best_threshold`.
    :param int batch_size: images per attribution call (bounds memory, not results).
    """

    gradcam_layer: str = ""
    smooth_sigma: float = 2.0
    thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
    batch_size: int = 32


_DEFAULTS = BaselineConfig()


def _check_images(backbone, images) -> torch.Tensor:
    if not isinstance(backbone, SmallVGG):
        raise TypeError(f"backbone: expected a SmallVGG (with a classifier head), got {type(backbone).__name__}")
    return backbone.check_images(images)


def _targets(target, n: int, n_classes: int) -> torch.Tensor:
    """``target`` (category name, class index or ``(N,)`` indices) as a long ``(N,)`` tensor."""
    if isinstance(target, str):
        target = category_index(target)
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.dtype == torch.bool or t.dim() > 1:
        raise ValueError(f"target: expected a category name, a class index or (N,) indices, got {target!r}")
    t = t.expand(n) if t.dim() == 0 else t
    if t.shape[0] != n:
        raise ValueError(f"target: expected {n} class indices (one per image), got {t.shape[0]}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"target: expected class indices in [0, {n_classes}), got {t.tolist()}")
    return t.long()


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of ``(N, S, S)`` to ``[0, 1]``; a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1) - lo)
    return torch.where(span > 0, (maps - lo) / span.clamp(min=1e-12), torch.zeros_like(maps))


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, S, S)`` with zero padding (the frame's outside is empty)."""
    if sigma <= 0:
        return maps
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    m = maps[:, None]
    m = F.conv2d(m, k.view(1, 1, 1, -1), padding=(0, r))
    m = F.conv2d(m, k.view(1, 1, -1, 1), padding=(r, 0))
    return m[:, 0]


def _attribute(backbone: SmallVGG, images: torch.Tensor, target, batch_size: int, attribute) -> torch.Tensor:
    """Run ``attribute(batch, targets)`` over batches in eval mode with grad on; concatenate."""
    t = _targets(target, images.shape[0], backbone.config.n_classes)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size!r}")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.enable_grad():
            out = [attribute(images[i:i + batch_size].detach(), t[i:i + batch_size].tolist())
                   for i in range(0, images.shape[0], batch_size)]
    finally:
        backbone.train(was_training)
    return torch.cat(out).detach() if out else images.new_zeros((0, *images.shape[2:]))


def gradcam_maps(backbone: SmallVGG, images: torch.Tensor, target, layer_name: str = _DEFAULTS.gradcam_layer,
                 batch_size: int = _DEFAULTS.batch_size) -> torch.Tensor:
    """GradCAM saliency of class ``target``'s logit.

    :param SmallVGG backbone: the classifier (``backbone.classify`` gives the logits).
    :param images: ``(N, 3, S, S)`` in ``[0, 1]``.
    :param target: category name (``"airplane"``), class index, or ``(N,)`` indices.
    :param str layer_name: a conv layer of the backbone; ``""`` for its top conv layer.
    :returns: ``(N, S, S)`` float, each map min-max normalised to ``[0, 1]``.
    """
    from captum.attr import LayerGradCam

    images = _check_images(backbone, images)
    convs = [n for n in backbone.stages if n.startswith("conv")]
    layer_name = layer_name or convs[-1]
    if layer_name not in convs:
        raise ValueError(f"layer_name: expected a conv layer of the backbone, one of {convs}, got {layer_name!r}")
    cam = LayerGradCam(backbone.classify, backbone.stages[layer_name])
    S = images.shape[-1]

    def attribute(x, t):
        a = cam.attribute(x, target=t, relu_attributions=True)  # (n, 1, h, w)
        return F.interpolate(a, size=(S, S), mode="bilinear", align_corners=False)[:, 0]

    return normalise_maps(_attribute(backbone, images, target, batch_size, attribute))


def guided_backprop_maps(backbone: SmallVGG, images: torch.Tensor, target,
                         smooth_sigma: float = _DEFAULTS.smooth_sigma,
                         batch_size: int = _DEFAULTS.batch_size) -> torch.Tensor:
    """Guided-backprop saliency of class ``target``'s logit: ``|grad|``, max over RGB, blurred.

    :param smooth_sigma: Gaussian blur in pixels (0 for the raw map); see the module docstring.
    :returns: ``(N, S, S)`` float, each map min-max normalised to ``[0, 1]``.
    """
    from captum.attr import GuidedBackprop

    images = _check_images(backbone, images)
    if not smooth_sigma >= 0:
        raise ValueError(f"smooth_sigma: expected a blur in pixels >= 0, got {smooth_sigma!r}")
    gbp = GuidedBackprop(backbone)  # SmallVGG.forward is classify; its ReLUs are modules, not functional

    def attribute(x, t):
        with warnings.catch_warnings():
            # captum warns each call that it hooks the ReLUs' backward; that is the method itself.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            a = gbp.attribute(x.requires_grad_(), target=t)  # (n, 3, S, S)
        return a.abs().amax(1)

    maps = _attribute(backbone, images, target, batch_size, attribute)
    return normalise_maps(_gaussian_blur(maps, float(smooth_sigma)))


def saliency_masks(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Masks ``maps >= threshold``: ``(N, S, S)`` float -> bool."""
    return maps >= threshold


def best_threshold(maps: torch.Tensor, gt_masks_list: Sequence[torch.Tensor],
                   thresholds: Sequence[float] = _DEFAULTS.thresholds) -> tuple[float, float]:
    """The threshold whose masks have the highest mean instance IoU over a validation split.

    :param maps: ``(N, S, S)`` normalised saliency maps.
    :param gt_masks_list: ``N`` bool tensors ``(n_j, S, S)``, the instances of each scene.
    :param thresholds: candidates; ties go to the first one listed.
    :returns: ``(threshold, mean IoU at that threshold)``.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps: expected shape (N, S, S), got {tuple(maps.shape)}")
    if len(gt_masks_list) != maps.shape[0] or maps.shape[0] == 0:
        raise ValueError(f"gt_masks_list: expected one mask stack per map ({maps.shape[0]}, at least 1), "
                         f"got {len(gt_masks_list)}")
    try:
        candidates = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        candidates = []
    if not candidates:
        raise ValueError(f"thresholds: expected a non-empty sequence of numbers, got {thresholds!r}")
    th = torch.tensor(candidates, dtype=maps.dtype)
    ious = torch.zeros(maps.shape[0], th.numel())
    for j, (m, gt) in enumerate(zip(maps, gt_masks_list)):
        if gt.shape[0]:  # one (T, S, S) stack per scene: every threshold in one matrix product
            ious[j] = iou_matrix(m[None] >= th.view(-1, 1, 1), gt).amax(1)
    mean = ious.mean(0)
    best = int(mean.argmax())
    return candidates[best], float(mean[best])  # the caller's value, not its float32 rounding
