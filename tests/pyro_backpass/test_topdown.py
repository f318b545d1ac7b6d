import pytest
import torch
import torch.nn.functional as F

from pyro_backpass.specs import offsets_for_radius
from pyro_backpass.topdown import TopDownConv, TopTemplates, select_hypotheses, shift, shifted_views


def test_shift_moves_with_zero_fill():
    x = torch.arange(1.0, 10.0).reshape(3, 3)
    y = shift(x, 1, -1)
    expected = torch.tensor([[0.0, 0.0, 0.0], [2.0, 3.0, 0.0], [5.0, 6.0, 0.0]])
    assert torch.equal(y, expected)
    assert torch.equal(shift(x, 0, 0), x)
    assert torch.equal(shift(x, 3, 0), torch.zeros(3, 3))


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_shifted_views_match_shift(radius):
    x = torch.randn(2, 3, 5, 6)
    v = shifted_views(x, radius)
    for j in range(2 * radius + 1):
        for k in range(2 * radius + 1):
            assert torch.equal(v[..., j, k, :, :], shift(x, radius - j, radius - k))


@pytest.mark.parametrize("radius", [0, 1])
def test_select_hypotheses_enumerated_matches_loop(radius):
    comps = torch.randn(2, 4, 3, 5, 6)  # (B, K, C, H, W)
    D = (2 * radius + 1) ** 2
    g = torch.arange(4).reshape(4, 1, 1)
    d = torch.arange(D).reshape(D, 1, 1, 1)
    out = select_hypotheses(comps, radius, (g,), d)
    assert out.shape == (D, 4, 1, 2, 3, 5, 6)
    for di, (dy, dx) in enumerate(offsets_for_radius(radius)):
        for gi in range(4):
            for b in range(2):
                assert torch.equal(out[di, gi, 0, b], shift(comps[b, gi], dy, dx))


def test_select_hypotheses_per_element_values():
    comps = torch.randn(3, 4, 2, 5, 5)
    g = torch.tensor([3, 0, 2])
    d = torch.tensor([0, 4, 8])
    out = select_hypotheses(comps, 1, (g,), d)
    offs = offsets_for_radius(1)
    for b in range(3):
        assert torch.equal(out[b], shift(comps[b, g[b]], *offs[d[b]]))


@pytest.mark.parametrize("upsample", ["none", "nearest", "transposed"])
def test_topdown_conv_components_equal_per_component_convolutions(upsample):
    torch.manual_seed(0)
    out_size = (5, 6) if upsample == "none" else (10, 12)
    m = TopDownConv(3, 4, K=2, out_size=out_size, offset_radius=1, upsample=upsample)
    x = torch.randn(2, 3, 5, 6)
    comps = m.components(x)
    assert comps.shape == (2, 2, 4) + out_size
    for k in range(2):
        if upsample == "transposed":
            w = m.weight[:, k * 4:(k + 1) * 4]
            y = F.conv_transpose2d(x, w, m.bias[k * 4:(k + 1) * 4], stride=2, padding=1)
        else:
            xi = F.interpolate(x, size=out_size, mode="nearest") if upsample == "nearest" else x
            y = F.conv2d(xi, m.weight[k * 4:(k + 1) * 4], m.bias[k * 4:(k + 1) * 4], padding=1)
        torch.testing.assert_close(comps[:, k], torch.relu(y))
    phi = m(x, torch.tensor([1, 0]), torch.tensor([4, 0]))
    torch.testing.assert_close(phi[0], comps[0, 1])
    torch.testing.assert_close(phi[1], shift(comps[1, 0], -1, -1))


def test_top_templates_select_category_and_component():
    t = TopTemplates(n_categories=2, K=3, shape=(4, 5, 5), offset_radius=2)
    with torch.no_grad():
        t.template.sub_(0.5)
    out = t(torch.tensor([1]), torch.tensor([2]), torch.tensor([12]))  # δ = (0, 0)
    torch.testing.assert_close(out[0], torch.relu(t.template[1, 2]))
    assert (out >= 0).all()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="upsample"):
        TopDownConv(3, 4, 2, (5, 5), upsample="bilinear")
    with pytest.raises(ValueError, match="kernel_size"):
        TopDownConv(3, 4, 2, (5, 5), kernel_size=2)
