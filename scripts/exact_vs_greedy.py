"""Greedy and beam backward passes against exact MAP on random toy hierarchies (DESIGN §4).

    python -m scripts.exact_vs_greedy --scenes 200 --seed 0 --out runs/exact_vs_greedy

Every field of :class:`~pyro_backpass.experiments.ExactVsGreedyConfig` is a ``--kebab-case`` flag.
Writes ``config.json`` (resolved config and seed), ``metrics.json`` (one object per setting,
``"moderate"`` and ``"hard"``: ``agreement_greedy``, ``agreement_beam``, ``agreement_infer_discrete``,
``mean_gap``, ``recovery_exact``, ``recovery_greedy``, ``ms_greedy``, ``ms_exact``,
``ms_infer_discrete`` and more, with agreement per scene kind) and ``scenes.json`` (every scene's
record), and prints the metrics as a table. Brute force is
:func:`guides.exact.map_bruteforce_layers` with its table in ``--exact-dtype``. Run as a script, it
first keeps freed heap memory in the process (:func:`keep_freed_memory`), which changes the
``ms_*`` numbers only.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import time
from pathlib import Path

import torch

from guides.exact import map_bruteforce_layers, map_infer_discrete
from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.cli import add_config_args, config_from_args
from pyro_backpass.experiments import ExactVsGreedyConfig, run_exact_vs_greedy
from pyro_backpass.io import atomic_write_json, write_run_files


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, ExactVsGreedyConfig]:
    parser = argparse.ArgumentParser(prog="python -m scripts.exact_vs_greedy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/exact_vs_greedy", help="run folder (default: runs/exact_vs_greedy)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(parser, ExactVsGreedyConfig)
    args = parser.parse_args(argv)
    return args, config_from_args(ExactVsGreedyConfig, args)


def format_table(metrics: dict) -> str:
    """One row per metric, one column per setting; dict-valued metrics get one row per key."""
    settings = list(metrics)
    rows: list[tuple[str, list]] = []
    for key, value in metrics[settings[0]].items():
        if isinstance(value, dict):
            rows += [(f"{key}[{k}]", [metrics[s][key].get(k) for s in settings]) for k in value]
        else:
            rows.append((key, [metrics[s][key] for s in settings]))
    width = max(len(name) for name, _ in rows) + 2

    def cell(v):
        return f"{v:>12.4f}" if isinstance(v, float) else f"{v!s:>12}"

    lines = [f"{'':<{width}}" + "".join(f"{s:>12}" for s in settings)]
    lines += [f"{name:<{width}}" + "".join(cell(v) for v in values) for name, values in rows]
    return "\n".join(lines)


def keep_freed_memory() -> bool:
    """On glibc, keep freed heap memory in the process instead of returning it to the OS.

    The exact searches allocate and free tensors of tens of MB per scene; by default glibc maps
    each anew and the kernel faults it in page by page, which cost ``infer_discrete`` about a second
    of system time per scene here (as much as a third of its wall time). Raising the mmap and trim
    thresholds to 1 GiB (``mallopt``) keeps the pages. Affects timings only, of every method alike.

    :returns: whether the thresholds were set (``False`` off glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def main(argv: list[str] | None = None) -> dict:
    args, config = parse_args(argv)
    t0 = time.perf_counter()
    exact = functools.partial(map_bruteforce_layers, search_dtype=getattr(torch, config.exact_dtype))
    records: list[dict] = []
    metrics = run_exact_vs_greedy(config, activation_model, toy_hierarchy, toy_specs, exact, map_infer_discrete,
                                  progress=not args.quiet, records_out=records)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    write_run_files(out, config, config.seed, metrics)
    atomic_write_json(out / "scenes.json", records)
    print(format_table(metrics))
    print(f"{config.scenes} scenes per setting in {seconds:.0f} s; wrote {out / 'metrics.json'}, "
          f"{out / 'config.json'}, {out / 'scenes.json'}")
    return metrics


if __name__ == "__main__":
    keep_freed_memory()  # process-wide, so only when run as a script (not when a test imports main)
    main()
