"""Meshes: primitives, normalisation, load_mesh on user files and its errors."""

from pathlib import Path

import numpy as np
import pytest

from pyro_backpass.data import Mesh, load_mesh
from pyro_backpass.data.mesh import box, lathe, loft, merge

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "meshes"
AIRPLANES = sorted((SHARED / "airplanes").glob("*.*")) if (SHARED / "airplanes").is_dir() else []
needs_shared = pytest.mark.skipif(not AIRPLANES, reason=f"shared meshes folder absent: {SHARED}")


def _write_box(path: Path, size=(2.0, 1.0, 0.5)) -> Path:
    box((0, 0, 0), size).transformed(translate=(5.0, -3.0, 1.0)).to_trimesh().export(str(path))
    return path


def test_mesh_validates_shapes_and_indices():
    with pytest.raises(ValueError, match="vertices"):
        Mesh(np.zeros((3, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="faces"):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 3]]))


def test_primitives_are_closed_and_merge_offsets_faces():
    b = box((0, 0, 0), (1, 2, 3))
    assert np.allclose(b.bounds, [[-0.5, -1, -1.5], [0.5, 1, 1.5]])
    assert b.to_trimesh().is_watertight
    c = lathe([1.0, 1.0], [0.0, 1.0], 12, axis="z")
    assert c.to_trimesh().is_watertight
    m = merge([b, c])
    assert len(m.vertices) == len(b.vertices) + len(c.vertices)
    assert m.faces.max() == len(m.vertices) - 1
    tube = loft(np.random.default_rng(0).normal(size=(5, 6, 3)), closed_path=True)
    assert len(tube.faces) == 5 * 6 * 2


def test_normalized_is_centred_unit_radius():
    m = box((3, 4, 5), (2, 1, 1)).normalized()
    assert np.allclose(m.bounds.mean(0), 0, atol=1e-12)
    assert np.isclose(np.linalg.norm(m.vertices, axis=1).max(), 1.0)


@pytest.mark.parametrize("ext", ["obj", "ply", "stl", "off"])
def test_load_mesh_normalises_and_aligns_principal_axes(tmp_path, ext):
    m = load_mesh(_write_box(tmp_path / f"box.{ext}"))
    ext_ = np.ptp(m.vertices, axis=0)
    assert np.isclose(np.linalg.norm(m.vertices, axis=1).max(), 1.0)
    assert np.allclose(m.bounds.mean(0), 0, atol=1e-9)
    assert ext_[0] > ext_[1] > ext_[2]  # longest → x (forward), shortest → z (up)


def test_load_mesh_forward_and_up(tmp_path):
    path = _write_box(tmp_path / "box.ply")
    m = load_mesh(path, forward="+y", up="x")  # file's y (1.0) → x, file's x (2.0) → z
    assert np.allclose(np.ptp(m.vertices, axis=0) / np.ptp(m.vertices, axis=0).max(), [0.5, 0.25, 1.0])
    m = load_mesh(path, up=(0, 1, 0))
    assert np.argmax(np.ptp(m.vertices, axis=0)) == 0 and np.argmin(np.ptp(m.vertices, axis=0)) == 1
    with pytest.raises(ValueError, match="forward"):
        load_mesh(path, forward="w")


def test_load_mesh_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.obj"
    empty.write_text("")
    unknown = tmp_path / "thing.xyzmesh"
    unknown.write_text("v 0 0 0\n")
    flat = tmp_path / "flat.obj"
    flat.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")  # collinear: zero area
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"not a gltf file at all")
    for path, what in [(empty, "no triangles"), (unknown, "unknown mesh file type"), (flat, "zero area"),
                       (tmp_path / "missing.obj", "no such file"), (junk, "cannot read")]:
        with pytest.raises(ValueError, match=what) as err:
            load_mesh(path)
        assert path.name in str(err.value)


@needs_shared
@pytest.mark.parametrize("path", AIRPLANES, ids=lambda p: p.name)
def test_shared_airplanes_load_flat_and_unit_radius(path):
    m = load_mesh(path)
    assert len(m.faces) > 100 and np.isclose(np.linalg.norm(m.vertices, axis=1).max(), 1.0)
    ext = np.ptp(m.vertices, axis=0)
    assert ext[2] < 0.5 * ext[:2].min()  # an airplane is flat: the smallest principal axis is up
