"""ObjectDataset: items, splits by seed, caching, config checks."""

from types import SimpleNamespace

import pytest
import torch

from pyro_backpass.data import CATEGORIES
from pyro_backpass.data.datasets import (
    SPLITS,
    ObjectDataset,
    ObjectDatasetConfig,
    object_seed,
    paper_splits,
)

CALLS = []


def fake_render(category, seed, size):
    """A seeded coloured ellipse on black: stands in for the renderer in fast tests."""
    CALLS.append(seed)
    g = torch.Generator().manual_seed(seed % 2**62)
    t = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    a, b = 0.3 + 0.6 * torch.rand(2, generator=g)
    mask = (xx / a) ** 2 + (yy / b) ** 2 <= 1
    colour = 0.2 + 0.8 * torch.rand(3, 1, 1, generator=g)
    return SimpleNamespace(image=colour * mask, mask=mask, category=CATEGORIES.index(category),
                           params={"a": float(a), "b": float(b)})


@pytest.fixture(autouse=True)
def _tmp_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))


def test_items_and_batched_access():
    cfg = ObjectDatasetConfig(categories=("airplane", "car"), n=5, size=24, split="train")
    ds = ObjectDataset(cfg, progress=False, render=fake_render)
    assert len(ds) == 5
    item = ds[1]
    assert set(item) == {"image", "mask", "category", "params", "seed"}
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (24, 24) and item["mask"].dtype == torch.bool
    assert item["category"] == CATEGORIES.index("car") and 0 <= item["image"].min() <= item["image"].max() <= 1
    assert ds.images.shape == (5, 3, 24, 24) and ds.images.dtype == torch.uint8
    assert ds.masks.shape == (5, 24, 24) and ds.categories.tolist() == [0, 1, 0, 1, 0]
    b = ds.batch([0, 2])
    assert b["image"].shape == (2, 3, 24, 24) and torch.equal(b["image"][1], ds[2]["image"])
    with pytest.raises(IndexError):
        ds[5]


def test_splits_are_disjoint_by_construction():
    train = {object_seed("train", s, i) for s in range(3) for i in range(2000)}
    test = {object_seed("test", s, i) for s in range(3) for i in range(2000)}
    assert not train & test and len(train) == 6000
    assert {x % 4 for x in train} == {SPLITS.index("train")} and {x % 4 for x in test} == {SPLITS.index("test")}
    tr, te = paper_splits()
    assert (tr.n, tr.split, te.n, te.split, tr.categories) == (3000, "train", 600, "test", ("airplane",))
    assert ObjectDatasetConfig() == tr


def test_cache_reuse_prefix_and_determinism():
    cfg = ObjectDatasetConfig(n=4, size=16, split="test", seed=3)
    CALLS.clear()
    a = ObjectDataset(cfg, progress=False, render=fake_render)
    assert len(CALLS) == 4
    b = ObjectDataset(cfg, progress=False, render=fake_render)
    assert len(CALLS) == 4  # read back from the cache
    c = ObjectDataset(cfg, cache=False, progress=False, render=fake_render)
    assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images) and a.params == c.params
    bigger = ObjectDataset(ObjectDatasetConfig(n=6, size=16, split="test", seed=3), progress=False, render=fake_render)
    assert torch.equal(bigger.images[:4], a.images) and torch.equal(bigger.seeds[:4], a.seeds)
    other = ObjectDataset(ObjectDatasetConfig(n=4, size=16, split="train", seed=3), progress=False, render=fake_render)
    assert not set(other.seeds.tolist()) & set(a.seeds.tolist())


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n: expected a positive"),
    ({"split": "dev"}, "split: expected one of"),
    ({"categories": ()}, "categories: expected at least one"),
    ({"categories": ("dragon",)}, "category: expected one of"),
    ({"size": 4}, "size: expected"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectDatasetConfig(**kwargs)


def test_bad_arguments():
    with pytest.raises(TypeError, match="config: expected an ObjectDatasetConfig"):
        ObjectDataset({"n": 3})
    with pytest.raises(ValueError, match="num_workers"):
        ObjectDataset(ObjectDatasetConfig(n=1, size=16), num_workers=-1)


def test_real_renderer_small():
    pytest.importorskip("pyro_backpass.data.objects")
    ds = ObjectDataset(ObjectDatasetConfig(n=3, size=32, split="test"), progress=False)
    item = ds[0]
    assert item["mask"].any() and item["category"] == CATEGORIES.index("airplane")
    # The object is drawn on black: nothing outside the mask.
    assert item["image"][:, ~item["mask"]].abs().max() == 0
