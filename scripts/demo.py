"""The README's main command: ``python -m scripts.demo [--out DIR]``.

On a fresh clone it trains the default model first (``scripts.train``'s default configuration, into
the folder above ``--model``), then writes the paper's figures (data, prior samples, samples with the
top layer clamped, a two-airplane parse with its posterior modes, a completion and a query example;
:mod:`pyro_backpass.vision.demo`) and prints a short table of the numbers behind them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from models.activation import activation_model  # noqa: E402
from pyro_backpass.allocator import keep_freed_memory
from pyro_backpass.cli import THREADS_HELP, add_config_args, config_from_args, set_threads  # noqa: E402
from pyro_backpass.data import ObjectDataset, ObjectDatasetConfig  # noqa: E402
from pyro_backpass.io import atomic_save_figure, write_run_files  # noqa: E402
from pyro_backpass.vision import load_trained  # noqa: E402
from pyro_backpass.vision.demo import DemoConfig, demo_figures  # noqa: E402
from scripts.data import object_sheet  # noqa: E402


def ensure_model(model: str, quiet: bool) -> None:
    """Train the default model into ``model``'s parent folder if there is no model there."""
    path = Path(model)
    if (path / "hierarchy.json").is_file():
        return
    if path.name != "model":
        raise ValueError(f"model: expected a trained model folder (with hierarchy.json) or a folder named 'model' "
                         f"to train into, got {model!r}")
    from scripts import train

    print(f"no trained model in {model}: training the default configuration first (scripts.train)")
    train.main(["--out", str(path.parent)] + (["--quiet"] if quiet else []))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(parser, DemoConfig)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP + "; training keeps torch's default")
    args = parser.parse_args(argv)
    config = config_from_args(DemoConfig, args)
    t0 = time.perf_counter()
    ensure_model(config.model, args.quiet)
    t1 = time.perf_counter()
    set_threads(args.threads)  # after training, which has its own thread use
    keep_freed_memory()  # many passes follow: reuse their temporaries (pyro_backpass.allocator)
    trained = load_trained(config.model)
    objects = ObjectDataset(ObjectDatasetConfig(n=24, size=trained.size, split="test", seed=config.seed),
                            progress=False)
    fig = object_sheet(objects, 24, cols=6)
    atomic_save_figure(fig, Path(config.out) / "fig2_data.png", dpi=100)
    plt.close(fig)
    with torch.no_grad():
        metrics = demo_figures(activation_model, trained, config)
    metrics["seconds_training"] = t1 - t0
    metrics["seconds_figures"] = time.perf_counter() - t1
    metrics["machine"] = "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    write_run_files(config.out, config, config.seed, metrics)
    print(f"figures in {config.out}/ (fig2_data, fig3_samples, fig4_clamped, fig5_parse, completion, query)")
    print(f"{'fig. 5, pass 1 / pass 2 instance IoU':<42} " + " / ".join(f"{v:.2f}" for v in metrics["fig5_step_iou"]))
    print(f"{'fig. 5, true modes among the top ' + str(config.n_modes):<42} {metrics['fig5_true_modes']}")
    print(f"{'completion IoU (visible part alone)':<42} {metrics['completion_iou']:.2f} ({metrics['visible_iou']:.2f})")
    for q, v in metrics["queries"].items():
        print(f"{'query ' + q:<42} instance {v['instance']} (IoU {v['iou']:.2f})")
    print(f"{'prior samples classified as the category':<42} {metrics['fig3_classified_as_category']:.2f}")
    print(f"{'seconds (training, figures)':<42} {metrics['seconds_training']:.0f}, {metrics['seconds_figures']:.0f}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
