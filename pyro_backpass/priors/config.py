"""Rebuild a γ prior from its :meth:`~pyro_backpass.priors.GammaPrior.config` (checkpoints)."""

from __future__ import annotations

from .base import GammaPrior
from .tables import NGramPrior, UniformPrior, UnigramPrior

__all__ = ["prior_from_config"]

# type -> (class, keyword arguments taken from the config besides Ks and n_categories)
_TYPES = {
    "UniformPrior": (UniformPrior, ()),
    "UnigramPrior": (UnigramPrior, ("alpha",)),
    "NGramPrior": (NGramPrior, ("order", "alpha")),
}


def prior_from_config(config: dict) -> GammaPrior:
    """Build an *empty* prior (uniform tables) of the type and shapes ``config`` describes; fill
    its tables with ``load_state_dict``.

    :param dict config: as returned by ``prior.config()``: ``type``, ``Ks``, ``n_categories`` and,
        per type, ``order`` and ``alpha``.
    :rtype: GammaPrior
    """
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict from prior.config(), got {type(config).__name__}")
    kind = config.get("type")
    if kind == "CallablePrior":
        raise ValueError("config: a CallablePrior wraps a user callable and cannot be rebuilt from a config")
    if kind not in _TYPES:
        raise ValueError(f"config['type']: expected one of {sorted(_TYPES)}, got {kind!r}")
    cls, extra = _TYPES[kind]
    missing = [key for key in ("Ks", "n_categories", *extra) if key not in config]
    if missing:
        raise ValueError(f"config: a {kind} config needs keys {missing}, got keys {sorted(config)}")
    return cls(config["Ks"], config["n_categories"], **{key: config[key] for key in extra})
