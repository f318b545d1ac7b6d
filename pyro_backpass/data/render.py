"""Render a :class:`~pyro_backpass.data.mesh.Mesh` to an RGB image in ``[0, 1]`` and an exact mask.

No display, no OpenGL: a scan-line rasteriser in vectorised numpy. Each triangle is split into
pixel rows, each row's covered span is solved from the triangle's three edge functions, and the
covered (pixel, face) samples are enumerated with ``repeat``. Depth (``1/z``, affine in screen
space) is quantised into an int64 key together with the face index, so one ``maximum.at`` is the
z-buffer and ties break deterministically; ``bincount`` averages the sub-samples into pixels. The
results are torch tensors, moved to ``RenderConfig.device``.

**Why this, not embree ray casting or a torch rasteriser.** Measured on the 2-core development
machine, in one process (CPU time, one thread, 60 procedural airplanes of ~750 faces, 96×96 with
2×2 supersampling = 36,864 samples): this renderer 1.3 ms per image including shading; the same
algorithm with the z-buffer and compositing in torch 1.5 ms, and entirely in torch 2.5 ms (arrays
here hold 10^3-10^4 elements, where torch's per-call overhead dominates, and its intra-op threads
made it 10× slower on the busy machine); ``trimesh.ray.ray_pyembree`` ``intersects_first`` 7.0 ms
for the same rays before any shading, including its per-mesh scene build. Rasterising costs in
proportion to the covered area, which is small here. Nothing here needs a GPU.

**Image model.** Flat (per-face) Lambert plus ambient, lit from both sides (face normals are
flipped to face the camera, so meshes with inconsistent winding shade correctly):
``rgb = colour * (ambient + (1 - ambient) * max(0, n·l))``, with the light direction ``l`` given
in camera coordinates. The background is black (0).

**Supersampling and the mask.** The scene is rasterised at ``supersample × size`` and averaged
down, so thin wings cover partial pixels instead of aliasing away. ``mask`` is True where *any*
sub-sample hits the object. Because colours are positive and ``ambient > 0``, this makes the mask
exactly the set of non-black pixels: ``mask == image.amax(0) > 0``.

**Camera.** Object frame x forward, y left, z up (see :mod:`~pyro_backpass.data.mesh`). At
azimuth 0, elevation 0 the camera looks along +y at the object's right (-y) side with the nose to the
right; azimuth turns the object about z (counter-clockwise seen from above), elevation lifts the
camera to look down, roll turns the image plane. Camera coordinates: x right, y up, z depth away
from the camera. ``scale`` is the projected size of the unit radius at the object's centre in
half-image widths (for both cameras), so a unit-radius object with ``scale = 0.8`` spans at most
80% of the frame. A perspective camera sits at distance ``1 / sin(fov / 2)`` — the unit sphere
just fills its field of view — and the focal length is then set by ``scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pyro_backpass.data.mesh import Mesh

__all__ = ["RenderConfig", "View", "random_view", "render_mesh", "view_matrix"]


@dataclass(frozen=True)
class RenderConfig:
    """How to render (the same for every object of a data set).

    :param int size: output image side ``S`` in pixels.
    :param str camera: ``'perspective'`` or ``'orthographic'``.
    :param float fov: perspective field of view in degrees (sets the strength of perspective only).
    :param float ambient: ambient fraction in ``(0, 1]``; the rest is Lambert diffuse.
    :param int supersample: sub-samples per pixel side (1 = none).
    :param str device: torch device the output tensors are moved to (rasterising runs on the CPU).
    """

    size: int = 96
    camera: str = "perspective"
    fov: float = 35.0
    ambient: float = 0.3
    supersample: int = 2
    device: str = "cpu"

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 4:
            raise ValueError(f"size: expected an int >= 4, got {self.size!r}")
        if self.camera not in ("perspective", "orthographic"):
            raise ValueError(f"camera: expected 'perspective' or 'orthographic', got {self.camera!r}")
        if not 0 < self.fov < 170:
            raise ValueError(f"fov: expected degrees in (0, 170), got {self.fov!r}")
        if not 0 < self.ambient <= 1:
            raise ValueError(f"ambient: expected a value in (0, 1], got {self.ambient!r}")
        if not isinstance(self.supersample, int) or self.supersample < 1:
            raise ValueError(f"supersample: expected an int >= 1, got {self.supersample!r}")


@dataclass(frozen=True)
class View:
    """Pose, placement, colour and light of one render.

    :param float azimuth, elevation, roll: degrees (see the module docstring for the convention).
    :param float scale: projected unit radius in half-image widths.
    :param tuple light: direction towards the light in camera coordinates (x right, y up,
        z away from the camera; so a light behind the viewer has negative z). Normalised on use.
    :param tuple colour: RGB albedo in ``[0, 1]``, not all zero.
    :param tuple offset: ``(dx, dy)`` shift of the object centre in image fractions (right, down).
    """

    azimuth: float = 30.0
    elevation: float = 30.0
    roll: float = 0.0
    scale: float = 0.8
    light: tuple = (-0.3, 0.6, -0.75)
    colour: tuple = (0.8, 0.8, 0.8)
    offset: tuple = (0.0, 0.0)

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"scale: expected a value > 0, got {self.scale!r}")
        if len(self.light) != 3 or not np.linalg.norm(self.light) > 0:
            raise ValueError(f"light: expected a non-zero 3-vector, got {self.light!r}")
        c = np.asarray(self.colour, dtype=float)
        if c.shape != (3,) or c.min() < 0 or c.max() > 1 or c.max() <= 0:
            raise ValueError(f"colour: expected RGB in [0, 1], not all zero, got {self.colour!r}")
        if len(self.offset) != 2:
            raise ValueError(f"offset: expected (dx, dy), got {self.offset!r}")

    @classmethod
    def from_dict(cls, d: dict) -> View:
        """Inverse of :meth:`as_dict` (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})

    def as_dict(self) -> dict:
        """JSON-ready plain values (the view is recorded in every rendered object's params)."""
        return {"azimuth": float(self.azimuth), "elevation": float(self.elevation), "roll": float(self.roll),
                "scale": float(self.scale), "light": [float(x) for x in self.light],
                "colour": [float(x) for x in self.colour], "offset": [float(x) for x in self.offset]}


def random_view(rng: np.random.Generator, azimuth=(0.0, 360.0), elevation=(10.0, 60.0), roll=(-15.0, 15.0),
                scale=(0.55, 0.9), offset: float = 0.05, min_value: float = 0.45) -> View:
    """Draw a random :class:`View` from ``rng`` (each range is ``(low, high)``, uniform).

    The colour is drawn in HSV with value ``>= min_value`` so objects stand out from black. The
    light comes from the viewer's side, above more often than below.
    """
    az, el, ro, sc = (rng.uniform(*r) for r in (azimuth, elevation, roll, scale))
    dx, dy = rng.uniform(-offset, offset, size=2)
    light = np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 1), -rng.uniform(0.4, 1)])
    h, s, v = rng.uniform(0, 1), rng.uniform(0, 0.9), rng.uniform(min_value, 1)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    rgb = v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)
    return View(float(az), float(el), float(ro), float(sc), tuple(light / np.linalg.norm(light)),
                tuple(float(x) for x in rgb), (float(dx), float(dy)))


def view_matrix(view: View) -> np.ndarray:
    """``(3, 3)`` rotation from object coordinates to camera coordinates (x right, y up, z depth)."""
    a, e, r = (math.radians(x) for x in (view.azimuth, view.elevation, view.roll))
    ca, sa, ce, se, cr, sr = math.cos(a), math.sin(a), math.cos(e), math.sin(e), math.cos(r), math.sin(r)
    yaw = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    base = np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])  # object x → right, z → up, y → depth
    # Camera raised by e looking down: far points move up, top points move closer.
    elev = np.array([[1, 0, 0], [0, ce, se], [0, -se, ce]])
    roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return roll @ elev @ base @ yaw


def render_mesh(mesh: Mesh, view: View, config: RenderConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``mesh`` (assumed roughly unit radius about the origin) as seen from ``view``.

    :returns: ``image`` float32 ``(3, S, S)`` in ``[0, 1]`` on a black background, and ``mask``
        bool ``(S, S)`` with ``mask == image.amax(0) > 0``.
    """
    config = config or RenderConfig()
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a pyro_backpass.data.Mesh, got {type(mesh).__name__}")
    if not isinstance(view, View):
        raise TypeError(f"view: expected a pyro_backpass.data.View, got {type(view).__name__}")
    S, ss, R = config.size, config.supersample, config.size * config.supersample
    vc = mesh.vertices @ view_matrix(view).T  # (V, 3) camera coordinates
    if config.camera == "perspective":
        dist = 1.0 / math.sin(math.radians(config.fov) / 2)
        if not ((z := vc[:, 2] + dist) > 1e-3).all():
            raise ValueError("mesh: extends behind the perspective camera; normalise it to unit radius first")
        w = dist / z
        u, v, q = vc[:, 0] * w, vc[:, 1] * w, 1.0 / z  # 1/z is affine in screen space: larger = nearer
        cam = np.array([0.0, 0.0, -dist])
    else:
        u, v, q = vc[:, 0], vc[:, 1], -vc[:, 2]
        cam = None
    half = 0.5 * R
    scr = np.stack([(u * view.scale + 1.0 + 2 * view.offset[0]) * half,
                    (1.0 - v * view.scale + 2 * view.offset[1]) * half, q], 1)
    shade = _face_shade(vc[mesh.faces], view, config.ambient, cam)
    pix, key = _samples(scr[mesh.faces], R, float(q.min()), float(q.max()))
    # Z-buffer: a max-scatter of (nearness, face) keys per pixel; the winning sample of each covered
    # pixel is the one whose key survived (keys are unique: they hold the face index).
    best = np.full(R * R, -1, dtype=np.int64)
    np.maximum.at(best, pix, key)
    win = best[pix] == key
    pix, face = pix[win], key[win] & ((1 << 24) - 1)
    # Average the sub-samples into output pixels; background contributes 0 and no count.
    out = (pix // (R * ss)) * S + (pix % R) // ss
    total = np.bincount(out, weights=shade[face], minlength=S * S) * (1.0 / (ss * ss))
    mask = np.bincount(out, minlength=S * S) > 0
    image = np.minimum(np.asarray(view.colour, dtype=np.float32)[:, None] * total.astype(np.float32), 1.0)
    return (torch.from_numpy(image.reshape(3, S, S)).to(config.device),
            torch.from_numpy(mask.reshape(S, S)).to(config.device))


def _face_shade(tri: np.ndarray, view: View, ambient: float, cam) -> np.ndarray:
    """``(F,)`` Lambert + ambient shade of each face ``tri`` ``(F, 3, 3)`` (camera coordinates),
    lit from both sides: the normal is turned towards the camera (``cam``; None = orthographic)."""
    e, f = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]  # cross product by columns: np.cross is slow here
    n = np.stack([e[:, 1] * f[:, 2] - e[:, 2] * f[:, 1], e[:, 2] * f[:, 0] - e[:, 0] * f[:, 2],
                  e[:, 0] * f[:, 1] - e[:, 1] * f[:, 0]], 1)
    to_cam = (cam - tri[:, 0]) if cam is not None else np.array([0.0, 0.0, -1.0])
    light = np.asarray(view.light, dtype=np.float64) / np.linalg.norm(view.light)
    # cos(n, l) with n flipped where it faces away from the camera; zero-area faces get ambient.
    nl = n @ light
    to_cam = np.broadcast_to(to_cam, n.shape)
    flip = np.where(n[:, 0] * to_cam[:, 0] + n[:, 1] * to_cam[:, 1] + n[:, 2] * to_cam[:, 2] < 0, -1.0, 1.0)
    norm = np.sqrt(n[:, 0] ** 2 + n[:, 1] ** 2 + n[:, 2] ** 2)
    lam = np.minimum(np.maximum(flip * nl / np.maximum(norm, 1e-30), 0.0), 1.0)
    return ambient + (1.0 - ambient) * lam


def _clip(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """``clip`` to ``[low, high]`` as int64, via the ufuncs (``np.clip``'s wrapper costs more here)."""
    return np.minimum(np.maximum(x, low), high).astype(np.int64)


def _samples(tri: np.ndarray, R: int, qmin: float, qmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Every (pixel, face) sample of an ``R × R`` grid covered by a screen triangle.

    Triangles are split into pixel rows, and each row's covered span is solved from the three edge
    functions, so only covered pixel centres (at ``i + 0.5``) are ever enumerated.

    :param tri: ``(F, 3, 3)``: per face and vertex, screen ``x``, ``y`` (pixels) and nearness ``q``.
    :returns: ``pix`` ``(N,)`` row-major pixel indices and ``key`` ``(N,)`` int64: quantised ``q``
        (``>= 1``) in the high bits and the face index in the low 24, so a scatter-amax picks the
        nearest face and breaks exact ties deterministically (larger index).
    """
    n_faces = len(tri)
    if n_faces >= 1 << 24:
        raise ValueError(f"mesh: expected fewer than {1 << 24} faces, got {n_faces}")
    # Columns, not axis-1 reductions: numpy reduces length-3 rows slowly.
    x0, x1, x2 = tri[:, 0, 0], tri[:, 1, 0], tri[:, 2, 0]
    y0, y1, y2 = tri[:, 0, 1], tri[:, 1, 1], tri[:, 2, 1]
    xmin, xmax = np.minimum(np.minimum(x0, x1), x2), np.maximum(np.maximum(x0, x1), x2)
    top = _clip(np.ceil(np.minimum(np.minimum(y0, y1), y2) - 0.5), 0, R)
    h = _clip(np.floor(np.maximum(np.maximum(y0, y1), y2) - 0.5), -1, R - 1) - top + 1
    # Signed double area; edge-on and zero-area triangles cover nothing.
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    keep = np.flatnonzero((h > 0) & (np.abs(area) > 1e-9) & (xmax > 0) & (xmin < R))
    if keep.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = tri[keep]
    x, y, qq = t[:, :, 0], t[:, :, 1], t[:, :, 2]
    top, h = top[keep], h[keep]
    # Barycentric i = ba_i * px + bb_i * py + bc_i (from the edge opposite vertex i); q is affine too.
    inv = (1.0 / area[keep])[:, None]
    xs, ys, xt, yt = x[:, [1, 2, 0]], y[:, [1, 2, 0]], x[:, [2, 0, 1]], y[:, [2, 0, 1]]
    ba, bb, bc = (ys - yt) * inv, (xt - xs) * inv, (xs * yt - xt * ys) * inv
    # On the row through py, barycentric_i >= 0 is px >= (or <=, as ba_i > 0 or < 0) B_i * py + C_i.
    # Bounds that do not apply are -inf / +inf; rows lie within the face's y extent, so an edge
    # with ba_i == 0 (horizontal) never excludes one. Clamping to the face's x extent keeps sliver
    # faces robust. Rows of ``per_face`` (17 × F', one gather serves a row's every need):
    # 0-2 lower-bound slopes, 3-5 intercepts, 6-8 upper-bound slopes, 9-11 intercepts,
    # 12-13 x extent, 14-16 q = qa * px + qb * py + qc.
    per_face = np.empty((17, len(keep)))
    with np.errstate(divide="ignore", invalid="ignore"):
        slope, icpt = (-bb / ba).T, (-bc / ba).T
    pos, neg = (ba > 0).T, (ba < 0).T
    per_face[0:3] = np.where(pos, slope, 0.0)
    per_face[3:6] = np.where(pos, icpt, -np.inf)
    per_face[6:9] = np.where(neg, slope, 0.0)
    per_face[9:12] = np.where(neg, icpt, np.inf)
    per_face[12], per_face[13] = xmin[keep], xmax[keep]
    for row_, coef in ((14, ba), (15, bb), (16, bc)):
        per_face[row_] = coef[:, 0] * qq[:, 0] + coef[:, 1] * qq[:, 1] + coef[:, 2] * qq[:, 2]
    # Rows: one per (face, covered pixel row).
    face = np.repeat(np.arange(len(keep)), h)
    row = np.repeat(top - (np.cumsum(h) - h), h) + np.arange(len(face))
    yc = row + 0.5
    g = per_face[:, face]  # (17, rows), each row contiguous
    lo = np.maximum(np.maximum(g[12], g[0] * yc + g[3]), np.maximum(g[1] * yc + g[4], g[2] * yc + g[5]))
    hi = np.minimum(np.minimum(g[13], g[6] * yc + g[9]), np.minimum(g[7] * yc + g[10], g[8] * yc + g[11]))
    # Overlap by 1e-4 px so that pixel centres on a shared edge are never missed by both faces.
    jl = _clip(np.ceil(lo - 0.5 - 1e-4), 0, R)
    n = _clip(np.floor(hi - 0.5 + 1e-4), -1, R - 1) - jl + 1
    n[n < 0] = 0
    # Pixels: one per (row, covered column); pixel index and q are affine in the running index k.
    k = np.arange(int(n.sum()))
    shift = jl - (np.cumsum(n) - n)  # column = shift[row] + k
    pix = np.repeat(row * R + shift, n) + k
    qa_r = g[14]
    q0 = qa_r * (shift + 0.5) + g[15] * yc + g[16]
    qv = np.repeat(q0, n) + np.repeat(qa_r, n) * k
    levels = (1 << 32) - 2
    level = _clip((qv - qmin) * (levels / max(qmax - qmin, 1e-12)), 0, levels) + 1
    return pix, (level << 24) | np.repeat(keep[face], n)
