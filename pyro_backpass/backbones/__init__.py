"""Backbones: CNNs seen as ordered lists of conv and pool activation layers (DESIGN §3, §6).

:class:`SmallVGG` is the default, trained here on the rendered categories (optionally with the
compositional loss of Stone et al.); :class:`VGG16Backbone` wraps torchvision's VGG16 with weights
from a local file. The hierarchy's layer list comes from :meth:`Backbone.layer_specs`.
"""

from pyro_backpass.backbones.base import Backbone
from pyro_backpass.backbones.checkpoint import load_or_train_backbone, load_small_vgg, save_small_vgg
from pyro_backpass.backbones.compositional import compositional_loss, compositionality_error
from pyro_backpass.backbones.small_vgg import SmallVGG, SmallVGGConfig
from pyro_backpass.backbones.train import BackboneTrainConfig, evaluate_backbone, train_backbone
from pyro_backpass.backbones.vgg16 import VGG16Backbone

__all__ = [
    "Backbone",
    "SmallVGG",
    "SmallVGGConfig",
    "VGG16Backbone",
    "BackboneTrainConfig",
    "train_backbone",
    "evaluate_backbone",
    "load_or_train_backbone",
    "save_small_vgg",
    "load_small_vgg",
    "compositional_loss",
    "compositionality_error",
]
