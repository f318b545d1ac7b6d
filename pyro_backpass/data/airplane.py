"""A parametric family of airplanes built from parts.

An airplane is a fuselage (nose cone, cylindrical body, tail cone that may sweep up), a pair of
main wings (span, root chord, taper, sweep, dihedral, position along and up/down the fuselage), a
horizontal tail (conventional or T-tail, or none for tailless deltas), one or two vertical fins,
and 0, 2 or 4 engine nacelles under the wings or 2 on the rear fuselage. Wings and tails are lofted
NACA-style symmetric airfoils, so they have thickness and shade like solids.

To make the family genuinely varied, every airplane first draws an **archetype** (airliner,
business jet, fighter, delta, glider, light aircraft, high-wing cargo) and then draws each
parameter uniformly from that archetype's range. :data:`AIRPLANE_PARAM_RANGES` is the union of
all archetype ranges (what any airplane can have); :data:`ARCHETYPES` holds the per-archetype
ranges. Lengths are fractions of the fuselage length (1); angles are degrees. The mesh is
returned normalised to unit radius (:meth:`~pyro_backpass.data.mesh.Mesh.normalized`), nose at +x,
left wing at +y, up +z.

Parameters (before normalisation; the fuselage runs from x = 0, tail, to x = 1, nose):

* ``fuselage_radius`` R; ``fuselage_ellipticity``: height / width of the cross-section.
* ``nose_length``, ``tail_length``: lengths of the nose and tail cones; ``nose_bluntness``: exponent
  of the nose profile (0.5 elliptic, lower is pointier); ``tail_upsweep``: rise of the tail cone's
  end in units of R; ``tail_end_radius``: tail end radius / R (large for jet exhausts).
* ``wing_span`` (tip to tip), ``wing_root_chord``, ``wing_taper`` (tip / root chord),
  ``wing_sweep`` (leading edge, degrees), ``wing_dihedral`` (degrees, negative = anhedral),
  ``wing_x`` (root leading edge, measured back from the nose), ``wing_z`` (root height in units of
  R: -1 low wing, +1 high wing), ``wing_thickness`` (thickness / chord).
* ``htail_span``, ``htail_chord``, ``htail_sweep``, ``htail_dihedral``: horizontal tail (taper 0.5).
* ``vtail_height``, ``vtail_chord``, ``vtail_sweep``: vertical fin (taper 0.45); ``vtail_cant``:
  outward tilt of twin fins (degrees).
* ``engine_radius``, ``engine_length``: nacelles; ``engine_span_pos``: inner pair's position as a
  fraction of the half span (an outer pair sits 0.3 further out).
* Discrete: ``engines`` 0, 2 or 4 with ``engine_mount`` 'wing', 'fuselage' (rear, bizjets) or
  'none'; ``tail`` 'conventional', 'T' or 'none' (tailless delta); ``fins`` 1 or 2.
"""

from __future__ import annotations

import numpy as np

from pyro_backpass.data.mesh import Mesh, loft, merge, rotation_matrix

__all__ = ["AIRPLANE_PARAM_RANGES", "ARCHETYPES", "make_airplane", "build_airplane"]

_BASE = {
    "fuselage_radius": (0.045, 0.07), "fuselage_ellipticity": (0.95, 1.1), "nose_length": (0.08, 0.14),
    "nose_bluntness": (0.45, 0.7), "tail_length": (0.2, 0.3), "tail_upsweep": (0.3, 0.8),
    "tail_end_radius": (0.1, 0.3), "wing_span": (0.9, 1.1), "wing_root_chord": (0.16, 0.24),
    "wing_taper": (0.2, 0.35), "wing_sweep": (25.0, 35.0), "wing_dihedral": (3.0, 7.0),
    "wing_x": (0.38, 0.48), "wing_z": (-0.7, -0.5), "wing_thickness": (0.08, 0.12),
    "htail_span": (0.3, 0.4), "htail_chord": (0.07, 0.1), "htail_sweep": (25.0, 38.0),
    "htail_dihedral": (0.0, 8.0), "vtail_height": (0.14, 0.2), "vtail_chord": (0.12, 0.18),
    "vtail_sweep": (30.0, 45.0), "vtail_cant": (0.0, 0.0), "engine_radius": (0.025, 0.04),
    "engine_length": (0.1, 0.16), "engine_span_pos": (0.28, 0.38),
}


def _arch(**changes) -> dict:
    out = dict(_BASE)
    out.update(changes)
    return out


#: Per-archetype ranges plus discrete choices: ``engines`` (count, mount), ``tail`` ('conventional',
#: 'T', 'none'), ``fins`` (1 or 2). ``weight`` is the archetype's probability (normalised).
ARCHETYPES = {
    "airliner": (_arch(), {"engines": [(2, "wing"), (4, "wing")], "tail": ["conventional"], "fins": [1]}, 0.25),
    "bizjet": (_arch(fuselage_radius=(0.045, 0.06), wing_span=(0.75, 1.0), wing_x=(0.42, 0.5),
                     engine_radius=(0.025, 0.035), engine_length=(0.09, 0.13), vtail_sweep=(40.0, 55.0)),
               {"engines": [(2, "fuselage")], "tail": ["T", "conventional"], "fins": [1]}, 0.12),
    "fighter": (_arch(fuselage_radius=(0.05, 0.075), nose_length=(0.18, 0.28), nose_bluntness=(0.35, 0.5),
                      tail_length=(0.05, 0.12), tail_upsweep=(0.0, 0.1), tail_end_radius=(0.5, 0.8),
                      wing_span=(0.45, 0.7), wing_root_chord=(0.25, 0.38), wing_taper=(0.15, 0.35),
                      wing_sweep=(30.0, 50.0), wing_dihedral=(-5.0, 0.0), wing_x=(0.45, 0.56),
                      wing_z=(-0.2, 0.2), wing_thickness=(0.04, 0.06), htail_span=(0.25, 0.35),
                      htail_chord=(0.08, 0.12), htail_sweep=(35.0, 50.0), htail_dihedral=(-5.0, 0.0),
                      vtail_height=(0.12, 0.18), vtail_chord=(0.12, 0.18), vtail_sweep=(35.0, 50.0),
                      vtail_cant=(10.0, 25.0)),
                {"engines": [(0, "none")], "tail": ["conventional"], "fins": [1, 2]}, 0.18),
    "delta": (_arch(fuselage_radius=(0.045, 0.065), nose_length=(0.18, 0.3), nose_bluntness=(0.35, 0.5),
                    tail_length=(0.04, 0.1), tail_upsweep=(0.0, 0.05), tail_end_radius=(0.5, 0.8),
                    wing_span=(0.5, 0.75), wing_root_chord=(0.42, 0.52), wing_taper=(0.03, 0.15),
                    wing_sweep=(48.0, 62.0), wing_dihedral=(-3.0, 0.0), wing_x=(0.4, 0.5),
                    wing_z=(-0.3, 0.0), wing_thickness=(0.03, 0.05), vtail_height=(0.15, 0.22),
                    vtail_chord=(0.2, 0.3), vtail_sweep=(45.0, 60.0)),
              {"engines": [(0, "none")], "tail": ["none"], "fins": [1]}, 0.12),
    "glider": (_arch(fuselage_radius=(0.03, 0.045), nose_length=(0.1, 0.16), nose_bluntness=(0.5, 0.7),
                     tail_length=(0.45, 0.55), tail_upsweep=(0.0, 0.2), tail_end_radius=(0.15, 0.3),
                     wing_span=(1.8, 2.4), wing_root_chord=(0.07, 0.11), wing_taper=(0.3, 0.5),
                     wing_sweep=(-2.0, 4.0), wing_dihedral=(2.0, 6.0), wing_x=(0.25, 0.32),
                     wing_z=(0.3, 0.7), htail_span=(0.18, 0.26), htail_chord=(0.05, 0.07),
                     htail_sweep=(0.0, 10.0), htail_dihedral=(0.0, 0.0), vtail_height=(0.1, 0.15),
                     vtail_chord=(0.08, 0.12), vtail_sweep=(10.0, 25.0)),
               {"engines": [(0, "none")], "tail": ["T", "conventional"], "fins": [1]}, 0.11),
    "light": (_arch(fuselage_radius=(0.055, 0.075), nose_length=(0.06, 0.1), nose_bluntness=(0.6, 0.85),
                    tail_length=(0.35, 0.45), tail_upsweep=(0.2, 0.5), tail_end_radius=(0.15, 0.3),
                    wing_span=(1.2, 1.5), wing_root_chord=(0.12, 0.17), wing_taper=(0.6, 1.0),
                    wing_sweep=(-2.0, 5.0), wing_dihedral=(1.0, 7.0), wing_x=(0.18, 0.28),
                    wing_z=(-0.8, 0.85), wing_thickness=(0.1, 0.15), htail_span=(0.35, 0.45),
                    htail_chord=(0.08, 0.11), htail_sweep=(0.0, 12.0), htail_dihedral=(0.0, 3.0),
                    vtail_height=(0.12, 0.17), vtail_chord=(0.1, 0.15), vtail_sweep=(20.0, 40.0)),
              {"engines": [(0, "none")], "tail": ["conventional"], "fins": [1]}, 0.11),
    "cargo": (_arch(fuselage_radius=(0.07, 0.09), nose_length=(0.07, 0.11), nose_bluntness=(0.6, 0.8),
                    tail_upsweep=(0.6, 1.0), wing_span=(1.0, 1.25), wing_root_chord=(0.14, 0.2),
                    wing_taper=(0.35, 0.6), wing_sweep=(0.0, 12.0), wing_dihedral=(-4.0, 0.0),
                    wing_x=(0.38, 0.46), wing_z=(0.7, 0.9), engine_radius=(0.03, 0.04),
                    engine_length=(0.12, 0.18)),
              {"engines": [(2, "wing"), (4, "wing")], "tail": ["T", "conventional"], "fins": [1]}, 0.11),
}

#: Every continuous parameter's overall range ``(low, high)``: the union over archetypes.
AIRPLANE_PARAM_RANGES = {k: (min(a[0][k][0] for a in ARCHETYPES.values()),
                             max(a[0][k][1] for a in ARCHETYPES.values())) for k in _BASE}

# NACA 4-digit thickness distribution at cosine-spaced chord stations: a smooth closed airfoil.
_XC = 0.5 * (1 - np.cos(np.linspace(0.0, np.pi, 7)))
_YT = 5 * (0.2969 * np.sqrt(_XC) - 0.126 * _XC - 0.3516 * _XC**2 + 0.2843 * _XC**3 - 0.1036 * _XC**4)
_AIRFOIL = np.concatenate([np.stack([_XC, _YT], 1), np.stack([_XC[-2:0:-1], -_YT[-2:0:-1]], 1)])  # (12, 2)


def wing_panel(span: float, root_chord: float, taper: float, sweep: float, dihedral: float,
               thickness: float) -> Mesh:
    """One lifting surface in its local frame: root leading edge at the origin, span along +y,
    chord towards -x (aft), thickness along z. Sweep is of the leading edge; dihedral tilts +y up."""
    chords = np.array([root_chord, root_chord * taper])
    ys = np.array([0.0, span])
    le_x = -ys * np.tan(np.radians(sweep))
    zs = ys * np.tan(np.radians(dihedral))
    rings = np.empty((2, len(_AIRFOIL), 3))
    rings[:, :, 0] = le_x[:, None] - _AIRFOIL[None, :, 0] * chords[:, None]
    rings[:, :, 1] = ys[:, None]
    rings[:, :, 2] = zs[:, None] + _AIRFOIL[None, :, 1] * (thickness * chords)[:, None]
    return loft(rings)


def _fuselage(p: dict, n_seg: int = 14) -> Mesh:
    """Nose cone (x from 1 down), constant body, tail cone; tail centreline rises by ``tail_upsweep``·R."""
    R, nl, tl = p["fuselage_radius"], p["nose_length"], p["tail_length"]
    s = 1.0 - np.cos(np.linspace(0.0, 0.5 * np.pi, 8)[1:])  # rings packed towards the tip
    nose_x = 1.0 - nl * s
    nose_r = R * np.maximum(1 - (1 - s) ** 2, 0.0) ** p["nose_bluntness"]
    t = np.linspace(0.0, 1.0, 6)[1:]
    tail_x = tl * (1 - t)
    tail_r = R * (1 - (1 - p["tail_end_radius"]) * t**1.5)
    xs = np.concatenate([[1.0], nose_x, [tl], tail_x[:-1], [0.0]])[::-1]  # tail to nose
    rs = np.concatenate([[R * 0.02], nose_r, [R], tail_r[:-1], [R * p["tail_end_radius"]]])[::-1]
    zc = np.where(xs < tl, p["tail_upsweep"] * R * np.clip((tl - xs) / max(tl, 1e-6), 0.0, 1.0) ** 1.5, 0.0)
    ang = np.linspace(0.0, 2 * np.pi, n_seg, endpoint=False)
    rings = np.empty((len(xs), n_seg, 3))
    rings[:, :, 0] = xs[:, None]
    rings[:, :, 1] = rs[:, None] * np.cos(ang)
    rings[:, :, 2] = zc[:, None] + rs[:, None] * p["fuselage_ellipticity"] * np.sin(ang)
    return loft(rings)


def _nacelle(length: float, radius: float, n_seg: int = 10) -> Mesh:
    """Engine pod along x, intake at +x (the origin), exhaust at -length."""
    xs = -length * np.array([0.0, 0.05, 0.3, 0.8, 1.0])
    rs = radius * np.array([0.8, 0.95, 1.0, 0.85, 0.6])
    ang = np.linspace(0.0, 2 * np.pi, n_seg, endpoint=False)
    rings = np.stack([np.broadcast_to(xs[:, None], (5, n_seg)), rs[:, None] * np.cos(ang),
                      rs[:, None] * np.sin(ang)], -1)
    return loft(rings)


def build_airplane(p: dict) -> Mesh:
    """Assemble the airplane described by parameter dict ``p`` (see :func:`make_airplane`), unnormalised."""
    R, e = p["fuselage_radius"], p["fuselage_ellipticity"]
    parts = [_fuselage(p)]
    half = 0.5 * p["wing_span"]
    wing = wing_panel(half, p["wing_root_chord"], p["wing_taper"], p["wing_sweep"], p["wing_dihedral"],
                      p["wing_thickness"]).transformed(translate=(p["wing_x_abs"], 0.0, p["wing_z"] * R * e))
    parts += [wing, wing.mirrored_y()]
    # Vertical fin(s): a panel rotated so its span points up (canted outwards for twin fins).
    fin_x = p["tail_length"] * 0.2 + p["vtail_chord"]
    fin_z = p["tail_upsweep"] * R * 0.5 + R * e * 0.6
    fins_y = [0.0] if p["fins"] == 1 else [R * 0.6, -R * 0.6]
    tip_x = fin_x - p["vtail_height"] * np.tan(np.radians(p["vtail_sweep"]))
    for fy in fins_y:
        cant = 90.0 - p["vtail_cant"] if fy >= 0 and p["fins"] == 2 else 90.0
        rot = rotation_matrix("x", cant if fy >= 0 else 180.0 - cant)
        fin = wing_panel(p["vtail_height"], p["vtail_chord"], 0.45, p["vtail_sweep"], 0.0, 0.1)
        parts.append(fin.transformed(matrix=rot, translate=(fin_x, fy, fin_z)))
    if p["tail"] != "none":
        if p["tail"] == "T":
            tx, tz = tip_x - 0.0, fin_z + p["vtail_height"] * 0.97
        else:
            tx, tz = p["tail_length"] * 0.15 + p["htail_chord"], p["tail_upsweep"] * R * 0.6
        ht = wing_panel(0.5 * p["htail_span"], p["htail_chord"], 0.5, p["htail_sweep"], p["htail_dihedral"],
                        0.1).transformed(translate=(tx, 0.0, tz))
        parts += [ht, ht.mirrored_y()]
    n_eng, mount = p["engines"], p["engine_mount"]
    L, er = p["engine_length"], p["engine_radius"]
    if mount == "wing":
        fracs = [p["engine_span_pos"]] + ([p["engine_span_pos"] + 0.3] if n_eng == 4 else [])
        for f in fracs:
            y = f * half
            le = p["wing_x_abs"] - y * np.tan(np.radians(p["wing_sweep"]))
            z = p["wing_z"] * R * e + y * np.tan(np.radians(p["wing_dihedral"])) - er * 1.3
            pod = _nacelle(L, er).transformed(translate=(le + 0.5 * L, y, z))
            parts += [pod, pod.mirrored_y()]
    elif mount == "fuselage":
        pod = _nacelle(L, er).transformed(translate=(p["tail_length"] + 0.02 + L * 0.3, R + er * 1.1, R * 0.4))
        parts += [pod, pod.mirrored_y()]
    return merge(parts)


def make_airplane(rng: np.random.Generator) -> tuple[Mesh, dict]:
    """Draw an archetype and its parameters from ``rng``; return the normalised mesh and the parameters.

    :returns: ``(mesh, params)``: ``params`` has every key of :data:`AIRPLANE_PARAM_RANGES` plus
        ``archetype``, ``engines`` (0, 2 or 4), ``engine_mount``, ``tail`` and ``fins``.
    """
    names = list(ARCHETYPES)
    weights = np.array([ARCHETYPES[n][2] for n in names])
    name = names[rng.choice(len(names), p=weights / weights.sum())]
    ranges, choices, _ = ARCHETYPES[name]
    lo, hi = np.array(list(ranges.values())).T
    p = dict(zip(ranges, rng.uniform(lo, hi).tolist()))  # one vectorised draw, in the ranges' key order
    n_eng, mount = choices["engines"][rng.integers(len(choices["engines"]))]
    p.update(archetype=name, engines=int(n_eng), engine_mount=mount,
             tail=choices["tail"][rng.integers(len(choices["tail"]))],
             fins=int(choices["fins"][rng.integers(len(choices["fins"]))]))
    # Wing root leading edge, measured from the nose tip (x = 1) backwards.
    p["wing_x_abs"] = 1.0 - p["wing_x"]
    return build_airplane(p).normalized(), p
