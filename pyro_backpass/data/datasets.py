"""Data sets of rendered objects: image, mask, category and generating parameters per item.

Splits come from seeds. Object ``i`` of split ``s`` under ``config.seed`` is rendered with
:func:`object_seed`, whose value is ``4 * h + SPLITS.index(s)`` for a hash ``h`` of
``(s, config.seed, i)``: the residue mod 4 names the split, so train, val and test never share a
rendering seed, whatever the sizes or base seeds. An object depends only on
``(category, seed, size)``, so a data set is a prefix of any larger one with the same config.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pyro_backpass.data.cache import from_uint8, load_or_build, source_digest, to_uint8
from pyro_backpass.data.config import SPLITS, ObjectDatasetConfig, category_index, paper_splits

__all__ = ["SPLITS", "ObjectDatasetConfig", "ObjectDataset", "object_seed", "paper_splits", "category_index",
           "generator_digest", "render_objects", "single_thread"]

# Modules whose source decides what an object looks like; their digest is part of every cache key.
_GENERATOR_MODULES = ("mesh", "render", "airplane", "categories", "objects")


def object_seed(split: str, seed: int, index: int, namespace: str = "objects") -> int:
    """The rendering seed of object ``index`` of ``split``; disjoint across splits by construction.

    :param str namespace: separates independent streams (e.g. ``"clutter"``) within one split.
    :returns: an integer in ``[0, 2**58)`` whose residue mod 4 is ``SPLITS.index(split)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    text = f"{namespace}/{split}/{int(seed)}/{int(index)}".encode()
    h = int.from_bytes(hashlib.sha256(text).digest()[:7], "big")  # 56 bits
    return h * 4 + SPLITS.index(split)


def generator_digest(*extra_modules: str) -> str:
    """Digest of the renderer's source (plus ``extra_modules``, full dotted names) for cache keys."""
    names = [f"pyro_backpass.data.{m}" for m in _GENERATOR_MODULES] + list(extra_modules)
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return source_digest(*modules)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch with one intra-op thread inside the block, then restore the previous count.

    Rendering is many small tensor ops: extra threads only add synchronisation, and on a shared
    2-core machine they made a render about 10x slower (measured ~220 ms vs ~16 ms per airplane).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _render_one(job: tuple[Callable | None, str, int, int]):
    render, category, seed, size = job
    if render is None:
        from pyro_backpass.data import render_object

        render = render_object
    obj = render(category, seed, size)
    return to_uint8(obj.image.cpu()), obj.mask.cpu().to(torch.bool), category_index(obj.category), dict(obj.params)


def render_objects(jobs: list[tuple[str, int]], size: int, render: Callable | None = None, num_workers: int = 0,
                   progress: bool = True, desc: str = "rendering objects") -> tuple[dict[str, torch.Tensor], list]:
    """Render ``(category, seed)`` jobs into stacked tensors (``images`` uint8 (N,3,S,S), ``masks`` bool
    (N,S,S), ``categories`` long (N,), ``seeds`` long (N,)) and the list of parameter dicts.

    Results are in job order whatever ``num_workers`` is, so the output is deterministic. Each
    process renders with one torch thread (see :func:`single_thread`).
    """
    full = [(render, c, s, size) for c, s in jobs]
    if num_workers > 0:
        with ProcessPoolExecutor(num_workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = list(tqdm(pool.map(_render_one, full, chunksize=16), total=len(full), desc=desc,
                                disable=not progress))
    else:
        with single_thread():
            results = [_render_one(job) for job in tqdm(full, desc=desc, disable=not progress)]
    tensors = {
        "images": torch.stack([r[0] for r in results]),
        "masks": torch.stack([r[1] for r in results]),
        "categories": torch.tensor([r[2] for r in results], dtype=torch.long),
        "seeds": torch.tensor([s for _, s in jobs], dtype=torch.long),
    }
    return tensors, [r[3] for r in results]


class ObjectDataset(Dataset):
    """Rendered objects on black, cached on disk by config.

    Item ``i`` is ``{"image": float32 (3,S,S) in [0,1], "mask": bool (S,S), "category": int,
    "params": dict, "seed": int}``. Images are held as a uint8 stack (quantised to 1/255).

    :param ObjectDatasetConfig config: what to render.
    :param bool cache: read/write the disk cache (see :mod:`pyro_backpass.data.cache`).
    :param bool progress: show a progress bar while rendering.
    :param int num_workers: render in this many processes (0: in this one); the result is identical.
    :param render: ``render(category, seed, size) -> RenderedObject``; default ``render_object``.
        A custom renderer is part of the cache key by name only.
    """

    def __init__(self, config: ObjectDatasetConfig | None = None, cache: bool = True, progress: bool = True,
                 num_workers: int = 0, render: Callable | None = None):
        self.config = config = config if config is not None else ObjectDatasetConfig()
        if not isinstance(config, ObjectDatasetConfig):
            raise TypeError(f"config: expected an ObjectDatasetConfig, got {type(config).__name__}")
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        cats = config.categories
        jobs = [(cats[i % len(cats)], object_seed(config.split, config.seed, i)) for i in range(config.n)]
        extra = {"code": generator_digest(__name__),
                 "render": None if render is None else f"{render.__module__}.{render.__qualname__}"}

        def build():
            return render_objects(jobs, config.size, render, num_workers, progress,
                                  desc=f"rendering {config.split} objects")

        self._tensors, self._params = load_or_build("objects", config, build, cache=cache, extra=extra)

    def __len__(self) -> int:
        return self._tensors["images"].shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for an ObjectDataset of {len(self)} items")
        return {"image": from_uint8(self._tensors["images"][i]), "mask": self._tensors["masks"][i],
                "category": int(self._tensors["categories"][i]), "params": self._params[i],
                "seed": int(self._tensors["seeds"][i])}

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Stacked items without params: ``image`` float32 (B,3,S,S), ``mask`` bool (B,S,S), ``category`` (B,)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"image": from_uint8(self._tensors["images"][idx]), "mask": self._tensors["masks"][idx],
                "category": self._tensors["categories"][idx]}

    @property
    def images(self) -> torch.Tensor:
        """uint8 (N,3,S,S): all images (divide by 255 for [0,1]; :meth:`batch` does it)."""
        return self._tensors["images"]

    @property
    def masks(self) -> torch.Tensor:
        """bool (N,S,S): all object masks."""
        return self._tensors["masks"]

    @property
    def categories(self) -> torch.Tensor:
        """long (N,): category index of every object (into ``CATEGORIES``)."""
        return self._tensors["categories"]

    @property
    def seeds(self) -> torch.Tensor:
        """long (N,): the rendering seed of every object."""
        return self._tensors["seeds"]

    @property
    def params(self) -> list[dict]:
        """The generating parameters of every object (JSON types)."""
        return self._params
