"""Smoke tests of ``scripts.parse`` (real images, scale scan) and ``scripts.diagnose`` with tiny flags."""

import json

import pytest
import torch
from PIL import Image

from scripts import diagnose, parse


def _png(path, h=40, w=30):
    arr = (torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)


def test_parse_one_image_and_a_folder(tiny_model_dir, tmp_path):
    _png(tmp_path / "a.png")
    out = tmp_path / "out"
    metrics = parse.main(["--model", str(tiny_model_dir), "--image", str(tmp_path / "a.png"), "--out", str(out),
                          "--scales", "0.5,1.0", "--max-steps", "2"])
    assert metrics["n_images"] == 1 and (out / "a.png").stat().st_size > 0
    row = json.loads((out / "metrics.json").read_text())["images"][0]
    assert row["scale"] in (0.5, 1.0) and len(row["evidence_per_scale"]) == 2
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "x.png")
    _png(folder / "y.jpg", 20, 50)
    metrics = parse.main(["--model", str(tiny_model_dir), "--image", str(folder), "--out", str(tmp_path / "o2"),
                          "--scales", "1.0", "--max-steps", "1"])
    assert metrics["n_images"] == 2
    # Category verification: every step gets the classifier's probability; accepted steps pass it.
    metrics = parse.main(["--model", str(tiny_model_dir), "--image", str(tmp_path / "a.png"), "--out",
                          str(tmp_path / "o3"), "--scales", "1.0", "--max-steps", "2", "--verify-threshold", "0.5"])
    row = metrics["images"][0]
    assert len(row["step_verified"]) == 2 and len(row["accepted_steps"]) == 2
    assert all(p >= 0.5 for p, a in zip(row["step_verified"], row["accepted_steps"]) if a)
    assert row["instances"] == sum(row["accepted_steps"])


def test_parse_bad_inputs(tiny_model_dir, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"no image here")
    with pytest.raises(ValueError, match="image"):
        parse.main(["--model", str(tiny_model_dir), "--image", str(tmp_path / "junk.png"), "--out", str(tmp_path)])
    _png(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="category"):
        parse.main(["--model", str(tiny_model_dir), "--image", str(tmp_path / "ok.png"), "--out", str(tmp_path),
                    "--category", "sheep"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="image"):
        parse.main(["--model", str(tiny_model_dir), "--image", str(tmp_path / "empty"), "--out", str(tmp_path)])


def test_diagnose_writes_one_figure_per_scene(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "diag"
    metrics = diagnose.main(["--model", str(tiny_model_dir), "--out", str(out), "--scenes", "2", "--quiet"])
    assert len(metrics["scenes"]) == 2 and (out / "scene_1.png").stat().st_size > 0
    assert [r["layer"] for r in metrics["scenes"][0]["layers"]][0] == "image"
