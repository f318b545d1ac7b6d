"""Real images (reading, scale scan) and trained-model folders."""

import pytest
import torch

from models.activation import activation_model
from pyro_backpass.backbones import SmallVGG, SmallVGGConfig, save_small_vgg
from pyro_backpass.checkpoint import CheckpointError
from pyro_backpass.vision import TrainedModel, load_trained
from pyro_backpass.vision.scales import ScanConfig, fit_to_canvas, load_image, scan_scales


def test_fit_to_canvas_keeps_aspect_and_centres():
    img = torch.ones(3, 20, 40)
    canvas, (y0, x0, h, w) = fit_to_canvas(img, 32, 0.5)
    assert canvas.shape == (3, 32, 32) and (h, w) == (8, 16) and (y0, x0) == (12, 8)
    assert canvas[:, 12:20, 8:24].min() > 0.999 and float(canvas.sum()) == pytest.approx(3 * 8 * 16, rel=1e-4)
    big, (y0, x0, h, w) = fit_to_canvas(img, 32, 1.5)
    assert big.shape == (3, 32, 32) and (y0, x0, h, w) == (4, -8, 24, 48)  # cropped left-right, padded above/below
    assert big[:, 4:28].min() > 0.999 and big[:, :4].max() == 0


def test_load_image_reads_png_and_rejects_junk(tmp_path):
    from PIL import Image

    arr = (torch.rand(10, 14, 3) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (3, 10, 14) and img.max() <= 1
    torch.testing.assert_close(img, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="image"):
        load_image(tmp_path / "b.png")
    with pytest.raises(FileNotFoundError, match="image"):
        load_image(tmp_path / "c.png")


def test_scan_scales_picks_the_highest_evidence(tiny_trained):
    img = torch.rand(3, 40, 30)
    res = scan_scales(activation_model, tiny_trained, img, ScanConfig(scales=(0.5, 1.0)))
    assert res.canvases.shape == (2, 3, 32, 32) and res.evidence.shape == (2,)
    assert res.best == int(res.evidence.argmax())
    with pytest.raises(ValueError, match="scales"):
        ScanConfig(scales=())


def test_load_trained_round_trip_and_errors(tiny_model_dir, tiny_trained, tmp_path):
    trained = load_trained(tiny_model_dir)
    assert trained.layer_names == tiny_trained.layer_names and trained.size == 32
    assert load_trained(tiny_model_dir.parent).path == tiny_model_dir  # the run folder works too
    with pytest.raises(CheckpointError, match="model"):
        load_trained(tmp_path / "nowhere")
    (tiny_model_dir / "backbone.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="backbone"):
        load_trained(tiny_model_dir)
    other = SmallVGG(SmallVGGConfig(input_size=64, widths=(4, 6, 8)))
    save_small_vgg(other, tiny_model_dir / "backbone.safetensors")
    with pytest.raises(ValueError, match="backbone"):
        load_trained(tiny_model_dir)
    with pytest.raises(ValueError, match="backbone"):
        TrainedModel(tiny_trained.hierarchy, other)
