"""Rendering throughput: new procedural objects (mesh generation + render) per second, one process.

``python -m scripts.bench_render --n 500 --size 96 [--category airplane|all] [--threads 1]``
prints ``images_per_s`` (and the same as JSON on the last line).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pyro_backpass.data import CATEGORIES, RenderConfig, render_object


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="number of new objects to render")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--category", default="airplane", help="a category name, or 'all' to cycle through them")
    ap.add_argument("--camera", default="perspective", choices=["perspective", "orthographic"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cats = CATEGORIES if args.category == "all" else (args.category,)
    cfg = RenderConfig(size=args.size, camera=args.camera)
    render_object(cats[0], 10**6, config=cfg)  # warm-up (imports, caches); not a counted object
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(args.n):
        render_object(cats[i % len(cats)], i, config=cfg)
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu
    # Wall-clock is the metric; CPU time shows what one free core would give on a busy machine.
    out = {"images_per_s": args.n / secs, "cpu_images_per_s": args.n / cpu, "n": args.n, "size": args.size,
           "category": args.category, "camera": args.camera, "torch_threads": torch.get_num_threads(),
           "seconds": secs}
    print(f"images_per_s = {out['images_per_s']:.1f}  ({args.n} new {args.category} objects at {args.size}px; "
          f"{out['cpu_images_per_s']:.1f} per CPU-second)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
