"""Per-image generator tuning (medxgan.tuning) and its use in explain."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from medxgan.errors import MedxganError
from medxgan.explain import explain_images
from medxgan.inversion import InversionConfig
from medxgan.augment import classifier_augment
from medxgan.tuning import TuningConfig, local_mean, negative_term, proximity, total_variation, tune_generator, tuning_loss, tuning_settings
from toy_models import tiny_models
from conftest import assert_one_line_error, run_cli  # noqa: F401  (demo_run is a conftest fixture)


def _latents(G, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return G.sample_z1(1, gen), torch.randn(1, G.code_dim, generator=gen)


def _params(G):
    return [p.detach().clone() for p in G.parameters()]


def test_loss_terms_match_their_formulas():
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    p = torch.tensor([0.8])
    cfg = TuningConfig(cls_weight=0.7, neg_weight=0.3, proximity_weight=0.4, smooth_weight=0.1, change_weight=0.2)
    with torch.no_grad():
        loss, recon, negative = tuning_loss(G, C, z1, z2, x, p, cfg)
        pos = G(z1, z2)
        neg = G(z1, torch.zeros_like(z2))
        q = torch.sigmoid(C.positive_logit(pos))
        kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
        d = (pos - neg)[0, 0]
        tv = sum(abs(float(d[i + 1, j] - d[i, j])) for i in range(15) for j in range(16)) / (15 * 16) \
            + sum(abs(float(d[i, j + 1] - d[i, j])) for i in range(16) for j in range(15)) / (16 * 15)
        expected = ((pos - x) ** 2).mean() + 0.7 * kl - 0.3 * torch.log(1 - torch.sigmoid(C.positive_logit(neg))) \
            + 0.4 * (x - neg).abs().mean() + 0.1 * tv + 0.2 * (pos - neg).abs().mean()
    assert torch.allclose(recon, pos) and torch.allclose(negative, neg)
    assert torch.allclose(loss, expected, atol=1e-5)
    # a classifier saturated in float32 (P(x) == 1.0): the floor H(1) is 0, the loss finite
    with torch.no_grad():
        loss1, _, _ = tuning_loss(G, C, z1, z2, x, torch.tensor([1.0]), cfg)
        q1 = torch.sigmoid(C.positive_logit(pos))
        expected1 = ((pos - x) ** 2).mean() - 0.7 * torch.log(q1) - 0.3 * torch.log(1 - torch.sigmoid(C.positive_logit(neg))) \
            + 0.4 * (x - neg).abs().mean() + 0.1 * tv + 0.2 * (pos - neg).abs().mean()
    assert torch.isfinite(loss1).all() and torch.allclose(loss1, expected1, atol=1e-5)


def test_the_negative_term_over_augmented_views_is_the_mean_over_the_image_and_its_views():
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    with torch.no_grad():
        neg = G(z1, torch.zeros_like(z2))
        plain = -torch.log(1 - torch.sigmoid(C.positive_logit(neg)))
        assert torch.allclose(negative_term(C, neg), plain, atol=1e-6)
        views = classifier_augment(neg.repeat(4, 1, 1, 1), torch.Generator().manual_seed(3))
        assert not torch.allclose(views, neg.expand_as(views))  # the draws do change the image
        each = -torch.log(1 - torch.sigmoid(C.positive_logit(torch.cat([neg, views]))))
        got = negative_term(C, neg, 4, torch.Generator().manual_seed(3))
        assert torch.allclose(got, each.mean()[None], atol=1e-6)
        # the same views enter tuning_loss's negative term, and nothing else changes
        x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
        p = torch.tensor([0.9])
        base, _, _ = tuning_loss(G, C, z1, z2, x, p, TuningConfig())
        aug, _, _ = tuning_loss(G, C, z1, z2, x, p, TuningConfig(neg_views=4), torch.Generator().manual_seed(3))
        assert torch.allclose(aug - base, got - plain, atol=1e-5)


def test_augmented_views_are_seeded_and_off_by_default():
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    run = lambda **kw: _params(tune_generator(G, C, x, z1, z2, TuningConfig(steps=15, lr=2e-3, **kw)))  # noqa: E731
    off, off_seeded = run(), run(seed=7)
    assert all(torch.equal(a, b) for a, b in zip(off, off_seeded))  # the seed draws nothing while the views are off
    a, b, c = run(neg_views=3), run(neg_views=3), run(neg_views=3, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # same seed, same weights
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert not all(torch.equal(u, v) for u, v in zip(a, off))
    # run fingerprints: without views, the config reads as it did before the views existed
    assert set(tuning_settings(TuningConfig())) == {"steps", "lr", "cls_weight", "neg_weight", "proximity_weight",
                                                      "smooth_weight", "change_weight"}
    assert tuning_settings(TuningConfig(neg_views=8, seed=2))["neg_views"] == 8


def test_total_variation_known_answers():
    block = torch.zeros(2, 1, 4, 4)
    block[0, 0, 1:3, 1:3] = 1.0  # 4 of the 12 vertical and 4 of the 12 horizontal neighbour pairs differ by 1
    block[1] = -3.0  # constant: no variation
    assert torch.allclose(total_variation(block), torch.tensor([2 / 3, 0.0]))
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # every horizontal pair differs by 1, no vertical pair does
    assert torch.allclose(total_variation(stripes), torch.tensor([1.0]))


def test_an_image_the_generator_already_draws_leaves_the_weights_alone():
    # pixels only, and x = G(z1, z2): the loss is 0 with a zero gradient, so Adam moves nothing
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    with torch.no_grad():
        x = G(z1, z2)
    tuned = tune_generator(G, C, x, z1, z2, TuningConfig(steps=20, cls_weight=0, neg_weight=0, proximity_weight=0,
                                                                           smooth_weight=0))
    assert all(torch.equal(a, b) for a, b in zip(_params(G), _params(tuned)))


def test_tuning_fits_an_image_out_of_reach_and_keeps_the_negative_negative():
    G, C = tiny_models()
    G.train()  # tuning must not depend on, or change, the caller's mode
    before = _params(G)
    z1, z2 = _latents(G)
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 1, 16, 16, generator=gen) * 2 - 1)  # noise: no latent of G draws it
    tuned = tune_generator(G, C, x, z1, z2, TuningConfig(steps=150, lr=2e-3))
    assert G.training and not tuned.training
    assert all(torch.equal(a, b) for a, b in zip(before, _params(G)))  # the trained G is untouched
    assert not any(p.requires_grad for p in tuned.parameters())
    G.eval()
    with torch.no_grad():
        mse_before = F.mse_loss(G(z1, z2), x)
        mse_after = F.mse_loss(tuned(z1, z2), x)
        p_neg = C.positive_prob(tuned(z1, torch.zeros_like(z2)))
    assert mse_after < 0.5 * mse_before
    assert p_neg < 0.1


def test_the_smoothness_term_makes_the_change_smoother():
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 1, 16, 16, generator=gen) * 2 - 1)
    tv = {}
    for w in (0.0, 1.0):
        tuned = tune_generator(G, C, x, z1, z2, TuningConfig(steps=150, lr=2e-3, smooth_weight=w))
        with torch.no_grad():
            tv[w] = float(total_variation(tuned(z1, z2) - tuned(z1, torch.zeros_like(z2))))
    assert tv[1.0] < 0.7 * tv[0.0]


def test_log_proximity_known_answers_and_it_prefers_one_deep_change_to_two_shallow_ones():
    change = torch.zeros(1, 1, 4, 4)
    change[0, 0, 0, :2] = torch.tensor([0.3, -0.1])
    # delta = 0 is the L1 term: (0.3 + 0.1) / 16
    assert torch.allclose(proximity(change), torch.tensor([0.4 / 16]))
    # delta > 0: delta * log(1 + |c| / delta), averaged; log(1 + 3) and log(1 + 1) at delta 0.1
    assert torch.allclose(proximity(change, 0.1), torch.tensor([0.1 * (math.log(4) + math.log(2)) / 16]))
    # it equals L1 to first order for changes far below delta
    tiny = change * 1e-4
    assert torch.allclose(proximity(tiny, 0.1), proximity(tiny), rtol=1e-3)
    # at equal L1 cost, a change of 0.4 at one pixel is cheaper than 0.2 at each of two; L1 cannot tell them apart
    deep, shallow = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    deep[0, 0, 1, 1] = 0.4
    shallow[0, 0, 1, 1] = shallow[0, 0, 3, 2] = 0.2
    assert torch.allclose(proximity(deep), proximity(shallow))
    assert float(proximity(deep, 0.05)) < float(proximity(shallow, 0.05))
    # the tuning loss uses it in place of L1, and a run without it keeps its fingerprint
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        l1, _, neg = tuning_loss(G, C, z1, z2, x, torch.tensor([0.8]), TuningConfig(proximity_weight=0.5))
        lg, _, _ = tuning_loss(G, C, z1, z2, x, torch.tensor([0.8]), TuningConfig(proximity_weight=0.5, proximity_delta=0.05))
    expected = 0.5 * ((0.05 * torch.log1p((x - neg).abs() / 0.05)).mean() - (x - neg).abs().mean())
    assert torch.allclose(lg - l1, expected, atol=1e-6)
    assert "proximity_delta" not in tuning_settings(TuningConfig())
    assert tuning_settings(TuningConfig(proximity_delta=0.05))["proximity_delta"] == 0.05


def test_regional_log_proximity_known_answers_and_it_charges_thin_changes_more_than_compact_ones():
    # local_mean is scipy's Gaussian filter with edges mirrored about the edge pixel ("mirror")
    from scipy.ndimage import gaussian_filter

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 12, 12, generator=gen, dtype=torch.float64)
    expected = gaussian_filter(x.numpy(), sigma=[0, 0, 1.5, 1.5], mode="mirror", truncate=4.0)
    assert torch.allclose(local_mean(x, 1.5), torch.from_numpy(expected), atol=1e-12)
    # a constant change is its own local mean: the regional penalty equals the per-pixel one
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(proximity(flat, 0.05, 2.0), proximity(flat, 0.05))
    # the same L1 mass as a compact 6x6 block or as a one-pixel-wide line: per pixel, the line (deeper) is
    # cheaper; per region, the block is, because the line's local mean is shallow
    block, line = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    block[..., 12:18, 12:18] = 0.4
    line[..., 20, :] = 0.45
    assert torch.allclose(proximity(block), proximity(line))
    assert float(proximity(line, 0.05)) < float(proximity(block, 0.05))
    assert float(proximity(block, 0.05, 2.0)) < float(proximity(line, 0.05, 2.0))
    # the tuning loss uses it; a run without it keeps its fingerprint; without the log penalty it is refused
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    xi = torch.rand(1, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        lg, _, neg = tuning_loss(G, C, z1, z2, xi, torch.tensor([0.8]), TuningConfig(proximity_delta=0.05))
        lr, _, _ = tuning_loss(G, C, z1, z2, xi, torch.tensor([0.8]), TuningConfig(proximity_delta=0.05, proximity_sigma=2.0))
    m = local_mean((xi - neg).abs(), 2.0)
    expected = 0.2 * ((0.05 * torch.log1p(m / 0.05)).mean() - (0.05 * torch.log1p((xi - neg).abs() / 0.05)).mean())
    assert torch.allclose(lr - lg, expected, atol=1e-6)
    assert "proximity_sigma" not in tuning_settings(TuningConfig(proximity_delta=0.05))
    assert tuning_settings(TuningConfig(proximity_delta=0.05, proximity_sigma=2.0))["proximity_sigma"] == 2.0
    with pytest.raises(MedxganError, match="proximity_delta"):
        TuningConfig(proximity_sigma=2.0)


def test_the_negative_target_stops_the_push_once_the_negative_is_negative_enough():
    G, C = tiny_models()
    G.eval()
    z1, z2 = _latents(G)
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    p = torch.tensor([0.8])
    with torch.no_grad():
        neg = G(z1, torch.zeros_like(z2))
        q = float(C.positive_prob(neg))
        base, _, _ = tuning_loss(G, C, z1, z2, x, p, TuningConfig(neg_weight=0.0))
        full, _, _ = tuning_loss(G, C, z1, z2, x, p, TuningConfig())
        # a target above P: the term is 0; below it: -log(1 - P) + log(1 - target)
        above, _, _ = tuning_loss(G, C, z1, z2, x, p, TuningConfig(neg_target=min(0.999, q + 0.05)))
        below, _, _ = tuning_loss(G, C, z1, z2, x, p, TuningConfig(neg_target=q / 2))
    assert torch.allclose(above, base, atol=1e-6)
    assert torch.allclose(below, full + math.log1p(-q / 2), atol=1e-5)
    assert "neg_target" not in tuning_settings(TuningConfig())
    assert tuning_settings(TuningConfig(neg_target=0.05))["neg_target"] == 0.05
    # tuned with a target, the negative realization ends near it, not pushed far below it
    gen = torch.Generator().manual_seed(5)
    xi = torch.rand(1, 1, 16, 16, generator=gen) * 2 - 1
    probs = {}
    for target in (0.0, 0.3):
        tuned = tune_generator(G, C, xi, z1, z2, TuningConfig(steps=150, lr=2e-3, neg_weight=3.0, neg_target=target))
        with torch.no_grad():
            probs[target] = float(C.positive_prob(tuned(z1, torch.zeros_like(z2))))
    assert probs[0.0] < 0.3 and probs[0.0] < probs[0.3] < 0.45


def test_tuning_refuses_batches_and_nan_and_bad_settings():
    G, C = tiny_models()
    z1, z2 = _latents(G)
    with pytest.raises(MedxganError, match="one image at a time"):
        tune_generator(G, C, torch.zeros(2, 1, 16, 16), z1.expand(2, -1), z2.expand(2, -1), TuningConfig(steps=1))
    with pytest.raises(MedxganError, match="NaN"):
        tune_generator(G, C, torch.full((1, 1, 16, 16), float("nan")), z1, z2, TuningConfig(steps=1))
    for bad in ({"steps": 0}, {"lr": 0.0}, {"lr": float("nan")}, {"change_weight": -1.0}, {"neg_weight": float("inf")},
                {"smooth_weight": -0.5}, {"proximity_weight": float("nan")}, {"neg_views": -1}, {"neg_views": 1.5},
                {"proximity_delta": -0.1}, {"proximity_delta": float("inf")}, {"proximity_sigma": float("nan")},
                {"proximity_delta": 0.05, "proximity_sigma": -1.0}, {"neg_target": 1.0}, {"neg_target": -0.1},
                {"neg_target": float("nan")}):
        with pytest.raises(MedxganError):
            TuningConfig(**bad)


@pytest.mark.parametrize("pathology", ["joint", "overlay"])
def test_explain_with_tuning_uses_each_images_own_generator(pathology):
    G, C = tiny_models(pathology=pathology)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 16, 16, generator=gen) * 2 - 1
    inversion = InversionConfig(steps=30, restarts=1)
    plain = explain_images(G, C, images, methods=("difference", "lig_path"), inversion=inversion, n_frames=5, path_steps=32)
    tuned = explain_images(G, C, images, methods=("difference", "lig_path"), inversion=inversion, n_frames=5, path_steps=32,
                           tuning=TuningConfig(steps=100, lr=2e-3))
    for a, b in zip(plain, tuned):
        assert torch.equal(a.z1, b.z1) and torch.equal(a.z2, b.z2)  # one inversion, then the tuning
        assert b.quality["ssim_latent"] == pytest.approx(a.quality["ssim"])
        assert b.quality["tune_steps"] == 100 and "tune_steps" not in a.quality
        assert b.quality["mse"] < a.quality["mse"]
        # the interpolation's ends are the tuned generator's reconstruction and negative realization
        assert torch.equal(b.frames[0], b.negative) and torch.allclose(b.frames[-1], b.reconstruction, atol=1e-6)
        assert torch.allclose(b.maps["difference"], (b.reconstruction - b.negative).abs(), atol=1e-5)  # separate forward passes: float rounding
        # the exact path integral stays complete along the tuned generator's path
        delta = abs(torch.logit(b.frame_probs[-1]) - torch.logit(b.frame_probs[0]))
        assert b.completeness["lig_path"] < 0.05 * float(delta) + 1e-3
        assert b.prob_reconstruction == pytest.approx(float(b.frame_probs[-1]), abs=1e-6)


def test_cli_explain_with_tuning(demo_run, tmp_path):
    out, _ = demo_run
    args = ("explain", "--model", out / "medxgan", "--data", out / "phantoms", "--n", "1", "--steps", "10", "--restarts", "1",
            "--lig-steps", "4", "--methods", "difference,lig", "--no-progress")
    rc, so, se = run_cli(*args, "--out", tmp_path / "t", "--tune-steps", "5", "--tune-lr", "1e-3")
    assert rc == 0, se
    row = json.loads((tmp_path / "t/summary.json").read_text())["images"][0]
    record = json.loads(next((tmp_path / "t/json").glob("*.json")).read_text())
    assert record["quality"]["tune_steps"] == 5 and "ssim_latent" in record["quality"]
    assert row["ssim"] == pytest.approx(record["quality"]["ssim"])
    assert "generator-tuning" in (tmp_path / "t/report.html").read_text()
    # the same --out with other tuning settings is a different run: refused, nothing lost
    rc, _, err = run_cli(*args, "--out", tmp_path / "t", "--tune-steps", "6", "--resume")
    assert rc != 0 and (tmp_path / "t/summary.json").is_file()
    rc, _, err = run_cli(*args, "--out", tmp_path / "e1", "--tune-lr", "1e-3")
    assert_one_line_error(rc, err, "--tune-steps")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e2", "--tune-steps", "-1")
    assert_one_line_error(rc, err, "--tune-steps")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e3", "--tune-steps", "5", "--tune-lr", "0")
    assert_one_line_error(rc, err, "lr")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e6", "--tune-neg-views", "2")
    assert_one_line_error(rc, err, "--tune-steps")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e10", "--tune-neg-target", "0.05")
    assert_one_line_error(rc, err, "--tune-steps")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e11", "--tune-steps", "5", "--tune-proximity-sigma", "2")
    assert_one_line_error(rc, err, "proximity_delta")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e12", "--tune-steps", "5", "--tune-neg-target", "1.5")
    assert_one_line_error(rc, err, "neg_target")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e7", "--tune-steps", "5", "--tune-neg-views", "-1")
    assert_one_line_error(rc, err, "neg_views")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e8", "--tune-proximity-delta", "0.05")
    assert_one_line_error(rc, err, "--tune-steps")
    rc, _, err = run_cli(*args, "--out", tmp_path / "e9", "--tune-steps", "5", "--tune-proximity-delta", "-1")
    assert_one_line_error(rc, err, "proximity_delta")
    # augmented views: recorded with their seed in the run's settings (and so in its fingerprint)
    assert "neg_views" not in json.loads((tmp_path / "t/manifest.json").read_text())["settings"]["tuning"]
    rc, _, se = run_cli(*args, "--out", tmp_path / "v", "--tune-steps", "3", "--tune-neg-views", "2", "--seed", "4")
    assert rc == 0, se
    tuning = json.loads((tmp_path / "v/manifest.json").read_text())["settings"]["tuning"]
    assert tuning["neg_views"] == 2 and tuning["seed"] == 4
    rc, _, se = run_cli(*args, "--out", tmp_path / "d", "--tune-steps", "3", "--tune-proximity-delta", "0.05")
    assert rc == 0, se
    assert json.loads((tmp_path / "d/manifest.json").read_text())["settings"]["tuning"]["proximity_delta"] == 0.05
    rc, _, se = run_cli(*args, "--out", tmp_path / "r", "--tune-steps", "3", "--tune-proximity-delta", "0.05",
                        "--tune-proximity-sigma", "2", "--tune-neg-target", "0.05")
    assert rc == 0, se
    tuning = json.loads((tmp_path / "r/manifest.json").read_text())["settings"]["tuning"]
    assert tuning["proximity_sigma"] == 2.0 and tuning["neg_target"] == 0.05
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--data", out / "phantoms", "--n", "1", "--paper-inversion",
                         "--tune-steps", "5", "--out", tmp_path / "e4", "--no-progress")
    assert_one_line_error(rc, err, "--paper-inversion")
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in ("e1", "e2", "e3", "e4", "e6", "e7", "e8", "e9",
                                                                                 "e10", "e11", "e12"))
    # option mistakes are named before any model or data is read: a missing model is not what is reported
    rc, _, err = run_cli("explain", "--model", tmp_path / "no-such-run", "--data", tmp_path / "no-such-data", "--tune-lr", "1e-3",
                         "--out", tmp_path / "e5", "--no-progress")
    assert_one_line_error(rc, err, "--tune-steps")
