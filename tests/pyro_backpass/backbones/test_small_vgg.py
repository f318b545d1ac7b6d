"""SmallVGG: layer specs, activations, input validation, determinism of the initialisation."""

import pytest
import torch

from pyro_backpass.backbones import Backbone, SmallVGG, SmallVGGConfig
from pyro_backpass.specs import with_mixture


def test_layer_specs_follow_vgg_naming_and_sizes():
    m = SmallVGG(SmallVGGConfig(input_size=32, widths=(4, 8), convs_per_block=2, n_classes=3))
    specs = m.layer_specs()
    assert [s.name for s in specs] == ["image", "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2"]
    assert [s.kind for s in specs] == ["image", "conv", "conv", "pool", "conv", "conv", "pool"]
    assert specs[0].shape == (3, 32, 32)
    assert specs[3].shape == (4, 16, 16)
    assert specs[-1].shape == (8, 8, 8)
    assert isinstance(m, Backbone)
    # The hierarchy's mixture layout is derived from these specs.
    mixed = with_mixture(specs, K=5, K_top=7)
    assert mixed[-1].K == 7 and mixed[-1].offset_radius == 2 and mixed[3].offset_radius == 1


def test_without_batch_norm_the_kinds_and_shapes_are_the_same():
    with_bn = SmallVGG(SmallVGGConfig(input_size=16, widths=(4, 6), n_classes=2))
    plain = SmallVGG(SmallVGGConfig(input_size=16, widths=(4, 6), n_classes=2, batch_norm=False))
    assert with_bn.layer_specs() == plain.layer_specs()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_default_is_96_pixels_and_three_blocks():
    specs = SmallVGG().layer_specs()
    assert specs[0].shape == (3, 96, 96)
    assert specs[-1].name == "pool3" and specs[-1].shape == (96, 12, 12)


def test_activations_align_with_specs_and_image_is_raw():
    m = SmallVGG(SmallVGGConfig(input_size=16, widths=(4, 6), n_classes=2))
    x = torch.rand(3, 3, 16, 16)
    acts = m.activations(x)
    assert acts[0] is x  # raw [0, 1] pixels, normalisation happens inside
    for a, s in zip(acts, m.layer_specs()):
        assert tuple(a.shape) == (3, *s.shape)
    assert all(bool((a >= 0).all()) for a in acts[1:])  # post-ReLU / pooled post-ReLU
    some = m.activations(x, layers=["pool1", "conv1_1"])
    assert torch.equal(some[0], acts[3]) and torch.equal(some[1], acts[1])
    assert m.classify(x).shape == (3, 2)


@pytest.mark.parametrize("bad", [torch.rand(2, 3, 32, 32), torch.rand(3, 16, 16), torch.rand(2, 1, 16, 16)])
def test_wrong_image_shape_is_a_clear_error(bad):
    m = SmallVGG(SmallVGGConfig(input_size=16, widths=(4,), n_classes=2))
    with pytest.raises(ValueError, match=r"images: expected shape \(N, 3, 16, 16\), got"):
        m.activations(bad)


def test_unknown_layer_name_and_bad_config():
    m = SmallVGG(SmallVGGConfig(input_size=16, widths=(4,), n_classes=2))
    with pytest.raises(ValueError, match="layers: expected names"):
        m.activations(torch.rand(1, 3, 16, 16), layers=["pool9"])
    with pytest.raises(ValueError, match="input_size"):
        SmallVGGConfig(input_size=100, widths=(8, 16, 32))
    with pytest.raises(ValueError, match="widths"):
        SmallVGGConfig(widths=())


def test_initialisation_depends_on_seed_only():
    torch.manual_seed(1)
    a = SmallVGG(SmallVGGConfig(input_size=16, widths=(4,), n_classes=2, seed=3))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    b = SmallVGG(SmallVGGConfig(input_size=16, widths=(4,), n_classes=2, seed=3))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("head", ["avg", "avgmax", "conv"])
def test_heads_give_logits_and_leave_the_layers_alone(head):
    m = SmallVGG(SmallVGGConfig(input_size=16, widths=(4, 6), n_classes=3, head=head))
    assert m.classify(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    assert [s.name for s in m.layer_specs()][-1] == "pool2"  # the head is never a layer of the hierarchy
    assert m.layer_specs() == SmallVGG(SmallVGGConfig(input_size=16, widths=(4, 6), n_classes=3)).layer_specs()
    with pytest.raises(ValueError, match="head"):
        SmallVGGConfig(head="mlp")


def test_any_size_runs_the_stack_on_other_resolutions_only_when_asked():
    m = SmallVGG(SmallVGGConfig(input_size=16, widths=(4, 6), n_classes=2))
    acts = m.activations(torch.rand(2, 3, 8, 8), any_size=True)
    assert acts[-1].shape == (2, 6, 2, 2)
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\)"):
        m.activations(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        m.activations(torch.rand(2, 1, 8, 8), any_size=True)
