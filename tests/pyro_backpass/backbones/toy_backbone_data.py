"""Tiny synthetic stand-in for the rendered data: coloured shapes on black, one shape per class."""

import torch

from pyro_backpass.backbones.data import BackboneData


def toy_objects(n_per_class: int, size: int, n_classes: int = 3, seed: int = 0):
    """``(images (N,3,S,S) float, masks (N,S,S) bool, categories (N,))``: disc, square, horizontal bar, ..."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    images, masks, cats = [], [], []
    for c in range(n_classes):
        for _ in range(n_per_class):
            r = 0.45 + 0.3 * float(torch.rand(1, generator=g))
            cy, cx = (0.3 * (torch.rand(2, generator=g) - 0.5)).tolist()
            dy, dx = yy - cy, xx - cx
            if c % 3 == 0:
                m = dy ** 2 + dx ** 2 <= r ** 2
            elif c % 3 == 1:
                m = (dy.abs() <= r * 0.8) & (dx.abs() <= r * 0.8)
            else:
                m = (dy.abs() <= r * 0.25) & (dx.abs() <= r)
            colour = 0.3 + 0.7 * torch.rand(3, 1, 1, generator=g)
            images.append(colour * m), masks.append(m), cats.append(c)
    return torch.stack(images), torch.stack(masks), torch.tensor(cats)


def toy_backbone_data(size: int = 32, n_per_class: int = 8, n_classes: int = 3) -> BackboneData:
    """A :class:`BackboneData` of toy shapes; the scenes are two shapes side by side on a grey ramp."""
    tr_i, tr_m, tr_c = toy_objects(n_per_class, size, n_classes, seed=0)
    te_i, _, te_c = toy_objects(max(2, n_per_class // 2), size, n_classes, seed=1)
    sc_i, sc_m, _ = toy_objects(4, size, n_classes, seed=2)
    bg = torch.linspace(0.1, 0.5, size).view(1, 1, 1, size).expand(sc_i.shape[0], 3, size, size)
    half = sc_i.shape[0] // 2
    small = torch.nn.functional.interpolate(sc_i, scale_factor=0.5)
    other = torch.zeros_like(sc_i)
    other[..., : size // 2, : size // 2] = small.flip(0)  # another shape in the top-left corner
    other_m = other.amax(1) > 0
    scenes = torch.where(sc_m.unsqueeze(1), sc_i, torch.where(other_m.unsqueeze(1), other, bg))
    del half
    return BackboneData(tr_i, tr_m, tr_c, te_i, te_c, scenes, torch.arange(scenes.shape[0]) % n_classes,
                        scenes, sc_m, sc_i, n_classes)
