"""Smoke test of ``python -m scripts.mask_study`` on the tiny trained-model stand-in."""

import json

import pytest

from pyro_backpass.vision.mask_study import RULES
from scripts import mask_study


def test_mask_study_writes_every_rule(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    summary = mask_study.main(["--model", str(tiny_model_dir), "--out", str(out), "--scenes", "2", "--seed", "1"])
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["summary"]) == set(RULES) == set(summary)
    assert all(len(v) == 2 for v in written["per_scene_iou"].values())
    assert "colour_line (default)" in capsys.readouterr().out


def test_mask_study_rejects_bad_flags(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="--scenes"):
        mask_study.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "s"), "--scenes", "0"])
