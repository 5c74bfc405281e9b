"""Explanations: latent methods with known answers, Captum wrappers equal to Captum, registry."""

import pytest
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

from medxgan.config import ClassifierConfig, GANConfig
from toy_models import calibrate_batchnorm, tiny_models
from medxgan.errors import MedxganError
from medxgan.explain import (
    EXPLAINERS,
    PositiveLogit,
    PositiveProbability,
    completeness_error,
    difference_maps,
    explain_images,
    get_explainer,
    grad_cam,
    integrated_gradients,
    latent_integrated_gradients,
    latent_interpolation,
    list_explainers,
    negative_realization,
    path_codes,
    quadrature,
    smooth_maps,
)
from medxgan.inversion import InversionConfig
from medxgan.models import BinaryClassifier, Generator, build_classifier, build_generator, last_conv_layer

FAST_INVERSION = InversionConfig(steps=25, restarts=1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- toy models ---------------------------------------------------------------------------
def latents(G, n=2, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return G.sample_z1(n, gen), G.sample_code(torch.ones(n, dtype=torch.long), gen)


class ToyGenerator(Generator):
    """A hand-made G with the Generator's latent scheme (negative_code, path_code)."""

    def __init__(self, z1_dim, code_dim, side, render):
        nn.Module.__init__(self)
        self.code, self.z1_dim, self.code_dim, self.size, self.channels = "continuous", z1_dim, code_dim, side, 1
        self.render = render

    def forward(self, z1, z2):
        return self.render(z1, z2)


def affine_generator(seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(3 + 2, 16)
    return ToyGenerator(3, 2, 4, lambda z1, z2: lin(torch.cat([z1, z2], 1)).view(-1, 1, 4, 4)), lin


def curved_generator():
    """x(alpha) = (alpha, alpha^2, 0, ...) on the path to z2 = 1: a curved image path."""

    def render(z1, z2):
        x = torch.zeros(z1.shape[0], 1, 2, 2)
        x[:, 0, 0, 0] = z2[:, 0]
        x[:, 0, 0, 1] = z2[:, 0] ** 2
        x[:, 0, 1, 0] = z1[:, 0]
        return x

    return ToyGenerator(1, 1, 2, render)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# --- latent interpolation and difference maps -----------------------------------------------
@pytest.mark.parametrize("code", ["continuous", "discrete"])
def test_interpolation_endpoints(code):
    G, C = tiny_models(code=code)
    gen = torch.Generator().manual_seed(2)
    z1 = G.sample_z1(2, gen)
    z2 = G.sample_code(torch.ones(2, dtype=torch.long), gen) * (0.7 if code == "discrete" else 1) + 0.1
    alphas = torch.linspace(0, 1, 7)
    codes = path_codes(G, z2, alphas)
    assert torch.equal(codes[:, 0], G.negative_code(z2)) and torch.equal(codes[:, -1], z2)
    interp = latent_interpolation(G, C, z1, z2, n_steps=7)
    with torch.no_grad():
        positive, negative = G(z1, z2), G(z1, G.negative_code(z2))
    assert interp.frames.shape == (2, 7, 1, 16, 16)
    assert torch.allclose(interp.frames[:, 0], negative, atol=1e-6)
    assert torch.allclose(interp.frames[:, -1], positive, atol=1e-6)
    assert torch.allclose(negative_realization(G, z1, z2), negative, atol=1e-6)
    assert torch.equal(interp.alphas, alphas)
    assert torch.allclose(interp.probs[:, -1], C.positive_prob(positive), atol=1e-6)
    assert interp.monotone.dtype == torch.bool and interp.monotone.shape == (2,)


def test_monotone_flag():
    G, lin = affine_generator()
    w = torch.randn(16)
    C = BinaryClassifier(Lambda(lambda x: (x.flatten(1) @ w)[:, None]), 1)
    z1 = torch.randn(2, 3)
    direction = lin.weight[:, 3:] @ torch.ones(2)  # dx / dalpha for z2 = (1, 1)
    z2 = torch.ones(2, 2) * torch.sign(w @ direction)  # along the path, f rises linearly
    interp = latent_interpolation(G, C, z1, torch.cat([z2[:1], -z2[1:]]), n_steps=5)
    assert interp.monotone.tolist() == [True, False]


def test_difference_maps():
    G, _ = tiny_models()
    z1, z2 = latents(G)
    maps = difference_maps(G, z1, z2, n_steps=6)
    with torch.no_grad():
        signed = G(z1, z2) - G(z1, torch.zeros_like(z2))
    assert torch.allclose(maps["signed"], signed, atol=1e-6)
    assert torch.equal(maps["absolute"], maps["signed"].abs())
    assert (maps["accumulated"] >= maps["absolute"] - 1e-6).all()  # triangle inequality
    Ga, _ = affine_generator()  # pixels change linearly: accumulated == absolute
    z1, z2 = torch.randn(2, 3), torch.randn(2, 2)
    m = difference_maps(Ga, z1, z2)
    assert torch.allclose(m["accumulated"], m["absolute"], atol=1e-5)


# --- Latent Integrated Gradients -----------------------------------------------------------
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle"])
def test_quadrature_integrates_polynomials(rule):
    alphas, weights = quadrature(8, rule)
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.isclose((weights * alphas).sum(), torch.tensor(0.5, dtype=torch.float64))


@pytest.mark.parametrize("method", ["paper", "path"])
def test_lig_linear_known_answer(method):
    # affine G and linear f: Eq. 7 is exactly (x1 - x0) * w and complete
    G, _ = affine_generator()
    w, b = torch.randn(16), 0.3
    C = BinaryClassifier(Lambda(lambda x: (x.flatten(1) @ w + b)[:, None]), 1)
    z1, z2 = torch.randn(3, 3), torch.randn(3, 2)
    attr = latent_integrated_gradients(G, C, z1, z2, n_steps=4, method=method)
    with torch.no_grad():
        expected = (G(z1, z2) - G(z1, torch.zeros_like(z2))) * w.view(1, 1, 4, 4)
    assert torch.allclose(attr, expected, atol=1e-5)
    assert completeness_error(attr, G, C, z1, z2).max() < 1e-4


def test_lig_with_affine_generator_is_ig_from_the_negative_realization():
    # a straight image path: Eq. 7 == Captum IG with baseline G(z1, neg), for a nonlinear C
    G, _ = affine_generator()
    torch.manual_seed(1)
    C = BinaryClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2)), 2)
    z1, z2 = torch.randn(2, 3), torch.randn(2, 2)
    lig = latent_integrated_gradients(G, C, z1, z2, n_steps=16)
    with torch.no_grad():
        x, baseline = G(z1, z2), G(z1, torch.zeros_like(z2))
    ig = IntegratedGradients(C.positive_logit).attribute(x, baselines=baseline, n_steps=16, method="gausslegendre")
    assert torch.allclose(lig, ig, atol=1e-5)
    explained = get_explainer("ig_negative", G, C, n_steps=16).attribute(x, latents=(z1, z2))
    assert torch.allclose(explained, ig, atol=1e-6)


def test_path_variant_is_complete_where_eq7_is_not():
    # x(alpha) = (alpha, alpha^2), f = x_a * x_b: Δf = 1, Eq. 7 gives 1/3 + 1/2 = 5/6
    G = curved_generator()
    C = BinaryClassifier(Lambda(lambda x: (x[:, 0, 0, 0] * x[:, 0, 0, 1])[:, None]), 1)
    z1, z2 = torch.zeros(1, 1), torch.ones(1, 1)
    paper = latent_integrated_gradients(G, C, z1, z2, n_steps=32, method="paper")
    path = latent_integrated_gradients(G, C, z1, z2, n_steps=64, method="path")
    assert torch.allclose(paper[0, 0, 0], torch.tensor([1 / 3, 1 / 2]), atol=1e-5)
    assert completeness_error(paper, G, C, z1, z2).item() == pytest.approx(1 / 6, abs=1e-5)
    assert completeness_error(path, G, C, z1, z2).item() < 1e-3
    assert torch.allclose(path[0, 0, 0], torch.tensor([1 / 3, 2 / 3]), atol=1e-3)  # ∫α²dα, ∫2α²dα


@pytest.mark.parametrize("pathology", ["joint", "overlay"])
@pytest.mark.parametrize("target", [PositiveLogit(), PositiveProbability()])
def test_path_variant_complete_on_the_tiny_generator(target, pathology):
    G, C = tiny_models(pathology=pathology)
    z1, z2 = latents(G, n=2)
    path = latent_integrated_gradients(G, C, z1, z2, n_steps=64, method="path", target=target)
    with torch.no_grad():
        delta = target(C(G(z1, z2))) - target(C(G(z1, torch.zeros_like(z2))))
    err = completeness_error(path, G, C, z1, z2, target)
    assert (err <= 0.05 * delta.abs() + 1e-5).all(), (err, delta)
    paper = latent_integrated_gradients(G, C, z1, z2, n_steps=32, method="paper", target=target)
    assert paper.shape == path.shape == (2, 1, 16, 16)
    if isinstance(target, PositiveLogit):  # (probabilities barely move on this toy: both errors ~1e-4)
        assert (err < completeness_error(paper, G, C, z1, z2, target)).all()  # Eq. 7 misses the curvature


# --- Captum wrappers are Captum ------------------------------------------------------------
def test_gradcam_equals_captum():
    G, C = tiny_models()
    with torch.no_grad():
        x = G(*latents(G, n=3))
    direct = LayerGradCam(C, last_conv_layer(C)).attribute(x, target=1, relu_attributions=True)
    direct = LayerAttribution.interpolate(direct, (16, 16), interpolate_mode="bilinear")
    assert torch.allclose(grad_cam(C, x), direct, atol=1e-6)
    assert torch.allclose(get_explainer("gradcam", None, C).attribute(x), direct, atol=1e-6)
    layer = C.net.features[0]
    direct0 = LayerGradCam(C, layer).attribute(x, target=1, relu_attributions=True)
    direct0 = LayerAttribution.interpolate(direct0, (16, 16), interpolate_mode="bilinear")
    assert torch.allclose(get_explainer("gradcam", None, C, layer=layer).attribute(x), direct0, atol=1e-6)


def test_gradcam_softmax_head_explains_the_log_odds():
    G, C = tiny_models(n_logits=2)
    with torch.no_grad():
        x = G(*latents(G, n=2))
    direct = LayerGradCam(C.positive_logit, last_conv_layer(C)).attribute(x, relu_attributions=True)
    direct = LayerAttribution.interpolate(direct, (16, 16), interpolate_mode="bilinear")
    assert torch.allclose(grad_cam(C, x), direct, atol=1e-6)


def test_ig_equals_captum():
    G, C = tiny_models()
    z1, z2 = latents(G, n=2)
    with torch.no_grad():
        x = G(z1, z2)
    black = torch.full_like(x, -1)
    direct = IntegratedGradients(C).attribute(x, baselines=black, target=1, n_steps=20, method="gausslegendre")
    assert torch.allclose(integrated_gradients(C, x, n_steps=20), direct, atol=1e-6)
    assert torch.allclose(get_explainer("ig", None, C, n_steps=20).attribute(x), direct, atol=1e-6)
    negative = negative_realization(G, z1, z2)
    direct_neg = IntegratedGradients(C).attribute(x, baselines=negative, target=1, n_steps=20)
    got = get_explainer("ig_negative", G, C, n_steps=20, internal_batch_size=8).attribute(x, latents=(z1, z2))
    assert torch.allclose(got, direct_neg, atol=1e-6)
    prob = IntegratedGradients(C.positive_prob).attribute(x, baselines=black, n_steps=20)
    assert torch.allclose(integrated_gradients(C, x, n_steps=20, target=PositiveProbability()), prob, atol=1e-6)


def test_targets_handle_both_heads():
    logits2 = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    assert torch.allclose(PositiveLogit()(logits2), torch.tensor([1.5, -2.0]))
    assert torch.allclose(PositiveProbability()(logits2), torch.softmax(logits2, 1)[:, 1])
    logits1 = torch.tensor([[0.7], [-0.2]])
    assert torch.allclose(PositiveLogit()(logits1), torch.tensor([0.7, -0.2]))
    assert torch.allclose(PositiveProbability()(logits1), torch.sigmoid(logits1[:, 0]))
    for n_logits in (1, 2):
        G, C = tiny_models(n_logits=n_logits)
        with torch.no_grad():
            x = G(*latents(G))
            assert torch.allclose(PositiveLogit()(C(x)), C.positive_logit(x), atol=1e-6)
            assert torch.allclose(PositiveProbability()(C(x)), C.positive_prob(x), atol=1e-6)


# --- registry ------------------------------------------------------------------------------
NAMES = ["difference", "gradcam", "ig", "ig_negative", "lig", "lig_path", "random"]


@pytest.mark.parametrize("channels", [1, 3])
def test_registry_and_shapes(channels):
    assert list_explainers() == NAMES and set(EXPLAINERS) == set(NAMES)
    G, C = tiny_models(channels=channels)
    z1, z2 = latents(G)
    with torch.no_grad():
        x = G(z1, z2)
    for name in NAMES:
        explainer = get_explainer(name, G, C, inversion=FAST_INVERSION)
        out = explainer.attribute(x, latents=(z1, z2))
        assert out.shape == x.shape, name
        assert torch.isfinite(out).all(), name
    # latent explainers invert the inputs themselves when no latents are given
    assert get_explainer("difference", G, C, inversion=FAST_INVERSION).attribute(x).shape == x.shape


def test_registry_errors_and_targets():
    G, C = tiny_models()
    x = torch.zeros(1, 1, 16, 16)
    with pytest.raises(MedxganError):
        get_explainer("shap", G, C)
    with pytest.raises(MedxganError):
        get_explainer("ig", G, C).attribute(x, target=0)
    with pytest.raises(MedxganError):
        get_explainer("lig", None, C)
    ig = get_explainer("ig", None, C, n_steps=8)
    assert torch.equal(ig.attribute(x, target=1), ig.attribute(x, target=None))
    assert not torch.equal(ig.attribute(x), ig.attribute(x, target="probability"))


def test_random_control_is_seeded():
    x = torch.zeros(2, 1, 16, 16)
    a = get_explainer("random", None, None, seed=3).attribute(x)
    b = get_explainer("random", None, None, seed=3).attribute(x)
    c = get_explainer("random", None, None, seed=4).attribute(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 1


# --- the whole pipeline --------------------------------------------------------------------
@pytest.mark.parametrize("pathology", ["joint", "overlay"])
def test_explain_images_is_deterministic_and_complete(pathology):
    G, C = tiny_models(pathology=pathology)
    with torch.no_grad():
        images = G(*latents(G, n=2)) + 0.02 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    methods = ("difference", "lig", "lig_path", "gradcam", "ig", "ig_negative", "random")
    G.train()
    run = lambda: explain_images(G, C, images, methods=methods, inversion=FAST_INVERSION, n_frames=5,
                                 lig_steps=8, path_steps=32, ig_steps=8)
    first, second = run(), run()
    assert G.training  # models left as found
    assert len(first) == 2
    e = first[0]
    assert e.frames.shape == (5, 1, 16, 16) and e.frame_probs.shape == (5,) and e.alphas.shape == (5,)
    assert set(e.maps) == set(methods) and all(m.shape == (1, 16, 16) for m in e.maps.values())
    assert set(e.completeness) == {"lig", "lig_path"}
    assert set(e.quality) >= {"mse", "psnr", "ssim", "delta_prob"}
    assert isinstance(e.monotone, bool) and 0 <= e.prob_negative <= 1
    assert torch.equal(e.frames[0], e.negative) and torch.allclose(e.frames[-1], e.reconstruction, atol=1e-6)
    assert torch.allclose(e.maps["difference"], (e.reconstruction - e.negative).abs(), atol=1e-6)
    for t in (e.image, e.reconstruction, e.negative, e.frames, e.accumulated, e.z1, e.z2, *e.maps.values()):
        assert t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad
    for a, b in zip(first, second):
        assert torch.equal(a.z1, b.z1) and torch.equal(a.reconstruction, b.reconstruction)
        assert all(torch.equal(a.maps[k], b.maps[k]) for k in methods)
        assert a.completeness == b.completeness


def test_explain_images_carries_names_and_masks():
    import torch as _t

    from medxgan.config import ClassifierConfig, GANConfig
    from medxgan.explain import explain_images
    from medxgan.inversion import InversionConfig
    from medxgan.models.classifier import build_classifier
    from medxgan.models.gan import build_generator

    _t.manual_seed(0)
    G = build_generator(GANConfig(z1_dim=4, z2_dim=2, ngf=4), 16, 1).eval()
    C = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1).eval()
    x = _t.rand(2, 1, 16, 16) * 2 - 1
    masks = _t.zeros(2, 1, 16, 16, dtype=_t.bool)
    masks[1, :, 4:8, 4:8] = True
    out = explain_images(G, C, x, methods=("difference", "lig"), inversion=InversionConfig(steps=3, restarts=1),
                         lig_steps=2, names=["a.png", "b.png"], masks=masks)
    assert [e.name for e in out] == ["a.png", "b.png"]
    assert out[1].mask.sum() == 16 and not out[0].mask.any()


# --- the optional blur of the maps ---------------------------------------------------------------
def test_smooth_maps_moves_the_maximum_from_a_speck_to_the_blob_and_keeps_totals():
    """Known answer: a 5x5 blob of 1.0 and a single speck of 2.0. The raw maximum is the speck;
    after a sigma = 1.5 px blur the speck spreads to about 2/(2 pi 1.5^2) = 0.14, the blob's centre
    stays near 0.8, so the maximum is the blob's centre. The total (even of a map touching the
    edge) and the sign of a signed map are kept; sigma 0 is the identity."""
    m = torch.zeros(2, 1, 24, 24)
    m[:, 0, 4:9, 12:17] = 1.0
    m[:, 0, 18, 4] = 2.0
    m[1, 0, 0, 0] = 5.0  # mass on the corner is mirrored back, not lost
    raw_max = divmod(int(m[0].flatten().argmax()), 24)
    s = smooth_maps(m, 1.5)
    assert raw_max == (18, 4) and divmod(int(s[0].flatten().argmax()), 24) == (6, 14)
    assert 0.1 < float(s[0, 0, 18, 4]) < 0.2
    assert torch.allclose(s.flatten(1).sum(1), m.flatten(1).sum(1), atol=1e-4)
    assert s.shape == m.shape and s.dtype == m.dtype
    assert torch.allclose(smooth_maps(-m, 1.5), -s) and smooth_maps(m, 0) is m
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            smooth_maps(m, bad)


def test_explain_images_smooth_blurs_every_map_and_keeps_lig_complete():
    G, C = tiny_models()
    with torch.no_grad():
        images = G(*latents(G, n=2)) + 0.02 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    kw = dict(methods=("difference", "lig", "ig"), inversion=FAST_INVERSION, n_frames=4, lig_steps=8, ig_steps=4)
    raw = explain_images(G, C, images, **kw)
    blurred = explain_images(G, C, images, smooth=1.0, **kw)
    for r, b in zip(raw, blurred):
        assert r.smoothing == 0 and b.smoothing == 1.0
        assert torch.equal(r.reconstruction, b.reconstruction) and r.completeness == b.completeness
        for k in kw["methods"]:
            assert torch.allclose(b.maps[k], smooth_maps(r.maps[k], 1.0), atol=1e-6)
            assert not torch.allclose(b.maps[k], r.maps[k])
        assert torch.allclose(b.accumulated, smooth_maps(r.accumulated, 1.0), atol=1e-6)
        # the blur keeps LIG's total, so its completeness error is that of the raw map
        assert float(b.maps["lig"].sum()) == pytest.approx(float(r.maps["lig"].sum()), abs=1e-4)
    with pytest.raises(ValueError, match="sigma"):
        explain_images(G, C, images, smooth=-1, **kw)


# --- ensembles of explanations from independent starts ---------------------------------------
def test_ensemble_is_the_mean_of_the_single_explanations_with_consecutive_seeds():
    G, C = tiny_models()
    with torch.no_grad():
        images = G(*latents(G, n=2)) + 0.02 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    methods = ("difference", "lig", "ig")
    inv = InversionConfig(steps=15, restarts=1, seed=7)
    kw = dict(methods=methods, n_frames=4, lig_steps=4, ig_steps=4, first_index=3, names=["a", "b"])
    single = [explain_images(G, C, images, inversion=InversionConfig(steps=15, restarts=1, seed=s), **kw) for s in (7, 8)]
    both = explain_images(G, C, images, inversion=inv, ensemble=2, **kw)
    assert not torch.equal(single[0][0].z1, single[1][0].z1)  # the members really started elsewhere
    for b, e in enumerate(both):
        members = [single[0][b], single[1][b]]
        assert e.members == 2 and e.name == members[0].name
        for k in methods:
            assert torch.allclose(e.maps[k], (members[0].maps[k] + members[1].maps[k]) / 2, atol=1e-6)
        best = max((0, 1), key=lambda k: (members[k].quality["ssim"], -k))
        assert e.quality["member"] == best and torch.equal(e.z1, members[best].z1)
        assert torch.equal(e.negative, members[best].negative) and e.prob_negative == members[best].prob_negative
        assert e.quality["ssim_members_min"] == min(m.quality["ssim"] for m in members)
        d0, d1 = ((m.reconstruction - m.negative).abs().reshape(-1).double().numpy() for m in members)
        import numpy as np

        assert e.agreement == pytest.approx(float(np.corrcoef(d0, d1)[0, 1]), abs=1e-9)
        assert e.completeness["lig"] == pytest.approx((members[0].completeness["lig"] + members[1].completeness["lig"]) / 2)
    with pytest.raises(ValueError, match="ensemble"):
        explain_images(G, C, images, inversion=inv, ensemble=0, **kw)


def test_combine_keeps_the_shared_change_and_damps_the_others():
    """Two explanations that both change the lesion, each also making its own stronger change
    elsewhere: each alone points outside the lesion, their mean points into it."""
    from medxgan.explain import Explanation, combine_explanations

    def member(spot, ssim):
        image = torch.zeros(1, 8, 8)
        negative = image.clone()
        negative[0, 2:4, 2:4] -= 0.6  # the lesion: removed by every member
        negative[0, spot[0], spot[1]] -= 1.0  # a change only this member makes
        diff = (image - negative).abs()
        return Explanation(image=image, reconstruction=image, negative=negative, frames=torch.stack([negative, image]),
                           frame_probs=torch.tensor([0.05, 0.9]), alphas=torch.tensor([0.0, 1.0]), monotone=True,
                           prob_image=0.9, prob_reconstruction=0.9, prob_negative=0.05,
                           quality={"ssim": ssim}, maps={"difference": diff}, accumulated=diff,
                           z1=torch.zeros(2), z2=torch.ones(2), completeness={}, name="x")

    a, b = member((6, 6), 0.8), member((6, 1), 0.9)
    for e in (a, b):
        assert not (2 <= int(e.maps["difference"].argmax()) // 8 < 4)
    (c,) = combine_explanations([[a], [b]])
    j = int(c.maps["difference"].argmax())
    assert 2 <= j // 8 < 4 and 2 <= j % 8 < 4
    assert c.quality["member"] == 1 and torch.equal(c.negative, b.negative) and c.members == 2
    assert 0 < c.agreement < 1
    (same,) = combine_explanations([[a], [a]])
    assert same.agreement == pytest.approx(1.0) and torch.equal(same.maps["difference"], a.maps["difference"])
    with pytest.raises(ValueError, match="same images"):
        combine_explanations([[a], [a, b]])
    with pytest.raises(ValueError, match="disagree"):
        combine_explanations([[a], [Explanation(**{**a.__dict__, "name": "y"})]])
