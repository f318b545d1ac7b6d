"""Speed of the backward pass against its compute floor, a naive loop and exact enumeration (issue 6).

``python -m scripts.bench --out DIR [--device cpu|cuda] [--quick]`` builds a :class:`BenchConfig` and
calls :func:`run_bench`, which measures everything in one process, each number the median of
``repeats`` timed runs after ``warmup`` untimed ones, numbers compared in a ratio timed interleaved
(:mod:`~pyro_backpass.experiments.timing`; ``clock`` says whether wall or process CPU time):

- **SmallVGG geometry** (the default :class:`~pyro_backpass.backbones.small_vgg.SmallVGG` layers at
  ``input_size``, ``K`` on every layer and ``K_top`` on pool3, offsets by
  :func:`~pyro_backpass.specs.with_mixture`, random parameters, ``F_bu`` = the activations of a random
  SmallVGG on random images): ``ms_backward`` (one image, greedy pass through the handler); ``ms_floor``
  (the top-down convolutions alone, :func:`~pyro_backpass.experiments.floor.floor_fn`) and
  ``backward_over_floor``; ``ms_floor_polyphase`` and ``backward_over_floor_polyphase`` (the floor with
  the upsampling layers convolved as the pass does); ``ms_naive`` (``scripts/naive_greedy.py``: Python
  loops over γ and δ recomputing each convolution) and ``speedup_vs_naive`` (against the fast pass
  timed interleaved with it), with ``naive_agrees`` (identical ``H``) and ``naive_over_floor``
  (``ms_naive / ms_floor``: the largest ``speedup_vs_naive`` any pass that runs the floor's
  convolutions could reach); ``images_per_s`` keyed by
  batch size (``threads`` threads, ``clock``), ``batch_gain`` (largest batch over batch 1),
  ``floor_images_per_s`` (the floor at each batch size) and ``floor_batch_gain`` (the floor at the
  largest batch over the pass at batch 1: the largest ``batch_gain`` any pass that runs the floor's
  convolutions could reach), and
  ``images_per_s_all_threads`` (the machine's threads, wall clock); ``peak_mb``.
- **Trained-like observation parameters** on the same geometry (``σ0 = 0.3``, ``σ1 = 0.6``,
  ``σ2 = 0.3``, ``β = 0.3``, ``λ = 0``, each times the layer's RMS activation; ``σ1 ≈ 2σ0`` and ``λ`` near 0
  as DESIGN §9 measured): ``ms_backward_mixed``, ``mixed_over_floor``, ``naive_agrees_mixed``. With the
  random parameters above the on branch wins at every map cell for every component, which the scorer
  turns into matrix products; here it does so at 25-55% of the cells, as in a trained model.
- **Toy hierarchy** of the exact-vs-greedy script (``ExactVsGreedyConfig`` defaults, moderate
  setting, float64, one clean scene): ``ms_greedy``, ``ms_infer_discrete``, ``speedup_vs_infer_discrete``.
- **VGG16 geometry** (torchvision VGG16 with random weights, 224×224, ``K=500`` at pool5 and 5
  elsewhere, the paper's offsets): ``ms_backward_vgg16`` (one image); on CUDA also
  ``images_per_s_vgg16`` at batch ``vgg16_batch`` with TF32 convolutions.

The library never imports a model: the model program, the naive pass and the toy builders are
arguments (``scripts/bench.py`` wires them in).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from ..allocator import keep_freed_memory
from ..backbones.small_vgg import SmallVGG, SmallVGGConfig
from ..hierarchy import random_hierarchy
from ..inference import backward_pass
from ..specs import with_mixture
from .exact_vs_greedy import ExactVsGreedyConfig, build_settings, sample_scene
from .floor import floor_fn
from .timing import interleaved_ms, load_average, machine, peak_mb, time_ms

__all__ = ["BenchConfig", "run_bench", "trained_like", "format_table"]


@dataclass(frozen=True)
class BenchConfig:
    """Defaults of ``python -m scripts.bench`` (every field is a ``--kebab-case`` flag).

    :param str out: run folder (``metrics.json``, ``config.json``).
    :param str device: ``"cpu"`` or ``"cuda"``.
    :param bool quick: a smoke run: small input, fewer repeats, no VGG16 (numbers are not the claim).
    :param int threads: torch intra-op threads (0 keeps torch's default). One by default: on a shared
        2-core machine a second thread mostly waits for the other processes.
    :param str clock: ``"cpu"`` (process CPU time), ``"wall"``, or ``"auto"``: CPU time for one thread on
        CPU (what the run takes on an idle machine, whatever else is running), wall time otherwise.
    :param int repeats: timed runs per number (median); ``warmup`` untimed runs before them.
    :param int naive_repeats: timed runs of the (slow) naive pass.
    :param tuple batch_sizes: batch sizes of ``images_per_s``.
    :param bool all_threads: also time the batches with the machine's threads (wall clock).
    :param bool keep_freed_memory: apply :func:`~pyro_backpass.allocator.keep_freed_memory` first (as the
        inference scripts do), so that large temporaries are reused, not faulted in on every pass; it is
        process-wide, so every number of the run, floor included, is measured under it.
    """

    out: str = "runs/bench"
    device: str = "cpu"
    quick: bool = False
    seed: int = 0
    threads: int = 1
    clock: str = "auto"
    input_size: int = 96
    K: int = 5
    K_top: int = 48
    repeats: int = 7
    warmup: int = 2
    naive_repeats: int = 2
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    batch_repeats: int = 3
    all_threads: bool = True
    mixed: bool = True
    toy: bool = True
    naive: bool = True
    vgg16: bool = True
    vgg16_K_top: int = 500
    vgg16_repeats: int = 2
    vgg16_batch: int = 32
    keep_freed_memory: bool = True

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.clock not in ("auto", "cpu", "wall"):
            raise ValueError(f"clock: expected 'auto', 'cpu' or 'wall', got {self.clock!r}")
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
        return dataclasses.replace(self, input_size=32, K_top=8, repeats=2, warmup=1, naive_repeats=1,
                                   batch_sizes=tuple(b for b in self.batch_sizes if b <= 8) or (1,),
                                   batch_repeats=1, all_threads=False, vgg16=False)


def _same_hidden(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k].reshape(-1).cpu(), b[k].reshape(-1).cpu()) for k in b)


def _activations(backbone, n: int, size: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        return [a.contiguous() for a in backbone.activations(images)]


def trained_like(hierarchy, f_bu: list[torch.Tensor]):
    """A copy of ``hierarchy`` with the trained-like observation parameters of the module docstring."""
    h = copy.deepcopy(hierarchy)
    rms = [float(x.pow(2).mean().sqrt()) for x in f_bu]
    for l, s in enumerate(rms):
        h.set_observation(l, lam=0.0, beta=0.3 * s, sigma1=0.6 * s, sigma2=0.3 * s)
    h.set_sigma0([0.3 * s for s in rms])
    return h


def _images_per_s(pass_fn, f_bu: dict, repeats: int, device, kind: str) -> dict:
    return {str(b): 1000.0 * b / time_ms(lambda m=m: pass_fn(m), repeats, 1, device, kind) for b, m in f_bu.items()}


def run_bench(cfg: BenchConfig, model, naive_greedy=None, toy_hierarchy=None, toy_specs=None,
              map_infer_discrete=None, vgg16_cls=None, progress=print) -> dict:
    """Run every measurement of :class:`BenchConfig` and return the metrics (see the module docstring).

    :param model: the model program (``models.activation.activation_model``).
    :param naive_greedy: ``(hierarchy, f_bu) -> (hidden, total)``, the naive pass (skipped if ``None``).
    :param toy_hierarchy: ``models.toy.toy_hierarchy``; ``toy_specs``: ``models.toy.toy_specs``;
        ``map_infer_discrete``: ``guides.exact.map_infer_discrete`` (toy part skipped if any is ``None``).
    :param vgg16_cls: the VGG16 backbone class (``pyro_backpass.backbones.vgg16.VGG16Backbone``).
    """
    cfg = cfg.resolved()
    freed_kept = keep_freed_memory() if cfg.keep_freed_memory else False
    default_threads = torch.get_num_threads()
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
    kind = cfg.clock if cfg.clock != "auto" else ("cpu" if device.type == "cpu" and torch.get_num_threads() == 1
                                                  else "wall")
    metrics: dict = {"device": cfg.device, "machine": machine(device), "threads": torch.get_num_threads(),
                     "clock": kind, "keep_freed_memory": freed_kept, "load_average_start": load_average()}

    def timed(fns: dict, repeats: int, warmup: int) -> dict:
        return interleaved_ms(fns, repeats, warmup, device, kind)

    # ---- SmallVGG geometry
    backbone = SmallVGG(SmallVGGConfig(input_size=cfg.input_size, seed=cfg.seed)).to(device).eval()
    h = random_hierarchy(with_mixture(backbone.layer_specs(), K=cfg.K, K_top=cfg.K_top), n_categories=1,
                         seed=cfg.seed).to(device)
    metrics["geometry"] = [f"{s.name}:{s.channels}x{s.height}x{s.width} K={s.K} r={s.offset_radius}" for s in h.specs]
    f_bu = {b: _activations(backbone, b, cfg.input_size, cfg.seed + b, device) for b in cfg.batch_sizes}
    one = f_bu[1] if 1 in f_bu else _activations(backbone, 1, cfg.input_size, cfg.seed + 1, device)

    def backward(maps, hierarchy=h):
        return backward_pass(model, hierarchy, maps)

    res = backward(one)
    uppers = [x[0] for x in res.f_td[1:]] + [None]
    progress("timing the floor and the backward pass (batch 1), side by side")
    ms = timed({"floor": floor_fn(h, uppers, kind=kind), "floor_polyphase": floor_fn(h, uppers, polyphase=True,
                                                                                      kind=kind),
                "backward": lambda: backward(one)}, cfg.repeats, cfg.warmup)
    metrics["ms_floor"], metrics["ms_floor_polyphase"] = ms["floor"], ms["floor_polyphase"]
    metrics["ms_backward"] = ms["backward"]
    metrics["backward_over_floor"] = ms["backward"] / ms["floor"]
    metrics["backward_over_floor_polyphase"] = ms["backward"] / ms["floor_polyphase"]
    progress(f"timing batches {list(cfg.batch_sizes)}")
    metrics["images_per_s"] = _images_per_s(backward, f_bu, cfg.batch_repeats, device, kind)
    # The convolutions cost what they cost per value, so the batch-1 maps repeated serve as the floor's input.
    floors = {b: floor_fn(h, [None if u is None else u.expand((b,) + u.shape[1:]).contiguous() for u in uppers],
                          kind=kind) for b in cfg.batch_sizes}
    metrics["floor_images_per_s"] = _images_per_s(lambda fn: fn(), floors, cfg.batch_repeats, device, kind)
    largest = str(max(cfg.batch_sizes))
    if "1" in metrics["images_per_s"] and largest != "1":
        metrics["batch_gain"] = metrics["images_per_s"][largest] / metrics["images_per_s"]["1"]
        metrics["floor_batch_gain"] = metrics["floor_images_per_s"][largest] / metrics["images_per_s"]["1"]
    if cfg.all_threads and device.type == "cpu" and default_threads != torch.get_num_threads():
        progress(f"timing batches with the machine's {default_threads} threads (wall clock)")
        torch.set_num_threads(default_threads)
        metrics["images_per_s_all_threads"] = _images_per_s(backward, f_bu, cfg.batch_repeats, device, "wall")
        torch.set_num_threads(metrics["threads"])
    metrics["peak_mb"] = peak_mb(device)
    del f_bu

    if cfg.naive and naive_greedy is not None:
        progress("timing the naive pass")
        metrics["naive_agrees"] = _same_hidden(res.best(), naive_greedy(h, one)[0])
        ms = timed({"naive": lambda: naive_greedy(h, one), "backward": lambda: backward(one)}, cfg.naive_repeats, 0)
        metrics["ms_naive"], metrics["ms_backward_beside_naive"] = ms["naive"], ms["backward"]
        metrics["speedup_vs_naive"] = ms["naive"] / ms["backward"]
        # Any pass must run the floor's convolutions, so no pass can beat the naive one by more than this.
        metrics["naive_over_floor"] = ms["naive"] / metrics["ms_floor"]

    if cfg.mixed:
        progress("timing the pass with trained-like observation parameters")
        hm = trained_like(h, one)
        ms = timed({"floor": floor_fn(h, uppers, kind=kind), "mixed": lambda: backward(one, hm)}, cfg.repeats,
                   cfg.warmup)
        metrics["ms_backward_mixed"], metrics["mixed_over_floor"] = ms["mixed"], ms["mixed"] / ms["floor"]
        if naive_greedy is not None:
            metrics["naive_agrees_mixed"] = _same_hidden(backward(one, hm).best(), naive_greedy(hm, one)[0])

    # ---- toy hierarchy of the exact-vs-greedy script
    if cfg.toy and None not in (toy_hierarchy, toy_specs, map_infer_discrete):
        progress("timing greedy against infer_discrete on the toy hierarchy")
        toy = build_settings(ExactVsGreedyConfig(), toy_hierarchy, toy_specs, cfg.seed)["moderate"]
        maps, _ = sample_scene(model, toy, "clean", cfg.seed)
        toy, maps = toy.to(device), [x.to(device) for x in maps]
        ms = timed({"greedy": lambda: backward_pass(model, toy, maps),
                    "infer_discrete": lambda: map_infer_discrete(model, toy, maps)}, cfg.repeats, cfg.warmup)
        metrics["ms_greedy"], metrics["ms_infer_discrete"] = ms["greedy"], ms["infer_discrete"]
        metrics["speedup_vs_infer_discrete"] = ms["infer_discrete"] / ms["greedy"]

    # ---- VGG16 geometry
    if cfg.vgg16 and vgg16_cls is not None:
        progress("timing the VGG16 geometry")
        vgg = vgg16_cls(input_size=224).to(device).eval()
        hv = random_hierarchy(with_mixture(vgg.layer_specs(), K=cfg.K, K_top=cfg.vgg16_K_top), n_categories=1,
                              seed=cfg.seed).to(device)
        maps = _activations(vgg, 1, 224, cfg.seed, device)
        metrics["ms_backward_vgg16"] = time_ms(lambda: backward_pass(model, hv, maps), cfg.vgg16_repeats, 1, device,
                                               kind)
        if device.type == "cuda":
            maps = _activations(vgg, cfg.vgg16_batch, 224, cfg.seed, device)
            ms = time_ms(lambda: backward_pass(model, hv, maps), cfg.vgg16_repeats, 1, device, kind)
            metrics["images_per_s_vgg16"] = 1000.0 * cfg.vgg16_batch / ms
            metrics["peak_mb_vgg16"] = peak_mb(device)
    metrics["load_average_end"] = load_average()
    return metrics


_ROWS = [("ms_backward", "ms"), ("ms_floor", "ms"), ("backward_over_floor", "x"), ("ms_floor_polyphase", "ms"),
         ("backward_over_floor_polyphase", "x"), ("ms_naive", "ms"), ("ms_backward_beside_naive", "ms"),
         ("speedup_vs_naive", "x"), ("naive_over_floor", "x"), ("naive_agrees", ""),
         ("ms_backward_mixed", "ms"), ("mixed_over_floor", "x"),
         ("naive_agrees_mixed", ""), ("peak_mb", "MB"), ("ms_greedy", "ms"), ("ms_infer_discrete", "ms"),
         ("speedup_vs_infer_discrete", "x"), ("ms_backward_vgg16", "ms"), ("images_per_s_vgg16", "img/s")]


def format_table(metrics: dict) -> str:
    """The metrics as a two-column text table."""
    lines = [f"{'metric':<30} value", "-" * 46]
    for key, unit in _ROWS:
        if key in metrics:
            v = metrics[key]
            lines.append(f"{key:<30} {v:.3f} {unit}" if isinstance(v, float) else f"{key:<30} {v}")
    for group in ("images_per_s", "floor_images_per_s", "images_per_s_all_threads"):
        for b, v in metrics.get(group, {}).items():
            lines.append(f"{group + '[' + b + ']':<30} {v:.2f} img/s")
    for key in ("batch_gain", "floor_batch_gain"):
        if key in metrics:
            lines.append(f"{key:<30} {metrics[key]:.2f} x")
    lines.append(f"clock: {metrics.get('clock', '?')}; threads: {metrics.get('threads', '?')}; load average "
                 f"{metrics.get('load_average_start')} -> {metrics.get('load_average_end')}")
    lines.append(f"machine: {metrics.get('machine', '?')}")
    return "\n".join(lines)
