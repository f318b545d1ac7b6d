"""Rendered objects with exact masks: meshes, the renderer, procedural categories, user meshes."""

from pyro_backpass.data.categories import CATEGORIES, make_mesh
from pyro_backpass.data.mesh import Mesh, load_mesh
from pyro_backpass.data.objects import RenderedObject, render_object, render_user_mesh
from pyro_backpass.data.render import RenderConfig, View, random_view, render_mesh

__all__ = ["Mesh", "load_mesh", "RenderConfig", "View", "render_mesh", "random_view", "CATEGORIES", "make_mesh",
           "render_object", "RenderedObject", "render_user_mesh"]

# Data sets, scenes and their cache (appended by the data-sets engineer).
from pyro_backpass.data.cache import cache_root  # noqa: E402
from pyro_backpass.data.config import DataScriptConfig, ObjectDatasetConfig, SceneConfig, paper_splits  # noqa: E402
from pyro_backpass.data.datasets import ObjectDataset, object_seed  # noqa: E402
from pyro_backpass.data.scenes import (  # noqa: E402
    SceneDataset,
    compose_scene,
    composite_object,
    make_background,
    place_object,
)

__all__ += ["cache_root", "DataScriptConfig", "ObjectDatasetConfig", "SceneConfig", "paper_splits", "ObjectDataset",
            "object_seed", "SceneDataset", "compose_scene", "composite_object", "make_background", "place_object"]
