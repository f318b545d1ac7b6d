"""The backbone interface: a CNN seen as an ordered list of activation layers (DESIGN §3, §6).

A backbone turns a batch of images into the activations of its conv (post-ReLU) and pool layers,
bottom-up, up to its top pool layer; fully connected layers are not part of it. The hierarchy's
layer list is derived from :meth:`Backbone.layer_specs`, never written by hand.

Concrete backbones describe their feature stack as a list of ``(name, module)`` pairs, where each
named module ends at one recorded layer (a conv followed by its ReLU, or a pool). The image itself
is layer 0, as raw ``[0, 1]`` pixels: normalisation happens inside :meth:`Backbone.features_input`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_backpass.specs import LayerSpec
from pyro_backpass.validation import check_tensor

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base class of all backbones.

    Subclasses set :attr:`input_size` and :attr:`stages` (an ``nn.ModuleDict`` in bottom-up order,
    one entry per recorded layer, each mapping the previous layer's output to this layer's) and
    may override :meth:`features_input` to normalise the pixels.
    """

    #: side ``S`` of the square input images.
    input_size: int
    #: recorded layers in bottom-up order; ``stages[name]`` maps the layer below to ``name``.
    stages: nn.ModuleDict

    def features_input(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``[0, 1]`` pixels ``(N, 3, S, S)`` to what the first conv expects (identity here)."""
        return images

    def layer_names(self) -> list[str]:
        """Names of all layers, ``"image"`` first."""
        return ["image", *self.stages.keys()]

    def layer_specs(self) -> list[LayerSpec]:
        """One :class:`LayerSpec` per layer, bottom-up: the image, then every conv and pool output.

        Shapes are found by running one zero image through the stack (cheap, and always right).
        ``K`` and ``offset_radius`` are left at their defaults; see :func:`pyro_backpass.specs.with_mixture`.
        """
        S = self.input_size
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        with torch.no_grad():
            acts = self.activations(torch.zeros(1, 3, S, S, device=device, dtype=dtype))
        specs = [LayerSpec("image", "image", 3, S, S)]
        for name, a in zip(self.stages.keys(), acts[1:]):
            kind = "pool" if isinstance(self._last_module(self.stages[name]), (nn.MaxPool2d, nn.AvgPool2d)) else "conv"
            specs.append(LayerSpec(name, kind, int(a.shape[1]), int(a.shape[2]), int(a.shape[3])))
        return specs

    @staticmethod
    def _last_module(stage: nn.Module) -> nn.Module:
        if isinstance(stage, nn.Sequential):
            # A conv stage is (conv, [norm,] relu): the conv decides its kind, not what follows it.
            mods = [m for m in stage if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
            return mods[-1] if mods else stage
        return stage

    def check_images(self, images, any_size: bool = False) -> torch.Tensor:
        """Raise a clear error unless ``images`` has shape ``(N, 3, S, S)`` with ``S = input_size``
        (any ``(N, 3, H, W)`` with ``any_size``)."""
        check_tensor("images", images)
        S = self.input_size
        if any_size:
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
        elif images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"images: expected shape (N, 3, {S}, {S}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images: expected a floating-point tensor with values in [0, 1], got dtype {images.dtype}")
        return images

    def activations(self, images: torch.Tensor, layers: Sequence[str] | None = None,
                    any_size: bool = False) -> list[torch.Tensor]:
        """Activations of every layer (or of ``layers``), bottom-up.

        :param torch.Tensor images: ``(N, 3, S, S)`` pixels in ``[0, 1]``.
        :param layers: names to return (in the order given); ``None`` for all, ``"image"`` included.
        :param bool any_size: accept any ``(N, 3, H, W)`` (the stack is fully convolutional; used to
            train at a lower resolution first). The layer specs describe ``input_size`` only.
        :returns: list of ``(N, C_l, H_l, W_l)`` tensors aligned with :meth:`layer_specs` (or ``layers``);
            element 0 of the full list is ``images`` itself.
        """
        self.check_images(images, any_size)
        names = self.layer_names()
        if layers is not None:
            unknown = [n for n in layers if n not in names]
            if unknown:
                raise ValueError(f"layers: expected names from {names}, got unknown {unknown}")
            wanted = set(layers)
            last = max(names.index(n) for n in layers) if layers else 0
        else:
            wanted, last = set(names), len(names) - 1
        out = {"image": images} if "image" in wanted else {}
        x = self.features_input(images)
        for i, (name, stage) in enumerate(self.stages.items(), start=1):
            if i > last:  # nothing asked for above here: skip the remaining compute
                break
            x = stage(x)
            if name in wanted:
                out[name] = x
        return [out[n] for n in (layers if layers is not None else names)]

    def top_features(self, images: torch.Tensor) -> torch.Tensor:
        """Output of the top layer, ``(N, C, H, W)``."""
        return self.activations(images, layers=[self.layer_names()[-1]])[0]
