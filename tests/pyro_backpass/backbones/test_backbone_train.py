"""Training SmallVGG on toy shapes: it runs, it is deterministic, the compositional loss works, caching."""

import dataclasses
import importlib.util
import pathlib

import pytest
import torch

from pyro_backpass.backbones import (
    BackboneTrainConfig,
    SmallVGG,
    SmallVGGConfig,
    compositional_loss,
    compositionality_error,
    load_small_vgg,
    save_small_vgg,
    train_backbone,
)
from pyro_backpass.backbones.augment import AugmentConfig, compose

_spec = importlib.util.spec_from_file_location("toy_backbone_data",
                                               pathlib.Path(__file__).with_name("toy_backbone_data.py"))
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)

TINY = BackboneTrainConfig(input_size=32, widths=(4, 8), n_train=8, epochs=2, batch_size=8, lr=3e-3)


def test_compose_keeps_the_target_and_black_outside_on_the_object_image():
    imgs, masks, _ = toy.toy_objects(4, 32)
    g = torch.Generator().manual_seed(0)
    c = compose(imgs, masks, imgs, masks, AugmentConfig(p_clutter=1.0, p_occlude=0.5), g)
    assert c.scene.shape == imgs.shape and c.object.shape == imgs.shape and c.mask.shape == masks.shape
    assert float(c.scene.min()) >= 0 and float(c.scene.max()) <= 1
    outside = c.mask <= 0
    assert float(c.object.amax(1)[outside].max()) == 0.0  # object alone is on black
    assert float(c.mask.sum(dim=(1, 2)).min()) > 0
    g2 = torch.Generator().manual_seed(0)
    c2 = compose(imgs, masks, imgs, masks, AugmentConfig(p_clutter=1.0, p_occlude=0.5), g2)
    assert torch.equal(c.scene, c2.scene)


def test_compositional_loss_and_error_are_zero_for_identical_inputs_and_scale_free():
    m = SmallVGG(SmallVGGConfig(input_size=16, widths=(4,), n_classes=2))
    x = torch.rand(3, 3, 16, 16)
    mask = torch.zeros(3, 16, 16, dtype=torch.bool)
    mask[:, 4:12, 4:12] = True
    acts = m.activations(x)[1:]
    loss, per_layer = compositional_loss(acts, acts, mask)
    assert loss.item() == 0.0 and per_layer.shape == (3,)
    err = compositionality_error(m, x, mask, x)
    assert set(err) == {"conv1_1", "conv1_2", "pool1"} and all(v == 0.0 for v in err.values())
    scaled = [2 * a for a in acts]
    a1 = compositional_loss(acts, [a * 0.5 for a in acts], mask)[0]
    a2 = compositional_loss(scaled, [a * 0.5 for a in scaled], mask)[0]
    torch.testing.assert_close(a1, a2)
    with pytest.raises(ValueError, match="masks"):
        compositionality_error(m, x, mask[:2], x)


def test_train_runs_and_reports_metrics():
    data = toy.toy_backbone_data(32, 8)
    model, metrics = train_backbone(TINY, progress=False, data=data)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 0.0 <= metrics["clutter_accuracy"] <= 1.0
    names = [s.name for s in model.layer_specs()[1:]]
    assert list(metrics["compositionality_error"]) == names
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert metrics["seconds"] > 0 and "CPU" in metrics["machine"] or "CUDA" in metrics["machine"]


def test_training_is_deterministic_for_a_seed():
    data = toy.toy_backbone_data(32, 8)
    cfg = dataclasses.replace(TINY, epochs=1, compositional=True)
    a, ma = train_backbone(cfg, progress=False, data=data)
    b, mb = train_backbone(cfg, progress=False, data=data)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert ma["compositionality_error"] == mb["compositionality_error"]
    c, _ = train_backbone(dataclasses.replace(cfg, seed=1), progress=False, data=data)
    assert not torch.equal(a.stages["conv1_1"][0].weight, c.stages["conv1_1"][0].weight)


def test_prefetching_batches_in_a_thread_gives_the_same_weights_as_the_serial_loop():
    data = toy.toy_backbone_data(32, 8)
    cfg = dataclasses.replace(TINY, epochs=2, n_train=16, warmup_fraction=0.5, warmup_size=16, n_backgrounds=4,
                              p_clutter=1.0, compositional=True)
    serial, ms = train_backbone(dataclasses.replace(cfg, prefetch=0), progress=False, data=data)
    ahead, ma = train_backbone(dataclasses.replace(cfg, prefetch=3), progress=False, data=data)
    for (k, va), vb in zip(serial.state_dict().items(), ahead.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ms["final_loss"] == ma["final_loss"]


def test_prefetch_reraises_the_producer_error_and_stops_the_producer_early():
    from pyro_backpass.backbones.train import _prefetched

    def items():
        yield 1
        yield 2
        raise RuntimeError("compose failed")

    got = []
    with pytest.raises(RuntimeError, match="compose failed"):
        for x in _prefetched(items(), depth=1, threads=1):
            got.append(x)
    assert got == [1, 2]
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for x in _prefetched(endless(), depth=2, threads=1):
        if x == 3:
            break
    n = len(produced)
    assert n <= 3 + 2 + 2  # at most depth ahead, plus one blocked in put and one being made
    with pytest.raises(ValueError, match="prefetch"):
        dataclasses.replace(TINY, prefetch=-1)


def test_an_error_in_a_training_step_stops_the_producer(monkeypatch):
    import threading

    import pyro_backpass.backbones.train as train

    def failing_step(*args, **kwargs):
        raise RuntimeError("step failed")

    monkeypatch.setattr(train, "_train_step", failing_step)
    try:
        train_backbone(dataclasses.replace(TINY, n_train=16, batch_size=4, prefetch=2), progress=False,
                       data=toy.toy_backbone_data(32, 8))
    except RuntimeError as exc:
        # Checked while the traceback (and so the training frame) is still alive: the producer must
        # have been stopped by the loop itself, not by garbage collection.
        assert "step failed" in str(exc)
        assert not any(t.name == "compose-prefetch" and t.is_alive() for t in threading.enumerate())
    else:
        raise AssertionError("the failing step did not raise")


def test_compositional_training_lowers_the_compositionality_error():
    data = toy.toy_backbone_data(32, 12)
    cfg = dataclasses.replace(TINY, epochs=4, p_clutter=1.0, p_background=1.0, compositional_weight=3.0)
    _, plain = train_backbone(cfg, progress=False, data=data)
    _, comp = train_backbone(dataclasses.replace(cfg, compositional=True), progress=False, data=data)
    mean = {k: sum(m["compositionality_error"].values()) / len(m["compositionality_error"])
            for k, m in (("plain", plain), ("comp", comp))}
    assert mean["comp"] < mean["plain"], (plain["compositionality_error"], comp["compositionality_error"])


def test_low_resolution_warmup_trains_and_is_deterministic():
    data = toy.toy_backbone_data(32, 8)
    cfg = dataclasses.replace(TINY, epochs=2, warmup_fraction=0.5, warmup_size=16, n_backgrounds=4)
    assert cfg.warmup_epochs == 1
    a, ma = train_backbone(cfg, progress=False, data=data)
    b, mb = train_backbone(cfg, progress=False, data=data)
    assert ma["compositionality_error"] == mb["compositionality_error"]
    assert all(torch.equal(va, vb) for va, vb in zip(a.state_dict().values(), b.state_dict().values()))
    c, _ = train_backbone(dataclasses.replace(cfg, warmup_fraction=0.0), progress=False, data=data)
    assert not torch.equal(a.stages["conv1_1"][0].weight, c.stages["conv1_1"][0].weight)


def test_bad_training_config_is_a_clear_error():
    with pytest.raises(ValueError, match="warmup_size"):
        dataclasses.replace(TINY, warmup_fraction=0.5, warmup_size=18)  # not a multiple of 4
    with pytest.raises(ValueError, match="warmup_fraction"):
        dataclasses.replace(TINY, warmup_fraction=1.0)
    # a warm-up size that is not below the input size means no warm-up (small configs), not an error
    assert dataclasses.replace(TINY, warmup_fraction=0.5, warmup_size=32).warmup_epochs == 0
    with pytest.raises(ValueError, match="label_smoothing"):
        dataclasses.replace(TINY, label_smoothing=1.0)
    with pytest.raises(ValueError, match="compositional_warmup"):
        dataclasses.replace(TINY, compositional_warmup=-0.1)


def test_wrong_data_size_is_a_clear_error():
    data = toy.toy_backbone_data(32, 4)
    with pytest.raises(ValueError, match="input_size=64"):
        train_backbone(dataclasses.replace(TINY, input_size=64), progress=False, data=data)


def test_save_and_load_round_trip(tmp_path):
    m = SmallVGG(SmallVGGConfig(input_size=16, widths=(4, 6), n_classes=3, seed=2))
    path = save_small_vgg(m, tmp_path / "b.safetensors")
    back = load_small_vgg(path)
    assert back.config == m.config
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(back.classify(x), m.eval().classify(x))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_small_vgg(tmp_path / "missing.safetensors")
    # A file written before the head was configurable (no "head" in its config) loads as "avg".
    import json

    from safetensors.torch import save_file

    old_cfg = {k: v for k, v in dataclasses.asdict(m.config).items() if k != "head"}
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"format_version": "1", "config": json.dumps(old_cfg), "layer_specs": "[]"})
    assert load_small_vgg(tmp_path / "old.safetensors").config.head == "avg"
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_small_vgg(tmp_path / "junk.safetensors")


def test_load_or_train_backbone_caches(tmp_path, monkeypatch):
    from pyro_backpass.backbones import checkpoint

    data = toy.toy_backbone_data(32, 4)
    calls = []

    def fake_train(config, progress=True):
        calls.append(config)
        return train_backbone(config, progress=False, data=data)

    monkeypatch.setattr(checkpoint, "train_backbone", fake_train)
    cfg = dataclasses.replace(TINY, epochs=1)
    a, ma = checkpoint.load_or_train_backbone(cfg, cache_dir=tmp_path, progress=False)
    b, mb = checkpoint.load_or_train_backbone(cfg, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1
    assert ma["test_accuracy"] == mb["test_accuracy"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert list((tmp_path / "backbones").glob("*.safetensors"))
