"""Train the SmallVGG backbone and measure it.

    python -m scripts.train_backbone --out runs/backbone [--compositional true] [--epochs N] [--seed S] ...

Every field of :class:`~pyro_backpass.backbones.BackboneTrainConfig` is a ``--kebab-case`` flag;
``--compositional`` alone (no value) also switches the Stone et al. compositional loss on. Writes
``config.json`` (resolved config and seed), ``metrics.json`` (``test_accuracy``,
``clutter_accuracy``, per-layer ``compositionality_error``, ``seconds`` of training, ``params``,
``machine``, ...) and ``backbone.safetensors``, and prints a table. The trained weights are also
cached by config (``$PYRO_BACKPASS_CACHE``), so a second run with the same flags only re-measures;
``--no-cache`` retrains.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pyro_backpass.backbones import BackboneTrainConfig, load_or_train_backbone, save_small_vgg
from pyro_backpass.cli import add_config_args, config_from_args
from pyro_backpass.io import write_run_files


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, BackboneTrainConfig]:
    parser = argparse.ArgumentParser(prog="python -m scripts.train_backbone", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/backbone", help="run folder (default: runs/backbone)")
    parser.add_argument("--no-cache", action="store_true", help="retrain even if a cached backbone exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(parser, BackboneTrainConfig)
    argv = list(sys.argv[1:] if argv is None else argv)
    # A bare "--compositional" (the documented spelling) means "--compositional true".
    fixed = []
    for i, a in enumerate(argv):
        fixed.append(a)
        if a == "--compositional" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            fixed.append("true")
    args = parser.parse_args(fixed)
    return args, config_from_args(BackboneTrainConfig, args)


def format_table(metrics: dict) -> str:
    """A plain-text table of the headline numbers and the per-layer compositionality error."""
    lines = [f"{'test_accuracy':<28}{metrics['test_accuracy']:.4f}",
             f"{'clutter_accuracy':<28}{metrics['clutter_accuracy']:.4f}",
             f"{'training seconds':<28}{metrics['seconds']:.1f}",
             f"{'params':<28}{metrics['params']}",
             f"{'machine':<28}{metrics['machine']}",
             "compositionality_error:"]
    lines += [f"  {name:<26}{err:.4f}" for name, err in metrics["compositionality_error"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args, config = parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    model, metrics = load_or_train_backbone(config, progress=not args.quiet, cache=not args.no_cache)
    metrics = dict(metrics)
    metrics["total_seconds_this_run"] = time.perf_counter() - t0
    save_small_vgg(model, out / "backbone.safetensors")
    write_run_files(out, config, config.seed, metrics)
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'}, {out / 'config.json'}, {out / 'backbone.safetensors'}")
    return metrics


if __name__ == "__main__":
    main()
