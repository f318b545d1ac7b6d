"""Build the object and scene data sets, draw their contact sheets and time the renderer.

    python -m scripts.data --out runs/data [--n-train N] [--n-test N] [--scenes N] [--seed S] [--size S]

Writes ``fig2_objects.png`` (training airplanes beside their masks, the paper's Fig. 2),
``scenes.png`` (test scenes with coloured instance outlines), ``scenes_occluded.png`` (the
occluded variant: occluder outlined in white, the hidden instance's full mask dashed),
``config.json`` and ``metrics.json`` (``images_per_s``: single-process renders of new objects,
mesh generation included, at the configured size; and the counts made). The data sets are cached
(``$PYRO_BACKPASS_CACHE``), so a second run only redraws the sheets and re-times the renderer.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pyro_backpass.cli import add_config_args, config_from_args  # noqa: E402
from pyro_backpass.data import CATEGORIES, render_object  # noqa: E402
from pyro_backpass.data.config import DataScriptConfig  # noqa: E402
from pyro_backpass.data.datasets import ObjectDataset, object_seed, single_thread  # noqa: E402
from pyro_backpass.data.scenes import SceneDataset  # noqa: E402
from pyro_backpass.io import atomic_save_figure, write_run_files  # noqa: E402

INSTANCE_COLOURS = ("#ff3030", "#30ff30", "#3090ff", "#ffff30", "#ff30ff", "#30ffff")


def object_sheet(ds: ObjectDataset, count: int, cols: int = 8):
    """A figure tiling ``count`` objects, each as ``[image | mask]``, ``cols`` pairs per row."""
    count = min(count, len(ds))
    S, gap = ds.images.shape[-1], 4
    rows = -(-count // cols)
    tile_w = 2 * S + gap // 2
    sheet = np.ones((rows * (S + gap), cols * (tile_w + gap), 3), dtype=np.float32)
    for i in range(count):
        r, c = divmod(i, cols)
        y, x = r * (S + gap), c * (tile_w + gap)
        sheet[y:y + S, x:x + S] = ds[i]["image"].permute(1, 2, 0).numpy()
        sheet[y:y + S, x + S + gap // 2:x + tile_w] = ds.masks[i].float()[..., None].numpy()
    fig = plt.figure(figsize=(sheet.shape[1] / 80, sheet.shape[0] / 80 + 0.4), dpi=100)
    ax = fig.add_axes((0, 0, 1, sheet.shape[0] / (sheet.shape[0] + 32)))
    ax.imshow(sheet, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(f"{count} of {len(ds)} {ds.config.split}-split objects ({ds.config.size} px), each beside its mask",
                 fontsize=10, y=0.995)
    return fig


def scene_sheet(ds: SceneDataset, count: int, cols: int = 4):
    """A figure of ``count`` scenes with each instance's visible mask outlined in its own colour."""
    count = min(count, len(ds))
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for j in range(count):
        s, ax = ds[j], axes.flat[j]
        ax.imshow(s["image"].permute(1, 2, 0).numpy(), interpolation="nearest")
        for k, mask in enumerate(s["masks"]):
            colour = INSTANCE_COLOURS[k % len(INSTANCE_COLOURS)]
            ax.contour(mask.float().numpy(), levels=[0.5], colors=[colour], linewidths=1.2)
        if "occluder_mask" in s:
            k = int(s["occluded_index"])
            ax.contour(s["full_masks"][k].float().numpy(), levels=[0.5], linestyles="dashed",
                       colors=[INSTANCE_COLOURS[k % len(INSTANCE_COLOURS)]], linewidths=0.8)
            ax.contour(s["occluder_mask"].float().numpy(), levels=[0.5], colors=["white"], linewidths=0.8)
        vis = (s["masks"].sum((1, 2)) / s["full_masks"].sum((1, 2)).clamp(min=1)).tolist()
        ax.set_title(f"scene {j}: visible " + " / ".join(f"{v:.0%}" for v in vis), fontsize=7)
    occluder = " + occluder (white; hidden instance's full mask dashed)" if ds.config.occluder else ""
    fig.suptitle(f"{ds.config.split} scenes: {ds.config.n_instances} held-out {ds.config.instance_category}s + "
                 f"{ds.config.n_clutter} clutter, {ds.config.background} background{occluder}", fontsize=9)
    fig.tight_layout()
    return fig


def bench_render(cfg: DataScriptConfig) -> dict:
    """Time ``cfg.bench`` renders of new airplanes (mesh generation + render; a seed namespace of their own,
    so never cached), in this process with one torch thread."""
    seeds = [object_seed("val", cfg.seed, i, namespace="bench") for i in range(cfg.bench + 1)]
    with single_thread():  # as the data sets are built
        render_object("airplane", seeds[-1], cfg.size)  # warm-up, not timed (first-call allocations)
        start, cpu_start = time.perf_counter(), time.process_time()
        for seed in seeds[:-1]:
            render_object("airplane", seed, cfg.size)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # Wall-clock rate is the claim; the CPU-time rate tells how much of it a busy machine took away.
    return {"images_per_s": cfg.bench / seconds, "images_per_cpu_s": cfg.bench / max(cpu_seconds, 1e-9),
            "bench_renders": cfg.bench, "bench_seconds": seconds, "bench_cpu_seconds": cpu_seconds,
            "bench_torch_threads": 1, "bench_category": "airplane", "load_average_1min": _load_average()}


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on every platform
        return None


def scene_stats(ds: SceneDataset) -> dict:
    t = ds.tensors
    frac = t["masks"].sum((2, 3)) / t["full_masks"].sum((2, 3)).clamp(min=1)  # (N, n)
    return {"scene_min_visible_mean": float(frac.min(1).values.mean()),
            "scenes_meeting_min_visible": float((frac.min(1).values >= ds.config.min_visible).float().mean()),
            "instance_area_mean_px": float(t["full_masks"].sum((2, 3)).float().mean())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m scripts.data", description=__doc__.split("\n\n")[0])
    add_config_args(parser, DataScriptConfig)
    cfg = config_from_args(DataScriptConfig, parser.parse_args(argv))
    out = Path(cfg.out)
    timings = {}

    start = time.perf_counter()
    train_cfg, test_cfg = cfg.object_configs()
    train = ObjectDataset(train_cfg, num_workers=cfg.num_workers)
    test = ObjectDataset(test_cfg, num_workers=cfg.num_workers)
    timings["objects_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    scenes = SceneDataset(cfg.scene_config())
    occ_cfg = dataclasses.replace(cfg.scene_config(occluder=True), n=min(cfg.scenes, cfg.sheet_scenes))
    occluded = SceneDataset(occ_cfg)
    timings["scenes_seconds"] = time.perf_counter() - start

    atomic_save_figure(object_sheet(train, cfg.sheet_objects), out / "fig2_objects.png")
    atomic_save_figure(scene_sheet(scenes, cfg.sheet_scenes), out / "scenes.png", dpi=110)
    atomic_save_figure(scene_sheet(occluded, cfg.sheet_scenes), out / "scenes_occluded.png", dpi=110)
    plt.close("all")

    metrics = {
        **bench_render(cfg),
        "n_train": len(train), "n_test": len(test), "n_scenes": len(scenes), "n_occluded_scenes": len(occluded),
        "size": cfg.size, "categories": list(CATEGORIES),
        **scene_stats(scenes), **timings,
        "machine": f"CPU; {platform.platform()}; {platform.processor() or platform.machine()}; "
                   f"{os.cpu_count()} logical CPUs; torch {torch.__version__} with {torch.get_num_threads()} threads",
    }
    write_run_files(out, cfg, cfg.seed, metrics)
    print(f"images_per_s={metrics['images_per_s']:.1f} over {cfg.bench} renders; wrote {out}")
    return metrics


if __name__ == "__main__":
    main()
