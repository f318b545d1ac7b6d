"""The training compositor: clutter of other categories, the background bank, config checks."""

import pytest
import torch

from pyro_backpass.backbones.augment import AugmentConfig, compose, other_category_indices
from pyro_backpass.backbones.backgrounds import BackgroundBank


def test_other_category_indices_never_pick_the_targets_category():
    pool_cats = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2])
    targets = torch.tensor([0, 1, 2] * 200)
    idx = other_category_indices(pool_cats, targets, torch.Generator().manual_seed(0))
    assert idx.shape == targets.shape
    picked = pool_cats[idx]
    assert bool((picked != targets).all())
    # Uniform over the other categories, not over pool items (category 2 has half the items).
    for t in range(3):
        counts = torch.bincount(picked[targets == t], minlength=3).float()
        others = [c for c in range(3) if c != t]
        assert abs(float(counts[others[0]] - counts[others[1]])) < 0.25 * 200
    # Every item of a category is reachable.
    assert set(idx[targets == 0].tolist()) == {1, 2, 4, 5, 6, 7}


def test_other_category_indices_fall_back_to_any_item_for_a_single_category():
    idx = other_category_indices(torch.zeros(5, dtype=torch.long), torch.zeros(50, dtype=torch.long),
                                 torch.Generator().manual_seed(1))
    assert bool(((idx >= 0) & (idx < 5)).all()) and len(set(idx.tolist())) > 1
    # A target category absent from the pool may get anything.
    idx = other_category_indices(torch.tensor([1, 2]), torch.tensor([0] * 40), torch.Generator().manual_seed(1))
    assert set(idx.tolist()) == {0, 1}


def _two_colour_pool(S=32):
    """Category 0 objects are red squares, category 1 green squares (on black)."""
    masks = torch.zeros(6, S, S, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    colour = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[torch.tensor([0, 1, 0, 1, 0, 1])]
    return colour.view(6, 3, 1, 1) * masks.unsqueeze(1), masks, torch.tensor([0, 1, 0, 1, 0, 1])


def test_compose_draws_clutter_from_other_categories_when_given_them():
    images, masks, cats = _two_colour_pool()
    cfg = AugmentConfig(p_background=0.0, p_clutter=1.0, min_clutter=3, max_clutter=3, gain=0.0, p_occlude=0.0)
    targets = images[cats == 0]  # red targets: any red outside a target would be red clutter
    c = compose(targets, masks[cats == 0], images, masks, cfg, torch.Generator().manual_seed(0),
                target_categories=cats[cats == 0], pool_categories=cats)
    outside = c.mask < 0.01
    assert float(c.scene[:, 1][outside].max()) > 0.5  # green clutter is there ...
    assert float(c.scene[:, 0][outside].max()) < 0.05  # ... and no red clutter
    # Without categories, clutter may be of the target's own category.
    c = compose(targets, masks[cats == 0], images, masks, cfg, torch.Generator().manual_seed(0))
    assert float(c.scene[:, 0][c.mask < 0.01].max()) > 0.5


def test_compose_with_a_bank_is_deterministic_and_in_range():
    images, masks, cats = _two_colour_pool()
    bank = BackgroundBank(4, 32, torch.Generator().manual_seed(0))
    cfg = AugmentConfig(p_background=1.0, p_clutter=1.0, p_occlude=0.5)
    a, b = (compose(images, masks, images, masks, cfg, torch.Generator().manual_seed(3), target_categories=cats,
                    pool_categories=cats, backgrounds=bank) for _ in range(2))
    assert torch.equal(a.scene, b.scene) and torch.equal(a.mask, b.mask)
    assert a.scene.shape == images.shape and 0 <= float(a.scene.min()) and float(a.scene.max()) <= 1
    assert float((a.scene.amax(1) == 0).float().mean()) < 0.01  # every scene has a background


def test_background_bank_serves_transforms_of_its_images():
    bank = BackgroundBank(1, 16, torch.Generator().manual_seed(0))
    assert bank.images.dtype == torch.uint8 and bank.images.shape == (1, 3, 16, 16) and len(bank) == 1
    x = bank.sample(40, torch.Generator().manual_seed(1))
    assert x.shape == (40, 3, 16, 16) and x.dtype == torch.float32
    ref = (bank.images[0].float() / 255).flatten(1).sort(dim=1).values  # per channel, order-free
    for s in x:
        vals = s.flatten(1).sort(dim=1).values
        # Each channel of a sample is some channel of the image, moved around.
        assert all(any(torch.allclose(v, r) for r in ref) for v in vals)
    assert len({tuple(s.flatten()[:8].tolist()) for s in x}) > 1  # not always the same variant
    again = BackgroundBank(1, 16, torch.Generator().manual_seed(0))
    assert torch.equal(bank.images, again.images)
    assert bank.resized(8).images.shape == (1, 3, 8, 8)


def test_bad_augment_and_bank_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="min_clutter"):
        AugmentConfig(min_clutter=3, max_clutter=2)
    with pytest.raises(ValueError, match="p_occlude"):
        AugmentConfig(p_occlude=1.5)
    with pytest.raises(ValueError, match="target_extent"):
        AugmentConfig(target_extent=(0.5, 0.2))
    with pytest.raises(ValueError, match="n: expected"):
        BackgroundBank(0, 16, torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        BackgroundBank.from_images(torch.rand(2, 3, 8, 8))


def test_place_resizes_like_the_test_scene_generator_and_stays_in_the_frame():
    from pyro_backpass.backbones.augment import place
    from pyro_backpass.data.scenes import place_object

    S = 32
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, S, S, dtype=torch.bool)
    masks[0, 4:20, 6:30] = True
    masks[1, 10:14, 2:9] = True
    masks[2, 0:S, 15:17] = True  # thin and tall
    images = torch.rand(3, 3, S, S, generator=g) * masks.unsqueeze(1)
    side = torch.tensor([12, 20, 32])
    colour, alpha = place(images, masks, side, torch.tensor([[0.0, 0.0], [0.999, 0.999], [0.5, 0.5]]))
    for b in range(3):
        want_c, want_a = place_object(images[b], masks[b], int(side[b]))
        h, w = want_a.shape
        ys, xs = torch.nonzero(alpha[b] > 0, as_tuple=True)
        y0, x0 = int(ys.min()), int(xs.min())
        torch.testing.assert_close(alpha[b, y0:y0 + h, x0:x0 + w], want_a)
        torch.testing.assert_close(colour[b, :, y0:y0 + h, x0:x0 + w], want_c)
        assert max(h, w) == int(side[b])
    assert alpha[0, 0].any() and alpha[0, :, 0].any()  # position 0: top-left corner
    assert alpha[1, -1].any() and alpha[1, :, -1].any()  # position ~1: bottom-right corner
    flipped, _ = place(images, masks, side, torch.zeros(3, 2), torch.tensor([True, False, False]))
    unflipped, _ = place(images, masks, side, torch.zeros(3, 2))
    h, w = place_object(images[0], masks[0], 12)[1].shape
    torch.testing.assert_close(flipped[0, :, :h, :w], unflipped[0, :, :h, :w].flip(-1))
    # uint8 objects give the same result as their float values.
    c8, a8 = place((images * 255).round().to(torch.uint8), masks, side, torch.zeros(3, 2))
    c32, a32 = place((images * 255).round() / 255, masks, side, torch.zeros(3, 2))
    torch.testing.assert_close(c8, c32) and torch.testing.assert_close(a8, a32)
