"""Atomic file writes and run directories.

Every file the project writes goes through :func:`atomic_write_bytes`: the bytes land in a temporary
file in the target's folder and are then renamed over the target, so a reader never sees a
half-written file and an interrupted write leaves the previous version intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_save_figure", "write_run_files", "to_jsonable"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    :param path: destination file; its folder is created if missing.
    :param bytes data: the full content.
    :returns: the destination as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave nothing half-written behind, whatever interrupted us.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, tensors, numpy values, tuples and paths into plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy array or scalar
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` (after :func:`to_jsonable`) as indented JSON, atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically (render to memory, then rename into place)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def write_run_files(out: str | os.PathLike, config: Any, seed: int | None, metrics: dict | None = None) -> Path:
    """Record a run: ``config.json`` (resolved config and seed) and, if given, ``metrics.json``.

    :param out: the run folder (created if missing).
    :param config: a dataclass or mapping with the resolved configuration.
    :param seed: the random seed of the run.
    :param metrics: the run's numbers, written as ``metrics.json``.
    :returns: the run folder.
    """
    out = Path(out)
    atomic_write_json(out / "config.json", {"config": config, "seed": seed})
    if metrics is not None:
        atomic_write_json(out / "metrics.json", metrics)
    return out
