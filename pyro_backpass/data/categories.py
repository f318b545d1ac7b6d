"""Procedural object categories: airplane plus car, chair, mug, lamp and table.

Each category is a function ``rng -> (Mesh, params)`` whose parameters are drawn uniformly from
its documented ranges (``*_RANGES`` dicts below; lengths in the object's own units before
normalisation, angles in degrees) plus a few discrete choices. Meshes are returned normalised to
unit radius in the shared frame (x forward, y left, z up; see :mod:`~pyro_backpass.data.mesh`).
They serve as clutter in scenes and as classes for the backbone's classifier.
"""

from __future__ import annotations

import numpy as np

from pyro_backpass.data.airplane import make_airplane
from pyro_backpass.data.mesh import Mesh, box, lathe, loft, merge

__all__ = ["CATEGORIES", "CATEGORY_PARAM_RANGES", "make_mesh", "category_index"]

CATEGORIES = ("airplane", "car", "chair", "mug", "lamp", "table")

CAR_RANGES = {"width": (0.36, 0.48), "body_height": (0.12, 0.2), "cabin_height": (0.1, 0.18),
              "cabin_length": (0.35, 0.6), "cabin_offset": (-0.12, 0.08), "windshield_slant": (0.06, 0.2),
              "hood_drop": (0.0, 0.05), "wheel_radius": (0.08, 0.12), "ground_clearance": (0.02, 0.08)}
CHAIR_RANGES = {"seat_width": (0.4, 0.6), "seat_depth": (0.4, 0.6), "seat_height": (0.4, 0.55),
                "seat_thickness": (0.03, 0.08), "leg_thickness": (0.03, 0.06), "back_height": (0.35, 0.6),
                "back_tilt": (0.0, 15.0), "back_thickness": (0.03, 0.06), "arm_height": (0.15, 0.25)}
MUG_RANGES = {"radius": (0.3, 0.45), "height": (0.6, 1.1), "taper": (0.75, 1.05), "wall": (0.03, 0.06),
              "handle_size": (0.2, 0.35), "handle_thickness": (0.04, 0.07)}
LAMP_RANGES = {"base_radius": (0.15, 0.3), "base_height": (0.03, 0.08), "pole_height": (0.6, 1.1),
               "pole_radius": (0.015, 0.03), "shade_bottom": (0.2, 0.35), "shade_top": (0.08, 0.2),
               "shade_height": (0.18, 0.35), "arm_angle": (20.0, 60.0)}
TABLE_RANGES = {"length": (0.8, 1.6), "width": (0.5, 0.9), "height": (0.45, 0.8), "top_thickness": (0.03, 0.07),
                "leg_thickness": (0.03, 0.08), "leg_inset": (0.0, 0.08)}


def _draw(rng: np.random.Generator, ranges: dict) -> dict:
    lo, hi = np.array(list(ranges.values())).T
    return dict(zip(ranges, rng.uniform(lo, hi).tolist()))  # one vectorised draw, in key order


def _extrude(profile_xz: np.ndarray, width: float) -> Mesh:
    """Extrude a star-shaped side profile ``(N, 2)`` (x, z) symmetrically across ``y``."""
    n = len(profile_xz)
    rings = np.zeros((2, n, 3))
    rings[:, :, 0], rings[:, :, 2] = profile_xz[:, 0], profile_xz[:, 1]
    rings[0, :, 1], rings[1, :, 1] = -width / 2, width / 2
    return loft(rings)


def make_car(rng: np.random.Generator) -> tuple[Mesh, dict]:
    """Car: body and narrower cabin extruded from side profiles, four wheels. Length 1 along x."""
    p = _draw(rng, CAR_RANGES)
    p["style"] = ["sedan", "hatchback", "suv"][rng.integers(3)]
    g, bh, ch, r = p["ground_clearance"], p["body_height"], p["cabin_height"], p["wheel_radius"]
    if p["style"] == "suv":
        bh, ch = bh * 1.25, ch * 1.15
    z0, z1 = g + 0.3 * r, g + 0.3 * r + bh
    body = np.array([[-0.5, z0], [0.5, z0], [0.5, z1 - 0.4 * bh - p["hood_drop"]], [0.3, z1 - p["hood_drop"]],
                     [-0.45, z1], [-0.5, z1 - 0.3 * bh]])
    c0 = p["cabin_offset"] - p["cabin_length"] / 2
    c1 = p["cabin_offset"] + p["cabin_length"] / 2
    rear = -0.49 if p["style"] != "sedan" else max(c0, -0.45)
    cabin = np.array([[rear, z1 - 0.01], [c1 + p["windshield_slant"], z1 - 0.01], [c1, z1 + ch],
                      [rear + (0.02 if p["style"] != "sedan" else 0.1), z1 + ch]])
    parts = [_extrude(body, p["width"]), _extrude(cabin, p["width"] * 0.88)]
    wx = 0.5 - 1.6 * r
    for x in (wx, -wx):
        for s in (1, -1):
            y = s * p["width"] / 2  # wheels stand proud of the body sides
            parts.append(lathe([r, r], [y - 0.045, y + 0.045], 12, axis="y").transformed(translate=(x, 0, r)))
    return merge(parts).normalized(), p


def make_chair(rng: np.random.Generator) -> tuple[Mesh, dict]:
    """Chair: seat, four legs, tilted backrest (solid or slatted), optional armrests. Back at -x."""
    p = _draw(rng, CHAIR_RANGES)
    p["back_style"] = ["solid", "slats"][rng.integers(2)]
    p["arms"] = bool(rng.random() < 0.3)
    w, d, h, t, lt = p["seat_width"], p["seat_depth"], p["seat_height"], p["seat_thickness"], p["leg_thickness"]
    parts = [box((0, 0, h - t / 2), (d, w, t))]
    for x in (d / 2 - lt / 2, -d / 2 + lt / 2):
        for y in (w / 2 - lt / 2, -w / 2 + lt / 2):
            parts.append(box((x, y, (h - t) / 2), (lt, lt, h - t)))
    bh, tilt = p["back_height"], np.radians(p["back_tilt"])
    bt = p["back_thickness"]
    if p["back_style"] == "solid":
        back = [box((0, 0, bh / 2), (bt, w, bh))]
    else:
        back = [box((0, 0, bh - 0.05), (bt, w, 0.1))]
        back += [box((0, y, bh / 2), (bt, lt, bh)) for y in np.linspace(-w / 2 + lt / 2, w / 2 - lt / 2, 4)]
    rot = np.array([[np.cos(tilt), 0, -np.sin(tilt)], [0, 1, 0], [np.sin(tilt), 0, np.cos(tilt)]])
    parts += [b.transformed(matrix=rot, translate=(-d / 2 + bt / 2, 0, h)) for b in back]
    if p["arms"]:
        for y in (w / 2, -w / 2):
            parts.append(box((0, y, h + p["arm_height"]), (d * 0.9, 0.04, 0.03)))
            parts.append(box((d * 0.35, y, h + p["arm_height"] / 2), (0.03, 0.03, p["arm_height"])))
    return merge(parts).normalized(), p


def make_mug(rng: np.random.Generator) -> tuple[Mesh, dict]:
    """Mug: open cup (lathed outer and inner wall) and a handle (a bent tube) on the +y side."""
    p = _draw(rng, MUG_RANGES)
    r, h, wall = p["radius"], p["height"], p["wall"]
    rb = r * p["taper"]
    cup = lathe([rb, r, r - wall, rb - wall], [0.0, h, h, wall], 20, axis="z")
    hs, ht = p["handle_size"], p["handle_thickness"]
    ang = np.linspace(-np.pi / 2, np.pi / 2, 9)
    path = np.stack([np.zeros_like(ang), r - 0.01 + hs * np.cos(ang), h / 2 + hs * 1.1 * np.sin(ang)], 1)
    circ = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    # Tube cross-sections in the plane spanned by x and the path's normal direction.
    normal = np.stack([np.zeros_like(ang), np.cos(ang), 1.1 * np.sin(ang)], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    rings = (path[:, None, :] + ht * (np.cos(circ)[None, :, None] * np.array([1.0, 0, 0])
                                      + np.sin(circ)[None, :, None] * normal[:, None, :]))
    return merge([cup, loft(rings)]).normalized(), p


def make_lamp(rng: np.random.Generator) -> tuple[Mesh, dict]:
    """Desk/floor lamp: round base, pole (straight, or with an angled arm), conical shade."""
    p = _draw(rng, LAMP_RANGES)
    p["arm"] = bool(rng.random() < 0.5)
    bh, ph, pr = p["base_height"], p["pole_height"], p["pole_radius"]
    parts = [lathe([p["base_radius"], p["base_radius"] * 0.8], [0.0, bh], 16, axis="z"),
             lathe([pr, pr], [bh, bh + ph], 8, axis="z")]
    top = np.array([0.0, 0.0, bh + ph])
    if p["arm"]:
        a = np.radians(p["arm_angle"])
        arm_len = 0.35 * ph
        tip = top + arm_len * np.array([np.sin(a), 0.0, np.cos(a)])
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        parts.append(lathe([pr, pr], [0.0, arm_len], 8, axis="z").transformed(matrix=rot, translate=top))
        top = tip
    sh = p["shade_height"]
    shade = lathe([p["shade_bottom"], p["shade_top"]], [-sh * 0.6, sh * 0.4], 18, axis="z", cap_start=False)
    parts.append(shade.transformed(translate=top))
    return merge(parts).normalized(), p


def make_table(rng: np.random.Generator) -> tuple[Mesh, dict]:
    """Table: rectangular or round top on four legs, or a round top on a pedestal."""
    p = _draw(rng, TABLE_RANGES)
    p["style"] = ["rect", "round", "pedestal"][rng.integers(3)]
    L, W, H, tt, lt, ins = (p[k] for k in ("length", "width", "height", "top_thickness", "leg_thickness",
                                            "leg_inset"))
    if p["style"] == "rect":
        parts = [box((0, 0, H - tt / 2), (L, W, tt))]
    else:
        parts = [lathe([W / 2, W / 2], [H - tt, H], 24, axis="z")]
        L = W
    if p["style"] == "pedestal":
        parts += [lathe([lt, lt], [0.05, H - tt], 10, axis="z"), lathe([W * 0.3, W * 0.25], [0.0, 0.05], 16)]
    else:
        k = 0.7 if p["style"] == "round" else 1.0
        for x in (1, -1):
            for y in (1, -1):
                cx, cy = x * (k * L / 2 - lt / 2 - ins), y * (k * W / 2 - lt / 2 - ins)
                parts.append(box((cx, cy, (H - tt) / 2), (lt, lt, H - tt)))
    return merge(parts).normalized(), p


_MAKERS = {"airplane": make_airplane, "car": make_car, "chair": make_chair, "mug": make_mug,
           "lamp": make_lamp, "table": make_table}
CATEGORY_PARAM_RANGES = {"car": CAR_RANGES, "chair": CHAIR_RANGES, "mug": MUG_RANGES, "lamp": LAMP_RANGES,
                         "table": TABLE_RANGES}


def category_index(category) -> int:
    """Index into :data:`CATEGORIES` of a name or an index; ``ValueError`` listing the known names."""
    if isinstance(category, (int, np.integer)) and not isinstance(category, bool):
        if 0 <= int(category) < len(CATEGORIES):
            return int(category)
        raise ValueError(f"category: expected an index in [0, {len(CATEGORIES)}) or one of {CATEGORIES}, "
                         f"got {category!r}")
    if isinstance(category, str) and category in CATEGORIES:
        return CATEGORIES.index(category)
    raise ValueError(f"category: expected one of {CATEGORIES} (or its index), got {category!r}")


def make_mesh(category, rng: np.random.Generator) -> tuple[Mesh, dict]:
    """Draw a new object of ``category`` (name or index into :data:`CATEGORIES`) from ``rng``.

    :returns: ``(mesh, params)``, the mesh normalised to unit radius.
    :raises ValueError: for an unknown category, listing the known ones.
    """
    return _MAKERS[CATEGORIES[category_index(category)]](rng)
