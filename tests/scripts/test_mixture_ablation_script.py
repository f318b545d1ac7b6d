"""Smoke test of ``python -m scripts.mixture_ablation`` on the tiny trained-model stand-in."""

import json

import pytest

from scripts import mixture_ablation


def test_mixture_ablation_script_writes_metrics(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ablation"
    result = mixture_ablation.main(["--model", str(tiny_model_dir), "--out", str(out), "--n-val", "3",
                                    "--layers", "conv1_2,pool2"])
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["collapsed"]) == {"conv1_2", "pool2"}
    assert written["collapsed"]["pool2"]["n_other"] == result["collapsed"]["pool2"]["n_other"]
    assert sum(written["usage"]["conv1_2"]) == 3
    assert (out / "config.json").exists()


def test_mixture_ablation_script_rejects_bad_flags(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="--n-val"):
        mixture_ablation.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "a"), "--n-val", "0"])
    with pytest.raises(ValueError, match="layers"):
        mixture_ablation.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "b"), "--n-val", "2",
                               "--layers", "pool3"])
