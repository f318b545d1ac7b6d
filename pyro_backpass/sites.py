"""Fixed site names shared by the model programs, handlers, guides and scripts (DESIGN §3).

Every layer ``l`` with name ``n`` has the sites ``gamma/n`` and ``delta/n`` (discrete hidden
variables), ``f_td/n`` (top-down activations) and ``f_bu/n`` (observed bottom-up activations); the
profile form adds the factor ``value/n``. The category ``F^L = H^L`` is the site ``category``.
"""

CATEGORY = "category"
PREFIXES = ("gamma", "delta", "f_td", "f_bu", "value")

__all__ = ["CATEGORY", "PREFIXES", "gamma", "delta", "f_td", "f_bu", "value", "split"]


def gamma(layer_name: str) -> str:
    """Site of the mixture index ``γ^l``."""
    return f"gamma/{layer_name}"


def delta(layer_name: str) -> str:
    """Site of the offset index ``δ^l`` (into ``LayerSpec.offsets``)."""
    return f"delta/{layer_name}"


def f_td(layer_name: str) -> str:
    """Site of the top-down activations ``F^l_td``."""
    return f"f_td/{layer_name}"


def f_bu(layer_name: str) -> str:
    """Site of the observed bottom-up activations ``F^l_bu``."""
    return f"f_bu/{layer_name}"


def value(layer_name: str) -> str:
    """Factor site of the profile form: ``Σ_i max_f log P(f_bu|f) + log N(f; f̃, σ0)`` (eq. 12)."""
    return f"value/{layer_name}"


def split(site: str) -> tuple[str, str]:
    """``"gamma/pool3" -> ("gamma", "pool3")``; ``"category" -> ("category", "")``."""
    if site == CATEGORY:
        return CATEGORY, ""
    prefix, _, layer = site.partition("/")
    if prefix not in PREFIXES or not layer:
        raise ValueError(f"site: expected 'category' or one of {PREFIXES} + '/<layer>', got {site!r}")
    return prefix, layer
