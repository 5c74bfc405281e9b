"""Cross-check of our localisation and pixel-flipping metrics against Quantus (Hedström et al.
2023), the reference implementations, on small random inputs.

Where the two differ by definition, the inputs are chosen so that the definitions coincide, and
the difference is stated: our relevance mass uses the positive part of a map (Quantus: the raw
map), so the check uses non-negative maps; our pointing game takes the first maximum on a tie
(Quantus: any maximum), so the check uses maps without ties; our deletion curve replaces pixels
by the *original* image's mean, so Quantus gets that replacement as its perturbation function.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

quantus = pytest.importorskip("quantus", reason="quantus is installed by `make test` (Makefile: test extras)")

from medxgan.evaluate.mapstats import pointing_game, positive_mass_share  # noqa: E402
from medxgan.evaluate.perturbation import perturbation_curves  # noqa: E402
from toy_models import lesion_images, tiny_models  # noqa: E402


def _maps(n: int, size: int, seed: int, nonnegative: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 1, size, size, generator=gen, dtype=torch.float64)
    return maps.abs() if nonnegative else maps  # continuous values: no ties (almost surely)


def _masks(n: int, size: int, seed: int) -> torch.Tensor:
    """Random rectangles, one per image, a few with their corner on the map's maximum by chance."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        y, x = torch.randint(0, size - 4, (2,), generator=gen).tolist()
        h, w = torch.randint(2, 5, (2,), generator=gen).tolist()
        masks[i, 0, y:y + h, x:x + w] = True
    return masks


def test_pointing_game_matches_quantus():
    maps, masks = _maps(40, 8, seed=0, nonnegative=False), _masks(40, 8, seed=1)
    # Put the maximum inside the mask for half of the images, so both outcomes are exercised.
    for i in range(0, 40, 2):
        inside = masks[i, 0].nonzero()[0]
        maps[i, 0, inside[0], inside[1]] = maps[i].max() + 1
    ours = pointing_game(maps, masks).numpy()
    theirs = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)(
        model=None, x_batch=maps.float().numpy(), y_batch=np.ones(40, dtype=int),
        a_batch=maps.numpy(), s_batch=masks.numpy().astype(float))
    np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=float))
    assert 0 < ours.mean() < 1


def test_relevance_mass_matches_quantus_on_nonnegative_maps():
    maps, masks = _maps(30, 8, seed=2, nonnegative=True), _masks(30, 8, seed=3)
    ours = positive_mass_share(maps, masks).numpy()
    theirs = quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True)(
        model=None, x_batch=maps.float().numpy(), y_batch=np.ones(30, dtype=int),
        a_batch=maps.numpy(), s_batch=masks.numpy().astype(float))
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-10)


class _TwoLogits(nn.Module):
    """Our one-logit classifier as the two-class model Quantus expects: softmax([0, logit]) gives
    P(positive) = sigmoid(logit) for class 1."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        logit = self.classifier.positive_logit(x)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def test_deletion_curve_matches_quantus_pixel_flipping():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    _, C = tiny_models(size=16)
    C = C.frozen()
    images, _ = lesion_images(n=4, size=16, seed=5)
    maps = _maps(4, 16, seed=6, nonnegative=False).float()
    step = 16  # pixels per curve point: 256 pixels in 16 steps of 1/16
    fractions = [k / 16 for k in range(17)]
    ours = perturbation_curves(C, images, maps, fractions=fractions)["deletion"]  # [N, 17], column 0 = unperturbed
    means = images.flatten(1).mean(1).numpy()

    def replace_by_original_mean(arr, indices, **kwargs):
        out = arr.copy()
        for i in range(len(out)):
            out[i, indices[i]] = means[i]
        return out

    theirs = quantus.PixelFlipping(features_in_step=step, normalise=False, abs=False, perturb_func=replace_by_original_mean,
                                   disable_warnings=True)(
        model=_TwoLogits(C).eval(), x_batch=images.numpy(), y_batch=np.ones(4, dtype=int), a_batch=maps.numpy(),
        softmax=True, device="cpu", channel_first=True)
    np.testing.assert_allclose(ours[:, 1:], np.asarray(theirs), atol=1e-5)
    assert np.ptp(ours) > 1e-3  # the curve moves: the comparison is not between constants
