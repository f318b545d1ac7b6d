"""Mask measures of DESIGN §8 against hand-made masks."""

import math

import pytest
import torch

from pyro_backpass.metrics import (
    greedy_suppression,
    instance_ious,
    iou_matrix,
    mask_iou,
    match_parse,
    pairwise_iou,
    parse_precision,
    parse_recall_at_n,
    parse_summary,
)

S = 12


def box(y0, y1, x0, x1):
    m = torch.zeros(S, S, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


A = box(0, 4, 0, 4)  # 16 px
B = box(2, 6, 2, 6)  # 16 px, 4 shared with A
C = box(8, 12, 8, 12)
EMPTY = torch.zeros(S, S, dtype=torch.bool)


def test_iou_matrix_by_hand():
    iou = iou_matrix(torch.stack([A, B, EMPTY]), torch.stack([A, B, C, EMPTY]))
    assert iou.shape == (3, 4)
    assert iou[0, 0] == 1 and iou[0, 1] == pytest.approx(4 / 28) and iou[0, 2] == 0
    assert iou[1, 0] == pytest.approx(4 / 28)
    assert iou[2, 3] == 0  # two empty masks: 0 by convention, not NaN
    assert torch.isfinite(iou).all()


def test_pairwise_iou_is_iou_matrix_per_image():
    masks = torch.stack([torch.stack([A, B, EMPTY]), torch.stack([C, C, A])])      # (2, 3, S, S)
    got = pairwise_iou(masks)
    assert got.shape == (2, 3, 3)
    for n in range(2):
        assert torch.equal(got[n], iou_matrix(masks[n], masks[n]))
    with pytest.raises(ValueError, match="masks"):
        pairwise_iou(masks[0])


def test_greedy_suppression_keeps_the_earlier_of_overlapping_masks():
    # A, B overlap at 4/28; A and A itself at 1. In priority order A, A, B, C.
    iou = pairwise_iou(torch.stack([A, A, B, C])[None])
    allowed = torch.tensor([[True, True, True, True]])
    assert greedy_suppression(iou, allowed, 0.5).tolist() == [[True, False, True, True]]
    assert greedy_suppression(iou, allowed, 0.1).tolist() == [[True, False, False, True]]
    # An IoU equal to the threshold suppresses only when inclusive; a disallowed entry suppresses nothing.
    assert greedy_suppression(iou, allowed, 4 / 28).tolist() == [[True, False, True, True]]
    assert greedy_suppression(iou, allowed, 4 / 28, inclusive=True).tolist() == [[True, False, False, True]]
    assert greedy_suppression(iou, torch.tensor([[False, True, True, True]]), 0.5).tolist() == [[False, True, True,
                                                                                                 True]]


def test_mask_iou_takes_the_best_instance():
    pred = A | box(0, 4, 4, 6)  # A plus an 8 px strip: IoU 16/24 with A, 4/36 with B
    assert mask_iou(pred, torch.stack([C, B, A])) == pytest.approx(16 / 24)
    assert mask_iou(pred, torch.zeros(0, S, S, dtype=torch.bool)) == 0.0
    got = instance_ious(torch.stack([A, C]), [torch.stack([B, A]), torch.stack([A])])
    assert got.tolist() == pytest.approx([1.0, 0.0])


def test_bad_masks_are_named():
    with pytest.raises(ValueError, match="pred"):
        mask_iou(torch.stack([A]), torch.stack([A]))
    with pytest.raises(TypeError, match="gt"):
        mask_iou(A, torch.stack([A]).float())
    with pytest.raises(ValueError, match="gt"):
        iou_matrix(torch.stack([A]), torch.zeros(1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_parse(torch.stack([A]), torch.stack([A]), iou_threshold=0)
    with pytest.raises(ValueError, match="gts"):
        instance_ious(torch.stack([A, B]), [torch.stack([A])])


def test_parse_matching_duplicates_misses_and_recall_precision():
    gt = torch.stack([A, B, C])
    half_a = box(0, 2, 0, 4)  # IoU 0.5 with A exactly: counts
    weak = box(0, 4, 0, 3) | box(4, 8, 0, 3)  # IoU 12/28 < 0.5 with A
    steps = torch.stack([C, C, weak, half_a])
    assert match_parse(steps, gt).tolist() == [2, -1, -1, 0]
    assert parse_recall_at_n(steps, gt, 1) == pytest.approx(1 / 3)
    assert parse_recall_at_n(steps, gt, 3) == pytest.approx(1 / 3)
    assert parse_recall_at_n(steps, gt, 10) == pytest.approx(2 / 3)
    assert parse_recall_at_n(steps, gt, 0) == 0.0
    assert parse_precision(steps, gt) == pytest.approx(2 / 4)
    assert match_parse(steps, gt, iou_threshold=0.6).tolist() == [2, -1, -1, -1]


def test_a_step_takes_the_best_free_instance():
    a, b = box(0, 8, 0, 8), box(2, 10, 0, 8)  # IoU(a, b) = 48/80 = 0.6
    steps = torch.stack([a, a])
    assert match_parse(steps, torch.stack([a, b])).tolist() == [0, 1]


def test_empty_cases():
    none = torch.zeros(0, S, S, dtype=torch.bool)
    assert match_parse(none, torch.stack([A])).tolist() == []
    assert math.isnan(parse_precision(none, torch.stack([A])))
    assert math.isnan(parse_recall_at_n(torch.stack([A]), none, 1))
    assert parse_recall_at_n(none, torch.stack([A]), 2) == 0.0


def test_parse_summary_pools_counts_over_scenes():
    steps = [torch.stack([A, C]), torch.stack([B])]
    gts = [torch.stack([A, B, C]), torch.stack([C])]
    s = parse_summary(steps, gts, ns=(1, 2))
    assert s["recall@1"] == pytest.approx(1 / 4)  # A in scene 0; scene 1's step misses
    assert s["recall@2"] == pytest.approx(2 / 4)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["n_instances"] == 4 and s["n_steps"] == 3
    with pytest.raises(ValueError, match="gts"):
        parse_summary(steps, gts[:1])
    with pytest.raises(ValueError, match="n:"):
        parse_summary(steps, gts, ns=(-1,))
