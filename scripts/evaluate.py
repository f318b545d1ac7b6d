"""Evaluate a trained model on held-out cluttered scenes: ``python -m scripts.evaluate --model DIR``.

``--scenes N --seed S --out DIR [--mesh-dir PATH]`` and every field of
:class:`pyro_backpass.vision.evaluation.EvaluateConfig` as a flag. Writes ``DIR/config.json`` and
``DIR/metrics.json`` (the keys of DESIGN §8: instance IoU, parse recall@2 and precision, query
accuracy, completion and visible IoU, sample plausibility, the GradCAM and guided-backprop
baselines, ms per backward pass) and prints them as a table. Under ``torchrun`` the scenes are split
across the ranks and their records gathered, so the metrics equal one process's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch
from tqdm.auto import tqdm

from models.activation import activation_model
from pyro_backpass.allocator import keep_freed_memory
from pyro_backpass.cli import THREADS_HELP, add_config_args, config_from_args, set_threads
from pyro_backpass.data import SceneDataset
from pyro_backpass.io import write_run_files
from pyro_backpass.learning.pipeline import peak_memory_mb
from pyro_backpass.vision import load_trained
from pyro_backpass.vision.evaluation import (
    EvaluateConfig,
    aggregate,
    baseline_thresholds,
    evaluate_scenes,
    sample_plausibility,
    scene_configs,
    time_backward_pass,
)

_ROWS = [("instance_iou", "instance IoU (first pass)"), ("instance_iou_at_least_0.5", "  scenes with IoU >= 0.5"),
         ("instance_iou_accepted", "instance IoU (first accepted step)"),
         ("baseline_gradcam_iou", "baseline GradCAM IoU"),
         ("baseline_guided_backprop_iou", "baseline guided-backprop IoU"),
         ("parse_recall_at_2", "parse recall@2"), ("parse_recall_at_3", "parse recall@3"),
         ("parse_precision", "parse precision"),
         ("completion_iou", "completion IoU"), ("visible_iou", "visible-part IoU (ground truth)"),
         ("visible_pred_iou", "visible-part IoU (model's mask)"), ("sample_plausibility", "sample plausibility"),
         ("ms_per_backward_pass", "ms per backward pass")]


def _print_table(metrics: dict) -> None:
    for key, label in _ROWS:
        if metrics.get(key) is not None:
            print(f"{label:<34} {metrics[key]:>9.3f}")
    for q, v in metrics["query_accuracy"].items():
        print(f"{'query accuracy: ' + q:<34} {v:>9.3f}")
    print(f"{'scenes':<34} {metrics['scenes']:>9d}")


def _shard(n: int):
    """This process's scene indices and the gather function (one process: all scenes, identity)."""
    try:
        from pyro_backpass import distributed
    except ImportError:
        return list(range(n)), (lambda recs: recs), True
    return (list(distributed.shard(n)), distributed.gather_objects, distributed.is_main())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained model folder (scripts.train's DIR/model)")
    parser.add_argument("--out", default="runs/evaluate", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(parser, EvaluateConfig)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    keep_freed_memory()  # many passes follow: reuse their temporaries (pyro_backpass.allocator)
    config = config_from_args(EvaluateConfig, args)
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    trained = load_trained(args.model)
    cfgs = scene_configs(config, trained.size)
    datasets = {"test": SceneDataset(cfgs["test"], progress=not args.quiet)}
    if config.occluded:
        datasets["occluded"] = SceneDataset(cfgs["occluded"], progress=not args.quiet)
    thresholds, base_info = None, {}
    if config.baselines:
        base_info = baseline_thresholds(trained, SceneDataset(cfgs["val"], progress=not args.quiet))
        thresholds = {k: v["threshold"] for k, v in base_info.items()}
    indices, gather, main_rank = _shard(len(datasets["test"]))
    bar = tqdm(total=len(indices), desc="evaluating scenes", disable=args.quiet or not main_rank)
    records = evaluate_scenes(activation_model, trained, config, indices, datasets, thresholds, progress=bar)
    bar.close()
    records = gather(records)
    if not main_rank:
        return {}
    records = sorted(records, key=lambda r: r["scene"])
    metrics = aggregate(records)
    metrics["sample_plausibility"] = sample_plausibility(activation_model, trained, config.samples)
    metrics["ms_per_backward_pass"] = time_backward_pass(activation_model, trained, datasets["test"][0]["image"],
                                                         mask_config=config.mask_config())
    metrics["baselines"] = base_info
    metrics["model"] = str(trained.path)
    metrics["machine"] = "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    metrics["torch_threads"] = torch.get_num_threads()
    metrics["seconds"] = time.perf_counter() - t0
    metrics["peak_memory_mb"] = peak_memory_mb()
    metrics["records"] = records
    write_run_files(args.out, {**dataclasses.asdict(config), "model": args.model}, config.seed, metrics)
    _print_table(metrics)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
