"""Triangle meshes: a small container, primitive builders for procedural objects, and ``load_mesh``.

Conventions shared by every object in :mod:`pyro_backpass.data`:

* A :class:`Mesh` holds numpy arrays: ``vertices`` of shape ``(V, 3)`` (float64) and ``faces`` of
  shape ``(F, 3)`` (int64, indices into ``vertices``). Numpy, not torch, because meshes are built
  part by part from many tiny arrays, where numpy's per-call overhead is lower; the renderer moves
  them to torch once.
* The object frame is **x forward** (an airplane's nose points to +x), **y left** (span), **z up**.
* :meth:`Mesh.normalized` centres the axis-aligned bounding box at the origin and scales so the
  farthest vertex is at distance 1 (unit radius). Procedural objects and loaded meshes are both
  normalised this way, so a view's ``scale`` means the same for all of them.
* Winding is not relied on: the renderer lights both sides of every face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["Mesh", "load_mesh", "merge", "loft", "lathe", "box", "rotation_matrix"]


@dataclass(frozen=True, eq=False)
class Mesh:
    """An indexed triangle mesh.

    :param np.ndarray vertices: ``(V, 3)`` float64 positions.
    :param np.ndarray faces: ``(F, 3)`` int64 vertex indices.
    """

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self):
        v = np.ascontiguousarray(self.vertices, dtype=np.float64)
        f = np.ascontiguousarray(self.faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices: expected shape (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces: expected shape (F, 3), got {f.shape}")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"faces: expected indices in [0, {len(v)}), got [{f.min()}, {f.max()}]")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)

    @classmethod
    def _trusted(cls, vertices: np.ndarray, faces: np.ndarray) -> Mesh:
        """No checks, for arrays built here: objects assemble ~40 parts, and checks cost a third of that."""
        m = object.__new__(cls)
        object.__setattr__(m, "vertices", vertices)
        object.__setattr__(m, "faces", faces)
        return m

    @property
    def face_areas(self) -> np.ndarray:
        """``(F,)`` triangle areas."""
        t = self.vertices[self.faces]
        return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)

    @property
    def area(self) -> float:
        return float(self.face_areas.sum())

    @property
    def bounds(self) -> np.ndarray:
        """``(2, 3)``: minimum and maximum corner."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    def transformed(self, matrix=None, translate=None, scale=None) -> Mesh:
        """Return ``scale * (matrix @ v) + translate`` for every vertex (each part optional).

        :param matrix: ``(3, 3)`` linear map; ``scale``: a scalar or per-axis ``(3,)``.
        """
        v = self.vertices
        if matrix is not None:
            v = v @ np.asarray(matrix, dtype=np.float64).T
        if scale is not None:
            v = v * np.asarray(scale, dtype=np.float64)
        if translate is not None:
            v = v + np.asarray(translate, dtype=np.float64)
        return Mesh._trusted(v, self.faces)

    def mirrored_y(self) -> Mesh:
        """Mirror across the x-z plane (left part → right part); winding is irrelevant to the renderer."""
        return Mesh._trusted(self.vertices * np.array([1.0, -1.0, 1.0]), self.faces)

    def normalized(self) -> Mesh:
        """Centre the bounding box at the origin and scale to unit radius (farthest vertex at 1)."""
        centre = 0.5 * (self.vertices.min(0) + self.vertices.max(0))
        v = self.vertices - centre
        r = float(np.sqrt((v[:, 0] ** 2 + v[:, 1] ** 2 + v[:, 2] ** 2).max()))
        if not np.isfinite(r) or r <= 0:
            raise ValueError(f"mesh: cannot normalise a mesh with radius {r}")
        return Mesh._trusted(v / r, self.faces)

    def to_trimesh(self):
        """The same mesh as a ``trimesh.Trimesh`` (no processing)."""
        import trimesh  # only needed here and in load_mesh
        return trimesh.Trimesh(self.vertices, self.faces, process=False)


def merge(meshes) -> Mesh:
    """Concatenate meshes into one (no welding)."""
    meshes = list(meshes)
    if not meshes:
        raise ValueError("meshes: expected at least one mesh, got none")
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return Mesh._trusted(np.concatenate([m.vertices for m in meshes]),
                         np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]))


def rotation_matrix(axis: str, degrees: float) -> np.ndarray:
    """``(3, 3)`` right-handed rotation about ``'x'``, ``'y'`` or ``'z'``."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


@lru_cache(maxsize=256)
def _ring_faces(n_rings: int, n: int, closed_path: bool) -> np.ndarray:
    """Two triangles per quad between consecutive rings of ``n`` points (rings wrap around).

    Cached (procedural objects reuse a few topologies); the result is read-only.
    """
    r = np.arange(n_rings if closed_path else n_rings - 1)[:, None]
    k = np.arange(n)[None, :]
    a = r * n + k
    b = r * n + (k + 1) % n
    c = ((r + 1) % n_rings) * n + (k + 1) % n
    d = ((r + 1) % n_rings) * n + k
    out = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    out.setflags(write=False)
    return out


@lru_cache(maxsize=256)
def _fan(n: int) -> np.ndarray:
    """A fan of ``n`` triangles from vertex ``n`` (the centre) around a ring ``0..n-1`` (read-only)."""
    k = np.arange(n)
    out = np.stack([np.full(n, n), k, (k + 1) % n], -1)
    out.setflags(write=False)
    return out


def loft(rings: np.ndarray, cap_start: bool = True, cap_end: bool = True, closed_path: bool = False) -> Mesh:
    """Skin a sequence of closed cross-sections.

    :param np.ndarray rings: ``(R, N, 3)``: ``R`` cross-sections of ``N`` points each, in order.
    :param bool closed_path: also join the last ring to the first (a torus-like tube).
    :param cap_start, cap_end: close the first/last ring with a fan to its centroid.
    """
    rings = np.asarray(rings, dtype=np.float64)
    n_rings, n = rings.shape[:2]
    verts = [rings.reshape(-1, 3)]
    faces = [_ring_faces(n_rings, n, closed_path)]
    nv = n_rings * n
    fan = _fan(n)
    for flag, ring, base in ((cap_start, 0, 0), (cap_end, n_rings - 1, (n_rings - 1) * n)):
        if flag and not closed_path:
            verts.append(rings[ring].mean(0, keepdims=True))
            # Fan vertex indices: ring points at base..base+n-1, centre at nv.
            faces.append(np.where(fan == n, nv, fan + base))
            nv += 1
    return Mesh._trusted(np.concatenate(verts), np.concatenate(faces).astype(np.int64, copy=False))


def lathe(radii, positions, n_seg: int = 16, axis: str = "z", scale_y: float = 1.0,
          cap_start: bool = True, cap_end: bool = True) -> Mesh:
    """Surface of revolution: circles of ``radii[i]`` at ``positions[i]`` along ``axis``.

    :param scale_y: squash the cross-section's second coordinate (elliptic sections).
    """
    radii = np.asarray(radii, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    t = np.linspace(0.0, 2 * np.pi, n_seg, endpoint=False)
    c, s = np.cos(t), np.sin(t) * scale_y
    rings = np.zeros((len(radii), n_seg, 3))
    # Axis order (along, cross-1, cross-2) chosen so each frame is right-handed.
    along, u, w = {"x": (0, 1, 2), "y": (1, 2, 0), "z": (2, 0, 1)}[axis]
    rings[:, :, along] = positions[:, None]
    rings[:, :, u] = radii[:, None] * c
    rings[:, :, w] = radii[:, None] * s
    return loft(rings, cap_start=cap_start, cap_end=cap_end)


def box(centre, size) -> Mesh:
    """Axis-aligned box with the given centre ``(3,)`` and full extents ``(3,)``."""
    cx, cy, cz = centre
    sx, sy, sz = np.asarray(size, dtype=np.float64) / 2
    ring = np.array([[-sx, -sy], [sx, -sy], [sx, sy], [-sx, sy]])
    rings = np.zeros((2, 4, 3))
    rings[:, :, :2] = ring + [cx, cy]
    rings[0, :, 2], rings[1, :, 2] = cz - sz, cz + sz
    return loft(rings)


_AXES = {"x": (1.0, 0, 0), "y": (0, 1.0, 0), "z": (0, 0, 1.0)}


def _axis(name: str, spec, path) -> np.ndarray:
    """An axis given as ``'+x'``, ``'-z'``, ``'y'`` or a 3-vector, as a unit vector."""
    if isinstance(spec, str):
        s = spec.strip().lower()
        sign = -1.0 if s.startswith("-") else 1.0
        if s.lstrip("+-") not in _AXES:
            raise ValueError(f"{name}: expected '+x', '-y', 'z', ... or a 3-vector, got {spec!r} (loading {path})")
        return sign * np.array(_AXES[s.lstrip("+-")])
    vec = np.asarray(spec, dtype=np.float64)
    if vec.shape != (3,) or not np.linalg.norm(vec) > 0:
        raise ValueError(f"{name}: expected a non-zero 3-vector or an axis name, got {spec!r} (loading {path})")
    return vec / np.linalg.norm(vec)


def _principal_frame(mesh: Mesh, forward, up) -> np.ndarray:
    """``(3, 3)`` rows: the new x (forward), y (left) and z (up) axes in the file's coordinates.

    Unspecified axes come from area-weighted PCA of the face centroids: largest spread → forward,
    smallest → up (an airplane is flat; most objects are longest along their front-back or
    left-right direction). Signs are fixed by the third moment so the result is deterministic.
    """
    w = mesh.face_areas
    c = mesh.vertices[mesh.faces].mean(1)
    c = c - (w[:, None] * c).sum(0) / w.sum()
    cov = (w[:, None, None] * c[:, :, None] * c[:, None, :]).sum(0)

    def spread_order(basis):  # principal directions within span(basis), largest first, signs fixed
        evals, evecs = np.linalg.eigh(basis @ cov @ basis.T)
        dirs = (evecs[:, ::-1].T @ basis)
        skew = ((c @ dirs.T) ** 3 * w[:, None]).sum(0)
        return dirs * np.where(skew < 0, -1.0, 1.0)[:, None]

    if forward is not None and up is not None:
        x = forward
        z = up - (up @ x) * x
        if np.linalg.norm(z) < 1e-6:
            raise ValueError("forward and up: expected two different directions, got parallel ones")
        z = z / np.linalg.norm(z)
    elif forward is not None:
        x = forward
        z = spread_order(_orth_complement(x))[-1]
    elif up is not None:
        z = up
        x = spread_order(_orth_complement(z))[0]
    else:
        dirs = spread_order(np.eye(3))
        x, z = dirs[0], dirs[2]
    return np.stack([x, np.cross(z, x), z])


def _orth_complement(a: np.ndarray) -> np.ndarray:
    """``(2, 3)`` orthonormal basis of the plane orthogonal to unit vector ``a``."""
    q, _ = np.linalg.qr(np.stack([a, *np.eye(3)], 1))
    return q[:, 1:3].T


def load_mesh(path, forward=None, up=None) -> Mesh:
    """Load any mesh trimesh reads (OBJ, PLY, STL, OFF, GLB, ...) into the procedural objects' frame.

    Scenes are concatenated into one mesh; the mesh is rotated so that ``forward`` becomes +x and
    ``up`` becomes +z (each given in the file's coordinates as ``'+x'``, ``'-y'``, ... or a
    3-vector; principal axes are used for whichever is not given), then centred and scaled to unit
    radius (:meth:`Mesh.normalized`).

    :raises ValueError: naming the file, if it is missing or unreadable, of an unknown type, empty,
        or of zero area.
    """
    import trimesh  # imported here: only loading needs it

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"load_mesh: no such file: {p}")
    ext = p.suffix.lower().lstrip(".")
    if ext not in trimesh.available_formats():
        raise ValueError(f"load_mesh: unknown mesh file type {p.suffix!r} for {p}; "
                         f"trimesh reads: {', '.join(sorted(trimesh.available_formats()))}")
    try:
        tm = trimesh.load(str(p), force="mesh")
    except Exception as err:  # trimesh raises many types for corrupt files
        raise ValueError(f"load_mesh: cannot read {p}: {type(err).__name__}: {err}") from err
    faces = getattr(tm, "faces", None)
    if faces is None or len(faces) == 0 or len(tm.vertices) == 0:
        raise ValueError(f"load_mesh: {p} holds no triangles (empty or not a surface mesh)")
    mesh = Mesh(np.asarray(tm.vertices), np.asarray(faces))
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"load_mesh: {p} has non-finite vertex coordinates")
    area = mesh.area
    scale = float(np.ptp(mesh.vertices, axis=0).max())
    if not area > 1e-12 * max(scale, 1e-30) ** 2:
        raise ValueError(f"load_mesh: {p} is degenerate: its surface area is {area:g} (zero area)")
    fwd = None if forward is None else _axis("forward", forward, p)
    upv = None if up is None else _axis("up", up, p)
    frame = _principal_frame(mesh, fwd, upv)
    return mesh.transformed(matrix=frame).normalized()
