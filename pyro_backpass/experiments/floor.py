"""The compute floor of the backward pass: its top-down convolutions alone (benchmark, issue 6).

Every greedy pass must compute, per layer below the top, the top-down maps of all ``K`` components
from ``F^{l+1}_td`` (eq. 6): one convolution with ``K·C_l`` outputs (nearest ×2 upsampling first where
the hierarchy has it). :func:`floor_fn` times exactly that and nothing else (no ReLU, no scoring, no
maximiser; the top layer has templates, not a convolution), each layer in whichever of the contiguous
and channels-last layouts was faster for it in a short trial: the convolutions "done as well as torch
can". With ``polyphase=True`` the upsampling layers are instead timed the way
:meth:`~pyro_backpass.topdown.TopDownConv.components` computes them at inference, as one 2×2
convolution of the small map (4/9 of the multiply-adds), so that the pass is not credited with an
algorithmic saving its floor does not have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..hierarchy import Hierarchy
from ..topdown import TopDownConv
from .timing import time_ms

__all__ = ["floor_fn"]


def _step(module: TopDownConv, x: torch.Tensor, fmt, polyphase: bool):
    x = x.contiguous(memory_format=fmt)
    if polyphase and module._polyphase_applies(x):
        with torch.no_grad():
            w4, b4 = module._polyphase_weights()
        w4 = w4.contiguous(memory_format=fmt)
        return lambda: F.conv2d(F.pad(x, (1, 1, 1, 1)), w4, b4)
    w = module.weight.contiguous(memory_format=fmt)
    if module.upsample == "transposed":
        return lambda: F.conv_transpose2d(x, w, module.bias, stride=2, padding=1)
    if module.upsample == "nearest" and tuple(x.shape[-2:]) != module.out_size:
        return lambda: F.conv2d(F.interpolate(x, size=module.out_size, mode="nearest"), w, module.bias,
                                padding=module.kernel_size // 2)
    return lambda: F.conv2d(x, w, module.bias, padding=module.kernel_size // 2)


def floor_fn(hierarchy: Hierarchy, uppers: list[torch.Tensor], repeats: int = 3, polyphase: bool = False,
             kind: str = "wall"):
    """A callable running the top-down convolutions alone for all γ of every layer (module docstring).

    :param list uppers: per layer ``l``, the map ``F^{l+1}_td`` (N, C_{l+1}, H, W) its convolution reads
        (``None`` for the top layer).
    :param int repeats: timed runs per layout in the trial that picks each layer's layout.
    :param bool polyphase: time upsampling layers as the pass computes them (see the module docstring).
    """
    device = hierarchy.device
    steps = []
    with torch.no_grad():
        for l, module in enumerate(hierarchy.topdown):
            if not isinstance(module, TopDownConv):
                continue
            layouts = (torch.contiguous_format, torch.channels_last)
            trials = [_step(module, uppers[l], fmt, polyphase) for fmt in layouts]
            steps.append(min(trials, key=lambda s: time_ms(s, repeats, 1, device, kind)))

    def all_layers():
        with torch.no_grad():
            for step in steps:
                step()

    return all_layers
