"""The whole training pipeline behind ``python -m scripts.train`` (DESIGN §5, §7).

Stages: render the data (cached by config) → train or load the backbone (cached) → activations of the
masked training instances (streamed) → fit the observation model on cluttered scenes → hard EM
(checkpointed, resumable) → save the model. The model program is an argument, as everywhere in the
library.

Under torchrun (:mod:`pyro_backpass.distributed`) every rank runs this function: rank 0 fills the disk
caches first (backbone, rendered data) and the others then read them; the ranks check that they hold the
same config, backbone and data; each rank computes the activations of its shard only; rank 0 fits the
observation model and sends it to the others; hard EM runs data-parallel; rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import save_hierarchy
from ..hierarchy import Hierarchy, random_hierarchy
from ..specs import with_mixture
from .activations import BackboneActivations
from .hard_em import HardEMConfig, evaluate, hard_em
from .observation import ObservationFitConfig, fit_observation
from .sources import ShardedSource

__all__ = ["TrainConfig", "CONFIGS", "run_training", "peak_memory_mb"]


@dataclass(frozen=True)
class TrainConfig:
    """Defaults of a training run (``--config`` picks one of :data:`CONFIGS`, flags override fields).

    Data: ``n_train`` training instances (``train_on="instances"``: the airplanes of training scenes, each
    alone on black at its scene position and scale; ``"objects"``: centred single renders), ``n_val``
    held-out ones, ``n_obs_scenes`` training scenes for the observation fit. Hierarchy: ``layers``
    (empty = every layer of the backbone), ``K`` below the top and ``K_top`` at the top, whose offsets range over
    ``[-top_offset_radius, top_offset_radius]²`` cells (the paper's 2). Backbone:
    ``backbone`` (``small_vgg`` or ``vgg16`` with ``backbone_weights``) and the SmallVGG training
    budget (``0``/empty: the :class:`~pyro_backpass.backbones.BackboneTrainConfig` defaults, so the default
    run shares its cached backbone with ``python -m scripts.train_backbone``).
    Hard EM: see :class:`~pyro_backpass.learning.HardEMConfig`; ``init_rounds`` is 3 here (against
    its 0 there) because on this pipeline the k-regressions rounds kept pool1 at 2.4 effective
    components instead of 1.6 and raised held-out log-likelihood (README, *Training*).
    """

    size: int = 96
    train_on: str = "instances"
    n_train: int = 800
    n_val: int = 100
    n_obs_scenes: int = 60
    layers: tuple[str, ...] = ("image", "conv1_2", "pool1", "conv2_2", "pool2", "conv3_2", "pool3")
    K: int = 5
    K_top: int = 48
    top_offset_radius: int = 2
    prior_order: int = 2
    alpha: float = 1.0
    em_iterations: int = 5
    em_batch_size: int = 32
    sgd_epochs: int = 2
    init_rounds: int = 3
    lr: float = 2e-3
    backbone: str = "small_vgg"
    backbone_weights: str = ""
    backbone_epochs: int = 0
    backbone_n_train: int = 0
    backbone_widths: tuple[int, ...] = ()
    compositional: bool = False
    cache_mb: int = 2500
    seed: int = 0


CONFIGS = {
    "default": TrainConfig(),
    "tiny": TrainConfig(n_train=24, n_val=8, n_obs_scenes=4, K=2, K_top=4, em_iterations=2, em_batch_size=8,
                        sgd_epochs=1, backbone_epochs=1, backbone_n_train=12, backbone_widths=(8, 16, 32),
                        layers=("image", "conv1_2", "pool1", "conv2_2", "pool2", "conv3_2", "pool3")),
    "paper-vgg16": TrainConfig(size=224, backbone="vgg16", n_train=3000, n_val=600, K_top=500, layers=(),
                               n_obs_scenes=200, em_iterations=10),
}


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _backbone(config: TrainConfig, progress: bool):
    from ..backbones import BackboneTrainConfig, VGG16Backbone, load_or_train_backbone

    if config.backbone == "vgg16":
        if not config.backbone_weights:
            raise ValueError("backbone_weights: the vgg16 backbone needs a local torchvision VGG16 state dict "
                             "(--backbone-weights PATH); nothing is downloaded")
        return VGG16Backbone(config.backbone_weights, input_size=config.size).eval(), {"backbone": "vgg16"}
    if config.backbone != "small_vgg":
        raise ValueError(f"backbone: expected 'small_vgg' or 'vgg16', got {config.backbone!r}")
    base = BackboneTrainConfig()
    bcfg = dataclasses.replace(base, input_size=config.size, compositional=config.compositional, seed=config.seed,
                               epochs=config.backbone_epochs or base.epochs,
                               n_train=config.backbone_n_train or base.n_train,
                               widths=tuple(config.backbone_widths) or base.widths)
    if bcfg.n_train < base.n_train:  # a small budget shrinks the backbone's evaluation sets too
        small = max(4, bcfg.n_train // 2)
        bcfg = dataclasses.replace(bcfg, n_test=small, n_clutter_scenes=small, n_scenes=small)
    model, metrics = load_or_train_backbone(bcfg, progress=progress)
    return model.eval(), {"backbone": "small_vgg", "backbone_config": dataclasses.asdict(bcfg),
                          "backbone_metrics": metrics}


def training_images(config: TrainConfig, split: str, n: int, progress: bool = False):
    """The masked training objects of ``split`` the pipeline renders (cached on disk).

    :returns: ``(images, categories)``: (n, 3, S, S) uint8 objects on black and (n,) category indices.
    """
    from ..data import ObjectDataset, ObjectDatasetConfig, SceneConfig, SceneDataset

    if config.train_on == "objects":
        ds = ObjectDataset(ObjectDatasetConfig(n=n, size=config.size, split=split, seed=config.seed), progress=progress)
        return ds.images, torch.zeros(n, dtype=torch.long)
    if config.train_on != "instances":
        raise ValueError(f"train_on: expected 'instances' or 'objects', got {config.train_on!r}")
    n_scenes = (n + 1) // 2
    scenes = SceneDataset(SceneConfig(n=n_scenes, size=config.size, split=split, seed=config.seed,
                                      instance_pool=max(n_scenes * 2, 2)), progress=progress)
    images = torch.cat([scenes[j]["instance_images"] for j in range(n_scenes)])[:n]
    return (images * 255).round().to(torch.uint8), torch.zeros(n, dtype=torch.long)


def _fit_observations(h: Hierarchy, backbone, config: TrainConfig, progress: bool) -> dict:
    from ..data import SceneConfig, SceneDataset

    scenes = SceneDataset(SceneConfig(n=config.n_obs_scenes, size=config.size, split="val", seed=config.seed,
                                      instance_pool=max(2 * config.n_obs_scenes, 2)), progress=progress)
    names = [s.name for s in h.specs]
    pairs_bu = [[] for _ in names]
    pairs_td = [[] for _ in names]
    with torch.no_grad():
        for j in range(len(scenes)):
            item = scenes[j]
            bu = backbone.activations(item["image"].unsqueeze(0), layers=names)
            td = backbone.activations(item["instance_images"], layers=names)
            for l in range(len(names)):
                pairs_bu[l].append(bu[l].expand_as(td[l]).half())
                pairs_td[l].append(td[l].half())
    report = {}
    cfg = ObservationFitConfig()
    for l, name in enumerate(names):
        fit = fit_observation(torch.cat(pairs_bu[l]).float(), torch.cat(pairs_td[l]).float(), cfg)
        h.set_observation(l, lam=fit.lam, beta=fit.beta, sigma1=fit.sigma1, sigma2=fit.sigma2)
        report[name] = fit.summary()
    return report


def _sha(tensors) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _shard_source(backbone, images, cats, names, config: TrainConfig, cache_mb: int) -> ShardedSource:
    """This rank's shard of the images as an activation source (all of them in one process)."""
    owned = distributed.shard(len(images))
    if len(owned) == 0:  # more ranks than examples: this rank holds none and is never asked for one
        return ShardedSource(lambda index: [], owned, len(images), cats)
    local = BackboneActivations(backbone, images[owned], cats[owned], names, config.em_batch_size, cache_mb)
    return ShardedSource.from_local(local, owned, cats)


def run_training(model, config: TrainConfig, out: str | Path, progress: bool = True) -> dict:
    """Run every stage, write ``out/model``, ``out/em-<key>`` (checkpoints) and return the metrics dict.

    In a distributed run every rank calls it with the same arguments; rank 0 writes the files.
    """
    out = Path(out)
    distributed.check_same("the training config and --out", {"config": dataclasses.asdict(config), "out": str(out)})
    progress = progress and distributed.is_main()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with distributed.main_first("the backbone: trained or loaded once, then read from the cache"):
        backbone, backbone_info = _backbone(config, progress)
    seconds["backbone"] = time.perf_counter() - t0
    specs = backbone.layer_specs()
    if config.layers:
        known = [s.name for s in specs]
        unknown = [n for n in config.layers if n not in known]
        if unknown:
            raise ValueError(f"layers: expected names among {known}, got unknown {unknown}")
        specs = [s for s in specs if s.name in config.layers]
    specs = with_mixture(specs, K=config.K, K_top=config.K_top, top_pool_radius=config.top_offset_radius)
    t = time.perf_counter()
    with distributed.main_first("the data: rendered once, then read from the cache"):
        train_images, train_cats = training_images(config, "train", config.n_train, progress)
        val_images, val_cats = training_images(config, "val", config.n_val, progress)
    seconds["data"] = time.perf_counter() - t
    if distributed.is_distributed():  # e.g. machines without a shared cache that trained different backbones
        distributed.check_same("the backbone weights and the rendered data (share the cache folder, "
                               "PYRO_BACKPASS_CACHE, between machines)",
                               {"backbone": _sha(backbone.state_dict().values()),
                                "data": _sha([train_images, train_cats, val_images, val_cats])})
    t = time.perf_counter()
    names = [s.name for s in specs]
    train = _shard_source(backbone, train_images, train_cats, names, config, config.cache_mb)
    val = _shard_source(backbone, val_images, val_cats, names, config, config.cache_mb // 4)
    seconds["activations"] = time.perf_counter() - t
    h = random_hierarchy(specs, n_categories=1, seed=config.seed)
    h.categories = ["airplane"]
    t = time.perf_counter()

    def fit():
        return _fit_observations(h, backbone, config, progress), h.state_dict()

    obs_report, state = distributed.run_on_main(fit, "the observation fit")
    if distributed.is_distributed():
        h.load_state_dict(state)
    seconds["observation_fit"] = time.perf_counter() - t
    em_cfg = HardEMConfig(iterations=config.em_iterations, batch_size=config.em_batch_size,
                          sgd_epochs=config.sgd_epochs, lr=config.lr, prior_order=config.prior_order,
                          alpha=config.alpha, init_rounds=config.init_rounds, seed=config.seed)
    t = time.perf_counter()
    # The EM checkpoint folder is keyed by the whole run config and the backbone's (not by the number of
    # ranks, which does not change the result), so a run with other data or another backbone never
    # resumes from this one's checkpoint.
    run_key = json.dumps({"train": dataclasses.asdict(config), "backbone": backbone_info.get("backbone_config")},
                         sort_keys=True, default=str)
    em_dir = out / f"em-{hashlib.sha256(run_key.encode()).hexdigest()[:12]}"
    h, history = hard_em(model, h, train, em_cfg, checkpoint_dir=em_dir, val_source=val, progress=progress)
    seconds["hard_em"] = time.perf_counter() - t
    t = time.perf_counter()
    final_val = evaluate(model, h, val, config.em_batch_size)
    seconds["evaluate"] = time.perf_counter() - t
    if distributed.is_main():
        save_hierarchy(h, out / "model", extra={"train_config": dataclasses.asdict(config),
                                                 "em_checkpoint": em_dir.name,
                                                 **{k: v for k, v in backbone_info.items() if k != "backbone_metrics"}})
        if config.backbone == "small_vgg":
            from ..backbones import save_small_vgg

            save_small_vgg(backbone, out / "model" / "backbone.safetensors")
    seconds["total"] = time.perf_counter() - t0
    last = history[-1]
    return {
        "history": history,
        "final_log_likelihood": last["log_likelihood"],
        "initial_val_log_likelihood": history[0].get("val_log_likelihood"),
        "final_val_log_likelihood": final_val["log_likelihood"],
        "relative_error": last["relative_error"],
        "val_relative_error": final_val["relative_error"],
        "val_explained_energy": final_val["explained_energy"],
        "effective_components": last["effective_components"],
        "observation": obs_report,
        "backbone": backbone_info.get("backbone_metrics"),
        "seconds": seconds,
        "world_size": distributed.world_size(),
        "peak_memory_mb": peak_memory_mb(),
        "peak_memory_mb_per_rank": distributed.all_gather_objects(peak_memory_mb(), "peak memory"),
    }
