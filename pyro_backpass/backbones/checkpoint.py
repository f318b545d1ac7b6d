"""Save, load and cache trained SmallVGG backbones (DESIGN §7).

A backbone file is safetensors with the weights plus, in its metadata, the JSON of its
:class:`SmallVGGConfig`, layer specs and format version; it is written atomically. The cache keeps
one trained backbone per :class:`BackboneTrainConfig` under ``<cache root>/backbones/`` (root:
``$PYRO_BACKPASS_CACHE`` or ``~/.cache/pyro_backpass``), keyed by a hash of the config and of the
training code, via :mod:`pyro_backpass.data.cache`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pyro_backpass.backbones.small_vgg import SmallVGG, SmallVGGConfig
from pyro_backpass.backbones.train import BackboneTrainConfig, train_backbone
from pyro_backpass.io import atomic_write_bytes

__all__ = ["FORMAT_VERSION", "save_small_vgg", "load_small_vgg", "load_or_train_backbone"]

FORMAT_VERSION = 1


def _state(model: SmallVGG) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _from_state(config: SmallVGGConfig, state: dict[str, torch.Tensor], source: str) -> SmallVGG:
    model = SmallVGG(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not fit SmallVGG({config}): {e}") from e
    return model.eval()


def save_small_vgg(model: SmallVGG, path: str | os.PathLike) -> Path:
    """Write ``model`` as one safetensors file (config and layer specs in its metadata), atomically."""
    meta = {"format_version": str(FORMAT_VERSION), "config": json.dumps(dataclasses.asdict(model.config)),
            "layer_specs": json.dumps([s.to_dict() for s in model.layer_specs()])}
    return atomic_write_bytes(path, save_safetensors(_state(model), metadata=meta))


def load_small_vgg(path: str | os.PathLike) -> SmallVGG:
    """Read a file written by :func:`save_small_vgg`; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: SmallVGG file not found: {str(path)!r}")
    blob = path.read_bytes()
    try:
        state = load_safetensors(blob)
        from safetensors import safe_open  # metadata needs the file API

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        cfg = json.loads(meta["config"])
    except Exception as e:
        raise ValueError(f"path: {str(path)!r} is not a SmallVGG file written by save_small_vgg: {e}") from e
    cfg["widths"] = tuple(cfg["widths"])
    cfg.setdefault("head", "avg")  # files written before the head was configurable
    return _from_state(SmallVGGConfig(**cfg), state, repr(str(path)))


def _code_digest() -> str:
    from pyro_backpass.backbones import augment, backgrounds, base, compositional, data, small_vgg, train, train_config
    from pyro_backpass.data.cache import source_digest
    from pyro_backpass.data.datasets import generator_digest

    return (source_digest(augment, backgrounds, base, compositional, data, small_vgg, train, train_config)
            + generator_digest("pyro_backpass.data.scenes"))


def load_or_train_backbone(config: BackboneTrainConfig | None = None, cache_dir: str | os.PathLike | None = None,
                           progress: bool = True, cache: bool = True) -> tuple[SmallVGG, dict]:
    """The trained SmallVGG for ``config``: from the cache if there, else trained and stored.

    :param cache_dir: cache root (default ``$PYRO_BACKPASS_CACHE`` or ``~/.cache/pyro_backpass``).
    :param bool cache: ``False`` trains without reading or writing the cache.
    :returns: ``(model in eval mode, metrics of its training run)``.
    """
    from pyro_backpass.data.cache import load_or_build

    config = config or BackboneTrainConfig()

    def build():
        model, metrics = train_backbone(config, progress=progress)
        return _state(model), {"model_config": model.config, "metrics": metrics}

    tensors, meta = load_or_build("backbones", config, build, cache=cache, extra={"code": _code_digest()},
                                  root=cache_dir)
    mc = dict(meta["model_config"]) if isinstance(meta["model_config"], dict) else dataclasses.asdict(
        meta["model_config"])
    mc["widths"] = tuple(mc["widths"])
    mc.setdefault("head", "avg")
    return _from_state(SmallVGGConfig(**mc), tensors, "cache entry"), meta["metrics"]
