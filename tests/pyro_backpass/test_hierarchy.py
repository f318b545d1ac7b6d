import json

import pytest
import torch

from pyro_backpass.checkpoint import CheckpointError, load_hierarchy, save_hierarchy
from pyro_backpass.hierarchy import Hierarchy, random_hierarchy
from pyro_backpass.specs import LayerSpec, with_mixture

SPECS = [LayerSpec("image", "image", 3, 8, 8, K=2), LayerSpec("pool1", "pool", 4, 4, 4, K=3, offset_radius=1)]


def test_structure_and_site_names():
    h = random_hierarchy(SPECS, n_categories=2)
    assert h.L == 2 and h.Ks == (2, 3)
    assert h.site_names()[:3] == ["category", "gamma/pool1", "delta/pool1"]
    assert h.hidden_site_names() == ["category", "gamma/pool1", "delta/pool1", "gamma/image", "delta/image"]
    assert h.layer_index("image") == 0
    with pytest.raises(ValueError, match="layer"):
        h.layer_index("pool9")


def test_phi_shapes_with_upsampling():
    h = random_hierarchy(SPECS, n_categories=2)
    top = h.phi(1, torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([4, 4]))
    assert top.shape == (2, 4, 4, 4)
    low = h.phi(0, top, torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert low.shape == (2, 3, 8, 8)
    assert (low >= 0).all()


def test_moves_with_to_dtype():
    h = random_hierarchy(SPECS, n_categories=2).to(torch.float64)
    assert h.dtype == torch.float64
    assert h.obs_params(1)["sigma1"].dtype == torch.float64
    assert h.topdown[0].weight.dtype == torch.float64


def test_check_maps_errors_name_the_argument():
    h = random_hierarchy(SPECS, n_categories=2)
    good = [torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, 4, 4)]
    assert len(h.check_maps("f_bu", good)) == 2
    with pytest.raises(ValueError, match=r"f_bu\[pool1\].*\(4, 4, 4\)"):
        h.check_maps("f_bu", [good[0], torch.zeros(2, 4, 5, 4)])
    with pytest.raises(ValueError, match="list of 2"):
        h.check_maps("f_bu", good[:1])
    bad = good[1].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"f_bu\[pool1\].*NaN"):
        h.check_maps("f_bu", [good[0], bad])
    with pytest.raises(ValueError, match="batch size"):
        h.check_maps("f_bu", [good[0], torch.zeros(3, 4, 4, 4)])
    with pytest.raises(TypeError, match="torch.Tensor"):
        h.check_maps("f_bu", [good[0], good[1].numpy()])


def test_bad_parameters_and_categories():
    h = random_hierarchy(SPECS, n_categories=2)
    with pytest.raises(ValueError, match="sigma1"):
        h.set_observation(0, sigma1=0.0)
    with pytest.raises(ValueError, match="sigma0"):
        h.set_sigma0(-1.0)
    with pytest.raises(ValueError, match="category"):
        h.check_category(2)
    with pytest.raises(ValueError, match="category"):
        h.check_category("zebra")
    with pytest.raises(ValueError, match="K"):
        LayerSpec("x", "conv", 3, 4, 4, K=0)
    with pytest.raises(ValueError, match="kind"):
        LayerSpec("x", "fc", 3, 4, 4)


def test_with_mixture_follows_the_paper_offsets():
    specs = [LayerSpec("image", "image", 3, 8, 8), LayerSpec("conv1", "conv", 4, 8, 8),
             LayerSpec("pool1", "pool", 4, 4, 4), LayerSpec("pool2", "pool", 4, 2, 2)]
    out = with_mixture(specs, K=5, K_top=7)
    assert [s.K for s in out] == [5, 5, 5, 7]
    assert [s.offset_radius for s in out] == [0, 0, 1, 2]


def test_save_load_round_trip(tmp_path):
    h = random_hierarchy(SPECS, n_categories=2, seed=3)
    h.set_observation(1, lam=torch.tensor([0.1, 0.2, 0.3, 0.4]), sigma1=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    save_hierarchy(h, tmp_path / "m", extra={"backbone": "toy"})
    g = load_hierarchy(tmp_path / "m")
    assert g.specs == h.specs and g.categories == h.categories
    for (k, a), (_, b) in zip(h.state_dict().items(), g.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("m/*.tmp"))


def test_load_rejects_other_versions_corruption_and_layers(tmp_path):
    h = random_hierarchy(SPECS, n_categories=2)
    save_hierarchy(h, tmp_path / "m")
    meta_path = tmp_path / "m" / "hierarchy.json"
    meta = json.loads(meta_path.read_text())
    with pytest.raises(CheckpointError, match="layers"):
        load_hierarchy(tmp_path / "m", expect_specs=SPECS[:1])
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 1, got 99"):
        load_hierarchy(tmp_path / "m")
    save_hierarchy(h, tmp_path / "m")
    (tmp_path / "m" / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_hierarchy(tmp_path / "m")
    with pytest.raises(CheckpointError, match="checkpoint folder"):
        load_hierarchy(tmp_path / "missing")


def test_hierarchy_rejects_bad_specs():
    with pytest.raises(TypeError, match="specs"):
        Hierarchy([], 1)
    with pytest.raises(ValueError, match="unique"):
        Hierarchy([SPECS[0], SPECS[0]], 1)
    with pytest.raises(ValueError, match="n_categories"):
        Hierarchy(SPECS, 0)
