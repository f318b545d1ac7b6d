"""What decides a trained SmallVGG: :class:`BackboneTrainConfig` (architecture, data, optimisation, augmentation).

Its fields are the flags of ``python -m scripts.train_backbone`` and the cache key of a trained
backbone (:mod:`~pyro_backpass.backbones.checkpoint`); ``python -m scripts.train`` uses the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyro_backpass.backbones.augment import AugmentConfig
from pyro_backpass.backbones.small_vgg import SmallVGGConfig

__all__ = ["BackboneTrainConfig"]


@dataclass(frozen=True)
class BackboneTrainConfig:
    """Everything that decides a trained SmallVGG (its cache key is a hash of this).

    Architecture: ``input_size``, ``widths``, ``convs_per_block``. Data: ``n_train``/``n_test``
    objects per category, ``n_clutter_scenes`` per category, ``n_scenes`` held-out scenes,
    ``data_seed``. Optimisation: AdamW with a one-cycle schedule; the first ``warmup_fraction`` of
    the epochs train on images downsized to ``warmup_size`` (progressive resizing: at 64 px a step
    handles (96/64)² = 2.25 times fewer pixels than at 96 px). Augmentation: see
    :class:`~pyro_backpass.backbones.augment.AugmentConfig`. ``seed`` drives the initialisation,
    shuffling and augmentation. ``threads``: torch CPU threads while training (0 keeps the current
    setting); on a shared machine 1 thread can be faster than 2 (measured 75 vs 138 ms/image at
    load ~7 on 2 cores), and the thread count can change float summation order, hence the weights.
    ``prefetch``: batches composed ahead in a background thread (0: composed in the training loop);
    the random stream and hence the weights are the same either way, the producer only uses the core
    the training step leaves idle.
    **Status (2-core CPU, 1 thread, no GPU):** these defaults (two-conv head, 1,000 objects per
    category, 20 epochs of which the first 15 at 64x64) reach test/clutter accuracy 0.998/0.880 in
    579 s of training, beside another training job (``python -m scripts.train_backbone --out
    runs/bb_n1000 --n-train 1000``, before it became the default). With 500 objects per category:
    0.995/0.823 in 270 s alone; widths (32, 64, 128) 0.995/0.833 in 384 s beside another job.
    Earlier recipes, one change at a time (load ~4): 8 epochs of the old average-pool head 0.83/0.60;
    + warm-up (14 epochs, 10 warm) 0.96/0.59; conv head 0.975/0.69; antialiased crop-to-box
    placement 0.977/0.74; harder clutter 0.982/0.73; two head convs 0.985/0.79; three 0.992/0.79.
    ``compositional_fraction``: the share of each batch whose object-alone copy also goes through
    the network for the compositional loss (the copies cost a forward and backward pass each).
    """

    input_size: int = 96
    widths: tuple[int, ...] = (24, 48, 96)
    convs_per_block: int = 2
    batch_norm: bool = True
    head: str = "conv"
    head_convs: int = 2
    n_train: int = 1000
    n_test: int = 100
    n_clutter_scenes: int = 50
    n_scenes: int = 100
    data_seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    p_background: float = 0.7
    p_clutter: float = 0.7
    max_clutter: int = 3
    p_occlude: float = 0.5
    p_flip: float = 0.5
    gain: float = 0.25
    target_extent_min: float = 0.45
    min_clutter: int = 1
    clutter_max_ratio: float = 0.9
    n_backgrounds: int = 1024
    label_smoothing: float = 0.1
    bf16: bool = True
    warmup_size: int = 64
    warmup_fraction: float = 0.75
    compositional: bool = False
    compositional_weight: float = 2.0
    compositional_fraction: float = 0.5
    compositional_warmup: float = 0.0
    seed: int = 0
    threads: int = 1
    prefetch: int = 2

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError(f"BackboneTrainConfig.threads: expected >= 0, got {self.threads!r}")
        if self.prefetch < 0:
            raise ValueError(f"BackboneTrainConfig.prefetch: expected >= 0, got {self.prefetch!r}")
        for name in ("n_train", "n_test", "epochs", "batch_size", "n_clutter_scenes", "n_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"BackboneTrainConfig.{name}: expected >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"BackboneTrainConfig.lr: expected > 0, got {self.lr!r}")
        if not 0 < self.compositional_fraction <= 1:
            raise ValueError("BackboneTrainConfig.compositional_fraction: expected a value in (0, 1], "
                             f"got {self.compositional_fraction!r}")
        if not 0 <= self.compositional_warmup < 1:
            raise ValueError("BackboneTrainConfig.compositional_warmup: expected a fraction in [0, 1), "
                             f"got {self.compositional_warmup!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"BackboneTrainConfig.label_smoothing: expected a value in [0, 1), "
                             f"got {self.label_smoothing!r}")
        factor = 2 ** len(self.widths)
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError("BackboneTrainConfig.warmup_fraction: expected a fraction in [0, 1), "
                             f"got {self.warmup_fraction!r}")
        if self.warmup_fraction and not (self.warmup_size >= factor and self.warmup_size % factor == 0):
            raise ValueError(f"BackboneTrainConfig.warmup_size: expected a positive multiple of {factor} "
                             f"(2 ** number of blocks), got {self.warmup_size!r}")
        if self.n_backgrounds < 0:
            raise ValueError(f"BackboneTrainConfig.n_backgrounds: expected >= 0, got {self.n_backgrounds!r}")
        if self.compositional_weight < 0:
            raise ValueError("BackboneTrainConfig.compositional_weight: expected >= 0, "
                             f"got {self.compositional_weight!r}")

    @property
    def warmup_epochs(self) -> int:
        """Epochs trained at ``warmup_size`` before ``input_size``: ``warmup_fraction`` of them, none
        when ``warmup_size`` is not below ``input_size`` (small test configs)."""
        if self.warmup_size >= self.input_size:
            return 0
        return int(round(self.warmup_fraction * self.epochs))

    def model_config(self, n_classes: int) -> SmallVGGConfig:
        return SmallVGGConfig(self.input_size, tuple(self.widths), self.convs_per_block, n_classes, self.seed,
                              self.batch_norm, self.head, self.head_convs)

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(p_background=self.p_background, p_clutter=self.p_clutter, min_clutter=self.min_clutter,
                             max_clutter=self.max_clutter, p_occlude=self.p_occlude,
                             target_extent=(self.target_extent_min, 0.95), clutter_max_ratio=self.clutter_max_ratio,
                             p_flip=self.p_flip, gain=self.gain)
