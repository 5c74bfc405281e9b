"""Latent inversion (paper Eq. 5) on tiny seeded models."""

import pytest
import torch
import torch.nn as nn

from medxgan.config import ClassifierConfig, GANConfig
from toy_models import calibrate_batchnorm, tiny_models
from medxgan.errors import MedxganError
from medxgan.inversion import InversionConfig, _adam_rows, image_quality, invert
from medxgan.models import build_classifier, build_generator


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: thread hand-offs cost more than they save on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def generated_images(G, n=3, seed=5):
    gen = torch.Generator().manual_seed(seed)
    z1 = G.sample_z1(n, gen)
    z2 = G.sample_code(torch.ones(n, dtype=torch.long), gen)
    with torch.no_grad():
        return z1, z2, G(z1, z2)


def test_paper_config():
    cfg = InversionConfig.paper()
    assert (cfg.steps, cfg.lr, cfg.betas, cfg.restarts) == (10_000, 0.01, (0.5, 0.999), 1)
    assert (cfg.schedule, cfg.patience, cfg.init) == ("constant", 0, "random")
    assert cfg.neg_weight == 0.0 and cfg.cls_weight == 1.0  # Eq. 5 as published
    d = InversionConfig()
    assert (d.steps, d.lr, d.betas, d.restarts, d.schedule, d.patience, d.cls_weight, d.init, d.neg_weight) == (
        1000, 0.05, (0.9, 0.999), 4, "cosine", 100, 1.0, "random", 1.0)


@pytest.mark.parametrize("bad", [{"schedule": "step"}, {"init": "encoder"}, {"steps": 0}, {"restarts": 0},
                                 {"lr": 0.0}, {"betas": (0.9, 1.0)}, {"patience": -1}, {"warmup_steps": -1},
                                 {"warmup_lr": 0.0}, {"warmup_lr": float("nan")}])
def test_config_validation(bad):
    with pytest.raises(MedxganError):
        InversionConfig(**bad)


def test_recovers_a_generated_latent_and_loss_decreases():
    G, C = tiny_models()
    _, _, x = generated_images(G)
    assert x.std() > 0.1  # the toy images have structure, so SSIM is not trivially high
    # Eq. 5 alone: the toy classifier is random, so its P(G(z1, 0)) need not be low and the
    # negative-realization term would pull away from the true latent (a trained G's would not).
    res = invert(G, C, x, InversionConfig(steps=300, restarts=2, patience=50, neg_weight=0.0))
    assert res.ssim.min() >= 0.95
    assert res.mse.max() < 1e-3 and res.delta_prob.max() < 1e-2
    first, last = res.loss_curve[0], res.loss_curve[-1]
    assert (last < 0.05 * first).all()
    assert torch.allclose(res.loss, res.restart_loss.min(1).values, atol=1e-5)
    assert res.z1.shape == (3, 8) and res.z2.shape == (3, 4) and res.reconstruction.shape == x.shape
    for t in (res.loss, res.mse, res.psnr, res.ssim, res.prob_target, res.prob_reconstruction, res.delta_prob, res.steps_run):
        assert t.shape == (3,)
    assert torch.allclose(res.prob_target, C.positive_prob(x).detach())


def test_a_saturated_classifier_does_not_stall_the_inversion():
    # A confident classifier gives P(positive | x) == 1.0 exactly in float32; the BCE's floor
    # H(1) must then be 0, not 0 * log 0 = NaN (a NaN loss never beats the best so far, so the
    # rows kept their random starts: reconstruction SSIM 0.1-0.4 on such phantoms).
    G, C = tiny_models()
    with torch.no_grad():
        [m for m in C.modules() if isinstance(m, nn.Linear)][-1].bias += 50.0
    _, _, x = generated_images(G)
    assert (C.positive_prob(x) == 1.0).all()
    res = invert(G, C, x, InversionConfig(steps=300, restarts=2, patience=50, neg_weight=0.0))
    assert torch.isfinite(res.loss).all() and torch.isfinite(res.loss_curve).all()
    assert res.ssim.min() >= 0.95


def test_deterministic_from_seed():
    G, C = tiny_models()
    _, _, x = generated_images(G, n=2)
    cfg = InversionConfig(steps=20, restarts=2)
    a, b = invert(G, C, x, cfg), invert(G, C, x, cfg)
    assert torch.equal(a.z1, b.z1) and torch.equal(a.z2, b.z2) and torch.equal(a.reconstruction, b.reconstruction)
    c = invert(G, C, x, InversionConfig(steps=20, restarts=2, seed=1))
    assert not torch.equal(a.z1, c.z1)


def test_rows_are_independent_of_the_batch():
    # per-row losses and Adam moments: an image's result does not depend on its batch mates
    G, C = tiny_models()
    _, _, x = generated_images(G, n=3)
    start = (torch.randn(3, 8), torch.randn(3, 4))  # same start for image 0 in both runs
    cfg = InversionConfig(steps=15, restarts=1)
    together = invert(G, C, x, cfg, init=start)
    alone = invert(G, C, x[:1], cfg, init=(start[0][:1], start[1][:1]))
    assert torch.allclose(together.z1[:1], alone.z1, atol=1e-4)
    assert torch.allclose(together.z2[:1], alone.z2, atol=1e-4)


def test_early_stopping_freezes_rows():
    G, C = tiny_models()
    _, _, x = generated_images(G, n=2)
    res = invert(G, C, x, InversionConfig(steps=200, restarts=2, patience=3, min_delta=0.5))
    assert (res.steps_run < 200).all()
    assert res.loss_curve.shape[0] < 200
    no_stop = invert(G, C, x, InversionConfig(steps=30, restarts=1, patience=0, min_delta=0.5))
    assert (no_stop.steps_run == 30).all()


def test_init_starts_restart_zero_there():
    G, C = tiny_models()
    z1, z2, x = generated_images(G, n=2)
    res = invert(G, C, x, InversionConfig(steps=1, restarts=3, neg_weight=0.0), init=(z1, z2))
    assert torch.equal(res.z1, z1) and torch.equal(res.z2, z2)
    assert res.loss.max() < 1e-6  # Eq. 5 is 0 at the true latents
    with pytest.raises(MedxganError):
        invert(G, C, x, InversionConfig(steps=1), init=(z1[:1], z2[:1]))


def test_models_are_restored():
    G, C = tiny_models()
    _, _, x = generated_images(G, n=1)
    G.train()
    C.requires_grad_(True)
    C.net.head[-1].requires_grad_(False)
    stats = G.body.bn0.running_mean.clone()
    invert(G, C, x, InversionConfig(steps=3, restarts=1))
    assert G.training and all(m.training for m in G.modules())
    assert not C.training
    assert all(p.requires_grad for p in G.parameters())
    assert not any(p.requires_grad for p in C.net.head[-1].parameters())
    assert all(p.requires_grad for p in C.net.features.parameters())
    assert torch.equal(G.body.bn0.running_mean, stats)  # eval inside: BN statistics untouched


def test_discrete_code_optimises_a_free_two_vector():
    G, C = tiny_models(code="discrete")
    gen = torch.Generator().manual_seed(3)
    z1 = G.sample_z1(2, gen)
    with torch.no_grad():
        x = G(z1, G.sample_code(torch.tensor([0, 1]), gen))
    res = invert(G, C, x, InversionConfig(steps=150, restarts=2, patience=50))
    assert res.z2.shape == (2, 2)
    assert (res.loss_curve[-1] < res.loss_curve[0]).all()


def test_row_adam_matches_torch_adam():
    torch.manual_seed(0)
    target = torch.randn(4, 6)
    p = torch.randn(4, 6, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.5, 0.999))
    z = p.detach().clone()
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    t = torch.zeros(4, dtype=torch.long)
    for _ in range(5):
        opt.zero_grad()
        ((p - target) ** 3).abs().sum().backward()
        opt.step()
        grad = 3 * (z - target).abs() * (z - target)
        t += 1
        _adam_rows(z, grad, m, v, t, 0.1, (0.5, 0.999))
    assert torch.allclose(z, p.detach(), atol=1e-5)


def test_image_quality_known_values():
    x = torch.linspace(-1, 1, 2 * 16 * 16).view(2, 1, 16, 16)
    mse, psnr, ssim = image_quality(x, x)
    assert torch.equal(mse, torch.zeros(2)) and torch.isinf(psnr).all() and torch.allclose(ssim, torch.ones(2))
    mse, psnr, _ = image_quality(x + 0.2, x)  # 0.2 in [-1,1] = 0.1 in [0,1]
    assert torch.allclose(mse, torch.full((2,), 0.04), atol=1e-6)
    assert torch.allclose(psnr, torch.full((2,), 20.0), atol=1e-3)
    rgb = torch.rand(2, 3, 16, 16) * 2 - 1
    _, _, ssim = image_quality(rgb, rgb)
    assert torch.allclose(ssim, torch.ones(2))
    assert (image_quality(-rgb, rgb)[2] < 0.5).all()


def test_trace_reports_best_latents_without_changing_the_result():
    G, C = tiny_models()
    _, _, x = generated_images(G, n=2)
    cfg = InversionConfig(steps=12, restarts=2, patience=0, seed=3)
    plain = invert(G, C, x, cfg, first_index=0)
    seen = []
    traced = invert(G, C, x, cfg, first_index=0, trace=lambda k, z1, z2: seen.append((k, z1, z2)), trace_every=5)
    torch.testing.assert_close(traced.z1, plain.z1, rtol=0, atol=0)  # default behaviour unchanged
    assert [k for k, _, _ in seen] == [5, 10]
    assert seen[-1][1].shape == (2, G.z1_dim) and seen[-1][2].shape == (2, G.code_dim)
    # the traced latents are the best so far: their loss never increases from one trace to the next
    from medxgan.inversion import inversion_loss

    with torch.no_grad():
        p = C.positive_prob(x)
        losses = [inversion_loss(G, C, z1, z2, x, p)[0] for _, z1, z2 in seen]
    assert bool((losses[1] <= losses[0] + 1e-6).all())
    with pytest.raises(MedxganError):
        invert(G, C, x, cfg, trace=lambda *a: None, trace_every=0)


def test_negative_realization_term():
    """neg_weight adds w * -log(1 - P_C(G(z1, 0))) to Eq. 5 and pulls the inverted image's
    negative realization towards the negative class; 0 leaves Eq. 5 untouched."""
    from medxgan.inversion import inversion_loss

    G, C = tiny_models()
    z1, z2, x = generated_images(G, n=4)
    G.eval(), C.eval()
    with torch.no_grad():
        target = C.positive_prob(x)
        plain, mse, _ = inversion_loss(G, C, z1, z2, x, target)
        with_neg, _, _ = inversion_loss(G, C, z1, z2, x, target, neg_weight=2.0)
        p_neg = C.positive_prob(G(z1, torch.zeros_like(z2)))
    assert torch.allclose(with_neg - plain, -2.0 * torch.log1p(-p_neg), atol=1e-5)
    assert torch.allclose(plain, mse, atol=1e-5)  # the true latents: Eq. 5 is 0 beyond the pixels

    start = (torch.randn(4, 8, generator=torch.Generator().manual_seed(3)), torch.randn(4, 4, generator=torch.Generator().manual_seed(4)))

    def p_negative(weight):  # explicit weights: the default (1.0) is not what is tested here
        res = invert(G, C, x, InversionConfig(steps=150, restarts=1, neg_weight=weight), init=start)
        with torch.no_grad():
            return C.positive_prob(G(res.z1, torch.zeros_like(res.z2)))

    assert p_negative(20.0).mean() < p_negative(0.0).mean() - 0.05
    with pytest.raises(MedxganError, match="neg_weight"):
        InversionConfig(neg_weight=float("nan"))


def test_change_prior_term():
    """change_weight adds w * mean |G(z1, z2) - G(z1, 0)| and, optimised, shrinks that change."""
    from medxgan.inversion import inversion_loss

    G, C = tiny_models()
    z1, z2, x = generated_images(G, n=3)
    G.eval(), C.eval()
    with torch.no_grad():
        target = C.positive_prob(x)
        plain, _, _ = inversion_loss(G, C, z1, z2, x, target)
        prior, _, _ = inversion_loss(G, C, z1, z2, x, target, change_weight=3.0)
        change = (G(z1, z2) - G(z1, torch.zeros_like(z2))).abs().flatten(1).mean(1)
    assert torch.allclose(prior - plain, 3.0 * change, atol=1e-6)

    start = (torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), torch.randn(3, 4, generator=torch.Generator().manual_seed(2)))

    def change_after(weight):
        res = invert(G, C, x, InversionConfig(steps=100, restarts=1, neg_weight=0.0, change_weight=weight), init=start)
        with torch.no_grad():
            return (res.reconstruction - G(res.z1, torch.zeros_like(res.z2))).abs().mean()

    assert change_after(5.0) < 0.8 * change_after(0.0)


class NullDirections(nn.Module):
    """G with z1's last ``k`` coordinates ignored: Eq. 5 is flat along them."""

    def __init__(self, G, k):
        super().__init__()
        self.G, self.k = G, k
        self.z1_dim, self.code_dim, self.code = G.z1_dim, G.code_dim, G.code

    def forward(self, z1, z2):
        return self.G(torch.cat([z1[:, :-self.k], torch.zeros_like(z1[:, -self.k:])], 1), z2)


def test_anchor_term():
    """anchor_weight adds w * mean (z - ref)^2, ref = the given anchor, else init, else 0."""
    G, C = tiny_models()
    z1, z2, x = generated_images(G, n=3)
    zeros = (torch.zeros_like(z1), torch.zeros_like(z2))
    # one step from the true latents: the loss is the anchor term alone (Eq. 5 is 0 there)
    cfg = InversionConfig(steps=1, restarts=1, neg_weight=0.0, anchor_weight=2.0)
    res = invert(G, C, x, cfg, init=(z1, z2), anchor=zeros)
    expected = 2.0 * torch.cat([z1, z2], 1).pow(2).mean(1)
    assert torch.allclose(res.loss, expected, rtol=1e-4, atol=1e-6)
    assert res.loss.min() > 0.1  # the term is there and not negligible
    assert invert(G, C, x, cfg, init=(z1, z2)).loss.max() < 1e-6  # default reference = init: nothing to pay

    # without an init or anchor the reference is the prior mean: a strong pull ends near 0
    strong = invert(G, C, x, InversionConfig(steps=200, restarts=1, neg_weight=0.0, anchor_weight=1e3))
    assert torch.cat([strong.z1, strong.z2], 1).abs().max() < 0.05

    # A generator that ignores z1's last two coordinates has a flat Eq. 5 minimum along them:
    # without the term they stay wherever each start put them; with it they go to the anchor.
    flat = NullDirections(G, 2)
    gen = torch.Generator().manual_seed(11)
    starts = [(z1 + 0.7 * torch.randn(z1.shape, generator=gen), z2 + 0.7 * torch.randn(z2.shape, generator=gen)) for _ in range(2)]

    def null_coordinates(weight):
        cfg = InversionConfig(steps=300, restarts=1, neg_weight=0.0, anchor_weight=weight)
        return [invert(flat, C, x, cfg, init=s, anchor=(z1, z2)).z1[:, -2:] for s in starts]

    a, b = null_coordinates(0.0)
    assert torch.allclose(a, starts[0][0][:, -2:]) and torch.allclose(b, starts[1][0][:, -2:])
    a, b = null_coordinates(0.1)
    assert torch.allclose(a, z1[:, -2:], atol=0.05) and torch.allclose(b, z1[:, -2:], atol=0.05)
    with pytest.raises(MedxganError, match="anchor"):
        invert(G, C, x, cfg, init=(z1, z2), anchor=(z1[:1], z2[:1]))
    with pytest.raises(MedxganError, match="anchor_weight"):
        InversionConfig(anchor_weight=-1.0)


class CountingClassifier(nn.Module):
    """Wraps a classifier and counts the images it is asked about."""

    def __init__(self, C):
        super().__init__()
        self.C, self.images = C, 0

    def positive_logit(self, x):
        self.images += x.shape[0]
        return self.C.positive_logit(x)

    def positive_prob(self, x):
        return torch.sigmoid(self.positive_logit(x))


def test_pixel_warmup_runs_no_classifier_and_hands_on_the_best_restart():
    G, C = tiny_models()
    _, _, x = generated_images(G)
    counted = CountingClassifier(C)
    traced = []
    cfg = InversionConfig(steps=1, lr=1e-9, restarts=3, patience=0, warmup_steps=40, warmup_lr=0.1, neg_weight=0.0)
    res = invert(G, counted, x, cfg, trace=lambda k, z1, z2: traced.append(k), trace_every=10)
    # the classifier saw the 3 images for P_C(x), in the single main step, in the final loss and
    # for P_C(reconstruction) — nothing of the 40 steps x 3 restarts x 3 images of the warm-up
    assert counted.images == 3 * 4
    assert res.steps_run.tolist() == [41, 41, 41] and res.loss_curve.shape == (41, 3)
    assert res.restart_loss.shape == (3, 3) and traced == [10, 20, 30, 40]
    # warm-up losses are pixel MSEs; a main phase that barely moves keeps the best restart's fit
    assert torch.allclose(res.mse, res.restart_loss.min(1).values, rtol=1e-3, atol=1e-6)
    # ... and the pixel warm-up did the fitting: 40 steps at lr 0.1 from random starts
    cold = invert(G, C, x, InversionConfig(steps=41, lr=1e-9, restarts=3, patience=0, neg_weight=0.0))
    assert (res.mse < 0.5 * cold.mse).all()


def test_warmup_zero_changes_nothing_and_anchor_reference_survives_the_warmup():
    G, C = tiny_models()
    z1, z2, x = generated_images(G)
    base = InversionConfig(steps=30, restarts=2, patience=0, neg_weight=0.0)
    a = invert(G, C, x, base)
    b = invert(G, C, x, InversionConfig(**{**base.__dict__, "warmup_steps": 0, "warmup_lr": 0.5}))
    assert torch.equal(a.z1, b.z1) and torch.equal(a.z2, b.z2)
    # the main phase's anchor reference is the given anchor, not the warm-up's end point: a
    # warm-up that does not move (lr 1e-9) hands over the random start, and a strong anchor then
    # pulls the latents from there to the anchor
    anchored = invert(G, C, x, InversionConfig(steps=400, restarts=1, patience=0, neg_weight=0.0, warmup_steps=5,
                                               warmup_lr=1e-9, anchor_weight=100.0), anchor=(z1, z2))
    start = invert(G, C, x, InversionConfig(steps=1, lr=1e-9, restarts=1, patience=0, neg_weight=0.0))
    assert (start.z1 - z1).abs().max() > 0.5
    assert torch.allclose(anchored.z1, z1, atol=0.05) and torch.allclose(anchored.z2, z2, atol=0.05)
