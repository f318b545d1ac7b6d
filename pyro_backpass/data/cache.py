"""Disk cache for generated data sets, keyed by a hash of their config.

An entry is two files in ``<root>/<kind>/``: ``<key>.safetensors`` with the tensors and
``<key>.json`` with the format version, the config, a checksum of the tensor file and free-form
metadata (e.g. the generating parameters of each object). The key is the sha256 of the canonical
JSON of ``(kind, config, format version, extra)``, so a changed config (or a changed generator,
when its source digest is passed as ``extra``) lands on a new key and is rebuilt. Both files are
written atomically, tensors first and the JSON last: the JSON is the commit marker, and a missing,
unreadable or mismatching pair is treated as absent and rebuilt.

The root is ``$PYRO_BACKPASS_CACHE`` if set, else ``~/.cache/pyro_backpass``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pyro_backpass.io import atomic_write_bytes, atomic_write_json, to_jsonable

__all__ = [
    "FORMAT_VERSION",
    "cache_root",
    "config_key",
    "source_digest",
    "entry_paths",
    "load_entry",
    "save_entry",
    "load_or_build",
    "to_uint8",
    "from_uint8",
]

#: Bump when the on-disk layout or the meaning of stored tensors changes.
FORMAT_VERSION = 1

Tensors = dict[str, torch.Tensor]


def cache_root() -> Path:
    """The cache folder: ``$PYRO_BACKPASS_CACHE`` if set and non-empty, else ``~/.cache/pyro_backpass``."""
    env = os.environ.get("PYRO_BACKPASS_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyro_backpass"


def _canonical_json(obj: Any) -> str:
    # sort_keys and fixed separators make the text, hence the hash, independent of dict order.
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_key(kind: str, config: Any, extra: Mapping[str, Any] | None = None,
               version: int = FORMAT_VERSION) -> str:
    """The sha256 hex digest that names a cache entry.

    :param str kind: the data set kind (``"objects"``, ``"scenes"``, ...); also the cache subfolder.
    :param config: a (frozen) dataclass or JSON-able mapping describing the content.
    :param extra: anything else the content depends on (e.g. a :func:`source_digest`).
    :param int version: the storage format version.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        payload_config = {"class": type(config).__name__, "fields": config}
    else:
        payload_config = config
    payload = {"kind": kind, "config": payload_config, "version": version, "extra": dict(extra or {})}
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


def source_digest(*modules: ModuleType) -> str:
    """sha256 of the source files of ``modules``: a cache key part that changes when the generator does."""
    h = hashlib.sha256()
    for module in modules:
        path = getattr(module, "__file__", None)
        h.update(module.__name__.encode("utf-8"))
        if path and os.path.exists(path):
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def entry_paths(kind: str, key: str, root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(tensor file, JSON sidecar)`` of the entry ``key`` of ``kind``."""
    folder = (Path(root) if root is not None else cache_root()) / kind
    return folder / f"{key}.safetensors", folder / f"{key}.json"


def save_entry(kind: str, key: str, tensors: Tensors, config: Any, meta: Any = None,
               root: str | os.PathLike | None = None) -> None:
    """Write an entry atomically: tensors first, then the JSON sidecar that commits it."""
    tensor_path, json_path = entry_paths(kind, key, root)
    blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(tensor_path, blob)
    atomic_write_json(json_path, {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "key": key,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "tensors_bytes": len(blob),
        "config": config,
        "meta": meta,
    })


def load_entry(kind: str, key: str, root: str | os.PathLike | None = None) -> tuple[Tensors, Any] | None:
    """Read an entry; ``None`` when it is absent, partial or corrupt (the caller rebuilds it).

    :returns: ``(tensors, meta)`` with the tensors on CPU.
    """
    tensor_path, json_path = entry_paths(kind, key, root)
    if not json_path.exists():
        return None
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
        if sidecar.get("format_version") != FORMAT_VERSION or sidecar.get("key") != key:
            raise ValueError("sidecar does not match the requested key or format version")
        blob = tensor_path.read_bytes()
        if len(blob) != sidecar["tensors_bytes"] or hashlib.sha256(blob).hexdigest() != sidecar["tensors_sha256"]:
            raise ValueError("tensor file does not match its checksum")
        return load_safetensors(blob), sidecar.get("meta")
    except Exception as e:  # noqa: BLE001 - any failure to read means "rebuild", never "crash"
        warnings.warn(f"cache entry {json_path} is unreadable ({e}); rebuilding it", RuntimeWarning, stacklevel=2)
        return None


def load_or_build(kind: str, config: Any, build: Callable[[], tuple[Tensors, Any]], cache: bool = True,
                  extra: Mapping[str, Any] | None = None,
                  root: str | os.PathLike | None = None) -> tuple[Tensors, Any]:
    """Return the cached ``(tensors, meta)`` for ``config``, building and storing them when needed.

    :param build: makes ``(tensors, meta)``; ``meta`` must be JSON-able (after ``to_jsonable``).
    :param bool cache: ``False`` builds without reading or writing the disk.
    """
    key = config_key(kind, config, extra)
    found = load_entry(kind, key, root) if cache else None
    if found is not None:
        return found
    tensors, meta = build()
    if cache:
        save_entry(kind, key, tensors, config, meta, root)
    # Return what a later load would return, so cached, fresh and uncached runs see identical metadata.
    return tensors, json.loads(json.dumps(to_jsonable(meta)))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Quantise an image in ``[0, 1]`` to ``uint8`` (round to nearest)."""
    return (x.clamp(0, 1) * 255).round_().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_uint8`: ``uint8`` to ``float32`` in ``[0, 1]``."""
    return x.to(torch.float32).div_(255)
