"""Greedy and beam backward passes against exact MAP on random toy hierarchies (DESIGN §4, §8).

Every ``scenes_per_hierarchy`` scenes a new random toy hierarchy is built (image and conv1 12×12,
pool1 and top 6×6, 4–8 channels, K=3, offsets ``[-1,1]²`` on pool1 and top, 2 categories: 13,122
joint assignments) and turned into two settings: ``"moderate"`` (σ0, σ1, σ2 as configured) and
``"hard"`` (σ0 raised, σ1/σ2 multiplied on the middle layer and, more, on the top mixture layer, and
the top templates shrunk: weak evidence at the top). *The middle layer*: the hierarchy has three
layers below the top mixture layer (image, conv1, pool1; the category above it is not a map), and
the middle one of those is conv1, so ``hard_middle_layers`` defaults to ``(1,)``; pool1 (``(2,)``)
would be the other reading if the top mixture layer were counted among the layers "below the top".
Each setting samples its own scenes (:mod:`~pyro_backpass.experiments.toy_scenes`), one kind in turn:
a clean object, a second object of another category superimposed, or the object plus positive noise
blobs. On each scene it runs the greedy pass, beams, brute-force exact MAP and ``infer_discrete``.

Every method searches the same objective, the profile form of the model, with the category free
(inferred, never clamped) as it is for the greedy pass. The hierarchies are float64; the greedy
pass, beams and ``infer_discrete`` run in float64, the brute force scores its table in
``exact_dtype`` and rescores its near-best candidates in float64
(:func:`guides.exact.map_bruteforce_layers`). Every method's assignment is then rescored in float64
by :func:`~pyro_backpass.inference.trace_log_score` of the profile form, so a method *agrees* with
exact MAP when its score is within ``rtol`` (relative) of the brute-force maximum: exact ties count
as agreement, and whether the ``H`` is identical is reported beside it. *Recovery* compares an ``H``
with the generating ``H`` of the scene's main object on every hidden site (``recovery_*``) and on the
top layer's sites alone (``recovery_top_*``: category, γ and δ of the top mixture layer).

The library never imports a model or guide: :func:`run_exact_vs_greedy` takes the model program,
the toy builders and the two exact-MAP functions as arguments (``scripts/exact_vs_greedy.py`` wires
them in).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import sites
from ..hierarchy import Hierarchy
from ..inference import backward_pass, trace_log_score
from .toy_scenes import KINDS, positive_blobs, sample_scene, superimpose

__all__ = ["ExactVsGreedyConfig", "KINDS", "SETTINGS", "EXACT_DTYPES", "build_settings", "positive_blobs",
           "superimpose", "sample_scene", "evaluate_scene", "summarise", "run_exact_vs_greedy"]

SETTINGS = ("moderate", "hard")
EXACT_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ExactVsGreedyConfig:
    """Defaults of ``python -m scripts.exact_vs_greedy`` (every field is a ``--kebab-case`` flag).

    Toy sizes: ``size`` 12 gives 12×12 image and conv1 and 6×6 pool1 and top maps, inside the
    issue's 6×6–12×12; 4–8 channels; K=3; offsets in ``[-1,1]²`` on pool1 and top; 13,122 joint
    assignments with 2 categories. ``template_scale`` 2 puts the RMS of the top-down mean ``φ`` above
    twice σ0 on every layer at moderate noise (2.8–3.4 σ0 on average over hierarchies at size 12:
    objects clearly visible); it was chosen on that criterion, not on agreement.

    :param int scenes: scenes per setting.
    :param int seed: seeds the hierarchies and scenes (same seed → same metrics, except ``ms_*``).
    :param int scenes_per_hierarchy: a new random hierarchy every this many scenes.
    :param tuple channels: channels of the four toy layers, bottom-up; ``radii`` their offset radii.
    :param float hard_sigma0: σ0 of the hard setting (every layer).
    :param float hard_middle_factor: σ1, σ2 multiplier of the hard setting on the layers
        ``hard_middle_layers`` (indices, bottom-up; default conv1, the middle of the three layers
        below the top); ``hard_top_factor`` on the top mixture layer.
    :param float hard_template_factor: top templates of the hard setting, relative to moderate.
    :param int blob_count: positive Gaussian blobs added per layer in ``"blobs"`` scenes, each with
        per-channel amplitude uniform in ``[0, blob_amplitude)`` and radius ``blob_width`` cells.
    :param float rtol: relative tolerance of agreement on float64 scores.
    :param str exact_dtype: dtype of the brute force's score table (``"float32"`` or ``"float64"``);
        its near-best candidates are rescored in float64 either way, so the maximum is exact.
    :param int threads: torch intra-op threads while running (timings are per scene, single image).
    """

    scenes: int = 200
    seed: int = 0
    scenes_per_hierarchy: int = 10
    size: int = 12
    channels: tuple[int, ...] = (4, 4, 6, 8)
    K: int = 3
    radii: tuple[int, ...] = (0, 0, 1, 1)
    n_categories: int = 2
    template_scale: float = 2.0
    weight_scale: float = 1.0
    sigma0: float = 0.3
    sigma1: float = 0.15
    sigma2: float = 0.3
    hard_sigma0: float = 0.5
    hard_middle_factor: float = 4.0
    hard_middle_layers: tuple[int, ...] = (1,)
    hard_top_factor: float = 6.0
    hard_template_factor: float = 0.6
    beams: tuple[int, ...] = (3, 9, 27)
    blob_count: int = 3
    blob_amplitude: float = 1.0
    blob_width: float = 1.0
    rtol: float = 1e-9
    exact_dtype: str = "float32"
    threads: int = 1

    def __post_init__(self):
        checks = [(n, getattr(self, n) >= 1, "a positive int") for n in ("scenes", "scenes_per_hierarchy", "size", "K",
                                                                          "threads")]
        checks += [(n, getattr(self, n) > 0, "a positive number") for n in (
            "sigma0", "sigma1", "sigma2", "hard_sigma0", "hard_middle_factor", "hard_top_factor",
            "hard_template_factor", "template_scale", "weight_scale", "blob_width", "rtol")]
        checks += [("n_categories", self.n_categories >= 2, ">= 2 categories (superimposed scenes)"),
                   ("radii", len(self.radii) == len(self.channels), f"one per layer ({len(self.channels)})"),
                   ("hard_middle_layers", all(0 <= l < len(self.channels) - 1 for l in self.hard_middle_layers),
                    f"layer indices below the top (0..{len(self.channels) - 2})"),
                   ("exact_dtype", self.exact_dtype in EXACT_DTYPES, f"one of {EXACT_DTYPES}"),
                   ("beams", bool(self.beams) and all(b >= 1 for b in self.beams), "positive beam widths"),
                   ("blob_count", self.blob_count >= 0, ">= 0"), ("blob_amplitude", self.blob_amplitude >= 0, ">= 0")]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")


def build_settings(config: ExactVsGreedyConfig, toy_hierarchy, toy_specs, seed: int) -> dict[str, Hierarchy]:
    """One random float64 toy hierarchy and its hard variant: ``{"moderate": h, "hard": h_hard}``."""
    specs = toy_specs(size=config.size, channels=config.channels, K=config.K, radii=config.radii)
    moderate = toy_hierarchy(n_categories=config.n_categories, seed=seed, specs=specs,
                             template_scale=config.template_scale, weight_scale=config.weight_scale,
                             sigma0=config.sigma0, sigma1=config.sigma1, sigma2=config.sigma2).double()
    hard = copy.deepcopy(moderate)
    hard.set_sigma0(config.hard_sigma0)
    top = hard.L - 1
    factors = [(l, config.hard_middle_factor) for l in config.hard_middle_layers] + [(top, config.hard_top_factor)]
    for l, factor in factors:
        hard.set_observation(l, sigma1=config.sigma1 * factor, sigma2=config.sigma2 * factor)
    with torch.no_grad():
        hard.topdown[top].template.mul_(config.hard_template_factor)
    return {"moderate": moderate, "hard": hard}


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    return fn(*args, **kwargs), 1000.0 * (time.perf_counter() - t0)


def _same(a: dict, b: dict, names) -> bool:
    return all(torch.equal(a[k].reshape(-1), b[k].reshape(-1)) for k in names)


def evaluate_scene(model, hierarchy: Hierarchy, f_bu, truth: dict, map_bruteforce, map_infer_discrete,
                   beams=(3, 9, 27), rtol: float = 1e-9) -> dict:
    """Run every method on one scene (N = 1) and compare each with brute force in float64.

    :returns: a flat record: ``score/<m>``, ``agree/<m>``, ``identical/<m>`` for ``m`` in greedy,
        ``beam<B>`` and infer_discrete; ``gap`` (exact minus greedy score); ``recovery[_top]/<m>``
        for exact and greedy; ``ms/<m>`` wall times of the searches (not of the rescoring).
    """
    names = hierarchy.hidden_site_names()
    top = hierarchy.specs[-1].name
    top_names = [sites.CATEGORY, sites.gamma(top), sites.delta(top)]
    rec: dict = {}
    (exact, table_max), rec["ms/exact"] = _timed(map_bruteforce, model, hierarchy, f_bu)
    found = {}
    found["infer_discrete"], rec["ms/infer_discrete"] = _timed(map_infer_discrete, model, hierarchy, f_bu)
    greedy, rec["ms/greedy"] = _timed(backward_pass, model, hierarchy, f_bu)
    found["greedy"] = greedy.best()
    for b in beams:
        res, rec[f"ms/beam{b}"] = _timed(backward_pass, model, hierarchy, f_bu, beam=b)
        found[f"beam{b}"] = res.best()

    def score(hidden):
        # Rescore every method's H the same way (float64 profile form), so ties compare exactly.
        return float(trace_log_score(model, hidden, hierarchy, f_bu=f_bu, form="profile", validate=False))

    best = score(exact)
    tol = rtol * abs(best)
    if abs(best - float(table_max)) > tol:
        raise RuntimeError(f"map_bruteforce: its H rescores to {best}, not its table maximum {float(table_max)}")
    for m, hidden in found.items():
        s = score(hidden)
        if s > best + tol:
            raise RuntimeError(f"{m}: score {s} exceeds the brute-force maximum {best}: exact MAP is not exact")
        rec[f"score/{m}"], rec[f"agree/{m}"], rec[f"identical/{m}"] = s, s >= best - tol, _same(hidden, exact, names)
    rec["score/exact"], rec["gap"] = best, best - rec["score/greedy"]
    for m, hidden in (("exact", exact), ("greedy", found["greedy"])):
        rec[f"recovery/{m}"] = _same(hidden, truth, names)
        rec[f"recovery_top/{m}"] = _same(hidden, truth, top_names)
    return rec


def summarise(records: list[dict], beams=(3, 9, 27)) -> dict:
    """The metrics of one setting from its scene records (fractions, mean gap, median ms)."""
    def mean(key, rs=records):
        return sum(float(r[key]) for r in rs) / len(rs)

    def median(key):
        return statistics.median(r[key] for r in records)

    out = {"agreement_greedy": mean("agree/greedy"),
           "agreement_beam": {str(b): mean(f"agree/beam{b}") for b in beams},
           "agreement_infer_discrete": mean("agree/infer_discrete"),
           "mean_gap": mean("gap"), "max_gap": max(r["gap"] for r in records),
           "recovery_exact": mean("recovery/exact"), "recovery_greedy": mean("recovery/greedy"),
           "recovery_top_exact": mean("recovery_top/exact"), "recovery_top_greedy": mean("recovery_top/greedy"),
           "ms_greedy": median("ms/greedy"), "ms_exact": median("ms/exact"),
           "ms_infer_discrete": median("ms/infer_discrete"), "ms_beam": {str(b): median(f"ms/beam{b}") for b in beams},
           "identical_greedy": mean("identical/greedy"),
           "identical_beam": {str(b): mean(f"identical/beam{b}") for b in beams},
           "identical_infer_discrete": mean("identical/infer_discrete"),
           "agreement_by_kind": {}, "mean_gap_by_kind": {}, "n_by_kind": {}, "n_scenes": len(records)}
    methods = ["greedy"] + [f"beam{b}" for b in beams] + ["infer_discrete"]
    for kind in KINDS:
        rs = [r for r in records if r["kind"] == kind]
        if rs:
            out["agreement_by_kind"].update({f"{kind}/{m}": mean(f"agree/{m}", rs) for m in methods})
            out["mean_gap_by_kind"][kind] = mean("gap", rs)
            out["n_by_kind"][kind] = len(rs)
    return out


def run_exact_vs_greedy(config: ExactVsGreedyConfig, model, toy_hierarchy, toy_specs, map_bruteforce,
                        map_infer_discrete, progress: bool = True, records_out: list | None = None) -> dict:
    """Run both settings; returns ``{"moderate": metrics, "hard": metrics}`` (see :func:`summarise`).

    :param model: the model program (``models.activation.activation_model``).
    :param toy_hierarchy: ``models.toy.toy_hierarchy``; ``toy_specs``: ``models.toy.toy_specs``.
    :param map_bruteforce: ``(model, hierarchy, f_bu) -> (hidden, score)``, exact MAP by enumeration
        (``guides.exact.map_bruteforce_layers``, with ``search_dtype`` from ``config.exact_dtype``, or
        ``guides.exact.map_bruteforce``); ``map_infer_discrete``: ``guides.exact.map_infer_discrete``.
    :param list records_out: if given, every scene's record (:func:`evaluate_scene`, plus ``setting``,
        ``kind``, ``scene`` and ``hierarchy`` indices) is appended to it.
    """
    gen = torch.Generator().manual_seed(config.seed)
    n_hier = math.ceil(config.scenes / config.scenes_per_hierarchy)
    hier_seeds = torch.randint(0, 2**31 - 1, (n_hier,), generator=gen).tolist()
    scene_seeds = torch.randint(0, 2**31 - 1, (config.scenes,), generator=gen).tolist()
    records: dict[str, list] = {s: [] for s in SETTINGS}
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with tqdm(total=len(SETTINGS) * config.scenes, disable=not progress, desc="exact vs greedy") as bar:
            for j, hseed in enumerate(hier_seeds):
                hierarchies = build_settings(config, toy_hierarchy, toy_specs, hseed)
                first = j * config.scenes_per_hierarchy
                for i in range(first, min(first + config.scenes_per_hierarchy, config.scenes)):
                    kind = KINDS[i % len(KINDS)]
                    for setting in SETTINGS:
                        h = hierarchies[setting]
                        f_bu, truth = sample_scene(model, h, kind, scene_seeds[i], config.blob_count,
                                                   config.blob_amplitude, config.blob_width)
                        rec = evaluate_scene(model, h, f_bu, truth, map_bruteforce, map_infer_discrete,
                                             config.beams, config.rtol)
                        records[setting].append(dict(rec, kind=kind))
                        if records_out is not None:
                            records_out.append(dict(rec, setting=setting, kind=kind, scene=i, hierarchy=j))
                        bar.update()
    finally:
        torch.set_num_threads(threads)
    return {s: summarise(records[s], config.beams) for s in SETTINGS}
