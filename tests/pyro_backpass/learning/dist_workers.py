"""Multi-process helpers for the distributed tests: a local launcher and the per-rank programs.

Ranks are forked from one forkserver that imported torch and pyro once (a fresh interpreter per rank
costs 5-10 s on the 2-core CI machine), and join a gloo group through the same environment variables
torchrun sets, so they go through :func:`pyro_backpass.distributed.init_from_env` like a torchrun job.
Each rank runs with one torch thread, as torchrun sets up, and writes its result to ``out/rank<r>.pt``.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import time
import traceback
from pathlib import Path

import pyro
import torch
import torch.multiprocessing as mp
from pyro import poutine

from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass import distributed
from pyro_backpass.hierarchy import random_hierarchy
from pyro_backpass.learning import HardEMConfig, TensorActivations, hard_em
from pyro_backpass.learning.hard_em import e_step

hard_em_module = importlib.import_module("pyro_backpass.learning.hard_em")  # the package exports the function

SPECS = toy_specs(size=8, channels=(3, 4, 4, 4), K=3, radii=(0, 0, 1, 1))
# 30 examples in minibatches of 7: the two shards (15 each) split minibatches, and iteration 1 re-seeds
# an empty image-layer component, so every distributed path of hard EM runs.
N, CONFIG = 30, HardEMConfig(iterations=2, batch_size=7, sgd_epochs=2, lr=1e-2, seed=1)


def toy_data(n: int = N) -> list[torch.Tensor]:
    truth = toy_hierarchy(seed=0, specs=SPECS, n_categories=1, sigma0=0.1, template_scale=2.0)
    pyro.set_rng_seed(1)
    trace = poutine.trace(activation_model).get_trace(truth, n=n)
    return [trace.nodes[f"f_td/{s.name}"]["value"].detach() for s in SPECS]


def run_reference(checkpoint_dir=None, config: HardEMConfig = CONFIG):
    """The one-process run the distributed ones must match: (state dict, history, E-step assignments)."""
    h, history = hard_em(activation_model, random_hierarchy(SPECS, 1, seed=7), TensorActivations(toy_data()),
                         config, checkpoint_dir, progress=False)
    hidden, _, _ = e_step(activation_model, h, TensorActivations(toy_data()), config.batch_size)
    return {k: v.clone() for k, v in h.state_dict().items()}, history, hidden


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(name: str, rank: int, world: int, port: int, out: str, timeout: float, args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       distributed.TIMEOUT_ENV: str(timeout)})
    torch.set_num_threads(1)
    try:
        assert distributed.init_from_env()
        result = globals()[name](rank, world, Path(out), *args)
    except BaseException as e:
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    distributed.destroy()


def launch(name: str, world: int, out: Path, *args, timeout: float = 30.0, join_s: float = 240.0) -> list:
    """Run ``name(rank, world, out, *args)`` on ``world`` local gloo ranks; returns the ranks' results."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "pyro", "pyro_backpass.learning", "models.activation",
                                "dist_workers"])  # takes effect when the server starts (first launch)
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(name, r, world, port, str(out), timeout, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(join_s)
    for p in procs:
        if p.is_alive():
            p.kill()
    results = []
    for r, p in enumerate(procs):
        path = out / f"rank{r}.pt"
        results.append(torch.load(path, weights_only=False) if path.is_file() else {"exitcode": p.exitcode})
    return results


# ---- per-rank programs -----------------------------------------------------------------------------------

def helpers(rank: int, world: int, out: Path) -> dict:
    """The helpers' semantics with real collectives."""
    mine = distributed.shard(10)
    reduced = distributed.all_reduce_sum(torch.tensor([rank + 1.0, 2.0]))
    gathered = distributed.gather_by_index(mine.double() * 10, mine, 10)
    objs = distributed.gather_objects([f"item{i}" for i in mine.tolist()])
    try:
        distributed.check_same("the test setting", {"a": 1, "b": rank})
        mismatch = None
    except ValueError as e:
        mismatch = str(e)
    # torchrun stops the other ranks with SIGTERM when one fails: within a session that is a clear error.
    sigterm = None
    with distributed.session():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except distributed.DistributedError as e:
            sigterm = str(e)
    return {"shard": mine.tolist(), "reduced": reduced.tolist(), "gathered": gathered.tolist(), "objects": objs,
            "mismatch": mismatch, "sigterm": sigterm, "handler_restored": signal.getsignal(signal.SIGTERM) is not
            distributed.group._on_sigterm}


def mismatched_config(rank: int, world: int, out: Path) -> dict:
    """Rank 1 is given another learning rate: every rank must refuse with the same clear error."""
    config = CONFIG if rank == 0 else HardEMConfig(**{**CONFIG.__dict__, "lr": 0.5})
    try:
        hard_em(activation_model, random_hierarchy(SPECS, 1, seed=7), TensorActivations(toy_data()), config,
                out / "mismatch", progress=False)
    except ValueError as e:
        return {"error": str(e)}
    return {"error": None}


def train(rank: int, world: int, out: Path) -> dict:
    """Distributed hard EM on the toy data (each rank reads its shard of the full source)."""
    state, history, hidden = run_reference(out / "ckpt")
    return {"state": state, "history": history, "hidden": {k: v for k, v in hidden.items()},
            "owned": distributed.shard(N)}


def dies_in_iteration_1(rank: int, world: int, out: Path) -> dict:
    """Rank 1 exits abruptly in the M-step of iteration 1; rank 0 must raise a clear error."""
    original = hard_em_module.m_step_templates
    calls = []

    def m_step_templates(*args, **kwargs):
        calls.append(1)
        if rank == 1 and len(calls) == 2:
            os._exit(17)  # like a killed process: no cleanup, no message to the others
        return original(*args, **kwargs)

    hard_em_module.m_step_templates = m_step_templates
    try:
        run_reference(out / "ckpt")
    except distributed.DistributedError as e:
        return {"error": str(e), "type": type(e).__name__}
    return {"error": None}


def stuck(rank: int, world: int, out: Path) -> dict:
    """Rank 1 is alive but never joins the collective (a hang): rank 0 must time out with a clear error."""
    if rank == 1:
        time.sleep(3.5)
        os._exit(0)
    t = time.perf_counter()
    try:
        distributed.all_reduce_sum(torch.ones(3), "the test all-reduce")
    except distributed.DistributedError as e:
        return {"error": str(e), "seconds": time.perf_counter() - t}
    return {"error": None}
