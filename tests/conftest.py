"""Shared test setup: seeds, a clean Pyro param store and validation on every test; a tiny trained-model
stand-in (random SmallVGG + random hierarchy at 32×32) for the vision and script tests."""

import pyro
import pytest
import torch

from pyro_backpass.backbones import SmallVGG, SmallVGGConfig, save_small_vgg
from pyro_backpass.checkpoint import save_hierarchy
from pyro_backpass.hierarchy import random_hierarchy
from pyro_backpass.specs import with_mixture
from pyro_backpass.vision import TrainedModel


@pytest.fixture(autouse=True)
def _seed_and_validate():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()


LAYERS = ("image", "conv1_2", "pool1", "conv2_2", "pool2", "conv3_2", "pool3")


def make_tiny_trained(size: int = 32, seed: int = 0) -> TrainedModel:
    backbone = SmallVGG(SmallVGGConfig(input_size=size, widths=(4, 6, 8), seed=seed)).eval()
    specs = with_mixture([s for s in backbone.layer_specs() if s.name in LAYERS], K=2, K_top=3, top_pool_radius=1)
    h = random_hierarchy(specs, n_categories=1, seed=seed, sigma0=0.5, sigma1=0.3, sigma2=0.3, template_scale=0.5)
    h.categories = ["airplane"]
    return TrainedModel(h, backbone)


@pytest.fixture
def tiny_trained() -> TrainedModel:
    return make_tiny_trained()


@pytest.fixture
def tiny_model_dir(tmp_path):
    trained = make_tiny_trained()
    path = tmp_path / "model"
    save_hierarchy(trained.hierarchy, path, extra={"backbone": "small_vgg"})
    save_small_vgg(trained.backbone, path / "backbone.safetensors")
    return path


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 32, 32, generator=g)
