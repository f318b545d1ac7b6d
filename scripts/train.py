"""Train the hierarchy end to end: ``python -m scripts.train --out DIR [--config default|tiny|paper-vgg16]``.

Renders the data, trains or loads the backbone, fits the observation model and runs hard EM with the
activation model of ``models/``. Writes ``DIR/model/`` (the checkpoint, with the SmallVGG weights),
``DIR/em-<key>/`` (per-iteration checkpoints, keyed by the config; an interrupted run resumes from
them), ``DIR/config.json``, ``DIR/metrics.json`` and ``DIR/log_likelihood.png``.

Data-parallel on ``N`` processes: ``torchrun --nproc_per_node N -m scripts.train --out DIR ...`` (gloo on CPU,
NCCL on GPUs). Each rank holds a shard of the training examples; rank 0 writes every file and prints. The
result equals a one-process run's (CPD tables and assignments exactly, weights within float rounding),
and a checkpoint written by any number of ranks resumes on any number.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from models.activation import activation_model  # noqa: E402
from pyro_backpass import distributed  # noqa: E402
from pyro_backpass.cli import add_config_args, config_from_args  # noqa: E402
from pyro_backpass.io import atomic_save_figure, write_run_files  # noqa: E402
from pyro_backpass.learning.pipeline import CONFIGS, TrainConfig, run_training  # noqa: E402


def _plot(history, path):
    fig, ax = plt.subplots(figsize=(5, 3.2))
    its = [h["iteration"] for h in history]
    ax.plot(its, [h["log_likelihood"] for h in history], "o-", label="train")
    if "val_log_likelihood" in history[0]:
        ax.plot(its, [h["val_log_likelihood"] for h in history], "s--", label="validation")
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("log-likelihood per example")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="run folder (default runs/<config>)")
    parser.add_argument("--config", default="default", choices=sorted(CONFIGS))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(parser, TrainConfig)
    args = parser.parse_args(argv)
    config = config_from_args(TrainConfig, args, base=CONFIGS[args.config])
    out = args.out or f"runs/{args.config}"
    torch.manual_seed(config.seed)
    with distributed.session():
        metrics = run_training(activation_model, config, out, progress=not args.quiet)
        main_rank = distributed.is_main()
    metrics["config_name"] = args.config
    metrics["machine"] = "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    if not main_rank:
        return metrics
    write_run_files(out, {"name": args.config, **dataclasses.asdict(config)}, config.seed, metrics)
    _plot(metrics["history"], f"{out}/log_likelihood.png")
    print(f"{'layer':<10} {'rel.err(train)':>15} {'explained(val)':>15} {'eff. comps':>11}")
    for name, err in metrics["relative_error"].items():
        print(f"{name:<10} {err:>15.3f} {metrics['val_explained_energy'][name]:>15.3f} "
              f"{metrics['effective_components'][name]:>11.2f}")
    print(f"log-likelihood train {metrics['final_log_likelihood']:.1f}, validation "
          f"{metrics['initial_val_log_likelihood']:.1f} -> {metrics['final_val_log_likelihood']:.1f}")
    per_it = [h["seconds"]["total"] for h in metrics["history"] if "seconds" in h]
    print("seconds " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["seconds"].items())
          + (f"; {sum(per_it) / len(per_it):.1f} per EM iteration" if per_it else "")
          + f"; {metrics['world_size']} process(es); peak memory {metrics['peak_memory_mb']:.0f} MB")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
