"""GradCAM and guided-backprop baselines on a tiny random-weights SmallVGG, and threshold selection."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_backpass.backbones import SmallVGG, SmallVGGConfig
from pyro_backpass.baselines import (
    _gaussian_blur,
    best_threshold,
    gradcam_maps,
    guided_backprop_maps,
    mask_iou,
    normalise_maps,
    saliency_masks,
)
from pyro_backpass.data.categories import category_index

S = 16


@pytest.fixture(scope="module")
def net():
    return SmallVGG(SmallVGGConfig(input_size=S, widths=(4, 6), seed=1))


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, S, S, generator=torch.Generator().manual_seed(0))


def _in_unit_range(maps):
    return bool((maps >= 0).all() and (maps <= 1).all())


def test_gradcam_matches_a_hand_computed_cam(net, images):
    net.eval()
    # GradCAM by hand: channel weights = spatial mean of d logit / d A at conv2_2, ReLU of the weighted sum.
    for target in range(net.config.n_classes):
        acts = net.features_input(images)
        for name, stage in net.stages.items():
            acts = stage(acts)
            if name == "conv2_2":
                a = acts
                a.retain_grad()
        net.logits_from_top(acts)[:, target].sum().backward()
        cam = F.relu((a.grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        if bool((cam.flatten(1).amax(1) > 0).all()):
            break
    net.zero_grad()
    want = normalise_maps(F.interpolate(cam, size=(S, S), mode="bilinear", align_corners=False)[:, 0]).detach()
    net.train()
    got = gradcam_maps(net, images, target, layer_name="conv2_2", batch_size=2)
    assert net.training  # mode restored
    assert torch.allclose(gradcam_maps(net, images, target), got, atol=1e-5)  # default: the top conv
    assert got.shape == (3, S, S) and _in_unit_range(got)
    assert torch.allclose(got.amax((1, 2)), torch.ones(3))
    assert torch.allclose(got, want, atol=1e-5)


def _guided_reference(net, images, targets):
    """|input gradient| max over RGB, with our own hooks: ReLU backward passes only positive gradients."""
    net.eval()
    hooks = [m.register_full_backward_hook(lambda mod, gin, gout: (gin[0].clamp(min=0),))
             for m in net.modules() if isinstance(m, nn.ReLU)]
    x = images.clone().requires_grad_()
    try:
        net.classify(x).gather(1, targets.view(-1, 1)).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    net.zero_grad()
    return x.grad.abs().amax(1)


def test_guided_backprop_is_the_positive_gradient_rule(net, images):
    airplane = torch.full((3,), category_index("airplane"))
    got = guided_backprop_maps(net, images, "airplane", smooth_sigma=0)
    assert got.shape == (3, S, S) and _in_unit_range(got)
    assert torch.allclose(got, normalise_maps(_guided_reference(net, images, airplane)), atol=1e-5)
    # It is not the plain gradient, and captum took its hooks away afterwards.
    x = images.clone().requires_grad_()
    net.classify(x)[:, category_index("airplane")].sum().backward()
    net.zero_grad()
    assert not torch.allclose(got, normalise_maps(x.grad.abs().amax(1)), atol=1e-3)
    assert torch.allclose(guided_backprop_maps(net, images, "airplane", smooth_sigma=0), got)


def test_guided_backprop_smoothing_and_per_image_targets(net, images):
    targets = torch.tensor([0, 1, 2])
    smooth = guided_backprop_maps(net, images, targets, smooth_sigma=1.0)
    assert smooth.shape == (3, S, S) and _in_unit_range(smooth)
    want = normalise_maps(_gaussian_blur(_guided_reference(net, images, targets), 1.0))
    assert torch.allclose(smooth, want, atol=1e-5)
    assert guided_backprop_maps(net, images[:0], 0).shape == (0, S, S)


def test_gaussian_blur_of_an_impulse_is_a_normalised_symmetric_bump():
    impulse = torch.zeros(1, 15, 15)
    impulse[0, 7, 7] = 1.0
    out = _gaussian_blur(impulse, 1.5)[0]
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(out, out.flip(0)) and torch.allclose(out, out.T)
    assert out.argmax() == 7 * 15 + 7
    assert _gaussian_blur(impulse, 0).equal(impulse)


def test_bad_arguments_are_named(net, images):
    with pytest.raises(ValueError, match="layer_name"):
        gradcam_maps(net, images, 0, layer_name="pool1")
    with pytest.raises(ValueError, match="layer_name"):
        gradcam_maps(net, images, 0, layer_name="conv3_2")  # this net has two blocks
    with pytest.raises(ValueError, match="target"):
        gradcam_maps(net, images, 99)
    with pytest.raises(ValueError, match="target"):
        guided_backprop_maps(net, images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="category"):
        gradcam_maps(net, images, "spaceship")
    with pytest.raises(ValueError, match="images"):
        gradcam_maps(net, images[:, :, :8, :8], 0)
    with pytest.raises(ValueError, match="smooth_sigma"):
        guided_backprop_maps(net, images, 0, smooth_sigma=-1)
    with pytest.raises(TypeError, match="backbone"):
        gradcam_maps(nn.Identity(), images, 0)


def _square(y0, x0, side, size=24):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def test_a_map_peaked_on_a_square_gives_that_square():
    sq = _square(6, 9, 8)
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    dist = torch.maximum((yy - 9.5).abs() - 3.5, (xx - 12.5).abs() - 3.5).clamp(min=0)  # 0 on the square
    peaked = torch.where(sq, 1.0, 0.45 * torch.exp(-dist / 3))[None] * 7.0 + 2.0  # any offset and gain
    maps = normalise_maps(peaked)
    assert _in_unit_range(maps)
    mask = saliency_masks(maps, 0.5)[0]
    assert mask_iou(mask, torch.stack([_square(0, 0, 3), sq])) == 1.0


def test_best_threshold_picks_the_right_level():
    # Each map: 1.0 on the core of the instance, 0.55 on its rim, 0.45 on a halo outside, 0 elsewhere.
    # Only thresholds in (0.45, 0.55] give exactly the instance; 0.5 is the one such candidate.
    maps, gts = [], []
    for k in range(4):
        sq = _square(2 + 3 * k, 4 + 2 * k, 8)
        core, halo = _square(4 + 3 * k, 6 + 2 * k, 4), _square(3 * k, 2 + 2 * k, 12)
        maps.append(torch.where(core, 1.0, torch.where(sq, 0.55, torch.where(halo, 0.45, 0.0))))
        gts.append(torch.stack([sq, _square(18, 0, 4)]) if k % 2 else torch.stack([sq]))
    maps = torch.stack(maps)
    thresholds = [round(0.1 * i, 1) for i in range(1, 10)]
    t, iou = best_threshold(maps, gts, thresholds)
    assert t == 0.5 and iou == pytest.approx(1.0)
    t, iou = best_threshold(maps, gts, [0.3, 0.9])
    assert t == pytest.approx(0.3) and iou == pytest.approx(64 / 144)
    with pytest.raises(ValueError, match="gt_masks_list"):
        best_threshold(maps, gts[:2], thresholds)
    with pytest.raises(ValueError, match="thresholds"):
        best_threshold(maps, gts, [])
    with pytest.raises(ValueError, match="thresholds"):
        best_threshold(maps, gts, ["high"])
    with pytest.raises(ValueError, match="maps"):
        best_threshold(maps[0], gts, thresholds)
