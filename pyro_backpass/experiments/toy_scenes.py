"""Scenes of the exact-vs-greedy experiment, sampled from the generative form of a model program.

Three kinds (:data:`KINDS`), all built around one *main* object drawn from the generative form, whose
hidden ``H`` is the scene's truth:

- ``"clean"``: the main object's ``F_bu`` as sampled;
- ``"superimposed"``: a second object of another category, also drawn from the generative form, is
  superimposed: on every layer the two objects' ``F_td`` maps are combined by elementwise max (the
  ReLU activations of a scene are roughly the max of its objects') and ``F_bu`` is drawn from the
  observation model given the combined maps;
- ``"blobs"``: positive Gaussian noise blobs (:func:`positive_blobs`) are added to the clean ``F_bu``.

The category is part of the hidden ``H`` in every kind; the methods compared infer it (nothing is
clamped), so in a superimposed scene either object may be the best explanation.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine

from .. import sites
from ..hierarchy import Hierarchy

__all__ = ["KINDS", "superimpose", "positive_blobs", "sample_scene"]

KINDS = ("clean", "superimposed", "blobs")


def superimpose(maps_a: list[torch.Tensor], maps_b: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the elementwise maximum of two objects' maps (both (N, C, H, W))."""
    if len(maps_a) != len(maps_b):
        raise ValueError(f"maps_b: expected {len(maps_a)} layers like maps_a, got {len(maps_b)}")
    return [torch.maximum(a, b) for a, b in zip(maps_a, maps_b)]


def positive_blobs(shapes, count: int, amplitude: float, width: float, dtype=torch.float64) -> list[torch.Tensor]:
    """Per layer (``shapes``: ``(N, C, H, W)`` each), the sum of ``count`` isotropic Gaussian blobs of
    standard deviation ``width`` cells, centres uniform over the map, per-channel amplitude uniform in
    ``[0, amplitude)``: a tensor of that shape, ``>= 0`` (torch's global RNG)."""
    out = []
    for n, c, h, w in shapes:
        ys = torch.arange(h, dtype=dtype).reshape(1, 1, h, 1)
        xs = torch.arange(w, dtype=dtype).reshape(1, 1, 1, w)
        total = torch.zeros(n, c, h, w, dtype=dtype)
        for _ in range(count):
            cy = torch.rand(n, 1, 1, 1, dtype=dtype) * h
            cx = torch.rand(n, 1, 1, 1, dtype=dtype) * w
            amp = torch.rand(n, c, 1, 1, dtype=dtype) * amplitude
            total += amp * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * width**2))
        out.append(total)
    return out


def _maps(trace, hierarchy: Hierarchy, prefix: str) -> list[torch.Tensor]:
    return [trace.nodes[f"{prefix}/{s.name}"]["value"] for s in hierarchy.specs]


def sample_scene(model, hierarchy: Hierarchy, kind: str, seed: int, blob_count: int = 3, blob_amplitude: float = 1.0,
                 blob_width: float = 1.0) -> tuple[list[torch.Tensor], dict]:
    """One scene of ``kind`` from the generative form of ``model`` (torch's global RNG is left untouched).

    The main object is drawn first from ``seed``, so the three kinds of one seed share it. For
    ``"superimposed"`` the second object's category is uniform among the other categories and the rest
    of its ``H`` and ``F_td`` come from the generative form with that category clamped.

    :param int seed: seeds everything random in the scene.
    :returns: ``(f_bu, truth)``: ``L`` tensors (1, C_l, H_l, W_l) and the main object's generating
        ``H`` (site → (1,)).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = poutine.trace(model).get_trace(hierarchy, n=1)
        truth = {k: tr.nodes[k]["value"] for k in hierarchy.hidden_site_names()}
        f_bu = _maps(tr, hierarchy, "f_bu")
        if kind == "superimposed":
            nc = hierarchy.n_categories
            other = (truth[sites.CATEGORY] + torch.randint(1, nc, (1,))) % nc
            second = poutine.trace(model).get_trace(hierarchy, n=1, category=other)
            f_td = superimpose(_maps(tr, hierarchy, "f_td"), _maps(second, hierarchy, "f_td"))
            data = dict(truth, **{sites.f_td(s.name): x for s, x in zip(hierarchy.specs, f_td)})
            f_bu = _maps(poutine.trace(pyro.condition(model, data=data)).get_trace(hierarchy, n=1), hierarchy, "f_bu")
        elif kind == "blobs":
            blobs = positive_blobs([x.shape for x in f_bu], blob_count, blob_amplitude, blob_width, f_bu[0].dtype)
            f_bu = [x + b for x, b in zip(f_bu, blobs)]
    return f_bu, truth
