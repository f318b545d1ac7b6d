"""Mask-rule comparison on shared passes: each rule's IoUs equal those of a pass run for it alone."""

import pytest
import torch

from models.activation import activation_model
from pyro_backpass.data import SceneConfig, SceneDataset
from pyro_backpass.metrics import iou_matrix
from pyro_backpass.vision import MaskConfig, map_image
from pyro_backpass.vision.mask_study import first_pass_ious, summarise_ious


@pytest.fixture
def scenes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    return SceneDataset(SceneConfig(n=3, size=32, split="val", seed=1, instance_pool=6), progress=False)


def test_first_pass_ious_equal_one_rule_at_a_time(tiny_trained, scenes):
    rules = {"line": MaskConfig(), "region": MaskConfig(gate="none", fraction=0.4)}
    ious = first_pass_ious(activation_model, tiny_trained, scenes, rules, batch_size=2)
    assert set(ious) == set(rules) and all(len(v) == 3 for v in ious.values())
    images = torch.stack([scenes[i]["image"] for i in range(3)])
    for name, config in rules.items():
        res = map_image(activation_model, tiny_trained, images, mask_config=config, clamp={"category": 0})
        want = [float(iou_matrix(res.mask[0, j][None], scenes[j]["masks"]).max()) for j in range(3)]
        assert ious[name] == pytest.approx(want)
    summary = summarise_ious({"a": [0.2, 0.6, 0.5]})
    assert summary["a"]["mean_iou"] == pytest.approx(13 / 30) and summary["a"]["at_least_0.5"] == pytest.approx(2 / 3)


def test_first_pass_ious_reject_empty_inputs(tiny_trained, scenes):
    with pytest.raises(ValueError, match="rules"):
        first_pass_ious(activation_model, tiny_trained, scenes, {})
