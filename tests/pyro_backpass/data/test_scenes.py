"""Scene composition: ground truth consistency, occluder, backgrounds, caching, config checks."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pyro_backpass.data import CATEGORIES
from pyro_backpass.data.datasets import SPLITS, object_seed
from pyro_backpass.data.scenes import (
    BACKGROUNDS,
    SceneConfig,
    SceneDataset,
    compose_scene,
    composite_object,
    make_background,
    place_object,
)

MESHES = Path(__file__).resolve().parents[3].parent / "shared" / "meshes" / "airplanes"


def fake_render(category, seed, size):
    """A seeded coloured cross on black (thin parts like wings); stands in for the renderer."""
    g = torch.Generator().manual_seed(seed % 2**62)
    t = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    w = 0.15 + 0.2 * float(torch.rand(1, generator=g))
    mask = ((xx.abs() < 0.9) & (yy.abs() < w)) | ((yy.abs() < 0.7) & (xx.abs() < w))
    colour = 0.2 + 0.8 * torch.rand(3, 1, 1, generator=g)
    return SimpleNamespace(image=colour * mask, mask=mask, category=CATEGORIES.index(category), params={})


SMALL = SceneConfig(n=3, size=48, n_instances=2, n_clutter=2)


@pytest.fixture(autouse=True)
def _tmp_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))


def _check_scene(s, cfg):
    n, m, S = cfg.n_instances, cfg.n_clutter, cfg.size
    shapes = {"image": (3, S, S), "masks": (n, S, S), "full_masks": (n, S, S), "instance_images": (n, 3, S, S),
              "categories": (n,), "boxes": (n, 4), "order": (n,), "areas": (n,), "brightness": (n,),
              "instance_seeds": (n,), "clutter_masks": (m, S, S), "clutter_categories": (m,)}
    for k, shape in shapes.items():
        assert tuple(s[k].shape) == shape, k
    assert s["masks"].dtype == s["full_masks"].dtype == s["clutter_masks"].dtype == torch.bool
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    masks, full = s["masks"], s["full_masks"]
    assert not (masks & ~full).any()  # visible is part of full
    everything = torch.cat([masks, s["clutter_masks"]]).int()
    assert everything.sum(0).max() <= 1  # visible masks never overlap
    assert sorted(s["order"].tolist()) == list(range(n))
    for i in range(n):  # an instance drawn later hides the earlier ones where they overlap
        for j in range(n):
            if s["order"][i] > s["order"][j]:
                assert not (masks[j] & full[i]).any()
    assert torch.equal(s["areas"], masks.sum((1, 2)))
    assert (s["categories"] == CATEGORIES.index(cfg.instance_category)).all()
    assert all(CATEGORIES[c] in cfg.clutter_categories for c in s["clutter_categories"].tolist())
    for i in range(n):
        ys, xs = torch.nonzero(full[i], as_tuple=True)
        assert s["boxes"][i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # The instance alone is black away from its mask, and the scene shows it where it is visible.
        assert s["instance_images"][i][:, ~full[i]].max() < 0.6
        # Away from the (soft) edges, the scene shows the instance exactly where it is visible.
        core = -torch.nn.functional.max_pool2d(-masks[i][None].float(), 3, 1, 1)[0] > 0
        if core.any():
            assert (s["image"][:, core] - s["instance_images"][i][:, core]).abs().max() < 0.02


def test_compose_scene_ground_truth():
    for j in range(3):
        s = compose_scene(SMALL, j, render=fake_render)
        _check_scene(s, SMALL)
        frac = s["masks"].sum((1, 2)) / s["full_masks"].sum((1, 2))
        assert (frac >= SMALL.min_visible).all()
        assert "occluded_index" in s and int(s["occluded_index"]) == -1
    again = compose_scene(SMALL, 2, render=fake_render)
    assert all(torch.equal(again[k], s[k]) for k in s)  # deterministic
    # Instances come from the split's object seeds (the held-out pool by default).
    assert s["instance_seeds"].tolist() == [object_seed("test", 0, 4), object_seed("test", 0, 5)]
    assert all(x % 4 == SPLITS.index("test") for x in s["instance_seeds"].tolist())


def test_occluder_keeps_full_mask():
    cfg = dataclasses.replace(SMALL, occluder=True, n_clutter=1)
    plain = compose_scene(dataclasses.replace(cfg, occluder=False), 1, render=fake_render)
    s = compose_scene(cfg, 1, render=fake_render)
    _check_scene(s, cfg)
    k, occ = int(s["occluded_index"]), s["occluder_mask"]
    assert 0 <= k < cfg.n_instances and occ.shape == (48, 48) and occ.dtype == torch.bool
    assert torch.equal(s["full_masks"], plain["full_masks"])  # same layout, unoccluded masks kept
    cover = (occ & s["full_masks"][k]).sum() / s["full_masks"][k].sum()
    assert 0.2 <= float(cover) <= 0.55
    assert not (s["masks"] & occ).any()
    assert torch.equal(s["masks"], plain["masks"] & ~occ)


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_backgrounds(kind):
    a = make_background(kind, 32, torch.Generator().manual_seed(1))
    b = make_background(kind, 32, torch.Generator().manual_seed(1))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    if kind == "plain":
        assert a.std(dim=(1, 2)).max() == 0
    if kind == "textured":
        assert a.std() > 0.01


def test_bad_background_and_configs():
    with pytest.raises(ValueError, match="kind: expected one of"):
        make_background("stars", 16, torch.Generator())
    for kwargs, match in [({"background": "stars"}, "background"), ({"n": 0}, "n: expected a positive"),
                          ({"instance_scale": (0.5, 0.2)}, "instance_scale"), ({"split": "x"}, "split"),
                          ({"n_clutter": -1}, "n_clutter"), ({"clutter_categories": ("ufo",)}, "category")]:
        with pytest.raises(ValueError, match=match):
            SceneConfig(**kwargs)
    with pytest.raises(TypeError, match="config: expected a SceneConfig"):
        SceneDataset({"n": 2})
    with pytest.raises(ValueError, match="mesh_dir: expected an existing folder"):
        SceneDataset(SceneConfig(n=1, mesh_dir="/nonexistent/meshes"))
    with pytest.raises(ValueError, match="index: expected a scene index"):
        compose_scene(SMALL, -1, render=fake_render)


def test_place_object():
    img, mask = torch.zeros(3, 40, 40), torch.zeros(40, 40, dtype=torch.bool)
    mask[10:20, 5:35] = True
    img[:, mask] = 0.5
    colour, alpha = place_object(img, mask, 15)
    assert alpha.shape == (5, 15) and colour.shape == (3, 5, 15)
    assert torch.allclose(alpha, torch.ones(5, 15)) and torch.allclose(colour, torch.full((3, 5, 15), 0.5))


def test_scene_dataset_cache(tmp_path):
    cfg = dataclasses.replace(SMALL, n=2, occluder=True, n_clutter=0)
    ds = SceneDataset(cfg, progress=False, render=fake_render)
    again = SceneDataset(cfg, progress=False, render=fake_render)
    assert len(ds) == 2 and set(ds[0]) == set(again[0])
    assert {"occluded_index", "occluder_mask"} <= set(ds[0])
    for k in ds[0]:
        assert torch.equal(ds[0][k], again[0][k]), k
    assert ds[0]["image"].dtype == torch.float32 and ds.tensors["image"].dtype == torch.uint8
    no_occ = SceneDataset(dataclasses.replace(cfg, occluder=False), progress=False, render=fake_render)
    assert "occluder_mask" not in no_occ[0] and no_occ[1]["clutter_masks"].shape == (0, 48, 48)


def test_real_renderer_scene():
    pytest.importorskip("pyro_backpass.data.objects")
    cfg = SceneConfig(n=1, size=64, background="mixed", occluder=True)
    s = compose_scene(cfg, 0)
    _check_scene(s, cfg)


@pytest.mark.skipif(not MESHES.is_dir(), reason=f"no shared meshes at {MESHES}")
def test_user_meshes_as_instances():
    pytest.importorskip("pyro_backpass.data.objects")
    from pyro_backpass.data import load_mesh

    meshes = [load_mesh(sorted(MESHES.iterdir())[0])]
    cfg = SceneConfig(n=1, size=48, n_clutter=1)
    ds = SceneDataset(cfg, progress=False, instance_meshes=meshes)
    _check_scene(ds[0], cfg)
    with pytest.raises(ValueError, match="instance_meshes"):
        SceneDataset(cfg, instance_meshes=[])


def test_composite_object_triple():
    obj = fake_render("airplane", 5, 48)
    clutter = [(fake_render("car", 6, 48).image, fake_render("car", 6, 48).mask)]
    out = composite_object(obj.image, obj.mask, torch.Generator().manual_seed(0), clutter=clutter)
    assert set(out) == {"image", "object", "mask"} and out["mask"].dtype == torch.bool and out["mask"].any()
    assert out["image"].shape == out["object"].shape == (3, 48, 48)
    core = -torch.nn.functional.max_pool2d(-out["mask"][None].float(), 3, 1, 1)[0] > 0
    assert (out["image"][:, core] - out["object"][:, core]).abs().max() < 1e-5  # object drawn last, whole
    assert out["object"][:, ~out["mask"]].max() < 0.6
