"""The sliding-distractor sequence and its measures, on a tiny random-weights SmallVGG."""

import json

import pytest
import torch

from pyro_backpass.backbones import SmallVGG, SmallVGGConfig
from pyro_backpass.compositionality_study import (
    CompositionalityConfig,
    build_sequence,
    key_frames,
    measure_sequence,
    run_study,
)
from pyro_backpass.io import to_jsonable

S = 48
CFG = CompositionalityConfig(frames=8)


@pytest.fixture(scope="module")
def sequence():
    return build_sequence(CFG, S)


@pytest.fixture(scope="module")
def net():
    return SmallVGG(SmallVGGConfig(input_size=S, widths=(4, 6, 8), seed=2))


def test_sequence_slides_in_from_outside_until_it_covers_the_plane(sequence):
    frames, masks, x = sequence["frames"], sequence["distractor_masks"], sequence["x"]
    assert frames.shape == (8, 3, S, S) and masks.shape == (8, S, S) and sequence["plane_mask"].shape == (S, S)
    assert frames.min() >= 0 and frames.max() <= 1
    assert torch.equal(frames[0], sequence["clean"])  # the distractor starts just outside the frame
    assert not masks[0].any() and sequence["plane_mask"].any()
    assert (x[1:] > x[:-1]).all()  # left to right, a few pixels per frame
    gap = sequence["gap"]
    assert torch.equal(gap[:-1] - gap[1:], x[1:] - x[:-1]) and gap[0] > 0
    first_touch = int(torch.nonzero(sequence["overlap_fraction"] > 0)[0])
    assert gap[first_touch] < 0  # pixels can only meet once the columns overlap
    cover = sequence["overlap_fraction"]
    assert cover[0] == 0 and cover[-1] == cover.max() and cover[-1] > 0.9
    # The plane does not move, and the background is black by default.
    assert (sequence["clean"][:, ~sequence["plane_mask"]] < 0.5).all()
    assert sequence["clean"].sum() > 0


def test_plain_background_and_determinism():
    cfg = CompositionalityConfig(frames=3, background="plain", seed=4)
    a, b = build_sequence(cfg, S), build_sequence(cfg, S)
    assert torch.equal(a["frames"], b["frames"])
    corner = a["clean"][:, 0, 0]
    assert corner.sum() > 0 and torch.allclose(a["clean"][:, -1, 0], corner)


def test_measures_shapes_reference_frame_and_summary(net, sequence):
    out = measure_sequence(net, sequence, CFG)
    m = out["metrics"]
    pf, summ = m["per_frame"], m["summary"]
    assert out["logits"].shape == (8, net.config.n_classes)
    assert out["change_rgb"].shape == (8, 3, S // 4, S // 4)  # conv3_2 grid
    assert out["change_rgb"].min() >= 0 and out["change_rgb"].max() <= 1
    assert out["change_rgb"][0].abs().max() == 0  # frame 0 is the clean plane
    assert pf["relative_change"][0] == pytest.approx(0, abs=1e-6)
    assert pf["relative_change"][-1] > 0
    assert set(pf["relative_change_by_layer"]) == set(net.layer_names()[1:])
    assert len(pf["airplane_logit"]) == len(pf["mug_logit"]) == 8
    # The summary follows from the per-frame numbers.
    s = pf["airplane_logit"]
    if s[-1] < s[0]:
        half = next(t for t, v in enumerate(s) if v <= s[0] - 0.5 * (s[0] - s[-1]))
        assert summ["half_drop_frame"] == half
    else:
        assert summ["half_drop_frame"] is None
    top1 = [p == "airplane" for p in pf["predicted"]]
    want_flip = next((t for t, v in enumerate(top1) if not v), None) if top1[0] else None
    assert summ["prediction_flip_frame"] == want_flip
    touch = next(t for t, v in enumerate(pf["overlap_fraction"]) if v > 0)
    assert summ["touch_frame"] == touch
    assert summ["touch_frame_layer"] <= touch  # a shared cell comes no later than a shared pixel
    assert summ["change_last_separate"] == pytest.approx(pf["relative_change"][touch - 1])
    json.dumps(to_jsonable(m))  # JSON-ready


def test_key_frames():
    assert key_frames({"half_drop_frame": 3, "touch_frame": 5}, 10) == [0, 3, 5, 9]
    assert key_frames({"half_drop_frame": None, "touch_frame": 9}, 10) == [0, 9]


def test_run_study_and_bad_arguments(net):
    r = run_study(net, CompositionalityConfig(frames=3))
    assert r["key_frames"] == r["metrics"]["summary"]["key_frames"] and r["frames"].shape[0] == 3
    with pytest.raises(ValueError, match="layer"):
        measure_sequence(net, build_sequence(CFG, S), CompositionalityConfig(layer="conv9_9"))
    with pytest.raises(TypeError, match="backbone"):
        measure_sequence(torch.nn.Identity(), build_sequence(CFG, S), CFG)
    for bad in ({"frames": 1}, {"distractor": "airplane"}, {"distractor": "cup"}, {"background": "textured"},
                {"plane_scale": 0}, {"plane_x": 1.5}, {"split": "dev"}, {"plane_index": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CompositionalityConfig(**bad)
