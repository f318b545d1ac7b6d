"""Feature compositionality: the loss that teaches it and the error that measures it.

Stone, Wang, Stark, Liu, Phoenix, George, *Teaching Compositionality to CNNs* (CVPR 2017): run the
same CNN (shared weights) on a scene and on the object alone, and pull each layer's scene
activations, masked to the object, towards the object-alone activations, also masked. The backward
pass relies on this property (DESIGN §5, §6): the top-down activations it learns are those of
objects alone, the bottom-up ones it explains are those of scenes.

**Masks per layer.** The pixel mask is downsampled to each layer's grid by area averaging, so a
cell's weight is the fraction of its pixels on the object (soft, no threshold to choose).

**Relative error.** For one object and layer ``l``,
``e_l = ||M_l ⊙ (A_l(scene) − A_l(object))|| / ||M_l ⊙ A_l(object)||``; it is scale-free, so a net
cannot lower it by shrinking its activations. The training loss uses the squared ratio over the
batch (ratio of sums: stable when an object's masked activations are tiny).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pyro_backpass.backbones.base import Backbone
from pyro_backpass.validation import check_shape, check_tensor

__all__ = ["downsample_mask", "compositional_loss", "compositionality_error"]

_EPS = 1e-8


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Fraction of each cell on the object: ``(N, S, S)`` mask -> ``(N, 1, h, w)`` in ``[0, 1]``."""
    m = mask.to(torch.float32).unsqueeze(1)
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="area")


def compositional_loss(scene_acts: Sequence[torch.Tensor], object_acts: Sequence[torch.Tensor],
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over layers of ``Σ_n ||M ⊙ (A_scene − A_obj)||² / Σ_n ||M ⊙ A_obj||²``.

    Gradients flow through both branches (the weights are shared), as in Stone et al.

    :param scene_acts: per layer ``(N, C, h, w)`` activations of the scenes.
    :param object_acts: the same layers for the objects alone.
    :param mask: ``(N, S, S)`` object masks in pixels (float or bool).
    :returns: ``(loss (), per-layer squared ratios (L,))``.
    """
    ratios = []
    for a_s, a_o in zip(scene_acts, object_acts):
        m = downsample_mask(mask, tuple(a_s.shape[-2:])).to(a_s.dtype)
        num = ((m * (a_s - a_o)) ** 2).sum()
        den = ((m * a_o) ** 2).sum()
        ratios.append(num / (den + _EPS))
    per_layer = torch.stack(ratios)
    return per_layer.mean(), per_layer


@torch.no_grad()
def compositionality_error(backbone: Backbone, scenes: torch.Tensor, masks: torch.Tensor,
                           objects: torch.Tensor, batch_size: int = 64,
                           layers: Sequence[str] | None = None) -> dict[str, float]:
    """Per layer, the mean over instances of ``||M ⊙ (A(scene) − A(object))|| / ||M ⊙ A(object)||``.

    :param Backbone backbone: the network (evaluated in eval mode, restored afterwards).
    :param scenes: ``(N, 3, S, S)`` scene images in ``[0, 1]``, one row per instance (repeat a
        scene for each of its instances).
    :param masks: ``(N, S, S)`` the instance's mask in the scene.
    :param objects: ``(N, 3, S, S)`` the instance alone on black at its scene position.
    :param layers: layer names (default: every conv and pool layer, the image excluded).
    :returns: ``{layer name: mean relative L2 error}``; instances whose mask is empty at a layer
        (all-zero masked object activations) are skipped for that layer.
    """
    for name, x in (("scenes", scenes), ("objects", objects)):
        check_tensor(name, x)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name}: expected shape (N, 3, S, S), got {tuple(x.shape)}")
    if objects.shape != scenes.shape:
        raise ValueError(f"objects: expected the shape of scenes {tuple(scenes.shape)}, got {tuple(objects.shape)}")
    check_shape("masks", masks, (scenes.shape[0], *scenes.shape[2:]), trailing=False)
    names = list(layers) if layers is not None else backbone.layer_names()[1:]
    sums = {n: 0.0 for n in names}
    counts = {n: 0 for n in names}
    was_training = backbone.training
    backbone.eval()
    try:
        for start in range(0, scenes.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            a_s = backbone.activations(scenes[sl].float(), layers=names)
            a_o = backbone.activations(objects[sl].float(), layers=names)
            for n, s, o in zip(names, a_s, a_o):
                m = downsample_mask(masks[sl], tuple(s.shape[-2:])).to(s.dtype)
                num = (m * (s - o)).flatten(1).norm(dim=1)
                den = (m * o).flatten(1).norm(dim=1)
                ok = den > _EPS
                sums[n] += float((num[ok] / den[ok]).sum())
                counts[n] += int(ok.sum())
    finally:
        backbone.train(was_training)
    return {n: (sums[n] / counts[n] if counts[n] else float("nan")) for n in names}
