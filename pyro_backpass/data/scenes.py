"""Cluttered scenes: held-out instances plus clutter on a background, with per-instance ground truth.

A scene is composed back to front. Every object (``n`` instances and ``m`` clutter objects) is
rendered alone on black, cropped to its mask's box, resized (bilinear, antialiased) so that its
longer side is a random fraction of the scene side, and placed at a random position inside the
frame. The drawing sequence is a random permutation, so clutter may lie behind or in front of
instances. Positions and the permutation are resampled (up to ``max_tries`` times) until every
instance keeps at least ``min_visible`` of its own area; if no try succeeds the best one is kept.
Pixels are alpha-composited, ``image = image * (1 - alpha) + colour * alpha``, with the object's
colour premultiplied (it is rendered on black) and alpha its resized mask; masks are
``alpha >= 0.5``.

The optional occluder, drawn last, covers ``occluder_cover`` of one chosen instance's full mask
(the completion task); that instance's unoccluded mask stays in ``full_masks``. The random draws
for the occluder come after all others, so scene ``j`` with and without occluder has the same
layout: the pair gives the visible-part baseline of completion IoU.

Instances are objects of the data set's split (by default the held-out test split): instance
``k`` of scene ``j`` is object ``(j * n_instances + k) % instance_pool`` of
``ObjectDataset(split, seed)``, so the default test scenes use exactly the 600 held-out airplanes.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pyro_backpass.data.cache import from_uint8, load_or_build, to_uint8
from pyro_backpass.data.config import BACKGROUNDS, SceneConfig, category_index
from pyro_backpass.data.datasets import generator_digest, object_seed, single_thread

__all__ = ["BACKGROUNDS", "SceneConfig", "SceneDataset", "make_background", "place_object", "compose_scene",
           "composite_object"]


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape or (1,), generator=g)


def _ramp(size: int, angle: torch.Tensor, freq: float | torch.Tensor = 1.0) -> torch.Tensor:
    """(S,S) coordinate along direction ``angle`` in units of the image side, times ``freq``."""
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return (xx * torch.cos(angle) + yy * torch.sin(angle)) * freq


def make_background(kind: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """A procedural background, float32 (3,S,S) in [0,1].

    ``plain``: one random colour. ``gradient``: a linear ramp between two colours at a random
    angle. ``textured``: a gradient overlaid with one to three patterns (smooth value noise,
    soft stripes, a rotated checker), each in its own random colour and opacity.
    """
    g = generator
    if kind == "mixed":
        kind = BACKGROUNDS[int(torch.randint(3, (1,), generator=g))]
    if kind not in BACKGROUNDS:
        raise ValueError(f"kind: expected one of {BACKGROUNDS}, got {kind!r}")

    def colour():
        return _uniform(g, 0.05, 0.95, 3, 1, 1)

    c0 = colour()
    if kind == "plain":
        return c0.expand(3, size, size).clone()
    t = _ramp(size, _uniform(g, 0, 2 * math.pi))
    t = (t - t.min()) / (t.max() - t.min())
    img = c0 * (1 - t) + colour() * t
    if kind == "gradient":
        return img
    n_patterns = int(torch.randint(1, 4, (1,), generator=g))
    for p in torch.randperm(3, generator=g)[:n_patterns].tolist():
        if p == 0:  # smooth value noise: a coarse random grid, bicubically upsampled
            r = int(torch.randint(3, 13, (1,), generator=g))
            pat = F.interpolate(torch.rand(1, 1, r, r, generator=g), size=(size, size), mode="bicubic",
                                align_corners=True)[0, 0].clamp(0, 1)
        elif p == 1:  # soft stripes
            pat = 0.5 + 0.5 * torch.sin(2 * math.pi * _ramp(size, _uniform(g, 0, math.pi), _uniform(g, 2, 10))
                                        + _uniform(g, 0, 2 * math.pi))
        else:  # rotated checker
            a, f = _uniform(g, 0, math.pi), _uniform(g, 2, 8)
            wave_u = torch.sin(2 * math.pi * _ramp(size, a, f))
            pat = (wave_u * torch.sin(2 * math.pi * _ramp(size, a + math.pi / 2, f)) > 0).float()
        w = _uniform(g, 0.3, 0.8)
        img = img * (1 - w * pat) + colour() * (w * pat)
    return img.clamp(0, 1)


def place_object(image: torch.Tensor, mask: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop an object rendered on black to its mask's box and resize it so its longer side is ``side``.

    :param image: float (3,H,W) object on black.
    :param mask: bool (H,W).
    :returns: ``(colour, alpha)``: premultiplied colour (3,h,w) and alpha (h,w) in [0,1], ``max(h,w) == side``.
    """
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:  # nothing rendered: keep the whole (empty) frame so shapes stay valid
        y0, y1, x0, x1 = 0, mask.shape[0], 0, mask.shape[1]
    else:
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    alpha = mask[y0:y1, x0:x1].float()
    crop = torch.cat([image[:, y0:y1, x0:x1] * alpha, alpha[None]])
    f = side / max(y1 - y0, x1 - x0)
    h, w = max(1, round((y1 - y0) * f)), max(1, round((x1 - x0) * f))
    out = F.interpolate(crop[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    out = out.clamp(0, 1)
    return out[:3], out[3]


def _paste(layer: torch.Tensor, y: int, x: int, size: int) -> torch.Tensor:
    canvas = layer.new_zeros((*layer.shape[:-2], size, size))
    canvas[..., y:y + layer.shape[-2], x:x + layer.shape[-1]] = layer
    return canvas


def _visible(full: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """Visible masks (L,S,S) of full masks (L,S,S) drawn in ``sequence`` (first = back-most)."""
    drawn = full[sequence]
    # Union of everything drawn later: reverse cumulative OR, shifted by one.
    later = drawn.flip(0).cumsum(0).flip(0) > 0
    later = torch.cat([later[1:], torch.zeros_like(later[:1])])
    vis = torch.empty_like(full)
    vis[sequence] = drawn & ~later
    return vis


def _occluder_mask(full: torch.Tensor, visible: torch.Tensor, target: int, cover: tuple[float, float],
                   g: torch.Generator, n_candidates: int = 96) -> torch.Tensor:
    """Choose among random ellipses and rotated rectangles one covering ``cover`` of ``full[target]``,
    preferring those that hide the least of the other instances. Returns bool (S,S)."""
    size = full.shape[-1]
    pts = torch.nonzero(full[target]).float()
    if pts.numel() == 0:
        return torch.zeros(size, size, dtype=torch.bool)
    centre = pts[torch.randint(len(pts), (n_candidates,), generator=g)]  # (T,2) y, x
    r = _uniform(g, 0.06, 0.3, n_candidates, 2) * size  # half-axes: local occluders, not walls
    a = _uniform(g, 0, math.pi, n_candidates)
    t = torch.arange(size, dtype=torch.float32)
    dy = t.view(1, -1, 1) - centre[:, 0].view(-1, 1, 1)
    dx = t.view(1, 1, -1) - centre[:, 1].view(-1, 1, 1)
    u = (dx * torch.cos(a).view(-1, 1, 1) + dy * torch.sin(a).view(-1, 1, 1)) / r[:, 0].view(-1, 1, 1)
    v = (-dx * torch.sin(a).view(-1, 1, 1) + dy * torch.cos(a).view(-1, 1, 1)) / r[:, 1].view(-1, 1, 1)
    is_rect = (torch.rand(n_candidates, generator=g) < 0.5).view(-1, 1, 1)
    cand = torch.where(is_rect, (u.abs() <= 1) & (v.abs() <= 1), u * u + v * v <= 1)  # (T,S,S)
    frac = (cand & full[target]).sum((1, 2)) / full[target].sum()
    others = torch.ones(full.shape[0], dtype=torch.bool)
    others[target] = False
    hidden = (cand[:, None] & visible[others][None]).sum((1, 2, 3)).float()
    ok = (frac >= cover[0]) & (frac <= cover[1])
    if bool(ok.any()):
        best = int(torch.where(ok, hidden, torch.inf).argmin())
    else:
        best = int((frac - 0.5 * (cover[0] + cover[1])).abs().argmin())
    return cand[best]


def _box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def compose_scene(config: SceneConfig, index: int, meshes=None, render=None) -> dict[str, torch.Tensor]:
    """Compose scene ``index`` of ``config`` (deterministic in both). ``n``/``m`` = instances/clutter.

    :param meshes: optional list of :class:`~pyro_backpass.data.mesh.Mesh`, used as the instances
        instead of procedural objects (instance ``p`` of the pool is ``meshes[p % len(meshes)]``).
    :param render: ``render(category, seed, size)`` returning an object with ``image`` (3,S,S) and
        ``mask`` (S,S); default ``render_object``.
    :returns: ``image`` float (3,S,S); ``masks`` bool (n,S,S) visible; ``full_masks`` bool (n,S,S)
        unoccluded; ``instance_images`` float (n,3,S,S) each instance alone on black at its place;
        ``categories`` long (n,); ``boxes`` float (n,4) ``x0,y0,x1,y1`` of the full masks (x1, y1
        exclusive); ``order`` long (n,) drawing rank among instances (0 = back-most); ``areas`` long
        (n,) visible pixels; ``brightness`` float (n,) mean RGB of the instance over its full mask;
        ``instance_seeds`` long (n,); ``clutter_masks`` bool (m,S,S) visible; ``clutter_categories``
        long (m,); ``occluded_index`` long () (-1 without occluder); ``occluder_mask`` bool (S,S).
    """
    if render is None:
        from pyro_backpass.data import render_object as render  # late: the package imports this module
    if meshes:
        from pyro_backpass.data import render_user_mesh
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"index: expected a scene index >= 0, got {index!r}")
    c, S = config, config.size
    g = torch.Generator().manual_seed(object_seed(c.split, c.seed, index, namespace="scene"))
    objs, cats, seeds = [], [], []
    for k in range(c.n_instances):
        p = (index * c.n_instances + k) % c.instance_pool
        seed = object_seed(c.split, c.seed, p)
        o = render_user_mesh(meshes[p % len(meshes)], seed, S) if meshes else render(c.instance_category, seed, S)
        objs.append(o)
        cats.append(category_index(c.instance_category))
        seeds.append(seed)
    for k in range(c.n_clutter):
        cat = c.clutter_categories[int(torch.randint(len(c.clutter_categories), (1,), generator=g))]
        o = render(cat, object_seed(c.split, c.seed, index * c.n_clutter + k, namespace="clutter"), S)
        objs.append(o)
        cats.append(category_index(cat))
    layers = []
    for k, o in enumerate(objs):
        lo, hi = c.instance_scale if k < c.n_instances else c.clutter_scale
        layers.append(place_object(o.image.float().cpu(), o.mask.cpu(), max(2, round(float(_uniform(g, lo, hi)) * S))))

    n, L = c.n_instances, len(layers)
    best = None
    for _ in range(c.max_tries):
        seq = torch.randperm(L, generator=g)
        pos = [(int(torch.randint(S - a.shape[0] + 1, (1,), generator=g)),
                int(torch.randint(S - a.shape[1] + 1, (1,), generator=g))) for _, a in layers]
        full = torch.stack([_paste(a, y, x, S) >= 0.5 for (_, a), (y, x) in zip(layers, pos)])
        vis = _visible(full, seq)
        frac = (vis[:n].sum((1, 2)) / full[:n].sum((1, 2)).clamp(min=1)).min()
        if best is None or frac > best[0]:
            best = (float(frac), seq, pos, full, vis)
        if frac >= c.min_visible:
            break
    _, seq, pos, full, vis = best

    image = make_background(c.background, S, g)
    colours = [_paste(col, y, x, S) for (col, _), (y, x) in zip(layers, pos)]
    for i in seq.tolist():
        alpha = _paste(layers[i][1], *pos[i], S)
        image = image * (1 - alpha) + colours[i]
    occluded_index, occ = -1, torch.zeros(S, S, dtype=torch.bool)
    if c.occluder:
        occluded_index = int(torch.randint(n, (1,), generator=g))
        occ = _occluder_mask(full[:n], vis[:n], occluded_index, c.occluder_cover, g)
        fill = make_background("textured" if bool(torch.rand(1, generator=g) < 0.5) else "plain", S, g)
        image = torch.where(occ, fill, image)
        vis = vis & ~occ
    inst = torch.stack(colours[:n])
    fm = full[:n]
    return {
        "image": image.clamp(0, 1), "masks": vis[:n], "full_masks": fm, "instance_images": inst,
        "categories": torch.tensor(cats[:n], dtype=torch.long), "boxes": torch.tensor([_box(m) for m in fm]),
        "order": torch.argsort(torch.argsort(torch.argsort(seq)[:n])),
        "areas": vis[:n].sum((1, 2)), "brightness": (inst.mean(1) * fm).sum((1, 2)) / fm.sum((1, 2)).clamp(min=1),
        "instance_seeds": torch.tensor(seeds, dtype=torch.long),
        "clutter_masks": vis[n:], "clutter_categories": torch.tensor(cats[n:], dtype=torch.long),
        "occluded_index": torch.tensor(occluded_index), "occluder_mask": occ,
    }


def composite_object(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, background: str = "mixed",
                     scale: tuple[float, float] = (0.5, 0.9), clutter=(),
                     clutter_scale: tuple[float, float] = (0.25, 0.5)) -> dict[str, torch.Tensor]:
    """Augmentation for training: one object on a random background, clutter behind it.

    :param image: float (3,S,S) object on black. :param mask: bool (S,S).
    :param clutter: ``(image, mask)`` pairs drawn behind the object, so the object stays whole.
    :returns: ``image`` (3,S,S) the scene; ``object`` (3,S,S) the object alone on black at its
        place; ``mask`` bool (S,S) its mask: a (scene, object-alone, mask) triple.
    """
    S, g = image.shape[-1], generator
    scene = make_background(background, S, g)
    for lo_hi, (img, m) in [(clutter_scale, c) for c in clutter] + [(scale, (image, mask))]:
        col, alpha = place_object(img.float(), m, max(2, round(float(_uniform(g, *lo_hi)) * S)))
        y = int(torch.randint(S - alpha.shape[0] + 1, (1,), generator=g))
        x = int(torch.randint(S - alpha.shape[1] + 1, (1,), generator=g))
        col, alpha = _paste(col, y, x, S), _paste(alpha, y, x, S)
        scene = scene * (1 - alpha) + col
    return {"image": scene.clamp(0, 1), "object": col, "mask": alpha >= 0.5}


def _mesh_digest(meshes) -> str:
    h = hashlib.sha256()
    for m in meshes:
        h.update(np.ascontiguousarray(m.vertices).tobytes())
        h.update(np.ascontiguousarray(m.faces).tobytes())
    return h.hexdigest()


_UINT8_KEYS = ("image", "instance_images")


class SceneDataset(Dataset):
    """Scenes of :func:`compose_scene`, cached on disk by config (images held as uint8).

    Items carry the keys of :func:`compose_scene` (float images in [0,1]); ``occluded_index`` and
    ``occluder_mask`` only when ``config.occluder``.

    :param SceneConfig config: what to compose.
    :param bool cache: read/write the disk cache.
    :param bool progress: show a progress bar while composing.
    :param instance_meshes: meshes to use as instances (overrides ``config.mesh_dir``); part of the cache key.
    :param render: as in :func:`compose_scene`; a custom one is part of the cache key by name only.
    """

    def __init__(self, config: SceneConfig | None = None, cache: bool = True, progress: bool = True,
                 instance_meshes=None, render=None):
        self.config = config = config if config is not None else SceneConfig()
        if not isinstance(config, SceneConfig):
            raise TypeError(f"config: expected a SceneConfig, got {type(config).__name__}")
        meshes = list(instance_meshes) if instance_meshes is not None else None
        if meshes is None and config.mesh_dir:
            from pyro_backpass.data import load_mesh

            folder = Path(config.mesh_dir).expanduser()
            if not folder.is_dir():
                raise ValueError(f"mesh_dir: expected an existing folder of meshes, got {config.mesh_dir!r}")
            paths = sorted(p for p in folder.iterdir()
                           if p.suffix.lower() in (".obj", ".ply", ".stl", ".off", ".glb", ".gltf"))
            if not paths:
                raise ValueError(f"mesh_dir: expected a folder with mesh files, got none in {config.mesh_dir!r}")
            meshes = [load_mesh(p) for p in paths]
        if meshes is not None and not meshes:
            raise ValueError("instance_meshes: expected at least one mesh, got an empty list")
        self.meshes = meshes
        extra = {"code": generator_digest(__name__), "meshes": _mesh_digest(meshes) if meshes else None,
                 "render": None if render is None else f"{render.__module__}.{render.__qualname__}"}

        def build():
            with single_thread():
                items = [compose_scene(config, j, meshes, render)
                         for j in tqdm(range(config.n), desc="composing scenes", disable=not progress)]
            names = [k for k in items[0] if config.occluder or k not in ("occluded_index", "occluder_mask")]
            tensors = {k: torch.stack([it[k] for it in items]) for k in names}
            for k in _UINT8_KEYS:
                tensors[k] = to_uint8(tensors[k])
            return tensors, {"n_scenes": config.n, "keys": names}

        tensors, meta = load_or_build("scenes", config, build, cache=cache, extra=extra)
        # safetensors stores keys sorted; keep compose_scene's order for readable items.
        self._tensors = {k: tensors[k] for k in meta["keys"]}

    def __len__(self) -> int:
        return self._tensors["image"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a SceneDataset of {len(self)} scenes")
        return {k: from_uint8(v[i]) if k in _UINT8_KEYS else v[i] for k, v in self._tensors.items()}

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """All scenes stacked along a leading (N,) dim; ``image``/``instance_images`` as uint8."""
        return dict(self._tensors)
