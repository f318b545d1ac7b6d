"""The data a backbone is trained and measured on, rendered once and cached (DESIGN §6).

* **train**: ``n_train`` rendered objects per category (train split), on black; scenes are composed
  around them per batch by :mod:`pyro_backpass.backbones.augment`.
* **test**: ``n_test`` held-out objects per category (test split), on black: ``test_accuracy``.
* **clutter**: one held-out object of each category among clutter of the *other* categories on a
  random background, composed by the data package's :func:`~pyro_backpass.data.scenes.compose_scene`
  (not by our training compositor, so it also measures generalisation): ``clutter_accuracy``.
* **scenes**: held-out airplane scenes (the backward pass's use case) with two instances and two
  clutter objects, one row per instance (scene, visible mask, instance alone on black):
  ``compositionality_error``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

__all__ = ["BackboneData", "build_backbone_data"]


@dataclass
class BackboneData:
    """Tensors for training and evaluation (images uint8 or float in ``[0, 1]``, masks bool).

    :ivar train_images: ``(N, 3, S, S)``; ``train_masks`` ``(N, S, S)``; ``train_categories`` ``(N,)``.
    :ivar test_images: ``(T, 3, S, S)``; ``test_categories`` ``(T,)``.
    :ivar clutter_images: ``(U, 3, S, S)``; ``clutter_categories`` ``(U,)``.
    :ivar scene_images: ``(R, 3, S, S)``; ``scene_masks`` ``(R, S, S)``; ``scene_objects`` ``(R, 3, S, S)``.
    :ivar n_classes: number of categories.
    """

    train_images: torch.Tensor
    train_masks: torch.Tensor
    train_categories: torch.Tensor
    test_images: torch.Tensor
    test_categories: torch.Tensor
    clutter_images: torch.Tensor
    clutter_categories: torch.Tensor
    scene_images: torch.Tensor
    scene_masks: torch.Tensor
    scene_objects: torch.Tensor
    n_classes: int


def _scene_rows(configs, progress: bool, desc: str) -> dict[str, torch.Tensor]:
    """Compose scenes and flatten them to one row per instance (uint8 images)."""
    from pyro_backpass.data.cache import to_uint8
    from pyro_backpass.data.scenes import compose_scene

    rows: dict[str, list] = {"images": [], "masks": [], "objects": [], "categories": []}
    jobs = [(c, i) for c in configs for i in range(c.n)]
    for cfg, i in tqdm(jobs, desc=desc, disable=not progress):
        s = compose_scene(cfg, i)
        for k in range(s["masks"].shape[0]):
            rows["images"].append(to_uint8(s["image"]))
            rows["masks"].append(s["masks"][k])
            rows["objects"].append(to_uint8(s["instance_images"][k]))
            rows["categories"].append(s["categories"][k])
    return {k: torch.stack(v) for k, v in rows.items()}


def build_backbone_data(size: int, n_train: int, n_test: int, n_clutter_scenes: int, n_scenes: int,
                        seed: int = 0, progress: bool = True, cache: bool = True) -> BackboneData:
    """Render (or read from the cache) everything :func:`~pyro_backpass.backbones.train.train_backbone` needs.

    :param int size: image side.
    :param int n_train: training objects per category; ``n_test`` held-out objects per category.
    :param int n_clutter_scenes: cluttered held-out scenes per category for ``clutter_accuracy``.
    :param int n_scenes: held-out airplane scenes (two instances each) for ``compositionality_error``.
    :param int seed: base seed of the data splits.
    """
    from pyro_backpass.data import CATEGORIES

    cats = tuple(CATEGORIES)
    # The rasteriser issues many small torch ops: on a shared 2-core machine one thread was 14x faster
    # than two (31 vs 440 ms per airplane at load ~7), and it never loses much; restored below.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(cats, size, n_train, n_test, n_clutter_scenes, n_scenes, seed, progress, cache)
    finally:
        torch.set_num_threads(threads)


def _build(cats, size, n_train, n_test, n_clutter_scenes, n_scenes, seed, progress, cache) -> BackboneData:
    from pyro_backpass.data.cache import load_or_build
    from pyro_backpass.data.datasets import ObjectDataset, ObjectDatasetConfig, generator_digest
    from pyro_backpass.data.scenes import SceneConfig

    train = ObjectDataset(ObjectDatasetConfig(cats, n_train * len(cats), size, "train", seed), cache=cache,
                          progress=progress)
    test = ObjectDataset(ObjectDatasetConfig(cats, n_test * len(cats), size, "test", seed), cache=cache,
                         progress=progress)
    # Clutter scenes: one instance of each category among the others, on any background. A distinct
    # base seed per category keeps their instances apart from the test objects above, and their
    # backgrounds and layouts apart from each other's (the scene RNG depends on the seed, not the category).
    clutter_cfgs = [SceneConfig(n=n_clutter_scenes, n_instances=1, instance_category=c, n_clutter=3,
                                clutter_categories=tuple(o for o in cats if o != c), background="mixed", size=size,
                                instance_scale=(0.55, 0.8), clutter_scale=(0.25, 0.5), split="test",
                                seed=seed + 101 + i, instance_pool=max(n_clutter_scenes, 1))
                    for i, c in enumerate(cats)]
    scene_cfg = SceneConfig(n=n_scenes, n_instances=2, instance_category="airplane", n_clutter=2, background="mixed",
                            size=size, split="test", seed=seed + 2)
    extra = {"code": generator_digest("pyro_backpass.data.scenes")}

    def build(cfgs, desc):
        return lambda: (_scene_rows(cfgs, progress, desc), None)

    clutter, _ = load_or_build("backbone_eval", {"clutter": [dataclasses.asdict(c) for c in clutter_cfgs]},
                               build(clutter_cfgs, "composing clutter scenes"), cache=cache, extra=extra)
    scenes, _ = load_or_build("backbone_eval", {"scenes": dataclasses.asdict(scene_cfg)},
                              build([scene_cfg], "composing held-out scenes"), cache=cache, extra=extra)
    return BackboneData(train.images, train.masks, train.categories, test.images, test.categories,
                        clutter["images"], clutter["categories"], scenes["images"], scenes["masks"],
                        scenes["objects"], len(cats))
