"""Compare instance-mask rules on validation scenes: ``python -m scripts.mask_study --model DIR --out DIR``.

``--scenes N --split val --seed S``: runs the first backward pass on ``N`` held-out scenes of the
split and scores every rule of :data:`pyro_backpass.vision.mask_study.RULES` on the same passes
(mean first-pass IoU, fraction at IoU >= 0.5). Writes ``DIR/config.json`` and ``DIR/metrics.json``
(per rule the summary and the per-scene IoUs) and prints a table. The training pipeline fits the
observation model on the val split's seed-0 scenes and ``scripts.evaluate`` sets its baselines'
thresholds on seed 1, so rule choices use seeds 1 and 2.
"""

from __future__ import annotations

import argparse
import sys

from models.activation import activation_model
from pyro_backpass.allocator import keep_freed_memory
from pyro_backpass.cli import THREADS_HELP, set_threads
from pyro_backpass.data import SceneConfig, SceneDataset
from pyro_backpass.io import write_run_files
from pyro_backpass.vision import load_trained
from pyro_backpass.vision.mask_study import RULES, first_pass_ious, summarise_ious


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder written by scripts.train")
    parser.add_argument("--out", default="runs/mask_study", help="run folder for config.json and metrics.json")
    parser.add_argument("--scenes", type=int, default=80, help="validation scenes")
    parser.add_argument("--split", default="val", help="scene split (default: val)")
    parser.add_argument("--seed", type=int, default=2, help="seed of the scene split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(argv)
    if args.scenes < 1:
        raise ValueError(f"--scenes: expected a positive number of scenes, got {args.scenes}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive int, got {args.batch_size}")
    set_threads(args.threads)
    keep_freed_memory()
    trained = load_trained(args.model)
    scenes = SceneDataset(SceneConfig(n=args.scenes, size=trained.size, split=args.split, seed=args.seed),
                          progress=False)
    ious = first_pass_ious(activation_model, trained, scenes, RULES, args.batch_size)
    summary = summarise_ious(ious)
    run = {**vars(args), "rules": {k: vars(v) for k, v in RULES.items()}}
    write_run_files(args.out, run, args.seed, {"summary": summary, "per_scene_iou": ious})
    width = max(len(k) for k in summary)
    print(f"{'rule':<{width}}  mean IoU  IoU >= 0.5")
    for name, s in summary.items():
        print(f"{name:<{width}}  {s['mean_iou']:8.3f}  {s['at_least_0.5']:10.3f}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
