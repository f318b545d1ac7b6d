"""VGG16Backbone with random weights: naming, shapes, loading a local state dict and its errors."""

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from pyro_backpass.backbones import VGG16Backbone


@pytest.fixture(scope="module")
def backbone():
    return VGG16Backbone(input_size=32)


def test_layer_names_and_shapes(backbone):
    specs = backbone.layer_specs()
    names = [s.name for s in specs]
    assert names[0] == "image" and names[-1] == "pool5"
    assert names[1:4] == ["conv1_1", "conv1_2", "pool1"]
    assert len([n for n in names if n.startswith("conv")]) == 13
    assert len([n for n in names if n.startswith("pool")]) == 5
    assert specs[-1].shape == (512, 1, 1)
    assert next(s for s in specs if s.name == "conv3_3").shape == (256, 8, 8)


def test_activations_match_torchvision_features(backbone):
    x = torch.rand(2, 3, 32, 32)
    acts = backbone.activations(x)
    assert acts[0] is x
    feats = torch.nn.Sequential(*[m for stage in backbone.stages.values() for m in
                                  (stage if isinstance(stage, torch.nn.Sequential) else [stage])])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(acts[-1], feats((x - mean) / std))


def test_wrong_image_size(backbone):
    with pytest.raises(ValueError, match=r"images: expected shape \(N, 3, 32, 32\), got \(1, 3, 224, 224\)"):
        backbone.activations(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match="input_size"):
        VGG16Backbone(input_size=100)


def _features_state():
    """A random torchvision-vgg16-shaped ``features`` state dict (the 120M-parameter classifier is
    left out to keep the test fast; a small ``classifier.*`` entry checks that it is ignored)."""
    torch.manual_seed(5)
    return {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}


def test_loads_a_local_torchvision_state_dict(tmp_path):
    state = _features_state()
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    b = VGG16Backbone(weights_path=path, input_size=32)
    torch.testing.assert_close(b.stages["conv1_1"][0].weight, state["features.0.weight"])
    torch.testing.assert_close(b.stages["conv5_3"][0].bias, state["features.28.bias"])


def test_missing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VGG16Backbone(weights_path=path, input_size=32)


def test_unreadable_and_mismatched_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="junk.pth"):
        VGG16Backbone(weights_path=junk, input_size=32)
    feats = {k[len("features."):]: v for k, v in _features_state().items()}
    wrong_shape = {f"features.{k}": v for k, v in feats.items()}
    wrong_shape["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    path = tmp_path / "shape.pth"
    torch.save(wrong_shape, path)
    with pytest.raises(ValueError, match=r"shape.pth.*features.0.weight: expected \(64, 3, 3, 3\)"):
        VGG16Backbone(weights_path=path, input_size=32)
    missing = {f"features.{k}": v for k, v in feats.items() if not k.startswith("28.")}
    path = tmp_path / "missing.pth"
    torch.save(missing, path)
    with pytest.raises(ValueError, match=r"missing.pth.*missing keys \['features.28"):
        VGG16Backbone(weights_path=path, input_size=32)
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="resnet.pth"):
        VGG16Backbone(weights_path=path, input_size=32)
