"""Smoke test of ``python -m scripts.train_backbone`` with tiny flags, toy data and a temporary cache."""

import importlib.util
import json
import pathlib

import pytest

from scripts import train_backbone as script

_TOY = pathlib.Path(__file__).resolve().parents[1] / "pyro_backpass" / "backbones" / "toy_backbone_data.py"
_spec = importlib.util.spec_from_file_location("toy_backbone_data_for_script", _TOY)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)

TINY = ["--input-size", "32", "--widths", "4,8", "--n-train", "4", "--epochs", "1", "--batch-size", "8", "--quiet"]


@pytest.fixture
def toy_data(monkeypatch, tmp_path):
    from pyro_backpass.backbones import train

    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_build(size, *args, **kwargs):
        calls.append(size)
        return toy.toy_backbone_data(size, 4)

    monkeypatch.setattr(train, "build_backbone_data", fake_build)
    return calls


def test_writes_config_metrics_and_weights(tmp_path, toy_data, capsys):
    out = tmp_path / "run"
    script.main(["--out", str(out), *TINY, "--compositional", "--seed", "3"])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "clutter_accuracy", "compositionality_error", "seconds", "params", "machine"):
        assert key in metrics
    assert metrics["compositional"] is True
    assert set(metrics["compositionality_error"]) == {"conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2"}
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["config"]["compositional"] is True and config["config"]["widths"] == [4, 8]
    assert (out / "backbone.safetensors").stat().st_size > 0
    assert "compositionality_error" in capsys.readouterr().out
    assert list((tmp_path / "cache" / "backbones").glob("*.json"))

    # Same flags again: served from the cache, no new training data built.
    script.main(["--out", str(tmp_path / "again"), *TINY, "--compositional", "--seed", "3"])
    assert len(toy_data) == 1


def test_flags_map_onto_the_config():
    _, cfg = script.parse_args(["--epochs", "2", "--compositional", "--lr", "0.01"])
    assert cfg.epochs == 2 and cfg.compositional and cfg.lr == 0.01
    _, cfg = script.parse_args(["--compositional", "false"])
    assert not cfg.compositional
    _, cfg = script.parse_args([])
    assert not cfg.compositional and cfg.input_size == 96
