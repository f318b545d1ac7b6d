"""Batched training augmentation: backgrounds, clutter, occluders, flips and colour gain.

Objects are rendered once on black (premultiplied: the image is zero outside the mask) and
composited here per batch, so every epoch sees new scenes at the cost of a few tensor ops.
Everything draws from an explicit ``torch.Generator``, so a batch is a function of its seed.

Sizes are set by each mask's bounding box (renders vary in scale). All placement is one
``affine_grid``/``grid_sample`` per object slot for the whole batch: the target gets a random
size, position and flip; clutter objects are smaller copies of other objects placed
anywhere, behind the target, or in front of it as occluders when enough of the target stays
visible. The sampled mask doubles as the alpha of a premultiplied "over" composite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pyro_backpass.data.scenes import make_background

__all__ = ["AugmentConfig", "Composite", "mask_extent", "random_backgrounds", "place", "compose"]


@dataclass(frozen=True)
class AugmentConfig:
    """How scenes are composed around a target object.

    :param float p_background: chance of a non-black background (plain, gradient or textured).
    :param float p_clutter: chance of any clutter.
    :param int min_clutter: clutter objects when there is clutter, at least ...
    :param int max_clutter: ... and at most.
    :param float p_occlude: chance that a clutter object goes in front of the target.
    :param float min_visible: an occluder is moved behind the target if less than this fraction stays visible.
    :param tuple target_extent: range of the target's longer side, as a fraction of the image side.
    :param tuple clutter_extent: the same for a clutter object ...
    :param float clutter_max_ratio: ... which is also at most this fraction of the target's, so the
        target stays the main object and its label is not ambiguous.
    :param float p_flip: chance of a horizontal flip of the target.
    :param float gain: per-channel colour gain drawn in ``[1 - gain, 1 + gain]`` (keeps black black).
    """

    p_background: float = 0.7
    p_clutter: float = 0.7
    min_clutter: int = 1
    max_clutter: int = 3
    p_occlude: float = 0.3
    min_visible: float = 0.65
    target_extent: tuple[float, float] = (0.45, 0.95)
    clutter_extent: tuple[float, float] = (0.2, 0.5)
    clutter_max_ratio: float = 0.75
    p_flip: float = 0.5
    gain: float = 0.25


@dataclass
class Composite:
    """A batch of composed scenes.

    :ivar scene: ``(B, 3, S, S)`` the full scene in ``[0, 1]``.
    :ivar object: ``(B, 3, S, S)`` the visible part of the target alone, on black.
    :ivar mask: ``(B, S, S)`` float in ``[0, 1]``: the target's visible alpha.
    """

    scene: torch.Tensor
    object: torch.Tensor
    mask: torch.Tensor


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def mask_extent(masks: torch.Tensor) -> torch.Tensor:
    """Longer side of each mask's bounding box as a fraction of the image side: ``(B, S, S)`` -> ``(B,)``."""
    S = masks.shape[-1]
    idx = torch.arange(S)
    sides = []
    for any_along in (masks.any(dim=2), masks.any(dim=1)):  # rows, then columns
        hi = torch.where(any_along, idx, -1).amax(dim=1)
        lo = torch.where(any_along, idx, S).amin(dim=1)
        sides.append((hi - lo + 1).clamp_min(1))
    return torch.maximum(*sides).float() / S


def random_backgrounds(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, 3, size, size)`` backgrounds, a third each plain, linear gradient and texture."""
    kind = torch.randint(0, 3, (n,), generator=gen)
    c1 = 0.8 * torch.rand(n, 3, 1, 1, generator=gen)
    c2 = 0.8 * torch.rand(n, 3, 1, 1, generator=gen)
    theta = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
    lin = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    ramp = ((torch.cos(theta) * xx + torch.sin(theta) * yy) / math.sqrt(2) + 1) / 2  # (n, S, S) in [0, 1]
    gradient = c1 + (c2 - c1) * ramp.unsqueeze(1)
    # Texture: two octaves of smooth noise around a base colour; cheap, and unlike the objects.
    coarse = F.interpolate(torch.rand(n, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear",
                           align_corners=False)
    fine = F.interpolate(torch.rand(n, 3, 16, 16, generator=gen), size=(size, size), mode="bilinear",
                         align_corners=False)
    texture = (0.6 * c1 + 0.35 * coarse + 0.2 * (fine - 0.5)).clamp(0, 1)
    # Half the textured ones are the scene generator's own patterns (noise, stripes, checkers), so the
    # classifier sees at training time the kind of background the clutter test scenes have.
    for i in (kind == 2).nonzero().flatten()[::2].tolist():
        texture[i] = make_background("textured", size, gen)
    plain = c1.expand(n, 3, size, size)
    k = kind.view(n, 1, 1, 1)
    return torch.where(k == 0, plain, torch.where(k == 1, gradient, texture))


def place(images: torch.Tensor, masks: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
          flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, shift and flip premultiplied objects about the image centre.

    :param images: ``(B, 3, S, S)`` objects on black.
    :param masks: ``(B, S, S)`` their masks (bool or float).
    :param scale: ``(B,)`` size factors (1 keeps the size).
    :param shift: ``(B, 2)`` ``(x, y)`` shifts in half-image widths.
    :param flip: ``(B,)`` bool, mirror left-right.
    :returns: ``(images (B, 3, S, S), alpha (B, S, S))``.
    """
    B = images.shape[0]
    sx = 1.0 / scale
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = 1.0 / scale
    # Output pixel p samples input at A p + t; an object shifted by s needs t = -A s.
    theta[:, 0, 2] = -sx * shift[:, 0]
    theta[:, 1, 2] = -shift[:, 1] / scale
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    stacked = torch.cat([images, masks.to(images.dtype).unsqueeze(1)], dim=1)
    out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :3], out[:, 3].clamp(0, 1)


def compose(targets: torch.Tensor, target_masks: torch.Tensor, pool_images: torch.Tensor,
            pool_masks: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
            jitter: bool = True) -> Composite:
    """Compose one scene per target: background, clutter behind, the target, occluders in front.

    :param targets: ``(B, 3, S, S)`` float targets on black; ``target_masks`` ``(B, S, S)``.
    :param pool_images: ``(P, 3, S, S)`` (float or uint8) objects to draw clutter from; ``pool_masks`` ``(P, S, S)``.
    :param bool jitter: apply the flip and colour gain (off for evaluation scenes).
    """
    B, _, S, _ = targets.shape
    flip = (torch.rand(B, generator=gen) < cfg.p_flip) if jitter else None
    extent = _uniform(B, *cfg.target_extent, gen)
    scale = extent / mask_extent(target_masks)
    # Anywhere that keeps a centred object of this extent inside the frame.
    shift = (2 * torch.rand(B, 2, generator=gen) - 1) * (1 - extent).unsqueeze(1)
    obj, alpha = place(targets, target_masks, scale, shift, flip)

    has_bg = torch.rand(B, generator=gen) < cfg.p_background
    scene = torch.where(has_bg.view(B, 1, 1, 1), random_backgrounds(B, S, gen), torch.zeros(B, 3, S, S))
    n_clutter = torch.randint(cfg.min_clutter, cfg.max_clutter + 1, (B,), generator=gen)
    n_clutter = torch.where(torch.rand(B, generator=gen) < cfg.p_clutter, n_clutter, torch.zeros_like(n_clutter))
    front = torch.zeros(B, 3, S, S)  # premultiplied occluder layer over the target
    front_alpha = torch.zeros(B, S, S)
    area = alpha.sum(dim=(1, 2)).clamp_min(1.0)
    for k in range(cfg.max_clutter):
        idx = torch.randint(0, pool_images.shape[0], (B,), generator=gen)
        c_img = pool_images[idx]
        c_img = c_img.float() / 255 if c_img.dtype == torch.uint8 else c_img
        c_extent = torch.minimum(_uniform(B, *cfg.clutter_extent, gen), cfg.clutter_max_ratio * extent)
        c_scale = c_extent / mask_extent(pool_masks[idx])
        c_shift = (2 * torch.rand(B, 2, generator=gen) - 1) * 0.8
        c_obj, c_alpha = place(c_img, pool_masks[idx], c_scale, c_shift, torch.rand(B, generator=gen) < 0.5)
        active = (k < n_clutter).view(B, 1, 1)
        want_front = torch.rand(B, generator=gen) < cfg.p_occlude
        new_front_alpha = 1 - (1 - front_alpha) * (1 - c_alpha)
        visible = (alpha * (1 - new_front_alpha)).sum(dim=(1, 2)) / area
        in_front = (want_front & (visible >= cfg.min_visible)).view(B, 1, 1) & active
        behind = active & ~in_front
        # Behind the target: composite onto the background now. In front: onto the occluder layer.
        scene = torch.where(behind.unsqueeze(1), c_obj + (1 - c_alpha.unsqueeze(1)) * scene, scene)
        front = torch.where(in_front.unsqueeze(1), c_obj + (1 - c_alpha.unsqueeze(1)) * front, front)
        front_alpha = torch.where(in_front, new_front_alpha, front_alpha)
    scene = obj + (1 - alpha.unsqueeze(1)) * scene
    scene = front + (1 - front_alpha.unsqueeze(1)) * scene
    vis = alpha * (1 - front_alpha)
    obj_visible = obj * (1 - front_alpha.unsqueeze(1))
    if jitter and cfg.gain > 0:
        g = 1 + cfg.gain * (2 * torch.rand(B, 3, 1, 1, generator=gen) - 1)
        scene, obj_visible = scene * g, obj_visible * g
    return Composite(scene.clamp(0, 1), obj_visible.clamp(0, 1), vis)
