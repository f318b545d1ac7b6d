"""Frozen configs of the data sets and of ``scripts/data.py``, with their argument checks.

Configs are plain frozen dataclasses so that they hash into cache keys
(:mod:`pyro_backpass.data.cache`) and map onto command-line flags (:mod:`pyro_backpass.cli`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pyro_backpass.data.categories import category_index

__all__ = ["SPLITS", "BACKGROUNDS", "category_index", "ObjectDatasetConfig", "SceneConfig", "DataScriptConfig",
           "paper_splits"]

SPLITS = ("train", "val", "test")
BACKGROUNDS = ("plain", "gradient", "textured", "mixed")


@dataclasses.dataclass(frozen=True)
class ObjectDatasetConfig:
    """What an :class:`ObjectDataset` holds.

    :param categories: category names; item ``i`` has category ``categories[i % len(categories)]``.
    :param int n: total number of objects (all categories together).
    :param int size: image side ``S`` in pixels.
    :param str split: ``"train"``, ``"val"`` or ``"test"``; selects a disjoint seed space.
    :param int seed: base seed of the split.
    """

    categories: tuple[str, ...] = ("airplane",)
    n: int = 3000
    size: int = 96
    split: str = "train"
    seed: int = 0

    def __post_init__(self):
        if not self.categories:
            raise ValueError("categories: expected at least one category, got an empty tuple")
        for c in self.categories:
            category_index(c)
        if self.n <= 0:
            raise ValueError(f"n: expected a positive number of objects, got {self.n}")
        if self.size < 8:
            raise ValueError(f"size: expected an image side of at least 8 pixels, got {self.size}")
        if self.split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {self.split!r}")


def paper_splits(categories: Sequence[str] = ("airplane",), size: int = 96,
                 seed: int = 0) -> tuple[ObjectDatasetConfig, ObjectDatasetConfig]:
    """The paper's split: 3,000 training and 600 held-out objects (Sec. 3)."""
    train = ObjectDatasetConfig(categories=tuple(categories), n=3000, size=size, split="train", seed=seed)
    return train, dataclasses.replace(train, n=600, split="test")


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """What a scene data set holds.

    :param int n: number of scenes.
    :param int n_instances: instances per scene (``n`` in the ground-truth shapes).
    :param str instance_category: category of the instances.
    :param int n_clutter: clutter objects per scene (``m``).
    :param clutter_categories: categories clutter is drawn from (uniformly).
    :param str background: ``plain``, ``gradient``, ``textured`` or ``mixed`` (one of the three per scene).
    :param int size: scene side ``S``.
    :param instance_scale: ``(low, high)`` longer side of an instance, as a fraction of ``S``.
    :param clutter_scale: the same for clutter.
    :param float min_visible: each instance keeps at least this fraction of its full mask visible
        (before the occluder).
    :param bool occluder: draw an occluder over part of one instance.
    :param occluder_cover: ``(low, high)`` fraction of that instance's full mask the occluder covers.
    :param str split: split the instances and clutter come from.
    :param int seed: base seed of the split (the instances are ``ObjectDataset(split, seed)`` objects).
    :param int instance_pool: instances are drawn from the first ``instance_pool`` objects of the split.
    :param str mesh_dir: if not empty, instances are these user meshes (all files of the folder, sorted).
    :param int max_tries: placement attempts per scene.
    """

    n: int = 300
    n_instances: int = 2
    instance_category: str = "airplane"
    n_clutter: int = 2
    clutter_categories: tuple[str, ...] = ("car", "chair", "mug", "lamp", "table")
    background: str = "textured"
    size: int = 96
    instance_scale: tuple[float, float] = (0.45, 0.7)
    clutter_scale: tuple[float, float] = (0.25, 0.5)
    min_visible: float = 0.6
    occluder: bool = False
    occluder_cover: tuple[float, float] = (0.25, 0.5)
    split: str = "test"
    seed: int = 0
    instance_pool: int = 600
    mesh_dir: str = ""
    max_tries: int = 50

    def __post_init__(self):
        for name in ("n", "n_instances", "instance_pool", "max_tries"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.n_clutter < 0:
            raise ValueError(f"n_clutter: expected >= 0, got {self.n_clutter}")
        if self.n_clutter and not self.clutter_categories:
            raise ValueError("clutter_categories: expected at least one category when n_clutter > 0, got none")
        for c in (self.instance_category, *self.clutter_categories):
            category_index(c)
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background: expected one of {BACKGROUNDS}, got {self.background!r}")
        if self.size < 16:
            raise ValueError(f"size: expected a scene side of at least 16 pixels, got {self.size}")
        for name in ("instance_scale", "clutter_scale", "occluder_cover"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name}: expected 0 < low <= high <= 1, got {(lo, hi)}")
        if not 0 <= self.min_visible <= 1:
            raise ValueError(f"min_visible: expected a fraction in [0, 1], got {self.min_visible}")
        if self.split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {self.split!r}")




@dataclasses.dataclass(frozen=True)
class DataScriptConfig:
    """Flags of ``python -m scripts.data``: build the data sets, draw the sheets, time the renderer.

    :param str out: run folder for figures, ``config.json`` and ``metrics.json``.
    :param int n_train: training airplanes (paper: 3,000).
    :param int n_test: held-out airplanes (paper: 600); also the instance pool of the test scenes.
    :param int scenes: number of test scenes.
    :param int seed: base seed of every split.
    :param int size: image and scene side ``S``.
    :param str background: scene background kind.
    :param int bench: renders of new objects timed for ``images_per_s`` (the claim needs >= 500).
    :param int sheet_objects: objects on the contact sheet.
    :param int sheet_scenes: scenes on the scene sheet.
    :param int num_workers: processes for building the object data sets (0: this one).
    """

    out: str = "runs/data"
    n_train: int = 3000
    n_test: int = 600
    scenes: int = 300
    seed: int = 0
    size: int = 96
    background: str = "textured"
    bench: int = 500
    sheet_objects: int = 48
    sheet_scenes: int = 16
    num_workers: int = 0

    def __post_init__(self):
        for name in ("n_train", "n_test", "scenes", "bench", "sheet_objects", "sheet_scenes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {self.num_workers}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background: expected one of {BACKGROUNDS}, got {self.background!r}")

    def object_configs(self) -> tuple[ObjectDatasetConfig, ObjectDatasetConfig]:
        """The training and held-out airplane data sets."""
        train = ObjectDatasetConfig(n=self.n_train, size=self.size, split="train", seed=self.seed)
        return train, dataclasses.replace(train, n=self.n_test, split="test")

    def scene_config(self, occluder: bool = False) -> SceneConfig:
        """Test scenes whose instances are the held-out airplanes."""
        return SceneConfig(n=self.scenes, size=self.size, background=self.background, split="test", seed=self.seed,
                           instance_pool=self.n_test, occluder=occluder)
