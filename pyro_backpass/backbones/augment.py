"""Batched training augmentation: backgrounds, clutter, occluders, flips and colour gain.

Objects are rendered once on black (premultiplied: the image is zero outside the mask) and
composited here per batch, so every epoch sees new scenes at the cost of a few tensor ops.
Everything draws from an explicit ``torch.Generator``, so a batch is a function of its seed.

Sizes are set by each mask's bounding box (renders vary in scale). Each object is cropped to its
box and resized with antialiasing, as the test scenes are (:func:`place`): the target gets a
random size, position and flip; clutter objects are smaller objects placed anywhere in the
frame, behind the target, or in front of it as occluders when enough of the target stays
visible. The resized mask doubles as the alpha of a premultiplied "over" composite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pyro_backpass.backbones.backgrounds import BackgroundBank, random_backgrounds

__all__ = ["AugmentConfig", "Composite", "mask_boxes", "random_backgrounds", "place", "other_category_indices",
           "compose"]


@dataclass(frozen=True)
class AugmentConfig:
    """How scenes are composed around a target object.

    The defaults follow the clutter test scenes of :mod:`~pyro_backpass.backbones.data` (one
    object among three smaller ones of other categories, each in front of it with chance 1/2 as
    long as 60% of it stays visible, on the scene generator's backgrounds), widened so that the
    objects alone on black of the test split are in the distribution too.

    :param float p_background: chance of a non-black background (plain, gradient or textured).
    :param float p_clutter: chance of any clutter.
    :param int min_clutter: clutter objects when there is clutter, at least ...
    :param int max_clutter: ... and at most.
    :param float p_occlude: chance that a clutter object goes in front of the target.
    :param float min_visible: an occluder is moved behind the target if less than this fraction stays visible.
    :param tuple target_extent: range of the target's longer side, as a fraction of the image side.
    :param tuple clutter_extent: the same for a clutter object ...
    :param float clutter_max_ratio: ... which is also at most this fraction of the target's, so the
        target stays the largest object and its label is not ambiguous (test scenes: up to 0.5 / 0.55).
    :param float p_flip: chance of a horizontal flip of the target.
    :param float gain: per-channel colour gain drawn in ``[1 - gain, 1 + gain]`` (keeps black black).
    """

    p_background: float = 0.7
    p_clutter: float = 0.7
    min_clutter: int = 1
    max_clutter: int = 3
    p_occlude: float = 0.5
    min_visible: float = 0.6
    target_extent: tuple[float, float] = (0.45, 0.95)
    clutter_extent: tuple[float, float] = (0.2, 0.5)
    clutter_max_ratio: float = 0.9
    p_flip: float = 0.5
    gain: float = 0.25

    def __post_init__(self):
        for name in ("p_background", "p_clutter", "p_occlude", "min_visible", "p_flip", "gain"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"AugmentConfig.{name}: expected a value in [0, 1], got {getattr(self, name)!r}")
        if not 0 <= self.min_clutter <= self.max_clutter:
            raise ValueError(f"AugmentConfig: expected 0 <= min_clutter <= max_clutter, "
                             f"got {self.min_clutter!r}, {self.max_clutter!r}")
        for name in ("target_extent", "clutter_extent"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"AugmentConfig.{name}: expected 0 < low <= high <= 1, got {(lo, hi)!r}")


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


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes ``(B, 4)`` long ``(y0, y1, x0, x1)`` (exclusive ends) of ``masks > 0`` ``(B, S, S)``;
    the whole frame for an empty mask."""
    S = masks.shape[-1]
    idx = torch.arange(S)
    out = []
    for any_along in ((masks > 0).any(dim=2), (masks > 0).any(dim=1)):  # rows, then columns
        lo = torch.where(any_along, idx, S).amin(dim=1)
        hi = torch.where(any_along, idx, -1).amax(dim=1) + 1
        empty = hi <= lo
        out += [torch.where(empty, 0, lo), torch.where(empty, S, hi)]
    return torch.stack(out, dim=1)


def place(images: torch.Tensor, masks: torch.Tensor, side: torch.Tensor, position: torch.Tensor,
          flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop premultiplied objects to their masks' boxes, resize, flip and paste them into empty frames.

    The resize is antialiased bilinear, as in :func:`~pyro_backpass.data.scenes.place_object`,
    which builds the test scenes: a net trained on aliased (plain bilinear) shrinking was measured
    8 points less accurate on antialiased composites than on aliased ones (0.65 vs 0.73).

    :param images: ``(B, 3, S, S)`` objects on black (float in ``[0, 1]`` or uint8).
    :param masks: ``(B, S, S)`` their masks (bool, or float alphas).
    :param side: ``(B,)`` longer side of each placed object in pixels (``2..S``).
    :param position: ``(B, 2)`` in ``[0, 1)``: ``(y, x)`` of the top-left corner as a fraction of
        the free room, so the object stays inside the frame.
    :param flip: ``(B,)`` bool, mirror left-right.
    :returns: ``(colour (B, 3, S, S) premultiplied, alpha (B, S, S))``, float.
    """
    B, _, S, _ = images.shape
    colour, alpha = torch.zeros(B, 3, S, S), torch.zeros(B, S, S)
    boxes = mask_boxes(masks).tolist()
    sides = side.clamp(2, S).tolist()
    pos = position.tolist()
    flips = flip.tolist() if flip is not None else [False] * B
    for b, ((y0, y1, x0, x1), n, (py, px), fl) in enumerate(zip(boxes, sides, pos, flips)):
        crop = torch.cat([images[b, :, y0:y1, x0:x1].float(), masks[b, None, y0:y1, x0:x1].float()])
        if images.dtype == torch.uint8:
            crop[:3] /= 255
        f = n / max(y1 - y0, x1 - x0)
        h, w = max(1, round((y1 - y0) * f)), max(1, round((x1 - x0) * f))
        crop = F.interpolate(crop[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
        if fl:
            crop = crop.flip(-1)
        y, x = int(py * (S - h + 1)), int(px * (S - w + 1))
        colour[b, :, y:y + h, x:x + w] = crop[:3]
        alpha[b, y:y + h, x:x + w] = crop[3]
    return colour.clamp_(0, 1), alpha.clamp_(0, 1)


def other_category_indices(pool_categories: torch.Tensor, target_categories: torch.Tensor,
                           gen: torch.Generator) -> torch.Tensor:
    """For each target, a random pool item of another category (uniform over the other categories present).

    :param pool_categories: ``(P,)`` category of each pool item.
    :param target_categories: ``(B,)`` category of each target.
    :returns: ``(B,)`` indices into the pool; a target whose category is the only one in the pool
        gets any item.
    """
    present, counts = torch.unique(pool_categories, return_counts=True)  # sorted
    order = torch.argsort(pool_categories, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    B, a = target_categories.shape[0], present.shape[0]
    pos = torch.searchsorted(present, target_categories).clamp(max=a - 1)
    own = (present[pos] == target_categories) & (a > 1)  # skip the target's own category
    r = (torch.rand(B, generator=gen) * (a - own.long())).long()
    r = r + (own & (r >= pos)).long()
    j = starts[r] + (torch.rand(B, generator=gen) * counts[r]).long().clamp(max=counts[r] - 1)
    return order[j]


def compose(targets: torch.Tensor, target_masks: torch.Tensor, pool_images: torch.Tensor,
            pool_masks: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, jitter: bool = True,
            target_categories: torch.Tensor | None = None, pool_categories: torch.Tensor | None = None,
            backgrounds: BackgroundBank | None = None) -> Composite:
    """Compose one scene per target: background, clutter behind, the target, occluders in front.

    :param targets: ``(B, 3, S, S)`` float targets on black; ``target_masks`` ``(B, S, S)``.
    :param pool_images: ``(P, 3, S, S)`` (float or uint8) objects to draw clutter from; ``pool_masks`` ``(P, S, S)``.
    :param bool jitter: apply the flip and colour gain (off for evaluation scenes).
    :param target_categories: ``(B,)`` and ``pool_categories`` ``(P,)``: when both are given, clutter
        is drawn from the other categories only, as in the clutter test scenes.
    :param BackgroundBank backgrounds: where backgrounds come from (default: drawn afresh,
        :func:`random_backgrounds`).
    """
    B, _, S, _ = targets.shape
    flip = (torch.rand(B, generator=gen) < cfg.p_flip) if jitter else None
    extent = _uniform(B, *cfg.target_extent, gen)
    obj, alpha = place(targets, target_masks, (extent * S).round().long(), torch.rand(B, 2, generator=gen), flip)

    has_bg = torch.rand(B, generator=gen) < cfg.p_background
    bg = backgrounds.sample(B, gen) if backgrounds is not None else random_backgrounds(B, S, gen)
    scene = torch.where(has_bg.view(B, 1, 1, 1), bg, torch.zeros(()))
    n_clutter = torch.randint(cfg.min_clutter, cfg.max_clutter + 1, (B,), generator=gen)
    n_clutter = torch.where(torch.rand(B, generator=gen) < cfg.p_clutter, n_clutter, torch.zeros_like(n_clutter))
    front = torch.zeros(B, 3, S, S)  # premultiplied occluder layer over the target
    front_alpha = torch.zeros(B, S, S)
    area = alpha.sum(dim=(1, 2)).clamp_min(1.0)
    by_category = target_categories is not None and pool_categories is not None
    for k in range(int(n_clutter.max()) if B else 0):
        if by_category:
            idx = other_category_indices(pool_categories, target_categories, gen)
        else:
            idx = torch.randint(0, pool_images.shape[0], (B,), generator=gen)
        c_extent = torch.minimum(_uniform(B, *cfg.clutter_extent, gen), cfg.clutter_max_ratio * extent)
        c_obj, c_alpha = place(pool_images[idx], pool_masks[idx], (c_extent * S).round().long(),
                               torch.rand(B, 2, generator=gen), torch.rand(B, generator=gen) < 0.5)
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
