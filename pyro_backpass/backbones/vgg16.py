"""torchvision's VGG16 conv/pool stack up to pool5, with weights from a local file (DESIGN §6).

Nothing is ever downloaded: the user passes the path of a standard torchvision ``vgg16`` state
dict (``torch.save(model.state_dict())``, ``.pth``/``.pt``, or a ``.safetensors`` file with the
same keys). Only the ``features.*`` entries are used; ``classifier.*`` is ignored. Without a path
the weights stay at torchvision's random initialisation, which is what the tests use.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pyro_backpass.backbones.base import Backbone

__all__ = ["VGG16Backbone", "load_vgg16_features_state"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BLOCKS = (2, 2, 3, 3, 3)  # convs per block of VGG16


def _vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features``, built without its 120M-parameter classifier.

    Same layers (``make_layers(cfgs["D"])``, so the state-dict keys match) and the same random
    initialisation as ``torchvision.models.VGG`` (Kaiming normal, fan-out, zero bias).
    """
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=False)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def load_vgg16_features_state(path: str | os.PathLike, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read a torchvision VGG16 state dict and return its ``features.*`` entries, keys stripped.

    :param path: local file.
    :param expected: the model's own ``features`` state dict, for key and shape checks.
    :raises FileNotFoundError: the file does not exist.
    :raises ValueError: it cannot be read as a state dict, or its keys or shapes do not fit VGG16.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path: VGG16 weights file not found: {str(path)!r} "
                                "(give a local torchvision vgg16 state dict; nothing is downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure is the user's file, not our bug
        raise ValueError(f"weights_path: cannot read {str(path)!r} as a VGG16 state dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights_path: {str(path)!r} does not hold a state dict of tensors "
                         f"(got {type(state).__name__})")
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing = sorted(set(expected) - set(feats))
    unexpected = sorted(set(feats) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights_path: {str(path)!r} does not fit torchvision's vgg16: "
                         f"missing keys {['features.' + k for k in missing][:6]}, "
                         f"unexpected keys {['features.' + k for k in unexpected][:6]}")
    bad = [f"features.{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
           for k, v in feats.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"weights_path: {str(path)!r} does not fit torchvision's vgg16; wrong shapes: "
                         + "; ".join(bad[:4]))
    return feats


class VGG16Backbone(Backbone):
    """VGG16 ``features`` (13 convs, 5 pools), layers ``conv1_1 … conv5_3`` and ``pool1 … pool5``.

    ImageNet mean/std normalisation is applied inside, so images are ``[0, 1]`` pixels.

    :param weights_path: local torchvision vgg16 state dict; ``None`` keeps random weights.
    :param int input_size: side of the square inputs (a multiple of 32; the paper uses 224).
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, input_size: int = 224):
        super().__init__()
        if not isinstance(input_size, int) or input_size < 32 or input_size % 32:
            raise ValueError(f"input_size: expected a positive multiple of 32, got {input_size!r}")
        self.input_size = input_size
        features = _vgg16_features()
        if weights_path is not None:
            features.load_state_dict(load_vgg16_features_state(weights_path, features.state_dict()))
        self.weights_path = None if weights_path is None else str(weights_path)
        self.stages = nn.ModuleDict(self._name_stages(features))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _name_stages(features: nn.Sequential) -> dict[str, nn.Module]:
        """Group torchvision's flat ``features`` into named (conv, ReLU) and pool stages."""
        mods = list(features)
        stages: dict[str, nn.Module] = {}
        i = 0
        for b, n_conv in enumerate(_BLOCKS, start=1):
            for k in range(1, n_conv + 1):
                conv, relu = mods[i], mods[i + 1]
                assert isinstance(conv, nn.Conv2d) and isinstance(relu, nn.ReLU), "unexpected vgg16 layout"
                # torchvision's ReLUs are inplace; a recorded activation must not be overwritten.
                stages[f"conv{b}_{k}"] = nn.Sequential(conv, nn.ReLU())
                i += 2
            assert isinstance(mods[i], nn.MaxPool2d), "unexpected vgg16 layout"
            stages[f"pool{b}"] = mods[i]
            i += 1
        return stages

    def features_input(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std
