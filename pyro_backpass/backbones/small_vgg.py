"""SmallVGG: a small VGG-style classifier of the rendered categories (DESIGN §6).

Blocks of ``convs_per_block`` 3×3 convs (each followed by batch norm and ReLU) and a 2×2 max pool. Layer names
follow VGG: ``conv1_1, conv1_2, pool1, conv2_1, ..., pool3``. A small head (global average pool +
linear) sits on top of the last pool; it is used only for training and is not a layer of the
hierarchy.

**Input size.** 96×96 by default. At 64×64 airplane wings were 1–3 px wide and a pool3 cell 8 px
(DESIGN §9). Measured on this 2-core CPU (unloaded, channels_last, batch 32, widths 32/64/128), a
training step cost 25 ms/image at 96×96 and 60 ms/image at 128×128: 2.4× the cost for the same
number of steps, which does not fit the 15-minute training budget on a shared machine (at load
~6 a 96×96 step already took ~95 ms/image). So 96 it is; 128 stays a config option.

**Widths.** 24/48/96 by default: 17 ms/image per training step against 25 ms for 32/64/128
(unloaded), with 16/32/64 no faster (16.4 ms, memory-bound), so 24/48/96 is the cheapest width
that still has room; the backward pass's cost also grows with the channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pyro_backpass.backbones.base import Backbone

__all__ = ["SmallVGGConfig", "SmallVGG", "N_CATEGORIES", "HEADS"]

#: classifier heads of :class:`SmallVGG` (see :class:`SmallVGGConfig`).
HEADS = ("avg", "avgmax", "conv")

#: number of rendered categories (``pyro_backpass.data.objects.CATEGORIES``).
N_CATEGORIES = 6

# Per-channel normalisation of [0, 1] pixels: objects on black dominate, so centre near the
# typical mean of rendered scenes rather than ImageNet's statistics.
_MEAN = (0.3, 0.3, 0.3)
_STD = (0.3, 0.3, 0.3)


@dataclass(frozen=True)
class SmallVGGConfig:
    """Architecture of :class:`SmallVGG`.

    :param int input_size: side ``S`` of the square input (a multiple of ``2 ** len(widths)``).
    :param tuple widths: channels of each block.
    :param int convs_per_block: 3×3 convs per block.
    :param int n_classes: classes of the training head.
    :param int seed: seed of the weight initialisation.
    :param bool batch_norm: conv-BN-ReLU blocks. Without BN this plain VGG sat at chance level for
        the first ~50 Adam steps (lr 1e-3 and 3e-3), which the 15-minute budget cannot afford. In
        eval mode BN is a fixed per-channel affine map, so activations are still post-ReLU.
    :param str head: the training-only classifier on the top pool layer (never a layer of the
        hierarchy): ``"avg"`` global average pool + linear; ``"avgmax"`` the average and the max
        pool side by side + linear; ``"conv"`` ``head_convs`` more 3×3 convs (BN, ReLU; the first
        with stride 2) before ``"avgmax"``: a pool3 cell sees 36 px, the test objects are 50-80 px,
        and one conv more sees 52 px, two 84 px.
    :param int head_convs: convs of the ``"conv"`` head.
    """

    input_size: int = 96
    widths: tuple[int, ...] = (24, 48, 96)
    convs_per_block: int = 2
    n_classes: int = N_CATEGORIES
    seed: int = 0
    batch_norm: bool = True
    head: str = "avg"
    head_convs: int = 1

    def __post_init__(self):
        if self.head_convs < 1:
            raise ValueError(f"SmallVGGConfig.head_convs: expected >= 1, got {self.head_convs!r}")
        if self.head not in HEADS:
            raise ValueError(f"SmallVGGConfig.head: expected one of {HEADS}, got {self.head!r}")
        if not self.widths or any((not isinstance(w, int)) or w < 1 for w in self.widths):
            raise ValueError(f"SmallVGGConfig.widths: expected a non-empty tuple of positive ints, got {self.widths!r}")
        factor = 2 ** len(self.widths)
        if not isinstance(self.input_size, int) or self.input_size < factor or self.input_size % factor:
            raise ValueError(f"SmallVGGConfig.input_size: expected a positive multiple of {factor} "
                             f"(2 ** number of blocks), got {self.input_size!r}")
        if self.convs_per_block < 1:
            raise ValueError(f"SmallVGGConfig.convs_per_block: expected >= 1, got {self.convs_per_block!r}")
        if self.n_classes < 2:
            raise ValueError(f"SmallVGGConfig.n_classes: expected >= 2, got {self.n_classes!r}")


class SmallVGG(Backbone):
    """VGG blocks (conv-ReLU × ``convs_per_block``, max pool) plus a training-only classifier head.

    :param SmallVGGConfig config: the architecture; ``SmallVGGConfig()`` if ``None``.
    """

    def __init__(self, config: SmallVGGConfig | None = None):
        super().__init__()
        self.config = config = config or SmallVGGConfig()
        self.input_size = config.input_size
        # Initialise under a private generator so that building the net never disturbs, and never
        # depends on, the global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            stages: dict[str, nn.Module] = {}
            c_in = 3
            for b, width in enumerate(config.widths, start=1):
                for k in range(1, config.convs_per_block + 1):
                    conv = nn.Conv2d(c_in, width, kernel_size=3, padding=1, bias=not config.batch_norm)
                    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)
                    norm = [nn.BatchNorm2d(width)] if config.batch_norm else []
                    stages[f"conv{b}_{k}"] = nn.Sequential(conv, *norm, nn.ReLU())
                    c_in = width
                stages[f"pool{b}"] = nn.MaxPool2d(2)
            self.stages = nn.ModuleDict(stages)
            if config.head == "conv":
                layers: list[nn.Module] = []
                for i in range(config.head_convs):
                    conv = nn.Conv2d(c_in, c_in, kernel_size=3, stride=2 if i == 0 else 1, padding=1,
                                     bias=not config.batch_norm)
                    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)
                    layers += [conv, *([nn.BatchNorm2d(c_in)] if config.batch_norm else []), nn.ReLU()]
                self.head_conv = nn.Sequential(*layers)
            self.head = nn.Linear(c_in * (1 if config.head == "avg" else 2), config.n_classes)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def features_input(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def logits_from_top(self, top: torch.Tensor) -> torch.Tensor:
        """Head on top-layer activations ``(N, C, H, W)`` -> logits ``(N, n_classes)``."""
        if self.config.head == "avg":
            return self.head(top.mean(dim=(2, 3)))
        if self.config.head == "conv":
            top = self.head_conv(top)
        return self.head(torch.cat([top.mean(dim=(2, 3)), top.amax(dim=(2, 3))], dim=1))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)`` of ``images`` ``(N, 3, S, S)`` in ``[0, 1]``."""
        return self.logits_from_top(self.top_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(images)
