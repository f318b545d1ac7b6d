"""Smoke test of ``python -m scripts.data`` with tiny flags."""

import json

import pytest

pytest.importorskip("pyro_backpass.data.objects")


def test_data_script_writes_sheets_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    from scripts.data import main

    out = tmp_path / "run"
    args = ["--out", str(out), "--n-train", "6", "--n-test", "4", "--scenes", "2", "--size", "48", "--bench", "5",
            "--sheet-objects", "6", "--sheet-scenes", "2", "--seed", "1"]
    metrics = main(args)
    for name in ("fig2_objects.png", "scenes.png", "scenes_occluded.png", "config.json", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["images_per_s"] > 0 and on_disk["bench_renders"] == 5
    assert (on_disk["n_train"], on_disk["n_test"], on_disk["n_scenes"]) == (6, 4, 2)
    assert "CPU" in on_disk["machine"] and metrics["n_train"] == 6
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 1 and config["config"]["size"] == 48 and config["config"]["out"] == str(out)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_data_script_rejects_bad_flags(tmp_path):
    from scripts.data import main

    with pytest.raises(ValueError, match="n_train: expected a positive integer"):
        main(["--out", str(tmp_path), "--n-train", "0"])
