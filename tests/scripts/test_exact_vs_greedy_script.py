"""Smoke test of ``python -m scripts.exact_vs_greedy`` with tiny flags."""

import json

from scripts import exact_vs_greedy as script

TINY = ["--scenes", "6", "--scenes-per-hierarchy", "3", "--size", "6", "--channels", "2,3,3,3", "--K", "2",
        "--beams", "2,4", "--quiet"]
KEYS = {"agreement_greedy", "agreement_beam", "agreement_infer_discrete", "mean_gap", "recovery_exact",
        "recovery_greedy", "ms_greedy", "ms_exact", "ms_infer_discrete"}


def test_writes_metrics_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    script.main(["--out", str(out), "--seed", "2", *TINY])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"moderate", "hard"}
    for m in metrics.values():
        assert KEYS <= set(m)
        assert set(m["agreement_beam"]) == {"2", "4"}
        assert m["agreement_infer_discrete"] == 1.0
        assert m["n_scenes"] == 6 and m["mean_gap"] >= -1e-6
        assert all(0.0 <= m[k] <= 1.0 for k in ("agreement_greedy", "recovery_exact", "recovery_greedy"))
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 2 and config["config"]["channels"] == [2, 3, 3, 3] and config["config"]["scenes"] == 6
    assert config["config"]["exact_dtype"] == "float32"
    scenes = json.loads((out / "scenes.json").read_text())
    assert len(scenes) == 12 and {r["setting"] for r in scenes} == {"moderate", "hard"}
    for setting, m in metrics.items():
        rs = [r for r in scenes if r["setting"] == setting]
        assert m["agreement_greedy"] == sum(r["agree/greedy"] for r in rs) / 6
        assert abs(m["mean_gap"] - sum(r["gap"] for r in rs) / 6) < 1e-9
    table = capsys.readouterr().out
    assert "agreement_infer_discrete" in table and "moderate" in table and "hard" in table


def test_defaults_and_flags():
    args, cfg = script.parse_args([])
    assert args.out == "runs/exact_vs_greedy" and cfg.scenes == 200 and cfg.seed == 0 and cfg.beams == (3, 9, 27)
    assert cfg.size == 12 and cfg.exact_dtype == "float32"
    _, cfg = script.parse_args(["--scenes", "5", "--hard-middle-layers", "2", "--rtol", "1e-6"])
    assert cfg.scenes == 5 and cfg.hard_middle_layers == (2,) and cfg.rtol == 1e-6

