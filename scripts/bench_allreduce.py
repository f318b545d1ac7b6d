"""Time the collectives of a distributed hard-EM iteration: ``torchrun --nproc_per_node N -m scripts.bench_allreduce``.

Measures, on the group torchrun sets up (gloo on CPU, NCCL on GPUs), the median wall time of the messages
hard EM sends: the gradient all-reduce of one SGD step (every top-down weight below the top layer, in one
flat float32 buffer), the template sums of the closed-form top M-step, and the exact gathers of
per-example values (E-step scores and errors, ``n`` examples). The sizes follow the ``--config`` of
``scripts.train`` (the geometry of an untrained backbone of that config; nothing is trained). The
scaling model in the README multiplies these by the number of messages per iteration. Rank 0 writes
``DIR/metrics.json`` and prints a table. In one process every collective is the identity (times ~0).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_backpass import distributed
from pyro_backpass.backbones import SmallVGG, SmallVGGConfig
from pyro_backpass.hierarchy import random_hierarchy
from pyro_backpass.io import write_run_files
from pyro_backpass.learning.pipeline import CONFIGS
from pyro_backpass.specs import with_mixture


def message_sizes(config_name: str) -> dict[str, int]:
    """Elements of each message of one EM iteration, for the SmallVGG geometry of a training config."""
    cfg = CONFIGS[config_name]
    if cfg.backbone != "small_vgg":
        raise ValueError(f"config: expected a small_vgg config, got {config_name!r} ({cfg.backbone})")
    widths = tuple(cfg.backbone_widths) or SmallVGGConfig().widths
    specs = SmallVGG(SmallVGGConfig(input_size=cfg.size, widths=widths)).layer_specs()
    specs = with_mixture([s for s in specs if not cfg.layers or s.name in cfg.layers], K=cfg.K, K_top=cfg.K_top)
    h = random_hierarchy(specs, n_categories=1)
    grads = sum(p.numel() for m in h.topdown[:-1] for p in m.parameters())
    return {"gradients (per SGD step)": grads, "template sums (per iteration)": h.topdown[-1].template.numel(),
            "per-example gather (per iteration, float64)": cfg.n_train * (2 * len(specs) + 1)}


def _time(numel: int, dtype: torch.dtype, repeats: int) -> float:
    buf = torch.ones(numel, dtype=dtype)
    distributed.all_reduce_sum(buf.clone())  # warm-up (connections, buffers)
    times = []
    for _ in range(repeats):
        distributed.barrier("aligning the ranks before a timed all-reduce")
        t = time.perf_counter()
        distributed.all_reduce_sum(buf)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_allreduce")
    parser.add_argument("--config", default="default", choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected an int >= 1, got {args.repeats}")
    with distributed.session():
        rows = {}
        for name, numel in message_sizes(args.config).items():
            dtype = torch.float64 if "float64" in name else torch.float32
            seconds = _time(numel, dtype, args.repeats)
            rows[name] = {"elements": numel, "bytes": numel * dtype.itemsize, "median_ms": 1e3 * seconds,
                          "gb_per_s": numel * dtype.itemsize / max(seconds, 1e-9) / 1e9}
        world, main_rank = distributed.world_size(), distributed.is_main()
    metrics = {"world_size": world, "backend": "gloo" if not torch.cuda.is_available() else "nccl",
               "config": args.config, "messages": rows}
    if main_rank:
        write_run_files(args.out, vars(args), None, metrics)
        print(f"{world} process(es), {metrics['backend']}" + (":" if world > 1 else
              " (one process: every collective is the identity; run it under torchrun)"))
        for name, r in rows.items():
            print(f"  {name:<45} {r['bytes'] / 1e6:8.2f} MB  {r['median_ms']:8.2f} ms  {r['gb_per_s']:6.2f} GB/s")
    return metrics


if __name__ == "__main__":
    main()
