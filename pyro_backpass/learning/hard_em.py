"""Hard EM for ``P(H) P(F_td | H)`` on masked training objects (Sec. 2.3.2, DESIGN §5).

One iteration:

- **E-step**: every example's ``H`` is imputed top-down by the greedy handler on the model's E-step
  form (``F_td`` observed, no ``F_bu`` term), with the category clamped to the example's label;
- **M-step**: the γ prior's CPD tables in closed form from counts (n-gram with Dirichlet ``α``);
  dead components re-seeded; the top templates in closed form (the mean of their assigned maps,
  shifted back); a fixed small number of Adam epochs on the top-down convolution weights (squared
  error scaled by ``1/2σ0²``, i.e. the Gaussian log-likelihood of eq. 5, not run to convergence);
  then ``σ0_l`` from the residuals, floored.

Each iteration logs the total and per-layer log-likelihood (mean per example, from the E-step),
per-layer usage and its effective number of components ``exp(H(usage))``, and the relative
reconstruction error (residual energy / signal energy) per layer. After every iteration the
hierarchy and the log are checkpointed atomically; a run resumes from its last checkpoint. All
randomness comes from generators seeded by ``(seed, iteration)``, and each M-step starts a fresh
optimiser, so a resumed run and an uninterrupted one give identical parameters on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import sites
from ..checkpoint import load_hierarchy, save_hierarchy
from ..hierarchy import Hierarchy
from ..inference import impute
from ..io import atomic_write_json
from ..priors import NGramPrior
from ..topdown import shift
from .init import initialise, least_squares_fit
from .residuals import squared_error
from .sources import iterate_batches

__all__ = ["HardEMConfig", "hard_em", "usage_stats", "evaluate"]


@dataclass(frozen=True)
class HardEMConfig:
    """Defaults of hard EM.

    :param int iterations: EM iterations.
    :param int batch_size: examples per E-step and SGD minibatch.
    :param int sgd_epochs: Adam epochs on the top-down weights per M-step.
    :param float lr: Adam learning rate.
    :param int prior_order: order ``n`` of the n-gram γ prior (2 = bigram).
    :param float alpha: symmetric Dirichlet pseudo-count of the CPD tables.
    :param float sigma0_floor: floor on ``σ0_l``, relative to the RMS of the layer's ``F_td``.
    :param bool reseed_dead: re-seed components left with no example from the worst-fit examples.
    :param int init_epochs: Adam epochs of the initial fit to the k-means++ partition.
    :param int seed: seed of every random choice.
    """

    iterations: int = 6
    batch_size: int = 32
    sgd_epochs: int = 2
    lr: float = 1e-3
    prior_order: int = 2
    alpha: float = 1.0
    sigma0_floor: float = 0.05
    reseed_dead: bool = True
    init_epochs: int = 2
    seed: int = 0


def usage_stats(gamma: torch.Tensor, K: int) -> tuple[list[int], float]:
    """Component counts and the effective number of components ``exp(H(usage))``."""
    counts = torch.bincount(gamma, minlength=K).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return counts.long().tolist(), float(entropy.exp())


def _generator(config: HardEMConfig, iteration: int) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 1_000_003 + iteration)


def _e_step(model, h: Hierarchy, source, config: HardEMConfig, progress: bool):
    """Impute H for all examples; returns assignments per site (N,), per-example totals and layer scores."""
    hidden, totals, layer_scores = {}, [], []
    batches = list(iterate_batches(len(source), config.batch_size))
    for idx in tqdm(batches, desc="E-step", disable=not progress, leave=False):
        maps = [m.to(h.device, h.dtype) for m in source.batch(idx)]
        res = impute(model, h, maps, clamp={sites.CATEGORY: source.categories[idx]})
        for k, v in res.best().items():
            hidden.setdefault(k, []).append(v.cpu())
        totals.append(res.total[0].cpu())
        layer_scores.append(res.layer_scores[0].cpu())
    return ({k: torch.cat(v) for k, v in hidden.items()}, torch.cat(totals).double(),
            torch.cat(layer_scores).double())


def _residual_pass(h: Hierarchy, source, hidden, config: HardEMConfig):
    """Per-layer residual energy, signal energy and element counts under the assignments."""
    L = h.L
    res = torch.zeros(L, dtype=torch.float64)
    sig = torch.zeros(L, dtype=torch.float64)
    n_el = torch.zeros(L, dtype=torch.float64)
    per_example = torch.zeros(len(source), L, dtype=torch.float64)
    with torch.no_grad():
        for idx in iterate_batches(len(source), config.batch_size):
            maps = [m.to(h.device, h.dtype) for m in source.batch(idx)]
            for l in range(L):
                spec = h.specs[l]
                upper = source.categories[idx].to(h.device) if l == L - 1 else maps[l + 1]
                r = squared_error(h, l, upper, hidden[sites.gamma(spec.name)][idx].to(h.device),
                                  hidden[sites.delta(spec.name)][idx].to(h.device), maps[l]).double().cpu()
                res[l] += r.sum()
                per_example[idx, l] = r / maps[l][0].numel()
                sig[l] += maps[l].pow(2).sum().double().cpu()
                n_el[l] += maps[l].numel()
    return res, sig, n_el, per_example


def _reseed_dead(h: Hierarchy, source, hidden, per_example_error, generator) -> dict[int, list[int]]:
    """Give every empty component the examples its layer fits worst.

    Top layer: the template becomes a worst-fit example's map. Lower layers: the component is fitted by
    ridge least squares to the layer's worst-fit examples (a split of what the used components explain
    worst); a noisy copy of a used component would lose every tie in the next E-step and stay empty.

    :param torch.Tensor per_example_error: (N, L) mean squared error per example and layer.
    """
    reseeded = {}
    with torch.no_grad():
        for l, spec in enumerate(h.specs):
            gamma = hidden[sites.gamma(spec.name)]
            counts = torch.bincount(gamma, minlength=spec.K)
            dead = (counts == 0).nonzero().flatten().tolist()
            if not dead:
                continue
            reseeded[l] = dead
            worst = per_example_error[:, l].argsort(descending=True)
            if l == h.L - 1:
                for j, k in enumerate(dead):
                    ex = worst[j % len(worst)]
                    top_map = source.batch(ex.reshape(1))[l][0].to(h.device, h.dtype)
                    h.topdown[l].template[int(source.categories[ex]), k].copy_(top_map)
                continue
            # Split the worst-fit examples (the worst ``N/K`` of them) among the dead components.
            share = max(1, len(worst) // spec.K)
            owner = torch.full((len(source),), -1, dtype=torch.long)
            for j, k in enumerate(dead):
                owner[worst[j * share:(j + 1) * share]] = k
            least_squares_fit(h, l, source, owner, generator, components=dead)
    return reseeded


def _m_step_templates(h: Hierarchy, source, hidden, config: HardEMConfig) -> None:
    """Closed-form M-step of the top templates: the mean of the assigned maps, shifted back by ``-δ``.

    Under eq. 5 with ``φ = shift(ReLU(T_{c,γ}), δ)`` and non-negative maps this mean is the exact
    maximiser where the shifted template overlaps the map; cells never covered keep their value.
    """
    L, top = h.L, h.topdown[h.L - 1]
    name = h.specs[L - 1].name
    total = torch.zeros_like(top.template)
    count = torch.zeros(top.template.shape[:2] + (1,) + top.template.shape[3:], dtype=top.template.dtype,
                        device=top.template.device)
    offsets = h.specs[L - 1].offsets
    with torch.no_grad():
        for idx in iterate_batches(len(source), config.batch_size):
            maps = source.batch(idx)[L - 1].to(h.device, h.dtype)
            cats, g, d = source.categories[idx], hidden[sites.gamma(name)][idx], hidden[sites.delta(name)][idx]
            for i in range(len(idx)):  # a scatter per example; the top layer is small
                dy, dx = offsets[int(d[i])]
                back = shift(maps[i], -dy, -dx)
                valid = shift(torch.ones_like(maps[i][:1]), -dy, -dx)
                total[cats[i], g[i]] += back
                count[cats[i], g[i]] += valid
        used = count > 0
        top.template.copy_(torch.where(used, total / count.clamp_min(1), top.template))


def _m_step_sgd(h: Hierarchy, source, hidden, config: HardEMConfig, generator, progress: bool) -> float:
    params = [p for m in h.topdown[:-1] for p in m.parameters()]
    if not params:
        return 0.0
    opt = torch.optim.Adam(params, lr=config.lr)
    L, last = h.L, 0.0
    for _ in range(config.sgd_epochs):
        batches = list(iterate_batches(len(source), config.batch_size, generator))
        for idx in tqdm(batches, desc="M-step", disable=not progress, leave=False):
            maps = [m.to(h.device, h.dtype) for m in source.batch(idx)]
            loss = 0.0
            for l in range(L - 1):
                spec = h.specs[l]
                err = squared_error(h, l, maps[l + 1], hidden[sites.gamma(spec.name)][idx].to(h.device),
                                    hidden[sites.delta(spec.name)][idx].to(h.device), maps[l])
                loss = loss + err.sum() / (2 * h.sigma0[l] ** 2)
            opt.zero_grad()
            (loss / len(idx)).backward()
            opt.step()
            last = float(loss.detach()) / len(idx)
    return last


def _state_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / "em_state.json"


def hard_em(model, hierarchy: Hierarchy, source, config: HardEMConfig | None = None,
            checkpoint_dir: str | Path | None = None, val_source=None, progress: bool = True):
    """Train ``hierarchy`` in place by hard EM; returns ``(hierarchy, history)``.

    :param model: a model program with an ``"estep"`` form (``models.activation.activation_model``).
    :param source: training activation source (``len``, ``categories``, ``batch(index)``).
    :param checkpoint_dir: folder for the per-iteration checkpoint; an existing one with the same
        config is resumed from.
    :param val_source: optional held-out source; its E-step log-likelihood is logged per iteration.
    :returns: the trained hierarchy and a list of per-iteration log dicts.
    """
    config = config or HardEMConfig()
    if len(source) == 0:
        raise ValueError("source: expected a non-empty data set, got 0 examples")
    for s in hierarchy.specs:
        if s.K > len(source):
            raise ValueError(f"K of layer {s.name!r}: expected at most the number of training examples "
                             f"({len(source)}), got {s.K}")
    h = hierarchy
    history: list[dict] = []
    start = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    cfg_json = dataclasses.asdict(config)
    if ckpt is not None and _state_path(ckpt).is_file():
        state = json.loads(_state_path(ckpt).read_text())
        if state.get("config") != cfg_json:
            raise ValueError(f"checkpoint_dir: {str(ckpt)!r} holds a run with another config; "
                             "use a fresh folder or the same config to resume")
        loaded = load_hierarchy(ckpt / "model", map_location=h.device, expect_specs=list(h.specs))
        h.prior = loaded.prior
        h.load_state_dict(loaded.state_dict())
        history, start = state["history"], state["iteration"] + 1
    if start == 0:
        init_gen = _generator(config, -1)
        _init_sigma0(h, source, config)
        initialise(h, source, init_gen, epochs=config.init_epochs, lr=config.lr, batch_size=config.batch_size)
    for it in range(start, config.iterations):
        gen = _generator(config, it)
        hidden, totals, layer_scores = _e_step(model, h, source, config, progress)
        log = {"iteration": it, "log_likelihood": float(totals.mean()),
               "layer_log_likelihood": {s.name: float(layer_scores[:, i].mean()) for i, s in enumerate(h.specs)},
               "usage": {}, "effective_components": {}}
        for s in h.specs:
            counts, eff = usage_stats(hidden[sites.gamma(s.name)], s.K)
            log["usage"][s.name], log["effective_components"][s.name] = counts, eff
        if val_source is not None:
            _, vt, vls = _e_step(model, h, val_source, config, progress=False)
            log["val_log_likelihood"] = float(vt.mean())
            log["val_layer_log_likelihood"] = {s.name: float(vls[:, i].mean()) for i, s in enumerate(h.specs)}
        # M-step: CPD tables in closed form.
        assign = torch.stack([hidden[sites.CATEGORY]] + [hidden[sites.gamma(s.name)] for s in reversed(h.specs)], 1)
        prior = NGramPrior(h.Ks, h.n_categories, order=config.prior_order, alpha=config.alpha).to(h.device, h.dtype)
        h.prior = prior.fit(assign.to(h.device))
        _, _, _, per_ex = _residual_pass(h, source, hidden, config)
        log["reseeded"] = {h.specs[l].name: v for l, v in
                           _reseed_dead(h, source, hidden, per_ex, gen).items()} if config.reseed_dead else {}
        _m_step_templates(h, source, hidden, config)
        log["sgd_loss"] = _m_step_sgd(h, source, hidden, config, gen, progress)
        res, sig, n_el, _ = _residual_pass(h, source, hidden, config)
        _set_sigma0(h, res, sig, n_el, config)
        log["relative_error"] = {s.name: float(res[i] / sig[i].clamp_min(1e-12)) for i, s in enumerate(h.specs)}
        log["sigma0"] = h.sigma0.tolist()
        history.append(log)
        if ckpt is not None:
            save_hierarchy(h, ckpt / "model")
            atomic_write_json(_state_path(ckpt), {"iteration": it, "config": cfg_json, "history": history})
    return h, history


def _set_sigma0(h: Hierarchy, res, sig, n_el, config: HardEMConfig) -> None:
    rms_signal = (sig / n_el).sqrt()
    sigma0 = (res / n_el).sqrt()
    sigma0 = torch.maximum(sigma0, config.sigma0_floor * rms_signal).clamp_min(1e-6)
    h.set_sigma0(sigma0.to(h.dtype))


def _init_sigma0(h: Hierarchy, source, config: HardEMConfig) -> None:
    """Start ``σ0_l`` at half the layer's RMS activation, a scale-aware guess refined by the M-steps."""
    sq = torch.zeros(h.L, dtype=torch.float64)
    n = torch.zeros(h.L, dtype=torch.float64)
    for idx in iterate_batches(len(source), config.batch_size):
        for l, m in enumerate(source.batch(idx)):
            sq[l] += m.double().pow(2).sum()
            n[l] += m.numel()
    rms = (sq / n).sqrt().clamp_min(1e-3)
    h.set_sigma0((0.5 * rms).to(h.dtype))
    if not math.isfinite(float(h.sigma0.sum())):
        raise ValueError("source: activations give a non-finite scale")


def evaluate(model, h: Hierarchy, source, batch_size: int = 32) -> dict:
    """E-step log-likelihood and relative reconstruction error of ``source`` under ``h`` (no update).

    :returns: ``log_likelihood`` (mean per example), ``layer_log_likelihood`` and ``relative_error``
        (residual energy over signal energy of ``F_td^l`` predicted from the observed ``F_td^{l+1}``),
        and ``explained_energy = 1 - relative_error``, per layer.
    """
    config = HardEMConfig(batch_size=batch_size)
    hidden, totals, layer_scores = _e_step(model, h, source, config, progress=False)
    res, sig, _, _ = _residual_pass(h, source, hidden, config)
    rel = {s.name: float(res[i] / sig[i].clamp_min(1e-12)) for i, s in enumerate(h.specs)}
    return {"log_likelihood": float(totals.mean()),
            "layer_log_likelihood": {s.name: float(layer_scores[:, i].mean()) for i, s in enumerate(h.specs)},
            "relative_error": rel, "explained_energy": {k: 1 - v for k, v in rel.items()}}
