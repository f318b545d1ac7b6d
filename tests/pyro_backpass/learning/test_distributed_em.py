"""Distributed hard EM on 2 gloo processes against the same run in one process (issue 7).

Same seed: the CPD tables, the component usage of every iteration and the final E-step assignments are
equal; the other parameters match within float tolerance. Also: the helpers with real collectives, a
config that differs on one rank, and a rank that dies mid-iteration (clear error, intact checkpoint,
resume on one process).
"""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dist_workers as dw  # noqa: E402

from pyro_backpass.checkpoint import load_hierarchy  # noqa: E402


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process run, at one torch thread like the ranks (so only sharding differs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dw.run_reference(tmp_path_factory.mktemp("ref") / "ckpt")
    finally:
        torch.set_num_threads(threads)


def _check_errors(results):
    for r, res in enumerate(results):
        assert "traceback" not in res and "exitcode" not in res, (r, res)


def test_two_processes_match_one(tmp_path, reference):
    ref_state, ref_history, ref_hidden = reference
    helpers = dw.launch("helpers", 2, tmp_path)
    _check_errors(helpers)
    assert helpers[0]["shard"] == [0, 1, 2, 3, 4] and helpers[1]["shard"] == [5, 6, 7, 8, 9]
    assert helpers[0]["reduced"] == helpers[1]["reduced"] == [3.0, 4.0]
    assert helpers[0]["gathered"] == helpers[1]["gathered"] == [10.0 * i for i in range(10)]
    assert helpers[0]["objects"] == [f"item{i}" for i in range(10)] and helpers[1]["objects"] is None
    for r, res in enumerate(helpers):
        assert "rank(s) [1]" in res["mismatch"] and "b: rank 0 has 0, rank 1 has 1" in res["mismatch"]
        assert res["sigterm"].startswith(f"rank {r} of 2: stopped by SIGTERM") and res["handler_restored"]

    results = dw.launch("train", 2, tmp_path)
    _check_errors(results)
    states = [r["state"] for r in results]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), "ranks' replicas differ"
    for k, ref in ref_state.items():
        if "prior" in k:  # CPD tables: closed form from integer counts, exactly equal
            assert torch.equal(states[0][k], ref), k
        else:
            assert torch.allclose(states[0][k], ref, rtol=1e-4, atol=1e-5), (k, (states[0][k] - ref).abs().max())
    assert any("prior" in k for k in ref_state)
    hist = results[0]["history"]
    assert [h["usage"] for h in hist] == [h["usage"] for h in ref_history]
    assert [h["reseeded"] for h in hist] == [h["reseeded"] for h in ref_history] and hist[1]["reseeded"]
    for a, b in zip(hist, ref_history):
        assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=1e-5)
        assert a["seconds"]["world_size"] == 2
    # The final E-step: each rank's part of the assignments, put together, equals the one-process one.
    for site, ref in ref_hidden.items():
        joined = torch.full_like(ref, -1)
        for res in results:
            joined[res["owned"]] = res["hidden"][site][res["owned"]]
        assert torch.equal(joined, ref), site
    # Rank 0 wrote the checkpoint; the model it names loads and equals the result.
    state = json.loads((tmp_path / "ckpt" / "em_state.json").read_text())
    assert state["iteration"] == 1 and state["world_size"] == 2
    saved = load_hierarchy(tmp_path / "ckpt" / state["model"]).state_dict()
    assert all(torch.equal(saved[k], states[0][k]) for k in saved)


def test_mismatched_config_fails_on_every_rank(tmp_path):
    results = dw.launch("mismatched_config", 2, tmp_path)
    for res in results:
        assert res["error"] and "expected the same value on every rank" in res["error"], res
        assert "rank(s) [1]" in res["error"] and "lr" in res["error"], res
    assert not (tmp_path / "mismatch" / "em_state.json").exists()


def test_rank_dying_mid_iteration(tmp_path, reference):
    results = dw.launch("dies_in_iteration_1", 2, tmp_path, timeout=20.0)
    assert results[1] == {"exitcode": 17}
    err = results[0]["error"]
    assert results[0]["type"] == "DistributedError", results[0]
    assert "rank 0 of 2" in err and "last good checkpoint is iteration 0" in err and "resume" in err, err
    state = json.loads((tmp_path / "ckpt" / "em_state.json").read_text())
    assert state["iteration"] == 0 and len(state["history"]) == 1
    # Resume the 2-process checkpoint in one process: it finishes the run like the uninterrupted one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state, history, hidden = dw.run_reference(tmp_path / "ckpt")
    finally:
        torch.set_num_threads(threads)
    ref_state, ref_history, ref_hidden = reference
    assert [h["usage"] for h in history] == [h["usage"] for h in ref_history]
    assert all(torch.equal(hidden[k], ref_hidden[k]) for k in ref_hidden)
    for k, ref in ref_state.items():
        assert torch.allclose(state[k], ref, rtol=1e-4, atol=1e-5), k


def test_stuck_rank_times_out(tmp_path):
    results = dw.launch("stuck", 2, tmp_path, timeout=1.0)
    err = results[0]["error"]
    assert err and "rank 0 of 2: the test all-reduce failed" in err and "timeout 1 s" in err, err
    assert results[0]["seconds"] < 3.0  # the timeout, not rank 1's exit after 3.5 s, ended the wait
