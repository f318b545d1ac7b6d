"""One rendered object per ``(category, seed)``: the unit of every data set.

:func:`render_object` draws a new procedural mesh and a random view from one numpy Generator
seeded by ``(category index, seed)``, so the same call always gives the same image, and the same
object and pose at any ``size``. :func:`render_user_mesh` does the same for a loaded mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pyro_backpass.data.categories import CATEGORIES, category_index, make_mesh
from pyro_backpass.data.mesh import Mesh
from pyro_backpass.data.render import RenderConfig, View, random_view, render_mesh

__all__ = ["RenderedObject", "render_object", "render_user_mesh", "VIEW_RANGES"]

#: Per-category ranges for :func:`~pyro_backpass.data.render.random_view` (scale = projected unit
#: radius in half-image widths; an airplane then spans roughly 50-90% of the frame width).
VIEW_RANGES = {
    "airplane": {"scale": (0.55, 0.9), "elevation": (10.0, 60.0)},
    "car": {"scale": (0.5, 0.85), "elevation": (10.0, 50.0)},
    "chair": {"scale": (0.5, 0.85), "elevation": (10.0, 45.0)},
    "mug": {"scale": (0.5, 0.85), "elevation": (10.0, 50.0)},
    "lamp": {"scale": (0.5, 0.85), "elevation": (5.0, 40.0)},
    "table": {"scale": (0.5, 0.85), "elevation": (15.0, 55.0)},
}

# A third seed word keeps user-mesh views a separate stream from procedural objects' draws.
_USER_STREAM = 1


@dataclass
class RenderedObject:
    """An object on a black background with its exact mask.

    :param torch.Tensor image: ``(3, S, S)`` float32 in ``[0, 1]``.
    :param torch.Tensor mask: ``(S, S)`` bool, ``mask == image.amax(0) > 0``.
    :param int category: index into :data:`~pyro_backpass.data.categories.CATEGORIES`.
    :param dict params: shape parameters, ``'view'`` (:meth:`View.as_dict`), ``'seed'``, ``'category_name'``.
    """

    image: torch.Tensor
    mask: torch.Tensor
    category: int
    params: dict = field(default_factory=dict)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    return int(seed)


def _config(size, config) -> RenderConfig:
    if config is not None and not isinstance(config, RenderConfig):
        raise TypeError(f"config: expected a RenderConfig or None, got {type(config).__name__}")
    config = config or RenderConfig()
    return config if size is None or size == config.size else replace(config, size=size)


def _view(rng: np.random.Generator, name: str, view) -> View:
    # The view is always drawn, so a given view replaces it without shifting any other draw.
    drawn = random_view(rng, **VIEW_RANGES[name])
    if view is not None and not isinstance(view, View):
        raise TypeError(f"view: expected a View or None, got {type(view).__name__}")
    return view or drawn


def render_object(category: str | int, seed: int, size: int | None = None, config: RenderConfig | None = None,
                  view: View | None = None) -> RenderedObject:
    """Render a new procedural object of ``category``, deterministic per ``(category, seed)``.

    :param category: a name in :data:`CATEGORIES` or its index.
    :param int seed: ``>= 0``; with the category it seeds one ``numpy.random.Generator`` that draws
        the mesh parameters and then the view.
    :param size: image side; ``None`` takes ``config.size`` (96 by default). Overrides ``config.size``.
    :param view: a fixed view instead of the random one (the mesh is unchanged).
    """
    idx = category_index(category)
    seed = _seed(seed)
    cfg = _config(size, config)
    rng = np.random.default_rng([idx, seed])
    mesh, params = make_mesh(idx, rng)
    v = _view(rng, CATEGORIES[idx], view)
    image, mask = render_mesh(mesh, v, cfg)
    return RenderedObject(image, mask, idx, {**params, "view": v.as_dict(), "seed": seed,
                                             "category_name": CATEGORIES[idx]})


def render_user_mesh(mesh: Mesh, seed: int, size: int | None = None, config: RenderConfig | None = None,
                     category: str | int = "airplane", view: View | None = None) -> RenderedObject:
    """Render a loaded mesh (:func:`~pyro_backpass.data.mesh.load_mesh`) from a random view.

    The view is drawn with ``category``'s ranges from a Generator seeded by
    ``(category index, seed, 1)``, so it is deterministic per seed.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a pyro_backpass.data.Mesh (see load_mesh), got {type(mesh).__name__}")
    idx = category_index(category)
    seed = _seed(seed)
    cfg = _config(size, config)
    v = _view(np.random.default_rng([idx, seed, _USER_STREAM]), CATEGORIES[idx], view)
    image, mask = render_mesh(mesh, v, cfg)
    return RenderedObject(image, mask, idx, {"view": v.as_dict(), "seed": seed, "category_name": CATEGORIES[idx],
                                             "user_mesh": True})
