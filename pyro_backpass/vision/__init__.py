"""Using a trained model on images: MAP inference with masks, parsing, queries, completion, sampling.

Every function takes the model program as its first argument (as ``SVI(model, guide)`` does); the
library never imports a particular model.
"""

from .explain import InstanceResult, explain, map_image
from .masks import GATES, MaskConfig, agreement_map, instance_masks, top_down_prediction
from .trained import TrainedModel, load_trained

__all__ = ["InstanceResult", "explain", "map_image", "GATES", "MaskConfig", "agreement_map", "instance_masks",
           "top_down_prediction", "TrainedModel", "load_trained"]
