"""Layer specifications shared by backbones and hierarchies (DESIGN §3).

A hierarchy is an ordered list of :class:`LayerSpec`, bottom-up: index 0 is the image ``F^0``,
the last entry is the top mixture layer ``F^{L-1}`` (pool3 for SmallVGG, pool5 for VGG16). The
one-hot category layer ``F^L`` is not a spec; it is the hierarchy's ``n_categories``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["LayerSpec", "KINDS", "offsets_for_radius", "with_mixture"]

KINDS = ("image", "conv", "pool")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the hierarchy.

    :param str name: layer name, e.g. ``"pool3"``; site names derive from it.
    :param str kind: ``"image"``, ``"conv"`` or ``"pool"``.
    :param int channels: ``C_l``.
    :param int height: ``H_l``.
    :param int width: ``W_l``.
    :param int K: number of mixture components of the top-down map into this layer.
    :param int offset_radius: offsets ``δ`` range over ``[-r, r]²`` (0 means ``{0}``).
    """

    name: str
    kind: str
    channels: int
    height: int
    width: int
    K: int = 1
    offset_radius: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"LayerSpec.kind: expected one of {KINDS}, got {self.kind!r}")
        for field in ("channels", "height", "width", "K"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LayerSpec.{field}: expected a positive int, got {value!r}")
        if not isinstance(self.offset_radius, int) or self.offset_radius < 0:
            raise ValueError(f"LayerSpec.offset_radius: expected an int >= 0, got {self.offset_radius!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one activation map."""
        return (self.channels, self.height, self.width)

    @property
    def n_offsets(self) -> int:
        """``|Δ_l| = (2r+1)²``."""
        return (2 * self.offset_radius + 1) ** 2

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """The offsets ``(δ_y, δ_x)`` in the order of the ``delta`` site's support."""
        return offsets_for_radius(self.offset_radius)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LayerSpec:
        return cls(**d)


def offsets_for_radius(r: int) -> list[tuple[int, int]]:
    """Row-major list of ``(δ_y, δ_x)`` in ``[-r, r]²``; index ``(dy + r)(2r + 1) + (dx + r)``."""
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def with_mixture(specs: list[LayerSpec], K: int = 5, K_top: int = 48, top_pool_radius: int = 2,
                 pool_radius: int = 1) -> list[LayerSpec]:
    """Attach mixture sizes and offset ranges to backbone layer specs, following the paper's Sec. 3.

    The top layer gets ``K_top`` components and offsets ``[-top_pool_radius, top_pool_radius]²`` if it
    is a pool layer; other pool layers get ``[-pool_radius, pool_radius]²``; conv layers and the image
    get ``{0}``. All layers below the top get ``K`` components.
    """
    if not specs:
        raise ValueError("specs: expected a non-empty list of LayerSpec, got an empty list")
    out = []
    for i, s in enumerate(specs):
        top = i == len(specs) - 1
        radius = 0
        if s.kind == "pool":
            radius = top_pool_radius if top else pool_radius
        out.append(dataclasses.replace(s, K=K_top if top else K, offset_radius=radius))
    return out
