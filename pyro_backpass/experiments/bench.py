"""Speed of the backward pass against its compute floor, a naive loop and exact enumeration (issue: bench).

``python -m scripts.bench --out DIR [--device cpu|cuda] [--quick]`` builds a :class:`BenchConfig` and
calls :func:`run_bench`, which measures everything in one process on one machine, each number the
median of ``repeats`` timed runs after ``warmup`` untimed ones (CUDA is synchronised around each):

- **SmallVGG geometry** (the default :class:`~pyro_backpass.backbones.small_vgg.SmallVGG` layers at
  ``input_size``, ``K`` on every layer and ``K_top`` on pool3, offsets by
  :func:`~pyro_backpass.specs.with_mixture`, random parameters, ``F_bu`` = the activations of a random
  SmallVGG on random images): ``ms_backward`` (one image, greedy pass through the handler);
  ``ms_floor`` (the top-down convolutions alone for all γ of every layer: nearest ×2 upsampling where
  the hierarchy has it, then one convolution with ``K·C_l`` outputs, on ``F_td`` of the layer above,
  in whichever of the contiguous or channels-last layouts is faster for that layer; no ReLU, no
  scoring; the top layer has templates, not a convolution, so it adds nothing; timed interleaved
  with the pass, one of each per round);
  ``backward_over_floor``; ``ms_naive`` (``scripts/naive_greedy.py``: Python loops over γ and δ that
  recompute each convolution) and ``speedup_vs_naive`` (against the fast pass timed interleaved with
  it, ``ms_backward_beside_naive``), with ``naive_agrees`` (identical ``H``);
  ``images_per_s`` keyed by batch size; ``peak_mb``.
- **Toy hierarchy** of the exact-vs-greedy script (``ExactVsGreedyConfig`` defaults, moderate
  setting, float64, one clean scene): ``ms_greedy``, ``ms_infer_discrete`` and
  ``speedup_vs_infer_discrete``.
- **VGG16 geometry** (torchvision VGG16 with random weights, 224×224, ``K=500`` at pool5 and 5
  elsewhere, the paper's offsets): ``ms_backward_vgg16`` (one image); on CUDA also
  ``images_per_s_vgg16`` at batch ``vgg16_batch`` with TF32 convolutions.

The library never imports a model: the model program, the naive pass and the toy builders are
arguments (``scripts/bench.py`` wires them in).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbones.small_vgg import SmallVGG, SmallVGGConfig
from ..hierarchy import Hierarchy, random_hierarchy
from ..inference import backward_pass
from ..specs import with_mixture
from ..topdown import TopDownConv
from .exact_vs_greedy import ExactVsGreedyConfig, build_settings, sample_scene

__all__ = ["BenchConfig", "run_bench", "time_ms", "interleaved_ms", "floor_fn", "floor_ms", "format_table"]


@dataclass(frozen=True)
class BenchConfig:
    """Defaults of ``python -m scripts.bench`` (every field is a ``--kebab-case`` flag).

    :param str out: run folder (``metrics.json``, ``config.json``).
    :param str device: ``"cpu"`` or ``"cuda"``.
    :param bool quick: a smoke run: small input, fewer repeats, no VGG16 (numbers are not the claim).
    :param int threads: torch intra-op threads (0 keeps torch's default). One thread by default: on a
        shared 2-core machine a second thread mostly waits for the other processes, and ratios
        measured side by side are what matter.
    :param int repeats: timed runs per number (median); ``warmup`` untimed runs before them. Numbers
        compared in a ratio are timed interleaved (one run of each per round).
    :param int naive_repeats: timed runs of the (slow) naive pass.
    :param tuple batch_sizes: batch sizes of ``images_per_s``.
    """

    out: str = "runs/bench"
    device: str = "cpu"
    quick: bool = False
    seed: int = 0
    threads: int = 1
    input_size: int = 96
    K: int = 5
    K_top: int = 48
    repeats: int = 7
    warmup: int = 2
    naive_repeats: int = 2
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    batch_repeats: int = 3
    toy: bool = True
    naive: bool = True
    vgg16: bool = True
    vgg16_K_top: int = 500
    vgg16_repeats: int = 2
    vgg16_batch: int = 32

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        for name in ("repeats", "naive_repeats", "batch_repeats", "vgg16_repeats", "K", "K_top", "vgg16_K_top",
                     "vgg16_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if self.warmup < 0 or self.threads < 0:
            raise ValueError(f"warmup, threads: expected >= 0, got {self.warmup}, {self.threads}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes: expected positive ints, got {self.batch_sizes!r}")

    def resolved(self) -> BenchConfig:
        """The config actually run: ``quick`` shrinks the geometry and the repeats."""
        if not self.quick:
            return self
        import dataclasses
        return dataclasses.replace(self, input_size=32, K_top=8, repeats=2, warmup=1, naive_repeats=1,
                                   batch_sizes=tuple(b for b in self.batch_sizes if b <= 8) or (1,),
                                   batch_repeats=1, vgg16=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def _conv_input(module: TopDownConv, upper: torch.Tensor) -> torch.Tensor:
    if module.upsample == "nearest" and tuple(upper.shape[-2:]) != module.out_size:
        return F.interpolate(upper, size=module.out_size, mode="nearest")
    return upper


def floor_fn(hierarchy: Hierarchy, uppers: list[torch.Tensor], repeats: int = 3):
    """A callable running the top-down convolutions alone for all γ of every layer (see the module
    docstring), each layer in whichever memory layout was faster for it in a short trial.

    :param list uppers: per layer ``l``, the map ``F^{l+1}_td`` (N, C_{l+1}, H, W) its convolution reads.
    """
    device = hierarchy.device
    steps = []
    with torch.no_grad():
        for l, module in enumerate(hierarchy.topdown):
            if not isinstance(module, TopDownConv):
                continue
            best = None
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = uppers[l].contiguous(memory_format=fmt)
                w = module.weight.contiguous(memory_format=fmt)
                if module.upsample == "transposed":
                    def step(x=x, w=w, m=module):
                        return F.conv_transpose2d(x, w, m.bias, stride=2, padding=1)
                else:
                    def step(x=x, w=w, m=module):
                        return F.conv2d(_conv_input(m, x), w, m.bias, padding=m.kernel_size // 2)
                ms = time_ms(step, repeats, 1, device)
                if best is None or ms < best[0]:
                    best = (ms, step)
            steps.append(best[1])

    def all_layers():
        with torch.no_grad():
            for step in steps:
                step()

    return all_layers


def floor_ms(hierarchy: Hierarchy, uppers: list[torch.Tensor], repeats: int, warmup: int) -> float:
    """Median time of :func:`floor_fn`."""
    return time_ms(floor_fn(hierarchy, uppers), repeats, warmup, hierarchy.device)


def interleaved_ms(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict:
    """Median times of several callables run in turn, one of each per round, so that a busy machine
    slows them alike; ``{name: median ms}``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(1000.0 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _same_hidden(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k].reshape(-1).cpu(), b[k].reshape(-1).cpu()) for k in b)


def _smallvgg_geometry(cfg: BenchConfig, device: torch.device):
    backbone = SmallVGG(SmallVGGConfig(input_size=cfg.input_size, seed=cfg.seed)).to(device).eval()
    specs = with_mixture(backbone.layer_specs(), K=cfg.K, K_top=cfg.K_top)
    hierarchy = random_hierarchy(specs, n_categories=1, seed=cfg.seed).to(device)
    return backbone, hierarchy


def _activations(backbone, n: int, size: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        return [a.contiguous() for a in backbone.activations(images)]


def run_bench(cfg: BenchConfig, model, naive_greedy=None, toy_hierarchy=None, toy_specs=None,
              map_infer_discrete=None, vgg16_cls=None, progress=print) -> dict:
    """Run every measurement of :class:`BenchConfig` and return the metrics (see the module docstring).

    :param model: the model program (``models.activation.activation_model``).
    :param naive_greedy: ``(hierarchy, f_bu) -> (hidden, total)``, the naive pass (skipped if ``None``).
    :param toy_hierarchy: ``models.toy.toy_hierarchy``; ``toy_specs``: ``models.toy.toy_specs``;
        ``map_infer_discrete``: ``guides.exact.map_infer_discrete`` (toy part skipped if any is ``None``).
    :param vgg16_cls: the VGG16 backbone class (``pyro_backpass.backbones.vgg16.VGG16``); skipped if ``None``.
    """
    cfg = cfg.resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but torch.cuda.is_available() is False")
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    metrics: dict = {"device": cfg.device, "machine": _machine(device), "threads": torch.get_num_threads()}

    # ---- SmallVGG geometry
    backbone, h = _smallvgg_geometry(cfg, device)
    metrics["geometry"] = [f"{s.name}:{s.channels}x{s.height}x{s.width} K={s.K} r={s.offset_radius}" for s in h.specs]
    f_bu = {b: _activations(backbone, b, cfg.input_size, cfg.seed + b, device) for b in cfg.batch_sizes}
    one = f_bu[1] if 1 in f_bu else _activations(backbone, 1, cfg.input_size, cfg.seed + 1, device)

    def backward(maps):
        return backward_pass(model, h, maps)

    res = backward(one)
    uppers = [x[0] for x in res.f_td[1:]] + [None]
    progress("timing the floor and the backward pass (batch 1), side by side")
    # Floor and pass interleaved, one of each per round, so that a busy machine slows both alike.
    ms = interleaved_ms({"floor": floor_fn(h, uppers), "backward": lambda: backward(one)}, cfg.repeats,
                        cfg.warmup, device)
    metrics["ms_floor"], metrics["ms_backward"] = ms["floor"], ms["backward"]
    metrics["backward_over_floor"] = metrics["ms_backward"] / metrics["ms_floor"]
    ips = {}
    for b in cfg.batch_sizes:
        progress(f"timing batch {b}")
        ms = time_ms(lambda b=b: backward(f_bu[b]), cfg.batch_repeats, 1, device)
        ips[str(b)] = 1000.0 * b / ms
    metrics["images_per_s"] = ips
    if "1" in ips and str(max(cfg.batch_sizes)) in ips:
        metrics["batch_gain"] = ips[str(max(cfg.batch_sizes))] / ips["1"]
    metrics["peak_mb"] = _peak_mb(device)

    if cfg.naive and naive_greedy is not None:
        progress("timing the naive pass")
        hidden, _ = naive_greedy(h, one)
        metrics["naive_agrees"] = _same_hidden(res.best(), hidden)
        ms = interleaved_ms({"naive": lambda: naive_greedy(h, one), "backward": lambda: backward(one)},
                            cfg.naive_repeats, 0, device)
        metrics["ms_naive"], metrics["ms_backward_beside_naive"] = ms["naive"], ms["backward"]
        metrics["speedup_vs_naive"] = metrics["ms_naive"] / metrics["ms_backward_beside_naive"]

    # ---- toy hierarchy of the exact-vs-greedy script
    if cfg.toy and None not in (toy_hierarchy, toy_specs, map_infer_discrete):
        progress("timing greedy against infer_discrete on the toy hierarchy")
        ecfg = ExactVsGreedyConfig()
        toy = build_settings(ecfg, toy_hierarchy, toy_specs, cfg.seed)["moderate"].to(device)
        maps, _ = sample_scene(model, toy.cpu(), "clean", cfg.seed)
        toy = toy.to(device)
        maps = [x.to(device) for x in maps]
        ms = interleaved_ms({"greedy": lambda: backward_pass(model, toy, maps),
                             "infer_discrete": lambda: map_infer_discrete(model, toy, maps)}, cfg.repeats,
                            cfg.warmup, device)
        metrics["ms_greedy"], metrics["ms_infer_discrete"] = ms["greedy"], ms["infer_discrete"]
        metrics["speedup_vs_infer_discrete"] = metrics["ms_infer_discrete"] / metrics["ms_greedy"]

    # ---- VGG16 geometry
    if cfg.vgg16 and vgg16_cls is not None:
        progress("timing the VGG16 geometry")
        del f_bu, res
        vgg = vgg16_cls(input_size=224).to(device).eval()
        specs = with_mixture(vgg.layer_specs(), K=cfg.K, K_top=cfg.vgg16_K_top)
        hv = random_hierarchy(specs, n_categories=1, seed=cfg.seed).to(device)
        maps = _activations(vgg, 1, 224, cfg.seed, device)
        metrics["ms_backward_vgg16"] = time_ms(lambda: backward_pass(model, hv, maps), cfg.vgg16_repeats, 1, device)
        if device.type == "cuda":
            maps = _activations(vgg, cfg.vgg16_batch, 224, cfg.seed, device)
            ms = time_ms(lambda: backward_pass(model, hv, maps), cfg.vgg16_repeats, 1, device)
            metrics["images_per_s_vgg16"] = 1000.0 * cfg.vgg16_batch / ms
            metrics["peak_mb_vgg16"] = _peak_mb(device)
    return metrics


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}"
    return (f"CPU; {platform.platform()}; {platform.processor() or platform.machine()}; {os.cpu_count()} logical "
            f"CPUs; torch {torch.__version__} with {torch.get_num_threads()} threads")


_ROWS = [("ms_backward", "ms"), ("ms_floor", "ms"), ("backward_over_floor", "x"), ("ms_naive", "ms"),
         ("speedup_vs_naive", "x"), ("naive_agrees", ""), ("peak_mb", "MB"), ("ms_greedy", "ms"),
         ("ms_infer_discrete", "ms"), ("speedup_vs_infer_discrete", "x"), ("ms_backward_vgg16", "ms"),
         ("images_per_s_vgg16", "img/s")]


def format_table(metrics: dict) -> str:
    """The metrics as a two-column text table."""
    lines = [f"{'metric':<28} value", "-" * 44]
    for key, unit in _ROWS:
        if key in metrics:
            v = metrics[key]
            lines.append(f"{key:<28} {v:.3f} {unit}" if isinstance(v, float) else f"{key:<28} {v}")
    for b, v in metrics.get("images_per_s", {}).items():
        lines.append(f"{'images_per_s[' + b + ']':<28} {v:.2f} img/s")
    if "batch_gain" in metrics:
        lines.append(f"{'batch_gain':<28} {metrics['batch_gain']:.2f} x")
    lines.append(f"machine: {metrics.get('machine', '?')}")
    return "\n".join(lines)
