"""helpers.metrics on hand-made maps where the answer is known."""

import math

import pytest
import torch

from helpers.metrics import PEAK_TOL, mask_mass, mask_share, mass_summary, pointing_game


def test_mask_mass_by_hand():
    attr = torch.zeros(2, 1, 4, 4)
    attr[0, 0, 0, 0] = 3.0
    attr[0, 0, 3, 3] = -1.0  # magnitude counts
    attr[1, 0] = 1.0
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0, 0] = True
    assert torch.allclose(mask_mass(attr, mask), torch.tensor([0.75, 1 / 16]))


def test_uniform_map_scores_the_mask_share():
    mask = torch.rand(3, 8, 8) > 0.7
    attr = torch.ones(3, 3, 8, 8)
    assert torch.allclose(mask_mass(attr, mask), mask_share(mask))


def test_channels_summed_in_magnitude():
    attr = torch.zeros(1, 3, 2, 2)
    attr[0, 0, 0, 0], attr[0, 1, 0, 0] = 1.0, -1.0  # cancel if summed with sign
    attr[0, 2, 1, 1] = 2.0
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    assert torch.allclose(mask_mass(attr, mask), torch.tensor([0.5]))


def test_zero_map_is_nan():
    assert math.isnan(mask_mass(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool)).item())


def test_pointing_game():
    attr = torch.zeros(2, 1, 3, 3)
    attr[0, 0, 1, 1] = 5
    attr[1, 0, 0, 2] = -5  # largest magnitude, outside
    attr[1, 0, 1, 1] = 1
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[:, 1, 1] = True
    assert pointing_game(attr, mask).tolist() == [1.0, 0.0]


def test_pointing_game_calls_round_off_ties_a_tie():
    # two pixels equal up to float32 round-off, one inside the mask and one outside: whichever
    # round-off makes larger, the image scores a tie
    attr = torch.zeros(3, 1, 2, 2)
    attr[:, 0, 0, 0] = 1.0
    attr[0, 0, 0, 1] = 1.0 + 1e-6
    attr[1, 0, 0, 1] = 1.0 - 1e-6
    attr[2, 0, 0, 1] = 0.5  # a clear win inside
    attr[2, 0, 1, 1] = 0.99
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True
    assert pointing_game(attr, mask).tolist() == [0.5, 0.5, 1.0]
    assert pointing_game(attr, mask, tol=0.0).tolist() == [0.0, 1.0, 1.0]
    assert pointing_game(attr[2:], mask[2:], tol=0.02).tolist() == [0.5]
    assert pointing_game(attr[:1], torch.zeros_like(mask[:1])).tolist() == [0.0]  # empty mask
    assert pointing_game(attr[:1], torch.ones_like(mask[:1])).tolist() == [1.0]  # all mask
    assert math.isnan(pointing_game(torch.zeros(1, 1, 2, 2), mask[:1]).item())
    with pytest.raises(ValueError, match="tol"):
        pointing_game(attr, mask, tol=1.5)


@pytest.mark.parametrize("attr, mask, word", [
    (torch.zeros(4, 4), torch.zeros(1, 4, 4, dtype=torch.bool), "attr"),
    (torch.zeros(1, 1, 4, 4), torch.zeros(4, 4, dtype=torch.bool), "mask"),
    (torch.zeros(1, 1, 8, 8), torch.zeros(1, 4, 4, dtype=torch.bool), "does not match"),
    ([1, 2], torch.zeros(1, 4, 4, dtype=torch.bool), "attr"),
])
def test_bad_inputs(attr, mask, word):
    with pytest.raises((ValueError, TypeError), match=word):
        mask_mass(attr, mask)


def test_mass_summary():
    from helpers.metrics import mass_summary
    attr = torch.zeros(2, 1, 4, 4)
    attr[:, 0, 0, 0] = 1.0
    masks = {"ruler": torch.zeros(2, 4, 4, dtype=torch.bool), "lesion": torch.ones(2, 4, 4, dtype=torch.bool)}
    masks["ruler"][0, 0, :] = True  # only image 0 has a ruler
    s = mass_summary(attr, masks)
    assert s == {"ruler mass": 1.0, "ruler share": 0.25, "ruler pointing": 1.0,
                 "lesion mass": 1.0, "lesion share": 1.0, "lesion pointing": 1.0}
    with pytest.raises(ValueError, match="empty"):
        mass_summary(attr, {"ruler": torch.zeros(2, 4, 4, dtype=torch.bool)}, names=("ruler",))


def test_rank_correlation():
    from helpers.metrics import rank_correlation
    a = torch.rand(3, 1, 5, 5)
    assert torch.allclose(rank_correlation(a, a), torch.ones(3))
    assert torch.allclose(rank_correlation(a, -a), -torch.ones(3))
    assert torch.allclose(rank_correlation(a, a ** 3 + 2), torch.ones(3))  # monotone: ranks unchanged
    with pytest.raises(ValueError, match="one shape"):
        rank_correlation(a, a[:2])


def test_mass_summary_pointing_as_a_count(monkeypatch):
    attr = torch.zeros(4, 1, 2, 2)
    attr[:, 0, 0, 0] = 1.0
    attr[3, 0, 0, 1] = 1.0  # a tie
    masks = {"ruler": torch.zeros(4, 2, 2, dtype=torch.bool)}
    masks["ruler"][:3, 0, 0] = True
    masks["ruler"][3, 0, 0] = True
    s = mass_summary(attr, masks, names=("ruler",), pointing="count")
    assert s["ruler pointing (of 4)"] == 3.5
    with pytest.raises(ValueError, match="pointing"):
        mass_summary(attr, masks, names=("ruler",), pointing="rate")


def test_pointing_game_refuses_a_near_threshold_image_when_strict(monkeypatch):
    attr = torch.zeros(1, 1, 2, 2)
    attr[0, 0, 0, 0] = 1.0
    attr[0, 0, 0, 1] = 1.0 - PEAK_TOL  # exactly at the tie threshold
    mask = torch.zeros(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    pointing_game(attr, mask)
    monkeypatch.setenv("COURSE_STRICT", "1")
    with pytest.raises(ValueError, match="round-off of the tie threshold"):
        pointing_game(attr, mask)


def test_rank_correlation_gives_ties_their_average_rank_as_scipy_does():
    from scipy.stats import spearmanr

    from helpers.metrics import rank_correlation
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 300, generator=g).relu()  # half exact zeros, as after Grad-CAM's ReLU
    b = torch.randn(4, 300, generator=g).relu() + 0.3 * a
    b[:, 40:90] = 0.5  # a plateau, as after nearest upsampling
    ours = rank_correlation(a, b)
    theirs = torch.tensor([spearmanr(a[i], b[i]).statistic for i in range(4)], dtype=torch.float32)
    assert torch.allclose(ours, theirs, atol=1e-6)
    # ranking tied zeros by position would invent an order both maps share
    zeros = torch.zeros(1, 100)
    x, y = zeros.clone(), zeros.clone()
    x[0, :10], y[0, 90:] = torch.arange(1.0, 11.0), torch.arange(1.0, 11.0)
    assert rank_correlation(x, y)[0] < 0


def test_edge_strength_is_the_sobel_magnitude_and_rejects_bad_shapes():
    from helpers.metrics import edge_strength

    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0  # a vertical step: |Sobel| = 4 on the two columns beside it, 0 elsewhere
    e = edge_strength(x)
    assert e.shape == (1, 1, 8, 8) and torch.allclose(e[0, 0, :, 3:5], torch.full((8, 2), 4.0))
    assert e[0, 0, :, :3].abs().max() == 0 and e[0, 0, :, 5:].abs().max() == 0
    with pytest.raises(ValueError, match="images must be"):
        edge_strength(torch.zeros(3, 8, 8))
