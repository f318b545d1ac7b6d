"""Smoke test of ``python -m scripts.demo`` on a tiny random model."""

import json

import pytest

from scripts import demo

FIGURES = ("fig2_data", "fig3_samples", "fig4_clamped", "fig5_parse", "completion", "query")


def test_demo_writes_every_figure(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    metrics = demo.main(["--model", str(tiny_model_dir), "--out", str(out), "--samples", "4", "--groups", "2",
                         "--per-group", "2", "--n-modes", "3", "--quiet"])
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 0, name
    written = json.loads((out / "metrics.json").read_text())
    assert len(written["fig5_step_iou"]) == 2 and set(written["queries"]) == {"leftmost", "largest", "darkest"}
    assert metrics["seconds_training"] < 5  # the model was there: nothing was trained
    assert "completion IoU" in capsys.readouterr().out


def test_demo_refuses_a_folder_it_cannot_train_into(tmp_path):
    with pytest.raises(ValueError, match="model"):
        demo.main(["--model", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "d"), "--quiet"])
