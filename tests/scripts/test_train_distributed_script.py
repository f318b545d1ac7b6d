"""``torchrun --nproc_per_node 2 -m scripts.train`` against ``python -m scripts.train`` (tiny config; slow: ~2 min).

The fast 2-process equivalence test of hard EM itself is tests/pyro_backpass/learning/test_distributed_em.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import train

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--config", "tiny", "--quiet", "--n-train", "8", "--n-val", "4", "--n-obs-scenes", "2",
         "--backbone-n-train", "6", "--em-iterations", "2", "--em-batch-size", "4"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_BACKPASS_CACHE", str(tmp_path / "cache"))
    one = train.main(FLAGS + ["--out", str(tmp_path / "one")])
    env = {**os.environ, "PYRO_BACKPASS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "scripts.train", *FLAGS, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("log-likelihood train") == 1  # only rank 0 prints
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and len(two["peak_memory_mb_per_rank"]) == 2
    assert [h["usage"] for h in two["history"]] == [h["usage"] for h in one["history"]]
    for a, b in zip(two["history"], one["history"]):
        assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=1e-5)
        assert a["val_log_likelihood"] == pytest.approx(b["val_log_likelihood"], rel=1e-5)
    assert two["final_val_log_likelihood"] == pytest.approx(one["final_val_log_likelihood"], rel=1e-5)
    em_dirs = list((tmp_path / "two").glob("em-*"))
    assert len(em_dirs) == 1 and sorted(p.name for p in em_dirs[0].iterdir()) == ["em_state.json", "model-0001"]
    assert (tmp_path / "two" / "model" / "backbone.safetensors").is_file()
