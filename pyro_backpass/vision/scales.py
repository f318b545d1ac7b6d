"""Real images: read, fit to the backbone's input at several scales, keep the best (Sec. 3.3).

The model has no hidden variable for scale (the paper's remark in Sec. 3.3), so an image of any size
is rescaled so that its longer side is ``scale · S`` and padded (or centre-cropped, for scales above
1) to the backbone's ``S × S`` input; the backward pass runs on every scale at once (one batch) and
the scale whose MAP has the highest evidence wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .explain import explain
from .trained import TrainedModel

__all__ = ["ScanConfig", "load_image", "fit_to_canvas", "scan_scales", "ScanResult"]


@dataclass(frozen=True)
class ScanConfig:
    """Defaults of the scale scan.

    :param tuple scales: longer side of the image on the canvas, as fractions of ``S``.
    :param float pad_value: grey level of the padding (the training objects sit on black).
    """

    scales: tuple[float, ...] = (0.5, 0.625, 0.75, 0.875, 1.0)
    pad_value: float = 0.0

    def __post_init__(self):
        if not self.scales or any((not isinstance(s, (int, float))) or not 0 < s <= 2 for s in self.scales):
            raise ValueError(f"scales: expected a non-empty tuple of values in (0, 2], got {self.scales!r}")
        if not 0.0 <= self.pad_value <= 1.0:
            raise ValueError(f"pad_value: expected a value in [0, 1], got {self.pad_value!r}")


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file (any format PIL reads) as (3, H, W) float in ``[0, 1]``.

    :raises FileNotFoundError: no such file.
    :raises ValueError: PIL cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: expected an image file, got {str(path)!r}, which does not exist")
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            return data.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image: expected a file PIL can read (PNG, JPEG, ...), got {str(path)!r}: {e}") from e


def fit_to_canvas(image: torch.Tensor, size: int, scale: float, pad_value: float = 0.0):
    """Resize ``image`` (3, H, W) so its longer side is ``round(scale · size)`` and centre it on a
    ``size × size`` canvas (cropping the centre if it is larger).

    :returns: ``(canvas (3, size, size), box)`` where ``box = (y0, x0, h, w)`` is where the resized
        image's top-left corner and extent lie on the canvas (``y0``/``x0`` negative when cropped).
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected shape (3, H, W), got {tuple(image.shape)}")
    H, W = image.shape[-2:]
    f = scale * size / max(H, W)
    h, w = max(1, round(H * f)), max(1, round(W * f))
    resized = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    canvas = image.new_full((3, size, size), pad_value)
    y0, x0 = (size - h) // 2, (size - w) // 2
    sy, sx = max(0, -y0), max(0, -x0)
    dy, dx = max(0, y0), max(0, x0)
    hh, ww = min(h - sy, size - dy), min(w - sx, size - dx)
    canvas[:, dy:dy + hh, dx:dx + ww] = resized[:, sy:sy + hh, sx:sx + ww]
    return canvas.clamp(0, 1), (y0, x0, h, w)


@dataclass
class ScanResult:
    """:ivar torch.Tensor canvases: (n_scales, 3, S, S). :ivar torch.Tensor evidence: (n_scales,)
    MAP evidence per scale. :ivar int best: index of the winning scale. :ivar list boxes: per scale."""

    canvases: torch.Tensor
    evidence: torch.Tensor
    best: int
    boxes: list
    scales: tuple


def scan_scales(model, trained: TrainedModel, image: torch.Tensor, config: ScanConfig | None = None,
                **kwargs) -> ScanResult:
    """Run the backward pass on ``image`` (3, H, W) at every scale of ``config`` and pick the best.

    :param kwargs: passed to :func:`~pyro_backpass.vision.explain` (``clamp=``, ...).
    """
    config = config or ScanConfig()
    fits = [fit_to_canvas(image, trained.size, s, config.pad_value) for s in config.scales]
    canvases = torch.stack([c for c, _ in fits])
    kwargs.setdefault("background", trained.background())
    res = explain(model, trained.hierarchy, trained.activations(canvases), **kwargs)
    evidence = res.evidence[0]
    return ScanResult(canvases, evidence, int(evidence.argmax()), [b for _, b in fits], tuple(config.scales))
