"""A trained model folder: the hierarchy plus the backbone that produced its activations.

``python -m scripts.train --out DIR`` writes ``DIR/model/`` with the hierarchy checkpoint
(:mod:`pyro_backpass.checkpoint`) and, for SmallVGG, ``backbone.safetensors``. :func:`load_trained`
reads both back and checks that the backbone's layers are the hierarchy's, so activations computed by
:meth:`TrainedModel.activations` always fit the hierarchy's specs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_hierarchy, read_meta
from ..hierarchy import Hierarchy

__all__ = ["TrainedModel", "load_trained", "BACKBONE_FILE"]

BACKBONE_FILE = "backbone.safetensors"


@dataclass
class TrainedModel:
    """A hierarchy and its backbone.

    :ivar Hierarchy hierarchy: the generative model of the activations.
    :ivar backbone: a :class:`~pyro_backpass.backbones.Backbone` in eval mode.
    :ivar Path path: the model folder it was read from (``None`` when built in memory).
    :ivar dict meta: the checkpoint's ``extra`` metadata (training config, backbone name).
    """

    hierarchy: Hierarchy
    backbone: torch.nn.Module
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        check_compatible(self.hierarchy, self.backbone)

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self.hierarchy.specs]

    @property
    def size(self) -> int:
        """Side ``S`` of the square images the backbone takes."""
        return int(self.backbone.input_size)

    def activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up activations ``F_bu`` of the hierarchy's layers.

        :param torch.Tensor images: (N, 3, S, S) pixels in ``[0, 1]``.
        :returns: ``L`` tensors (N, C_l, H_l, W_l) on the hierarchy's device and dtype, bottom-up.
        """
        param = next(self.backbone.parameters())
        with torch.no_grad():
            acts = self.backbone.activations(images.to(device=param.device, dtype=param.dtype),
                                             layers=self.layer_names)
        return [a.to(device=self.hierarchy.device, dtype=self.hierarchy.dtype) for a in acts]

    def background(self) -> list[torch.Tensor]:
        """The backbone's activations of an empty (black) image, the scene with nothing in it.

        Training objects sit on black, so outside an object ``F_td`` is this response, not 0 (batch
        norm and biases make it non-zero); mask rules can measure predictions against it.

        :returns: ``L`` tensors (C_l, H_l, W_l).
        """
        if getattr(self, "_background", None) is None:
            param = next(self.backbone.parameters())
            empty = torch.zeros(1, 3, self.size, self.size, device=param.device, dtype=param.dtype)
            self._background = [a[0] for a in self.activations(empty)]
        return self._background

    def to(self, device) -> TrainedModel:
        self._background = None
        self.hierarchy.to(device)
        self.backbone.to(device)
        return self


def check_compatible(hierarchy: Hierarchy, backbone) -> None:
    """Raise ``ValueError`` unless every layer of ``hierarchy`` is a layer of ``backbone`` with its shape."""
    specs = {s.name: s for s in backbone.layer_specs()}
    for s in hierarchy.specs:
        b = specs.get(s.name)
        if b is None:
            raise ValueError(f"backbone: expected a layer named {s.name!r} (a layer of the hierarchy), "
                             f"got layers {sorted(specs)}")
        if b.shape != s.shape:
            raise ValueError(f"backbone: expected layer {s.name!r} of shape {s.shape} like the hierarchy, "
                             f"got {b.shape}")


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Read a model folder written by ``scripts.train`` (``DIR/model``; ``DIR`` itself is accepted too).

    :raises CheckpointError: no checkpoint there, or it is corrupt or of another format version.
    :raises FileNotFoundError: the folder has no SmallVGG backbone file.
    """
    from ..backbones import load_small_vgg

    path = Path(path)
    if not (path / "hierarchy.json").is_file() and (path / "model" / "hierarchy.json").is_file():
        path = path / "model"
    if not path.is_dir():
        raise CheckpointError(f"model: expected a trained model folder (scripts.train's DIR/model), "
                              f"got {str(path)!r}, which does not exist")
    meta = read_meta(path)
    hierarchy = load_hierarchy(path, map_location=device)
    extra = meta.get("extra", {})
    if extra.get("backbone", "small_vgg") != "small_vgg":
        raise CheckpointError(f"model: {str(path)!r} was trained on the {extra.get('backbone')!r} backbone; "
                              "only SmallVGG folders carry their backbone weights")
    bb_path = path / BACKBONE_FILE
    if not bb_path.is_file():
        raise FileNotFoundError(f"model: expected the backbone weights {BACKBONE_FILE} in {str(path)!r}, "
                                "it is missing")
    backbone = load_small_vgg(bb_path).eval().to(device)
    return TrainedModel(hierarchy, backbone, path, extra)
