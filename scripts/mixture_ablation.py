"""Does a layer need its mixture? ``python -m scripts.mixture_ablation --model DIR --out DIR [--layers a,b]``.

Scores the held-out masked objects of the training pipeline (the ``val`` split, rendered as
``scripts.train`` renders it, from the config saved with the model) with the trained hierarchy, then
with each named layer's mixture collapsed to its most used component
(:func:`~pyro_backpass.learning.ablation.mixture_ablation`), and writes ``DIR/metrics.json``. A layer
whose score barely drops when collapsed owes nothing to its extra components.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from models.activation import activation_model
from pyro_backpass.cli import THREADS_HELP, set_threads
from pyro_backpass.io import write_run_files
from pyro_backpass.learning.ablation import mixture_ablation
from pyro_backpass.learning.activations import BackboneActivations
from pyro_backpass.learning.pipeline import TrainConfig, training_images
from pyro_backpass.vision import load_trained


def _train_config(trained) -> TrainConfig:
    """The model's saved training config (lists back to tuples), or the defaults at its input size."""
    saved = trained.meta.get("train_config")
    if not saved:
        return TrainConfig(size=trained.size)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder written by scripts.train")
    parser.add_argument("--out", required=True, help="run folder for config.json and metrics.json")
    parser.add_argument("--layers", default=None,
                        help="comma-separated layers to collapse (default: every layer below the top with K > 1)")
    parser.add_argument("--n-val", type=int, default=None, help="held-out objects (default: the model's n_val)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    trained = load_trained(args.model)
    h = trained.hierarchy
    config = _train_config(trained)
    n = config.n_val if args.n_val is None else args.n_val
    if n < 1:
        raise ValueError(f"--n-val: expected a positive number of held-out objects, got {n}")
    below_top = h.specs[:-1]
    layers = ([s.name for s in below_top if s.K > 1] if args.layers is None
              else [x.strip() for x in args.layers.split(",") if x.strip()])
    torch.manual_seed(config.seed)
    images, cats = training_images(config, "val", n)
    source = BackboneActivations(trained.backbone, images, cats, [s.name for s in h.specs], config.em_batch_size)
    result = mixture_ablation(activation_model, h, source, layers, config.em_batch_size)
    run = {"model": str(args.model), "layers": layers, "n_val": n, "threads": args.threads}
    write_run_files(args.out, run, config.seed, result)
    full = result["layer_log_likelihood"]
    print(f"{'collapsed':<10} {'component':>9} {'examples elsewhere':>18} {'layer LL':>12} {'collapsed LL':>13}")
    for name, r in result["collapsed"].items():
        print(f"{name:<10} {r['component']:>9} {r['n_other']:>18} {full[name]:>12.1f} "
              f"{r['layer_log_likelihood'][name]:>13.1f}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
