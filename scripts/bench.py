"""Benchmark the backward pass against its compute floor, a naive loop and exact enumeration.

    python -m scripts.bench --out DIR [--device cpu|cuda] [--quick] [--threads N] [--repeats N] ...

Every flag is a field of :class:`pyro_backpass.experiments.bench.BenchConfig` (see its docstring and
the module's for what each number means). Writes ``DIR/metrics.json`` and ``DIR/config.json`` and
prints a table. ``--quick`` alone (no value) turns on the smoke mode. On CPU with one thread (the
default) times are process CPU time, so that other jobs on a shared machine do not count; the load
average at the start and end of the run is recorded beside them.
"""

from __future__ import annotations

import argparse
import sys

from guides.exact import map_infer_discrete
from models.activation import activation_model
from models.toy import toy_hierarchy, toy_specs
from pyro_backpass.backbones.vgg16 import VGG16Backbone
from pyro_backpass.cli import add_config_args, config_from_args
from pyro_backpass.experiments.bench import BenchConfig, format_table, run_bench
from pyro_backpass.io import write_run_files
from scripts.naive_greedy import naive_greedy


def _bare_flags(argv: list[str]) -> list[str]:
    """Let ``--quick`` stand alone (the generic flags of the config take a value)."""
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        if a == "--quick" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n\n")[0])
    add_config_args(parser, BenchConfig)
    argv = _bare_flags(list(sys.argv[1:] if argv is None else argv))
    cfg = config_from_args(BenchConfig, parser.parse_args(argv))
    metrics = run_bench(cfg, activation_model, naive_greedy=naive_greedy, toy_hierarchy=toy_hierarchy,
                        toy_specs=toy_specs, map_infer_discrete=map_infer_discrete, vgg16_cls=VGG16Backbone,
                        progress=lambda m: print(m, file=sys.stderr, flush=True))
    write_run_files(cfg.out, cfg.resolved(), cfg.seed, metrics)
    print(format_table(metrics))
    print(f"wrote {cfg.out}/metrics.json")
    return metrics


if __name__ == "__main__":
    main()
