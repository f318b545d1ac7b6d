"""Parse real images: ``python -m scripts.parse --model DIR --image PATH --out DIR`` (Sec. 3.3, Fig. 6).

``--image`` is one image file (any format PIL reads, any size) or a folder of them. Each image is
rescaled and padded to the backbone's input at several scales (``--scales``); the scale whose backward
pass has the highest evidence is kept and parsed (``--max-steps``, ``--evidence-threshold``), and
``<name>.png`` shows the input beside the MAP reconstruction and mask of every instance found. With
``--verify-threshold P`` a step counts only if the backbone's classifier gives its masked instance at
least probability ``P`` of the category (:mod:`pyro_backpass.vision.verify`). Under
``torchrun`` a folder's images are split across the ranks; ``metrics.json`` gathers them all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from models.activation import activation_model  # noqa: E402
from pyro_backpass.allocator import keep_freed_memory
from pyro_backpass.cli import THREADS_HELP, add_config_args, config_from_args, set_threads  # noqa: E402
from pyro_backpass.data.categories import category_index  # noqa: E402
from pyro_backpass.io import atomic_save_figure, write_run_files  # noqa: E402
from pyro_backpass.vision import MaskConfig, load_trained  # noqa: E402
from pyro_backpass.vision.parsing import ParseConfig, parse_scene  # noqa: E402
from pyro_backpass.vision.plots import overlay, to_rgb  # noqa: E402
from pyro_backpass.vision.scales import ScanConfig, load_image, scan_scales  # noqa: E402
from pyro_backpass.vision.verify import category_verifier  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def image_paths(path: str) -> list[Path]:
    """The image files named by ``--image``: the file itself, or a folder's image files (sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"image: expected a folder with image files {IMAGE_SUFFIXES}, got none in {path!r}")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"image: expected an image file or a folder of them, got {path!r}")
    return [p]


def parse_one(trained, path: Path, scan: ScanConfig, parse: ParseConfig, category: str, out: Path) -> dict:
    image = load_image(path)
    h = trained.hierarchy
    clamp = {"category": h.check_category(category)}
    scanned = scan_scales(activation_model, trained, image, scan, clamp=clamp)
    canvas = scanned.canvases[scanned.best]
    verifier = (None if parse.verify_threshold is None
                else category_verifier(trained.backbone, category_index(category)))
    parsed = parse_scene(activation_model, h, trained.activations(canvas[None]), parse, mask_config=MaskConfig(),
                         background=trained.background(), clamp=clamp, verifier=verifier)
    steps = parsed.accepted[0].nonzero().flatten().tolist()
    found = len(steps)
    steps = steps or [0]                 # nothing accepted: show the first step, marked rejected
    shown = len(steps)
    fig, axes = plt.subplots(1, 1 + 2 * shown, figsize=(2.2 * (1 + 2 * shown), 2.4), squeeze=False)
    axes = axes[0]
    axes[0].imshow(to_rgb(canvas))
    axes[0].set_title(f"input (scale {scanned.scales[scanned.best]:g})", fontsize=8)
    for i, t in enumerate(steps):
        axes[1 + 2 * i].imshow(to_rgb(parsed.reconstructions[0, t]))
        axes[1 + 2 * i].set_title(f"instance {i + 1}: MAP" + ("" if found else " (rejected)"), fontsize=8)
        axes[2 + 2 * i].imshow(to_rgb(overlay(canvas, parsed.masks[0, t])))
        axes[2 + 2 * i].set_title(f"evidence {float(parsed.evidence[0, t]) / canvas[0].numel():.2f}/px", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    atomic_save_figure(fig, out / f"{path.stem}.png", dpi=110)
    plt.close(fig)
    return {"image": str(path), "scale": scanned.scales[scanned.best], "evidence_per_scale": scanned.evidence.tolist(),
            "instances": found, "accepted_steps": parsed.accepted[0].tolist(),
            "step_evidence": parsed.evidence[0].tolist(),
            "step_verified": None if parsed.verified is None else parsed.verified[0].tolist()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained model folder")
    parser.add_argument("--image", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", default="runs/parse")
    parser.add_argument("--category", default="airplane", help="the category to look for (clamps F^L)")
    add_config_args(parser, ScanConfig)
    add_config_args(parser, ParseConfig)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    keep_freed_memory()  # many passes follow: reuse their temporaries (pyro_backpass.allocator)
    scan, parse = config_from_args(ScanConfig, args), config_from_args(ParseConfig, args)
    trained = load_trained(args.model)
    trained.hierarchy.check_category(args.category)
    paths = image_paths(args.image)
    try:
        from pyro_backpass import distributed

        mine, gather, main_rank = list(distributed.shard(len(paths))), distributed.gather_objects, distributed.is_main()
    except ImportError:
        mine, gather, main_rank = list(range(len(paths))), (lambda x: x), True
    out = Path(args.out)
    with torch.no_grad():
        rows = [parse_one(trained, paths[i], scan, parse, args.category, out) for i in mine]
    rows = gather(rows)
    if not main_rank:
        return {}
    rows = sorted(rows, key=lambda r: r["image"])
    metrics = {"images": rows, "n_images": len(rows)}
    write_run_files(out, {"model": args.model, "image": args.image, "category": args.category,
                          "scan": scan, "parse": parse}, None, metrics)
    for r in rows:
        print(f"{Path(r['image']).name}: scale {r['scale']:g}, {r['instances']} instance(s)")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
