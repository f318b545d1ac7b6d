"""Activation sources backed by a backbone: masked objects' activations, computed batch by batch.

Images are kept as uint8 (small); activations of the chosen layers are computed on demand and, when
they fit in ``cache_mb`` megabytes as float16, kept after the first pass. Either way memory stays
bounded by the batch size plus that cache.
"""

from __future__ import annotations

import torch

__all__ = ["BackboneActivations"]


class BackboneActivations:
    """An activation source (``len``, ``categories``, ``batch``) over images run through a backbone.

    :param backbone: a :class:`~pyro_backpass.backbones.Backbone`.
    :param torch.Tensor images: (N, 3, S, S) uint8 or float in [0, 1] (objects on black).
    :param torch.Tensor categories: (N,) category indices of the hierarchy.
    :param list layers: layer names of the hierarchy, bottom-up (``"image"`` first).
    :param int cache_mb: keep float16 activations in memory if they need at most this many MB.
    """

    def __init__(self, backbone, images: torch.Tensor, categories: torch.Tensor, layers: list[str],
                 batch_size: int = 32, cache_mb: int = 2000):
        if images.shape[0] == 0:
            raise ValueError("images: expected a non-empty data set, got 0 images")
        self.backbone, self.images, self.layers = backbone, images, list(layers)
        self.categories = torch.as_tensor(categories, dtype=torch.long)
        self.batch_size = batch_size
        specs = {s.name: s for s in backbone.layer_specs()}
        per_image = sum(specs[n].channels * specs[n].height * specs[n].width for n in self.layers) * 2
        self._cache: list[torch.Tensor] | None = None
        if per_image * len(self) / 2**20 <= cache_mb:
            self._cache = self._compute_all()

    def __len__(self) -> int:
        return self.images.shape[0]

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    @torch.no_grad()
    def _compute(self, index: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.activations(self._float(self.images[index]), layers=self.layers)

    def _compute_all(self) -> list[torch.Tensor]:
        parts = [[] for _ in self.layers]
        for start in range(0, len(self), self.batch_size):
            for p, a in zip(parts, self._compute(torch.arange(start, min(start + self.batch_size, len(self))))):
                p.append(a.half())
        return [torch.cat(p) for p in parts]

    def batch(self, index: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the examples ``index``: ``L`` float32 tensors (n, C_l, H_l, W_l)."""
        if self._cache is not None:
            return [m[index].float() for m in self._cache]
        return [a.float() for a in self._compute(index)]
