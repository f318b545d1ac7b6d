"""Backgrounds for the training compositor: drawn per batch, or served from a fixed bank.

The evaluation scenes (:func:`~pyro_backpass.data.scenes.compose_scene`) use the scene
generator's own backgrounds (plain, gradient, or a gradient under noise, stripes and checkers), so
training must see those too; :func:`random_backgrounds` adds cheaper smooth-noise ones, unlike any
object. Drawing the scene generator's backgrounds costs a Python loop of small ops per image, so
:class:`BackgroundBank` draws a fixed set once and serves it under random flips, transposes and
channel permutations (8 × 6 = 48 variants of each), which is nearly free per batch.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from pyro_backpass.data.scenes import make_background

__all__ = ["random_backgrounds", "BackgroundBank"]

_PERMS = torch.tensor(list(itertools.permutations(range(3))))  # (6, 3) channel orders


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


class BackgroundBank:
    """A fixed set of backgrounds, served under random dihedral transforms and channel permutations.

    :param int n: backgrounds in the bank; half are the scene generator's ``"mixed"`` backgrounds
        (what the evaluation scenes use), half :func:`random_backgrounds`.
    :param int size: side ``S``.
    :param torch.Generator gen: draws the bank (so the bank is a function of the seed).
    """

    def __init__(self, n: int, size: int, gen: torch.Generator):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive number of backgrounds, got {n!r}")
        n_scene = (n + 1) // 2
        scene = torch.stack([make_background("mixed", size, gen) for _ in range(n_scene)])
        parts = [scene, random_backgrounds(n - n_scene, size, gen)] if n > n_scene else [scene]
        # uint8 holds a quarter of float32's bytes; a 1/255 quantisation step is far below any texture's contrast.
        self.images = (torch.cat(parts).clamp(0, 1) * 255).round().to(torch.uint8)  # (n, 3, S, S)

    @classmethod
    def from_images(cls, images: torch.Tensor) -> BackgroundBank:
        """A bank holding ``images`` ``(n, 3, S, S)`` uint8 as they are."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected a uint8 tensor (n, 3, S, S), got {images.dtype} {tuple(images.shape)}")
        bank = cls.__new__(cls)
        bank.images = images
        return bank

    def resized(self, size: int) -> BackgroundBank:
        """The same bank at side ``size`` (antialiased bilinear)."""
        x = F.interpolate(self.images.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        return BackgroundBank.from_images(x.round().clamp(0, 255).to(torch.uint8))

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``(n, 3, S, S)`` float backgrounds in ``[0, 1]``."""
        x = self.images[torch.randint(0, len(self), (n,), generator=gen)].float().div_(255)
        flip_x, flip_y, transpose = (torch.rand(3, n, 1, 1, 1, generator=gen) < 0.5).unbind(0)
        x = torch.where(flip_x, x.flip(-1), x)
        x = torch.where(flip_y, x.flip(-2), x)
        x = torch.where(transpose, x.transpose(-1, -2), x)
        perm = _PERMS[torch.randint(0, len(_PERMS), (n,), generator=gen)]  # (n, 3)
        return x.gather(1, perm.view(n, 3, 1, 1).expand_as(x))
