"""Toy hierarchies small enough for exact enumeration (DESIGN §4).

They are ordinary :class:`~pyro_backpass.hierarchy.Hierarchy` objects with random parameters, run by
the same :func:`models.activation.activation_model` program as the real ones.
"""

from __future__ import annotations

from pyro_backpass.hierarchy import Hierarchy, random_hierarchy
from pyro_backpass.specs import LayerSpec

__all__ = ["toy_specs", "toy_hierarchy"]


def toy_specs(size: int = 12, channels: tuple[int, ...] = (4, 6, 8, 8), K: int = 3,
              radii: tuple[int, ...] = (0, 0, 1, 1)) -> list[LayerSpec]:
    """Four layers: ``image`` (size²), ``conv1`` (size²), ``pool1`` and ``top`` ((size/2)²).

    :param tuple channels: channels of the four layers, bottom-up.
    :param tuple radii: offset radius of each layer (``[-1, 1]²`` on the two upper ones by default).
    """
    half = size // 2
    kinds = ("image", "conv", "pool", "pool")
    names = ("image", "conv1", "pool1", "top")
    sizes = (size, size, half, half)
    return [LayerSpec(n, k, c, s, s, K, r) for n, k, c, s, r in zip(names, kinds, channels, sizes, radii)]


def toy_hierarchy(n_categories: int = 2, seed: int = 0, specs: list[LayerSpec] | None = None,
                  **kwargs) -> Hierarchy:
    """A random toy hierarchy (see :func:`pyro_backpass.hierarchy.random_hierarchy` for ``kwargs``)."""
    return random_hierarchy(specs if specs is not None else toy_specs(), n_categories=n_categories, seed=seed,
                            **kwargs)
