"""Smoke test of ``python -m scripts.bench_allreduce`` in one process (the collectives are identities there)."""

import json

import pytest

from scripts import bench_allreduce


def test_bench_allreduce_one_process(tmp_path):
    metrics = bench_allreduce.main(["--out", str(tmp_path), "--config", "tiny", "--repeats", "2"])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["world_size"] == 1 and set(written["messages"]) == set(metrics["messages"])
    sizes = bench_allreduce.message_sizes("default")
    # The default hierarchy: K=5 3x3 convolutions 24->3, 24->24, 48->24, 48->48, 96->48, 96->96 plus biases.
    weights = 5 * 9 * (24 * 3 + 24 * 24 + 48 * 24 + 48 * 48 + 96 * 48 + 96 * 96)
    biases = 5 * (3 + 24 + 24 + 48 + 48 + 96)
    assert sizes["gradients (per SGD step)"] == weights + biases
    assert sizes["template sums (per iteration)"] == 48 * 96 * 12 * 12


def test_bench_allreduce_bad_input(tmp_path):
    with pytest.raises(ValueError, match="config: expected a small_vgg config, got 'paper-vgg16'"):
        bench_allreduce.message_sizes("paper-vgg16")
    with pytest.raises(ValueError, match="--repeats: expected an int >= 1, got 0"):
        bench_allreduce.main(["--out", str(tmp_path), "--repeats", "0"])
