"""The greedy backward pass as a Pyro effect handler (eq. 11-12, DESIGN §4).

The model program runs once, top-down. At every enumerated discrete site of a layer (category,
``gamma/*``, ``delta/*``, marked ``infer={"enumerate": "parallel"}``) the handler puts the whole
support in a fresh dim left of the image plate and the beam dim, so every later computation of the
layer is done for all ``K·|Δ|`` hypotheses at once by broadcasting. It adds up the log-probs of all
sites it sees (the layer's prior terms and its ``value/*`` factor or observed ``f_td`` site). At the
model's :func:`~pyro_backpass.handlers.layer_end` it keeps the best hypotheses and gathers the state
the model carries down under them, so the enumerated dims collapse into the beam dim (dim ``-2``)
before the next layer is enumerated.

Beam ``B = 1`` is the paper's greedy pass; ``B > 1`` keeps the ``B`` best partial assignments (the
paper's multiple parsing paths). With ``topk_layer`` set, the ``topk`` best hypotheses at that layer
are kept and each is completed greedily below it (posterior modes, Fig. 5).

The dict that ``layer_end`` returns under this handler is the handler's record of the pass: entries
the model adds to it after ``layer_end`` (values it computes from the collapsed hypotheses, such as the
profile form's ``F_td``, built for the kept hypotheses only) or removes from it (scratch it carried
through the collapse) are reflected in :meth:`GreedyMessenger.get_result`. Tensors that do not depend
on the layer's hypotheses nor on the beam entry come back as broadcast views (no copy); do not write
into them.

Compose with :func:`pyro.condition` inside this handler to clamp any hidden site::

    with greedy(beam=3) as g:
        pyro.condition(model, data={"gamma/pool3": torch.tensor(2)})(hierarchy, f_bu=f_bu)
    result = g.get_result()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..scoring import broadcast_shape

__all__ = ["GreedyMessenger", "GreedyHandler", "GreedyState", "greedy"]


@dataclass
class GreedyState:
    """What a greedy pass leaves behind, beam-major and sorted by total score (best first).

    :ivar dict state: the model's state after the last layer: name → (B, N, *event).
    :ivar torch.Tensor total: (B, N) total log score ``Σ_l S_l``.
    :ivar torch.Tensor layer_scores: (B, N, n_layers) per-layer scores ``S_l``, in the order the
        layers were visited (top-down).
    :ivar list layers: the layer indices in that order.
    """

    state: dict
    total: torch.Tensor
    layer_scores: torch.Tensor
    layers: list


def _scale_and_mask(lp: torch.Tensor, scale, mask) -> torch.Tensor:
    if mask is not None and mask is not True:
        lp = torch.where(mask, lp, lp.new_zeros(()))
    if not (isinstance(scale, (int, float)) and scale == 1.0):
        lp = lp * scale
    return lp


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> list[torch.Tensor]:
    coords = []
    for size in reversed(shape):
        coords.append(flat % size)
        flat = torch.div(flat, size, rounding_mode="floor")
    return coords[::-1]


class GreedyMessenger(Messenger):
    """Greedy (beam) MAP over the enumerated sites of a layered model.

    :param int beam: number of partial assignments kept per image after each layer (``B``).
    :param int topk: number of posterior modes kept at ``topk_layer``.
    :param int topk_layer: the layer index at which to keep the ``topk`` best hypotheses; each is
        completed greedily below it.
    :param int first_available_dim: first dim free for enumeration; ``-3`` for a model with one
        plate at ``-1`` (the beam dim is ``-2``).
    """

    def __init__(self, beam: int = 1, topk: int | None = None, topk_layer: int | None = None,
                 first_available_dim: int = -3):
        super().__init__()
        if not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam: expected an int >= 1, got {beam!r}")
        if (topk is None) != (topk_layer is None):
            raise ValueError(f"topk and topk_layer: expected both or neither, got topk={topk!r}, "
                             f"topk_layer={topk_layer!r}")
        if topk is not None and (not isinstance(topk, int) or topk < 1):
            raise ValueError(f"topk: expected an int >= 1, got {topk!r}")
        if first_available_dim > -3:
            raise ValueError(f"first_available_dim: expected <= -3 (plate at -1, beam at -2), "
                             f"got {first_available_dim}")
        self.beam, self.topk, self.topk_layer = beam, topk, topk_layer
        self.first_available_dim = first_available_dim
        self._reset_pass()

    # ---------------------------------------------------------------------------------- lifecycle
    def _reset_pass(self) -> None:
        self._next_dim = self.first_available_dim
        self._layer_score = None
        self._total = None
        self._scores: list[torch.Tensor] = []
        self._layers: list[int] = []
        self._state: dict | None = None
        self._collapsed: dict = {}

    def __enter__(self):
        self._reset_pass()
        return super().__enter__()

    def get_result(self) -> GreedyState:
        """The best assignments found by the last pass, sorted best first."""
        if self._state is None:
            raise RuntimeError("get_result: no pass has reached a layer_end under this handler yet")
        total = self._total
        if total.shape[0] == 1:
            # One entry per image: nothing to sort, and gathering would copy every map of the state.
            state = {k: v.contiguous() for k, v in self._state.items()}
            scores = torch.stack(self._scores, dim=-1)
            return GreedyState(state=state, total=total, layer_scores=scores, layers=list(self._layers))
        order = total.argsort(dim=0, descending=True)  # (B, N)
        n = torch.arange(total.shape[1], device=total.device)
        state = {k: v[order, n] for k, v in self._state.items()}
        scores = torch.stack([s[order, n] for s in self._scores], dim=-1)
        return GreedyState(state=state, total=total[order, n], layer_scores=scores, layers=list(self._layers))

    # ------------------------------------------------------------------------------------- sites
    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        if msg["infer"].get("enumerate") != "parallel":
            return
        support = msg["fn"].enumerate_support(expand=False).reshape(-1)
        dim = self._next_dim
        self._next_dim -= 1
        msg["value"] = support.reshape((support.shape[0],) + (1,) * (-dim - 1))
        msg["infer"]["_enumerate_dim"] = dim
        msg["done"] = True

    def _pyro_post_sample(self, msg) -> None:
        # pyro.factor sites are marked auxiliary but are part of the score, so only _do_not_score skips.
        if site_is_subsample(msg) or msg["infer"].get("_do_not_score"):
            return
        lp = _scale_and_mask(msg["fn"].log_prob(msg["value"]), msg["scale"], msg["mask"])
        self._layer_score = lp if self._layer_score is None else self._layer_score + lp

    # ---------------------------------------------------------------------------- layer boundary
    def _pyro_layer_end(self, msg) -> None:
        layer, state, event_dims = msg["args"]
        score = self._layer_score
        if score is None:
            raise RuntimeError(f"layer_end({layer}): no site was scored in this layer")
        total = score if self._total is None else self._total + score
        # Entries the last collapse returned, unchanged since, with one beam entry: they depend on no
        # hypothesis of this layer, so with one entry kept again they pass through as they are (the
        # state grows by a few entries per layer; re-gathering all of it every layer was most of the
        # handler's cost). The model updates the returned dict in place, hence the snapshot.
        prev = self._collapsed if (self._state is not None and self._total.shape[0] == 1) else {}
        kept = {k for k, v in state.items() if prev.get(k) is v}
        batch_shapes = [v.shape[: v.dim() - event_dims.get(k, 0)] for k, v in state.items() if k not in kept]
        full = broadcast_shape(total.shape, *batch_shapes, (1, 1))
        hyp_shape, n = tuple(full[:-1]), full[-1]
        H = math.prod(hyp_shape)
        flat = total.expand(full).reshape(H, n)
        below_modes = self.topk_layer is not None and layer < self.topk_layer
        if self.topk_layer is not None and layer == self.topk_layer:
            vals, idx = flat.topk(min(self.topk, H), dim=0)
        elif below_modes:
            # Complete each mode on its own: the best extension per beam entry, no competition across.
            b = hyp_shape[-1]
            vals, e = flat.reshape(H // b, b, n).max(dim=0)
            idx = e * b + torch.arange(b, device=flat.device).unsqueeze(-1)
        else:
            vals, idx = flat.topk(min(self.beam, H), dim=0)
        coords = _unravel(idx, hyp_shape)
        rows = torch.arange(n, device=flat.device).expand_as(idx)
        nd = len(full)

        def take(x: torch.Tensor, event_dim: int) -> torch.Tensor:
            x = x.reshape((1,) * (nd + event_dim - x.dim()) + tuple(x.shape))
            if all(x.shape[d] == 1 for d in range(nd - 1)):
                # Independent of this layer's hypotheses and of the beam entry: a broadcast view, no copy.
                return x.reshape(x.shape[nd - 1:]).expand(tuple(idx.shape) + tuple(x.shape[nd:]))
            index = [c if x.shape[d] > 1 else torch.zeros_like(c) for d, c in enumerate(coords)]
            index.append(rows if x.shape[nd - 1] > 1 else torch.zeros_like(rows))
            return x[tuple(index)]

        prev_beam = coords[-1]
        same = prev and idx.shape[0] == 1  # one entry before and after: earlier layers' values stay put
        self._scores = (self._scores if same else [s[prev_beam, rows] for s in self._scores]) + [take(score, 0)]
        self._layers.append(layer)
        self._total = vals
        new_state = {k: v if (same and k in kept) else take(v, event_dims.get(k, 0)) for k, v in state.items()}
        self._state, self._collapsed = new_state, dict(new_state)
        self._layer_score = None
        self._next_dim = self.first_available_dim
        msg["value"] = new_state
        msg["done"] = True


class GreedyHandler:
    """A model wrapped by :func:`greedy`: call it like the model, then read :meth:`get_result`."""

    def __init__(self, msngr: GreedyMessenger, fn):
        self.msngr, self.fn = msngr, fn

    def __call__(self, *args, **kwargs):
        with self.msngr:
            return self.fn(*args, **kwargs)

    def get_result(self) -> GreedyState:
        return self.msngr.get_result()


def greedy(fn=None, beam: int = 1, topk: int | None = None, topk_layer: int | None = None,
           first_available_dim: int = -3):
    """Convenient wrapper of :class:`GreedyMessenger`, usable as a decorator or context manager.

    :param fn: a model program that calls :func:`~pyro_backpass.handlers.layer_end` after each layer.
    :returns: a :class:`GreedyHandler` if ``fn`` is given, else the messenger (a context manager).
    """
    msngr = GreedyMessenger(beam=beam, topk=topk, topk_layer=topk_layer, first_available_dim=first_available_dim)
    return GreedyHandler(msngr, fn) if fn is not None else msngr
