"""Smoke test of ``python -m scripts.compositionality`` on a saved random-weights SmallVGG, tiny flags."""

import json

import pytest

from pyro_backpass.backbones import SmallVGG, SmallVGGConfig, save_small_vgg
from scripts import compositionality as script


@pytest.fixture
def model_dir(tmp_path):
    net = SmallVGG(SmallVGGConfig(input_size=96, widths=(4, 6, 8)))
    save_small_vgg(net, tmp_path / "model" / "backbone.safetensors")
    return tmp_path / "model"


def test_writes_figures_config_and_metrics(tmp_path, model_dir, capsys):
    out = tmp_path / "run"
    metrics = script.main(["--model", str(model_dir), "--out", str(out), "--frames", "4", "--seed", "2"])
    for name in ("classifier_scores.png", "activation_change.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((out / "metrics.json").read_text())
    assert written["frames"] == 4 and len(written["per_frame"]["airplane_logit"]) == 4
    assert written["summary"]["touch_frame"] == metrics["summary"]["touch_frame"]
    assert "half_drop_frame" in written["summary"] and "mug_logit" in written["per_frame"]
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 2 and config["config"]["frames"] == 4
    assert "half_drop_frame" in capsys.readouterr().out


def test_model_flag_accepts_the_file_and_rejects_a_bad_folder(tmp_path, model_dir):
    assert script.backbone_path(str(model_dir / "backbone.safetensors")) == model_dir / "backbone.safetensors"
    assert script.backbone_path(str(model_dir.parent)) == model_dir / "backbone.safetensors"
    with pytest.raises(ValueError, match="--model"):
        script.backbone_path(str(tmp_path / "nowhere"))
