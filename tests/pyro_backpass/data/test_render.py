"""The rasteriser: image range, exact masks, cameras, determinism, geometry checks."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_backpass.data import RenderConfig, View, random_view, render_mesh
from pyro_backpass.data.mesh import Mesh, box, lathe, merge


def _square() -> Mesh:
    """A unit square in the object's x-z plane (faces the camera at azimuth 0, elevation 0)."""
    corners = np.array([[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5]])
    return Mesh(corners, np.array([[0, 1, 2], [0, 2, 3]]))


@pytest.fixture(scope="module")
def thing():
    return merge([box((0, 0, 0), (1.6, 0.3, 0.3)), lathe([0.3, 0.3], [-0.5, 0.5], 16, "y")]).normalized()


def test_image_and_mask_contract(thing):
    for seed in range(5):
        v = random_view(np.random.default_rng(seed))
        img, mask = render_mesh(thing, v)
        assert img.shape == (3, 96, 96) and img.dtype == torch.float32
        assert mask.shape == (96, 96) and mask.dtype == torch.bool
        assert 0 <= img.min() and img.max() <= 1
        assert mask.any()
        assert torch.equal(mask, img.amax(0) > 0)  # exact mask: the non-black pixels


def test_deterministic(thing):
    v = random_view(np.random.default_rng(3))
    a, ma = render_mesh(thing, v)
    b, mb = render_mesh(thing, v)
    assert torch.equal(a, b) and torch.equal(ma, mb)


def test_square_orthographic_area_and_position():
    """An axis-aligned square seen head-on covers exactly its projected area, where expected."""
    sq = _square()
    cfg = RenderConfig(size=64, camera="orthographic", supersample=1)
    _, mask = render_mesh(sq, View(azimuth=0, elevation=0, scale=0.5), cfg)
    # Side 1 at scale 0.5 spans a quarter of the image width: 16 × 16 pixels, centred.
    assert mask.sum() == 16 * 16
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (24, 39, 24, 39)
    _, shifted = render_mesh(sq, View(azimuth=0, elevation=0, scale=0.5, offset=(0.25, 0.0)), cfg)
    assert torch.nonzero(shifted, as_tuple=True)[1].min() == 40


def test_perspective_near_side_looks_bigger():
    """Two equal squares, one nearer the camera: only perspective makes the near one bigger."""
    sq = np.array([[-0.3, 0, -0.3], [0.3, 0, -0.3], [0.3, 0, 0.3], [-0.3, 0, 0.3]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    near = Mesh(sq + [-0.55, -0.6, 0], f)  # object -y faces the camera at azimuth 0
    far = Mesh(sq + [0.55, 0.6, 0], f)
    view = View(azimuth=0, elevation=0, scale=0.9)
    sizes = {}
    for cam in ("perspective", "orthographic"):
        cfg = RenderConfig(size=64, camera=cam)
        sizes[cam] = [int(render_mesh(m, view, cfg)[1].sum()) for m in (near, far)]
    assert sizes["orthographic"][0] == sizes["orthographic"][1]
    assert sizes["perspective"][0] > 1.3 * sizes["perspective"][1]


def test_occlusion_nearest_face_wins():
    """A red-lit near square in front of a far one: the overlap shows the near one's shading."""
    sq = np.array([[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5]])
    # Far square is tilted (darker under a head-on light), the near one faces the light.
    tilt = np.array([[math.cos(1.2), math.sin(1.2), 0], [-math.sin(1.2), math.cos(1.2), 0], [0, 0, 1]])
    far = Mesh(sq @ tilt.T + [0, 0.5, 0], [[0, 1, 2], [0, 2, 3]])
    near = Mesh(sq * 0.5 + [0, -0.5, 0], [[0, 1, 2], [0, 2, 3]])
    view = View(azimuth=0, elevation=0, scale=0.8, light=(0, 0, -1))
    for order in ((near, far), (far, near)):
        for cam in ("orthographic", "perspective"):
            img, mask = render_mesh(merge(order), view, RenderConfig(size=48, camera=cam))
            assert torch.isclose(img[0, 24, 24], torch.tensor(0.8), atol=1e-5)  # colour 0.8 × full light


def test_lambert_plus_ambient():
    sq = _square()
    cfg = RenderConfig(size=32, ambient=0.25, camera="orthographic")
    for light, expect in [((0, 0, -1), 1.0), ((0, 0, 1), 0.25), ((1, 0, -1), 0.25 + 0.75 / math.sqrt(2))]:
        img, _ = render_mesh(sq, View(azimuth=0, elevation=0, colour=(1.0, 0.5, 0.2), light=light), cfg)
        assert torch.allclose(img[:, 16, 16], torch.tensor([1.0, 0.5, 0.2]) * expect, atol=1e-5)


def test_supersampling_keeps_thin_parts():
    """A wire 0.3 px thick is found by 4×4 supersampling along its whole length."""
    wire = box((0, 0, 0.013), (2.0, 0.02, 0.02))  # along x, 0.02 × 0.45 × 32 ≈ 0.3 px thick
    cfg = RenderConfig(size=64, supersample=4, camera="orthographic")
    img, mask = render_mesh(wire, View(azimuth=0, elevation=0, scale=0.45), cfg)
    assert mask.any(0).sum() >= 28 and mask.sum(0).max() <= 2
    assert torch.equal(mask, img.amax(0) > 0) and img.max() < 0.5  # partial coverage: dimmer


def test_config_and_view_validation(thing):
    with pytest.raises(ValueError, match="camera"):
        RenderConfig(camera="fisheye")
    with pytest.raises(ValueError, match="ambient"):
        RenderConfig(ambient=0)
    with pytest.raises(ValueError, match="colour"):
        View(colour=(0, 0, 0))
    with pytest.raises(TypeError, match="mesh"):
        render_mesh("not a mesh", View())
    with pytest.raises(ValueError, match="behind"):
        render_mesh(thing.transformed(scale=5.0), View())


def test_random_view_ranges():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = random_view(rng)
        assert 0 <= v.azimuth < 360 and 10 <= v.elevation <= 60 and abs(v.roll) <= 15
        assert max(v.colour) >= 0.45 and v.light[2] < 0  # light from the viewer's side


@settings(max_examples=25, deadline=None)
@given(az=st.floats(0, 360), el=st.floats(-90, 90), roll=st.floats(-180, 180), scale=st.floats(0.1, 1.2),
       ss=st.sampled_from([1, 2, 3]), ortho=st.booleans())
def test_mask_is_exactly_the_lit_pixels_for_any_view(thing, az, el, roll, scale, ss, ortho):
    cfg = RenderConfig(size=40, supersample=ss, camera="orthographic" if ortho else "perspective")
    img, mask = render_mesh(thing, View(az, el, roll, scale, colour=(0.05, 0.0, 0.0)), cfg)
    assert torch.equal(mask, img.amax(0) > 0) and mask.any()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_outputs_on_the_configured_device(thing):
    v = random_view(np.random.default_rng(0))
    a, ma = render_mesh(thing, v)
    b, mb = render_mesh(thing, v, RenderConfig(device="cuda"))
    assert b.is_cuda and torch.equal(ma, mb.cpu()) and torch.allclose(a, b.cpu(), atol=1e-6)
