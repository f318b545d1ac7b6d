"""Train :class:`SmallVGG` as a classifier of the rendered categories, optionally compositionally.

Each step composes a fresh batch of scenes around training objects (backgrounds, clutter,
occluders, flips, colour gain: :mod:`~pyro_backpass.backbones.augment`) and minimises the
cross-entropy of the target's category. With ``compositional=True`` the objects alone (on black)
go through the same network in the same batch and the Stone et al. loss
(:func:`~pyro_backpass.backbones.compositional.compositional_loss`) is added, with the
classification loss on both.

Deterministic for a seed on CPU: the weights come from ``SmallVGGConfig.seed``, shuffling and
augmentation from one ``torch.Generator``, and no nondeterministic op is used. (Results may differ
with the number of threads, which changes float summation order.)
"""

from __future__ import annotations

import math
import os
import platform
import queue
import threading
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pyro_backpass.backbones.augment import AugmentConfig, compose
from pyro_backpass.backbones.backgrounds import BackgroundBank
from pyro_backpass.backbones.compositional import compositional_loss, compositionality_error
from pyro_backpass.backbones.data import BackboneData, build_backbone_data
from pyro_backpass.backbones.small_vgg import SmallVGG
from pyro_backpass.backbones.train_config import BackboneTrainConfig

__all__ = ["BackboneTrainConfig", "train_backbone", "evaluate_backbone", "accuracy", "test_accuracy",
           "clutter_accuracy", "machine_description"]


def machine_description() -> str:
    """E.g. ``"CPU, 2 cores (x86_64), 2 torch threads"`` or the CUDA device name."""
    if torch.cuda.is_available():
        return f"CUDA, {torch.cuda.get_device_name(0)}"
    return f"CPU, {os.cpu_count()} cores ({platform.machine()}), {torch.get_num_threads()} torch threads"


def _load_average() -> float | None:
    """The 1-minute load average (the machine may be shared; timings depend on it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@torch.no_grad()
def accuracy(model: SmallVGG, images: torch.Tensor, categories: torch.Tensor, batch_size: int = 128) -> float:
    """Fraction of ``images`` ``(N, 3, S, S)`` (uint8 or ``[0, 1]`` float) classified as ``categories``."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size]
            x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
            pred = model.classify(x.contiguous(memory_format=torch.channels_last)).argmax(dim=1)
            correct += int((pred == categories[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(images.shape[0], 1)


def test_accuracy(model: SmallVGG, data: BackboneData) -> float:
    """Accuracy on held-out single rendered objects on black."""
    return accuracy(model, data.test_images, data.test_categories)


def clutter_accuracy(model: SmallVGG, data: BackboneData) -> float:
    """Accuracy on held-out objects placed among clutter of other categories on a background."""
    return accuracy(model, data.clutter_images, data.clutter_categories)


def evaluate_backbone(model: SmallVGG, data: BackboneData) -> dict:
    """``test_accuracy``, ``clutter_accuracy`` and per-layer ``compositionality_error``."""
    scenes = data.scene_images.float() / 255 if data.scene_images.dtype == torch.uint8 else data.scene_images
    objects = data.scene_objects.float() / 255 if data.scene_objects.dtype == torch.uint8 else data.scene_objects
    return {"test_accuracy": test_accuracy(model, data), "clutter_accuracy": clutter_accuracy(model, data),
            "compositionality_error": compositionality_error(model, scenes, data.scene_masks, objects)}


def _downsized(pool: tuple, size: int) -> tuple:
    """The training pool ``(images, masks, categories, backgrounds)`` at a lower resolution (antialiased).

    Masks become soft (area fractions): with the premultiplied images they are exact alphas.
    """
    images, masks, categories, backgrounds = pool
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(masks.float().unsqueeze(1), size=(size, size), mode="area")[:, 0]
    small = backgrounds.resized(size) if backgrounds is not None else None
    return x.mul(255).round().clamp(0, 255).to(torch.uint8), m, categories, small


def _batches(config: BackboneTrainConfig, pools: dict, N: int, gen: torch.Generator, aug: AugmentConfig):
    """Every training batch in order, as ``(labels, Composite)``: the epoch's shuffle and the scenes
    composed around its objects. All of the run's randomness after the background bank is drawn
    here, in this order, so producing the batches in another thread leaves the stream unchanged."""
    S = config.input_size
    for epoch in range(config.epochs):
        pool = pools[config.warmup_size if epoch < config.warmup_epochs else S]
        perm = torch.randperm(N, generator=gen)
        for start in range(0, N, config.batch_size):
            idx = perm[start:start + config.batch_size]
            imgs = pool[0][idx]
            imgs = imgs.float() / 255 if imgs.dtype == torch.uint8 else imgs.float()
            labels = pool[2][idx]
            yield labels, compose(imgs, pool[1][idx], pool[0], pool[1], aug, gen, target_categories=labels,
                                  pool_categories=pool[2], backgrounds=pool[3])


def _prefetched(items, depth: int, threads: int):
    """Iterate ``items`` produced in a background thread, at most ``depth`` ahead of the consumer.

    Composing a batch is a few dozen small tensor ops that leave a core idle while the training step
    runs with ``threads`` torch threads on the other; torch releases the GIL inside its ops, so a
    producer thread overlaps the two. The producer's exceptions are re-raised here, and stopping early
    (an exception in the consumer) stops the producer.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        if threads > 0:
            torch.set_num_threads(threads)  # OpenMP's thread count is per calling thread
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put(exc)

    worker = threading.Thread(target=produce, name="compose-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.1)


def _train_step(model: SmallVGG, comp, labels: torch.Tensor, config: BackboneTrainConfig,
                comp_weight: float) -> tuple[torch.Tensor, dict]:
    B = labels.shape[0]
    # bf16 autocast: the convs run on the CPU's bf16 units (measured ~1.8x faster per image here);
    # weights, optimiser state and the losses stay float32.
    autocast = torch.autocast(comp.scene.device.type, dtype=torch.bfloat16, enabled=config.bf16)
    if not config.compositional:
        with autocast:
            top = model.activations(comp.scene.contiguous(memory_format=torch.channels_last),
                                    layers=[model.layer_names()[-1]], any_size=True)[0]
            logits = model.logits_from_top(top)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        return loss, {"ce": loss.item(), "acc": (logits.argmax(1) == labels).float().mean().item()}
    # One pass over the scenes and the first k objects alone: the shared weights see both in one batch.
    k = max(1, round(config.compositional_fraction * B))
    x = torch.cat([comp.scene, comp.object[:k]]).contiguous(memory_format=torch.channels_last)
    with autocast:
        acts = model.activations(x, any_size=True)[1:]
        logits = model.logits_from_top(acts[-1])
    acts = [a.float() for a in acts]
    ce = F.cross_entropy(logits.float(), torch.cat([labels, labels[:k]]), label_smoothing=config.label_smoothing)
    comp_loss, _ = compositional_loss([a[:k] for a in acts], [a[B:] for a in acts], comp.mask[:k])
    loss = ce + comp_weight * comp_loss
    acc = (logits[:B].argmax(1) == labels).float().mean().item()
    return loss, {"ce": ce.item(), "comp": comp_loss.item(), "acc": acc}


def train_backbone(config: BackboneTrainConfig | None = None, progress: bool = True,
                   data: BackboneData | None = None) -> tuple[SmallVGG, dict]:
    """Train a SmallVGG and measure it.

    :param BackboneTrainConfig config: what to train (default ``BackboneTrainConfig()``).
    :param bool progress: show progress bars.
    :param BackboneData data: the data to use; rendered (and cached) from ``config`` if ``None``.
    :returns: ``(model in eval mode, metrics)`` with ``test_accuracy``, ``clutter_accuracy``,
        ``compositionality_error`` (layer -> float), ``seconds`` (training time), ``data_seconds``,
        ``eval_seconds``, ``params``, ``final_loss``, ``compositional`` and ``machine``.
    """
    config = config or BackboneTrainConfig()
    threads = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, progress, data)
    finally:
        torch.set_num_threads(threads)


def _train(config: BackboneTrainConfig, progress: bool, data: BackboneData | None) -> tuple[SmallVGG, dict]:
    t0 = time.perf_counter()
    if data is None:
        data = build_backbone_data(config.input_size, config.n_train, config.n_test, config.n_clutter_scenes,
                                   config.n_scenes, config.data_seed, progress=progress)
    data_seconds = time.perf_counter() - t0
    S = config.input_size
    if tuple(data.train_images.shape[1:]) != (3, S, S):
        raise ValueError(f"data.train_images: expected shape (N, 3, {S}, {S}) for input_size={S}, "
                         f"got {tuple(data.train_images.shape)}")
    model = SmallVGG(config.model_config(data.n_classes)).to(memory_format=torch.channels_last)
    model.train()
    N = data.train_images.shape[0]
    steps_per_epoch = math.ceil(N / config.batch_size)
    total = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(config.seed)
    aug = config.augment_config()
    load_start = _load_average()
    t1 = time.perf_counter()  # training time includes preparing the pools and the background bank
    backgrounds = BackgroundBank(config.n_backgrounds, S, gen) if config.n_backgrounds else None
    pools = {S: (data.train_images, data.train_masks, data.train_categories, backgrounds)}
    if config.warmup_epochs:
        pools[config.warmup_size] = _downsized(pools[S], config.warmup_size)
    stats: dict = {}
    with tqdm(total=total, desc="training SmallVGG" + (" (compositional)" if config.compositional else ""),
              disable=not progress) as bar:
        batches = _prefetched(_batches(config, pools, N, gen, aug), config.prefetch, torch.get_num_threads())
        try:
            for step, (labels, comp) in enumerate(batches):
                # The compositional term ramps in linearly over the first compositional_warmup of the steps.
                ramp = min(1.0, step / (config.compositional_warmup * total)) if config.compositional_warmup else 1.0
                loss, stats = _train_step(model, comp, labels, config, config.compositional_weight * ramp)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
        finally:
            batches.close()  # an error in a step stops the producer now, not when the frame is freed
    seconds = time.perf_counter() - t1
    model.eval()
    t2 = time.perf_counter()
    metrics = evaluate_backbone(model, data)
    metrics.update(seconds=seconds, data_seconds=data_seconds, eval_seconds=time.perf_counter() - t2,
                   params=sum(p.numel() for p in model.parameters()), final_loss=stats,
                   compositional=config.compositional, machine=machine_description(),
                   load_average_1min={"start": load_start, "end": _load_average()})
    return model, metrics
