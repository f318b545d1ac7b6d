"""The feature-compositionality study of the paper's supplement (Figs. 7-8), for a SmallVGG backbone.

**The sequence** (:func:`build_sequence`). A held-out airplane sits at a fixed place on a black (or
plain) background; a distractor object (a mug, like the paper's cup) slides in from the left,
a few pixels per frame, from just outside the frame (frame 0 is the clean plane) to the position
where it covers the plane's mask best (the last frame). Both are drawn as in the scene generator
(:func:`~pyro_backpass.data.scenes.place_object`, alpha compositing, distractor in front).
The distractor's row is centred on the plane's mask; its end position is the first leftmost
column with the highest coverage, and the coverage reached is reported (``overlap_fraction`` of
the last frame), since "completely occludes" depends on the two silhouettes.

**The measures** (:func:`measure_sequence`), per frame ``t``:

* the classifier's pre-softmax logits of ``airplane`` and of the distractor's category (Fig. 7);
* for every conv and pool layer, the relative change of the plane's activations,
  ``||M ⊙ (A_t − A_0)|| / ||M ⊙ A_0||``, with ``M`` the plane's mask area-downsampled to the
  layer (as in :func:`~pyro_backpass.backbones.compositional.compositionality_error`);
* at ``config.layer`` (the top conv), Fig. 8's picture: ``|A_t − A_0| ⊙ M``, channels split at
  random (seeded) into 3 groups, max over each group as R, G, B, divided by one scale for all
  frames so that intensities compare across frames. The scale is the 99th percentile of the
  in-mask values over all frames (clipped above), not their maximum: a single peak cell would
  otherwise leave every other map near black.

**Summary.** ``half_drop_frame``: first frame whose airplane logit has fallen half of the way from
the clean frame's to the last frame's (``None`` if it does not fall). ``prediction_flip_frame``:
first frame where airplane is no longer the top class (``None`` if it stays on top, or is not on
top at frame 0). ``touch_frame``: first frame where the distractor's mask overlaps the plane's
(pixels); ``touch_frame_layer``: the same on ``config.layer``'s grid (a cell holds both);
``gap_at_half_drop_px``: how far apart (in columns) they still were at the half drop. The paper's
observation is ``half_drop_frame < touch_frame``; ``change_before_touch_ratio`` compares the last
separate frame's relative change with the fully occluded one's (Fig. 8: "similar magnitude").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyro_backpass.backbones.compositional import downsample_mask
from pyro_backpass.backbones.small_vgg import SmallVGG
from pyro_backpass.data.categories import CATEGORIES, category_index
from pyro_backpass.data.config import SPLITS
from pyro_backpass.data.datasets import object_seed
from pyro_backpass.data.objects import render_object
from pyro_backpass.data.scenes import make_background, place_object

__all__ = ["CompositionalityConfig", "build_sequence", "measure_sequence", "key_frames", "run_study"]


@dataclass(frozen=True)
class CompositionalityConfig:
    """The synthetic sequence and what is measured on it.

    :param int frames: frames of the sequence (frame 0: the clean plane).
    :param str distractor: category of the sliding object (any but ``airplane``).
    :param str background: ``black`` or ``plain`` (one random colour, from ``seed``).
    :param float plane_scale: the plane's longer side, as a fraction of the image side.
    :param float distractor_scale: the same for the distractor (larger, so it can cover the plane).
    :param float plane_x: centre column of the plane's box, as a fraction of the side.
    :param float plane_y: centre row of the plane's box, as a fraction of the side.
    :param str split: split the objects come from (held-out ``test`` by default).
    :param int plane_index: which object of the split is the plane.
    :param int distractor_index: which clutter object of the split is the distractor.
    :param str layer: layer of the change maps (the backbone's top conv).
    :param int seed: seed of the objects' split, the background colour and the channel split.
    """

    frames: int = 24
    distractor: str = "mug"
    background: str = "black"
    plane_scale: float = 0.45
    distractor_scale: float = 0.75
    plane_x: float = 0.72
    plane_y: float = 0.5
    split: str = "test"
    plane_index: int = 0
    distractor_index: int = 0
    layer: str = "conv3_2"
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.frames, int) or self.frames < 2:
            raise ValueError(f"frames: expected an int >= 2, got {self.frames!r}")
        if self.distractor not in CATEGORIES or self.distractor == "airplane":
            raise ValueError(f"distractor: expected one of {[c for c in CATEGORIES if c != 'airplane']}, "
                             f"got {self.distractor!r}")
        if self.background not in ("black", "plain"):
            raise ValueError(f"background: expected 'black' or 'plain', got {self.background!r}")
        for name in ("plane_scale", "distractor_scale"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}: expected a fraction in (0, 1], got {getattr(self, name)!r}")
        for name in ("plane_x", "plane_y"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {getattr(self, name)!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {self.split!r}")
        for name in ("plane_index", "distractor_index"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected an index >= 0, got {getattr(self, name)!r}")


def _paste(layer: torch.Tensor, y: int, x: int, size: int) -> torch.Tensor:
    """``layer`` ``(C, h, w)`` at top-left ``(y, x)`` of a zero ``(C, size, size)`` canvas, clipped at the edges."""
    canvas = layer.new_zeros((layer.shape[0], size, size))
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + layer.shape[1], size), min(x + layer.shape[2], size)
    if y1 > y0 and x1 > x0:
        canvas[:, y0:y1, x0:x1] = layer[:, y0 - y:y1 - y, x0 - x:x1 - x]
    return canvas


def build_sequence(config: CompositionalityConfig, size: int) -> dict[str, torch.Tensor]:
    """The frames of the sliding-distractor sequence.

    :param int size: image side ``S`` (the backbone's input size).
    :returns: ``frames`` float ``(T, 3, S, S)`` in ``[0, 1]``; ``clean`` ``(3, S, S)`` the plane
        alone on the background (equal to frame 0); ``plane_mask`` bool ``(S, S)``;
        ``distractor_masks`` bool ``(T, S, S)``; ``x`` long ``(T,)`` the distractor's left column;
        ``overlap_fraction`` float ``(T,)`` of the plane's mask under the distractor; ``gap`` long
        ``(T,)`` columns from the distractor's right edge to the plane's leftmost pixel (negative
        once they overlap in x).
    """
    c, S = config, int(size)
    plane = render_object("airplane", object_seed(c.split, c.seed, c.plane_index), S)
    dist = render_object(c.distractor, object_seed(c.split, c.seed, c.distractor_index, namespace="clutter"), S)
    p_col, p_alpha = place_object(plane.image.float(), plane.mask, max(2, round(c.plane_scale * S)))
    d_col, d_alpha = place_object(dist.image.float(), dist.mask, max(2, round(c.distractor_scale * S)))
    ph, pw = p_alpha.shape
    py = min(max(round(c.plane_y * S - ph / 2), 0), S - ph)
    px = min(max(round(c.plane_x * S - pw / 2), 0), S - pw)
    if c.background == "black":
        background = torch.zeros(3, S, S)
    else:
        background = make_background("plain", S, torch.Generator().manual_seed(c.seed))
    alpha = _paste(p_alpha[None], py, px, S)
    clean = background * (1 - alpha) + _paste(p_col, py, px, S)
    plane_mask = alpha[0] >= 0.5

    dh, dw = d_alpha.shape
    rows = torch.nonzero(plane_mask.any(1)).flatten().float()
    cy = float(rows.mean()) if rows.numel() else S / 2
    dy = min(max(round(cy - dh / 2), 0), max(S - dh, 0))
    # Coverage of the plane for every left column the distractor can take on its row.
    cand = torch.arange(-dw, S)
    d_masks = torch.stack([_paste(d_alpha[None], dy, int(x), S)[0] >= 0.5 for x in cand])
    area = plane_mask.sum().clamp(min=1)
    cover = (d_masks & plane_mask).sum((1, 2)) / area
    x_end = int(cand[int(torch.nonzero(cover >= cover.max() - 1e-6)[0])])
    xs = torch.linspace(-dw, x_end, c.frames).round().long()
    frames, masks = [], []
    for x in xs.tolist():
        a = _paste(d_alpha[None], dy, x, S)
        frames.append(clean * (1 - a) + _paste(d_col, dy, x, S))
        masks.append(a[0] >= 0.5)
    masks = torch.stack(masks)
    d_right = int(torch.nonzero((d_alpha >= 0.5).any(0)).max()) + 1 if bool((d_alpha >= 0.5).any()) else dw
    p_left = int(torch.nonzero(plane_mask.any(0)).min()) if bool(plane_mask.any()) else S
    return {"frames": torch.stack(frames).clamp(0, 1), "clean": clean.clamp(0, 1), "plane_mask": plane_mask,
            "distractor_masks": masks, "x": xs, "gap": p_left - (xs + d_right),
            "overlap_fraction": (masks & plane_mask).sum((1, 2)) / area}


def _first(flags: torch.Tensor) -> int | None:
    idx = torch.nonzero(flags).flatten()
    return int(idx[0]) if idx.numel() else None


@torch.no_grad()
def measure_sequence(backbone: SmallVGG, sequence: dict[str, torch.Tensor],
                     config: CompositionalityConfig) -> dict:
    """Scores and activation changes of every frame (see the module docstring).

    :param SmallVGG backbone: the classifier (run in eval mode, restored afterwards).
    :param sequence: the output of :func:`build_sequence` at ``backbone.input_size``.
    :returns: ``change_rgb`` float ``(T, 3, h, w)`` in ``[0, 1]`` (Fig. 8's maps at ``config.layer``),
        ``logits`` ``(T, n_classes)`` and ``metrics``, a JSON-ready dict of per-frame lists and the summary.
    """
    if not isinstance(backbone, SmallVGG):
        raise TypeError(f"backbone: expected a SmallVGG (with a classifier head), got {type(backbone).__name__}")
    names = backbone.layer_names()[1:]
    if config.layer not in names:
        raise ValueError(f"layer: expected a layer of the backbone, one of {names}, got {config.layer!r}")
    frames, plane_mask = sequence["frames"], sequence["plane_mask"]
    T = frames.shape[0]
    was_training = backbone.training
    backbone.eval()
    try:
        acts = backbone.activations(torch.cat([sequence["clean"][None], frames]).float(), layers=names)
        logits = backbone.logits_from_top(acts[-1])[1:]
    finally:
        backbone.train(was_training)
    rel = {}
    for name, a in zip(names, acts):
        m = downsample_mask(plane_mask[None], tuple(a.shape[-2:]))
        num = (m * (a[1:] - a[:1])).flatten(1).norm(dim=1)
        rel[name] = num / (m * a[:1]).flatten(1).norm(dim=1).clamp(min=1e-8)
    a = acts[names.index(config.layer)]
    m = downsample_mask(plane_mask[None], tuple(a.shape[-2:]))
    diff = (a[1:] - a[:1]).abs() * m  # (T, C, h, w)
    perm = torch.randperm(a.shape[1], generator=torch.Generator().manual_seed(config.seed))
    rgb = torch.stack([diff[:, g].amax(1) for g in perm.tensor_split(3)], 1)
    inside = rgb[..., m[0, 0] > 0]  # (T, 3, cells in the mask)
    scale = torch.quantile(inside.flatten(), 0.99) if inside.numel() else rgb.max()
    scale = scale.clamp(min=1e-12)
    rgb = (rgb / scale).clamp(0, 1)

    plane_score = logits[:, category_index("airplane")]
    dist_score = logits[:, category_index(config.distractor)]
    s0, s_end = float(plane_score[0]), float(plane_score[-1])
    half = _first(plane_score <= s0 - 0.5 * (s0 - s_end)) if s_end < s0 else None
    touch = _first(sequence["overlap_fraction"] > 0)
    cells_d = downsample_mask(sequence["distractor_masks"], tuple(a.shape[-2:]))[:, 0] > 0
    touch_layer = _first((cells_d & (m[0, 0] > 0)).flatten(1).any(1))
    change = rel[config.layer]
    before = touch - 1 if touch is not None and touch > 0 else None
    probs = logits.softmax(1)
    top1 = logits.argmax(1) == category_index("airplane")
    summary = {
        "airplane_logit_clean": s0, "airplane_logit_last": s_end, "half_drop_frame": half,
        "touch_frame": touch, "touch_frame_layer": touch_layer,
        "half_drop_before_touch": (half < touch) if half is not None and touch is not None else None,
        "half_drop_before_touch_layer": (half < touch_layer) if half is not None and touch_layer is not None else None,
        "gap_at_half_drop_px": int(sequence["gap"][half]) if half is not None else None,
        "final_overlap_fraction": float(sequence["overlap_fraction"][-1]),
        "change_half_frame": _first(change >= 0.5 * change[-1]),
        "change_last_separate": float(change[before]) if before is not None else None,
        "change_last": float(change[-1]),
        "change_before_touch_ratio": float(change[before] / change[-1].clamp(min=1e-12)) if before is not None
        else None,
        "change_map_scale": float(scale),
        "airplane_top1_clean": bool(top1[0]),
        "prediction_flip_frame": _first(~top1) if bool(top1[0]) else None,
    }
    per_frame = {
        "distractor_x": sequence["x"].tolist(), "gap_px": sequence["gap"].tolist(),
        "overlap_fraction": sequence["overlap_fraction"].tolist(),
        "airplane_logit": plane_score.tolist(), f"{config.distractor}_logit": dist_score.tolist(),
        "airplane_prob": probs[:, category_index("airplane")].tolist(),
        "predicted": [CATEGORIES[i] for i in logits.argmax(1).tolist()],
        "relative_change": change.tolist(),
        "relative_change_by_layer": {n: r.tolist() for n, r in rel.items()},
    }
    return {"change_rgb": rgb, "logits": logits,
            "metrics": {"frames": T, "layer": config.layer, "distractor": config.distractor,
                        "summary": summary, "per_frame": per_frame}}


def key_frames(summary: dict, frames: int) -> list[int]:
    """Fig. 7's marked frames: the first, the half-drop, the touching and the last (deduplicated, sorted)."""
    picks = [0, summary["half_drop_frame"], summary["touch_frame"], frames - 1]
    return sorted({p for p in picks if p is not None})


def run_study(backbone: SmallVGG, config: CompositionalityConfig | None = None) -> dict:
    """:func:`build_sequence` at the backbone's input size, then :func:`measure_sequence`.

    :returns: the sequence's tensors, ``change_rgb``, ``logits``, ``metrics`` and ``key_frames``.
    """
    config = config or CompositionalityConfig()
    sequence = build_sequence(config, backbone.input_size)
    result = {**sequence, **measure_sequence(backbone, sequence, config)}
    result["key_frames"] = key_frames(result["metrics"]["summary"], config.frames)
    result["metrics"]["summary"]["key_frames"] = result["key_frames"]
    return result
