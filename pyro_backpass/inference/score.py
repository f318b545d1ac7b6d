"""Score a model program at given values of its hidden sites, batched over assignments."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine

__all__ = ["trace_log_score", "enumerated_sites"]


def trace_log_score(model, data: dict, *args, **kwargs) -> torch.Tensor:
    """Sum of all sites' log-probs of ``model`` conditioned on ``data``, keeping batch dims.

    Values in ``data`` may carry extra leading dims (e.g. ``(M, 1)`` for ``M`` assignments left of
    the image plate), which makes this a vectorised scorer of many assignments in one run.

    :param dict data: site name → value.
    :returns: the broadcast sum of every site's log-prob, e.g. (M, N).
    """
    with torch.no_grad():
        tr = poutine.trace(pyro.condition(model, data=data)).get_trace(*args, **kwargs)
        total = torch.zeros(())
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            lp = site["fn"].log_prob(site["value"])
            if site["mask"] is not None and site["mask"] is not True:
                lp = torch.where(site["mask"], lp, lp.new_zeros(()))
            if not (isinstance(site["scale"], (int, float)) and site["scale"] == 1.0):
                lp = lp * site["scale"]
            total = total.to(lp.dtype) + lp
    return total


def enumerated_sites(model, *args, **kwargs) -> list[tuple[str, int]]:
    """Names and support sizes of the unobserved ``enumerate="parallel"`` sites, in program order."""
    with torch.no_grad():
        tr = poutine.trace(model).get_trace(*args, **kwargs)
    out = []
    for name, site in tr.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and site["infer"].get("enumerate") == "parallel":
            out.append((name, int(site["fn"].enumerate_support(expand=False).numel())))
    return out
