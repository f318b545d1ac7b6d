"""Save and load a :class:`Hierarchy`: safetensors for tensors, JSON for structure (DESIGN §7).

A checkpoint is a folder with ``tensors.safetensors`` and ``hierarchy.json``. Both are written
atomically, tensors first; the JSON records the tensors file's sha256, so a folder whose tensors do
not match its JSON (an interrupted or mixed write) is rejected on load rather than half-read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .hierarchy import Hierarchy
from .io import atomic_write_bytes, atomic_write_json
from .priors import prior_from_config
from .specs import LayerSpec

__all__ = ["FORMAT_VERSION", "save_hierarchy", "load_hierarchy", "CheckpointError"]

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
META = "hierarchy.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or of another format version or layer list."""


def save_hierarchy(h: Hierarchy, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``h`` to the folder ``path`` (created if needed).

    :param dict extra: JSON-able metadata stored beside the structure (e.g. the backbone name).
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in h.state_dict().items()}
    blob = st_save(state)
    meta = {
        "format_version": FORMAT_VERSION,
        "specs": [s.to_dict() for s in h.specs],
        "n_categories": h.n_categories,
        "categories": h.categories,
        "prior": h.prior.config(),
        "upsample": h.upsample,
        "kernel_size": h.kernel_size,
        "dtype": str(h.dtype).replace("torch.", ""),
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "extra": extra or {},
    }
    atomic_write_bytes(path / TENSORS, blob)
    atomic_write_json(path / META, meta)
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON structure of a checkpoint folder, with format-version checking."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"path: expected a checkpoint folder containing {META}, got {str(path)!r}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"path: {str(meta_path)!r} is not valid JSON ({e})") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"path: expected checkpoint format version {FORMAT_VERSION}, got {version!r} "
                              f"in {str(meta_path)!r}")
    return meta


def load_hierarchy(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                   expect_specs: list[LayerSpec] | None = None) -> Hierarchy:
    """Load a hierarchy saved by :func:`save_hierarchy`.

    :param expect_specs: if given, the checkpoint's layer list must match it (e.g. the backbone's).
    :raises CheckpointError: missing or corrupt files, another format version, or other layer specs.
    """
    path = Path(path)
    meta = read_meta(path)
    tensors_path = path / TENSORS
    if not tensors_path.is_file():
        raise CheckpointError(f"path: expected {TENSORS} in {str(path)!r}, it is missing")
    blob = tensors_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise CheckpointError(f"path: {str(tensors_path)!r} does not match its {META} (corrupt or partial write)")
    specs = [LayerSpec.from_dict(d) for d in meta["specs"]]
    if expect_specs is not None and list(expect_specs) != specs:
        raise CheckpointError(f"path: checkpoint layers {[s.name for s in specs]} do not match the expected "
                              f"layers {[s.name for s in expect_specs]} (another backbone or layer list)")
    try:
        state = st_load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"path: cannot read {str(tensors_path)!r}: {e}") from e
    prior = prior_from_config(meta["prior"])
    h = Hierarchy(specs, meta["n_categories"], meta["categories"], prior=prior, upsample=meta["upsample"],
                  kernel_size=meta["kernel_size"])
    h = h.to(getattr(torch, meta.get("dtype", "float32")))
    h.load_state_dict(state, strict=True)
    return h.to(map_location)
