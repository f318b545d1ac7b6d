"""Smoke test of ``python -m scripts.train`` with tiny flags (renders, trains a tiny backbone, EM)."""

import json

import pytest

from pyro_backpass.checkpoint import load_hierarchy
from scripts import train


def test_train_tiny_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    flags = ["--config", "tiny", "--out", str(tmp_path / "run"), "--quiet", "--n-train", "8", "--n-val", "4",
             "--n-obs-scenes", "2", "--backbone-n-train", "6", "--em-iterations", "2", "--em-batch-size", "4",
             "--top-offset-radius", "3"]
    metrics = train.main(flags)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["final_log_likelihood"] == pytest.approx(metrics["final_log_likelihood"])
    assert len(written["history"]) == 2
    for key in ("relative_error", "val_explained_energy", "effective_components", "observation", "seconds",
                "peak_memory_mb"):
        assert key in written
    assert (tmp_path / "run" / "log_likelihood.png").stat().st_size > 0
    h = load_hierarchy(tmp_path / "run" / "model")
    assert h.specs[-1].name == "pool3" and h.specs[0].name == "image"
    assert h.specs[-1].offset_radius == 3 and h.specs[-3].offset_radius == 1  # the flag reaches the top only
    # A second run finds every stage cached and the EM checkpoint complete.
    again = train.main(flags)
    assert again["final_log_likelihood"] == pytest.approx(metrics["final_log_likelihood"])
    assert again["seconds"]["hard_em"] < metrics["seconds"]["hard_em"] + 5


def test_train_rejects_unknown_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="layers"):
        train.main(["--config", "tiny", "--out", str(tmp_path / "r"), "--quiet", "--layers", "image,conv9",
                    "--backbone-n-train", "4", "--n-train", "4", "--n-val", "2", "--n-obs-scenes", "1"])
