"""Per-iteration checkpoints of hard EM: written by rank 0, read by rank 0 and broadcast.

A checkpoint folder holds ``em_state.json`` (iteration, config, history, and the name of the model folder
it belongs to) and that model folder, ``model-<iteration>``. A new iteration's model is written to a new
folder first and ``em_state.json`` is then replaced atomically, so it always names a complete model: a
process killed at any point leaves the last good checkpoint loadable, and the folder of the iteration it
superseded is removed only afterwards. On resume, rank 0 reads the checkpoint and broadcasts it (and any
error) to the other ranks, so they need not see rank 0's disk and all of them fail alike on a bad folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import distributed
from ..checkpoint import load_hierarchy, save_hierarchy
from ..hierarchy import Hierarchy
from ..io import atomic_write_json

__all__ = ["state_path", "load_checkpoint", "save_checkpoint", "describe"]


def state_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / "em_state.json"


def _read(ckpt: Path, h: Hierarchy, cfg_json: dict):
    if not state_path(ckpt).is_file():
        return None
    state = json.loads(state_path(ckpt).read_text())
    if state.get("config") != cfg_json:
        raise ValueError(f"checkpoint_dir: {str(ckpt)!r} holds a run with another config; "
                         "use a fresh folder or the same config to resume")
    # Folders written before the model-<iteration> layout keep the model in ``model``.
    loaded = load_hierarchy(ckpt / state.get("model", "model"), map_location="cpu", expect_specs=list(h.specs))
    return {"history": state["history"], "iteration": state["iteration"], "hierarchy": loaded}


def load_checkpoint(ckpt: Path | None, h: Hierarchy, cfg_json: dict) -> tuple[list[dict], int]:
    """Restore ``h`` in place from the checkpoint in ``ckpt`` if there is one; returns ``(history, start)``.

    :raises ValueError: on every rank, if the folder holds another config or a corrupt model.
    """
    if ckpt is None:
        return [], 0

    def read():
        try:
            return "ok", _read(ckpt, h, cfg_json)
        except Exception as e:  # sent to every rank, then raised there
            return "error", e

    status, payload = distributed.run_on_main(read, "the EM checkpoint", timeout=distributed.timeout_s())
    if status == "error":
        raise payload
    if payload is None:
        return [], 0
    loaded = payload["hierarchy"].to(h.device)
    h.prior = loaded.prior
    h.load_state_dict(loaded.state_dict())
    return payload["history"], payload["iteration"] + 1


def save_checkpoint(ckpt: Path | None, h: Hierarchy, iteration: int, cfg_json: dict, history: list[dict]) -> None:
    """Rank 0 writes iteration ``iteration``'s checkpoint; the other ranks return at once."""
    if ckpt is None or not distributed.is_main():
        return
    name = f"model-{iteration:04d}"
    save_hierarchy(h, ckpt / name)
    atomic_write_json(state_path(ckpt), {"iteration": iteration, "config": cfg_json, "history": history,
                                         "model": name, "world_size": distributed.world_size()})
    for old in ckpt.iterdir():
        if old.is_dir() and old.name != name and (old.name == "model" or old.name.startswith("model-")):
            shutil.rmtree(old, ignore_errors=True)


def describe(ckpt: Path | None, last_saved: int | None) -> str:
    """Where the last good checkpoint is (``last_saved``: its iteration) and what to do, for error messages."""
    if ckpt is None:
        return "no checkpoint_dir was given, so nothing was saved"
    if last_saved is None:
        return f"no iteration had finished, so {str(ckpt)!r} holds no checkpoint yet; rerun the same command"
    return (f"the last good checkpoint is iteration {last_saved} in {str(ckpt)!r}; rerun the same command to "
            "resume from it")
