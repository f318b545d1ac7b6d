"""Category verification of found instances by the CNN's own classifier (a top-down category query).

The hierarchy stops at the CNN's top conv block (Sec. 3: the fully connected layers are dropped), and
a backward pass clamped to a category still explains *something* in every scene: where the wanted
object is weak, a clutter object that excites the top layer's templates can win. The CNN's classifier
head knows the categories apart, so an instance is *verified* when the classifier, shown the scene's
pixels inside the instance's mask on black (how the training objects look), gives the queried
category at least a threshold probability. Scene parsing uses this as an acceptance rule
(:class:`~pyro_backpass.vision.parsing.ParseConfig.verify_threshold`): a rejected step is explained
away like any other, so the parse moves past the clutter, but it is not reported as an instance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["Verifier", "category_verifier"]

#: ``verifier(images (N, 3, S, S), masks (N, S, S) bool) -> (N,)`` probability that each masked instance
#: is the queried category.
Verifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def category_verifier(backbone: torch.nn.Module, category: int) -> Verifier:
    """A :data:`Verifier` from a backbone with a ``classify(images) -> logits`` head.

    :param backbone: e.g. :class:`~pyro_backpass.backbones.SmallVGG`.
    :param int category: the class index to verify.
    :raises TypeError: a backbone without a ``classify`` head.
    :raises ValueError: a category index outside the head's classes (checked on first use).
    """
    if not callable(getattr(backbone, "classify", None)):
        raise TypeError(f"backbone: expected a backbone with a classify(images) head, got {type(backbone).__name__}")
    if not isinstance(category, int) or isinstance(category, bool) or category < 0:
        raise ValueError(f"category: expected a class index (int >= 0), got {category!r}")
    dtype = next(backbone.parameters()).dtype

    def verify(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = backbone.classify((images * masks.unsqueeze(-3)).to(dtype))
        if category >= logits.shape[-1]:
            raise ValueError(f"category: expected a class index below {logits.shape[-1]}, got {category}")
        return logits.softmax(-1)[..., category].to(images.dtype)

    return verify
