"""Configs, models, checkpoints and the Eq. 4 training step on tiny models."""

import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from medxgan import checkpoint as ckpt
from medxgan.config import ClassifierConfig, GANConfig, RunConfig, apply_overrides
from medxgan.errors import MedxganError
from medxgan.evaluate.fidelity import generated_accuracy
from medxgan.models.classifier import BinaryClassifier, build_classifier, last_conv_layer
from medxgan.models.gan import build_discriminator, build_generator
from medxgan.training.gan import init_state, lambda_at, train_gan, train_step

TINY_GAN = GANConfig(z1_dim=8, z2_dim=4, ngf=8, ndf=8, batch_size=8, steps=4, lam_start=0, lam_warmup=0, ema_start=0)


def test_overrides_are_typed_and_checked():
    cfg = apply_overrides(RunConfig(), ["gan.lr_g=1e-4", "gan.diff_augment=false", "data.split_fractions=0.8,0.1,0.1"])
    assert cfg.gan.lr_g == 1e-4 and cfg.gan.diff_augment is False
    assert cfg.data.split_fractions == (0.8, 0.1, 0.1)
    for bad in ["gan.nope=1", "gan.steps=abc", "gan=1", "gan.code=stripes", "nokey"]:
        with pytest.raises(MedxganError):
            apply_overrides(RunConfig(), [bad])
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("n_logits", [1, 2])
def test_binary_classifier_heads_agree_on_probability(n_logits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, n_logits))
    clf = BinaryClassifier(net, n_logits)
    x = torch.randn(5, 1, 4, 4)
    raw = net(x)
    expected = torch.sigmoid(raw[:, 0]) if n_logits == 1 else torch.softmax(raw, 1)[:, 1]
    assert torch.allclose(clf.positive_prob(x), expected, atol=1e-6)
    assert torch.allclose(torch.softmax(clf(x), 1)[:, 1], expected, atol=1e-6)
    assert clf(x).shape == (5, 2)


@pytest.mark.parametrize("arch,size", [("vgg_compact", 32), ("paper_mri_cnn", 64), ("vgg16", 32)])
def test_classifier_architectures(arch, size):
    clf = build_classifier(ClassifierConfig(arch=arch, width=8), size, 3)
    assert clf(torch.zeros(2, 3, size, size)).shape == (2, 2)
    assert isinstance(last_conv_layer(clf), nn.Conv2d)


@pytest.mark.parametrize("size", [28, 32, 64, 128])
@pytest.mark.parametrize("code", ["continuous", "discrete"])
def test_generator_and_discriminator_shapes(size, code):
    cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, code=code)
    G, D = build_generator(cfg, size, 1), build_discriminator(cfg, size, 1)
    y = torch.tensor([0, 1, 1])
    z2 = G.sample_code(y)
    x = G(G.sample_z1(3), z2)
    assert x.shape == (3, 1, size, size) and x.abs().max() <= 1
    assert D(x).shape == (3,)
    # the negative code and the ends of the latent path
    assert torch.equal(G.path_code(z2, 0.0), G.negative_code(z2))
    assert torch.allclose(G.path_code(z2, 1.0), z2)
    if code == "continuous":
        assert torch.all(z2[0] == 0) and torch.all(z2[1:] != 0)
    else:
        assert z2.tolist() == [[1, 0], [0, 1], [0, 1]]


def test_paper_architecture_is_the_official_layout():
    cfg = GANConfig(arch="paper", z1_dim=1000, z2_dim=100)
    G = build_generator(cfg, 64, 3)
    assert G.body.fc.in_features == 1100 and G.body.fc.out_features == 768
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(768, 384), (384, 256), (256, 192), (192, 3)]
    assert G(torch.zeros(2, 1000), torch.zeros(2, 100)).shape == (2, 3, 64, 64)
    with pytest.raises(MedxganError):
        build_generator(cfg, 32, 1)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    ccfg = ClassifierConfig(width=8, depth=2)
    clf = build_classifier(ccfg, 16, 1)
    clf(torch.randn(4, 1, 16, 16))  # move BN statistics
    ckpt.save_classifier(tmp_path / "c.safetensors", clf, ccfg, 16, 1)
    back, meta = ckpt.load_classifier(tmp_path / "c.safetensors")
    assert meta["size"] == 16 and meta["kind"] == "classifier"
    for (k, a), (k2, b) in zip(clf.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    G = build_generator(TINY_GAN, 16, 1)
    ckpt.save_generator(tmp_path / "g.safetensors", G, TINY_GAN, 16, 1)
    G2, gmeta = ckpt.load_generator(tmp_path / "g.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G2.state_dict().values()))
    z1, z2 = torch.randn(2, 8), torch.randn(2, 4)
    assert torch.equal(G.eval()(z1, z2), G2(z1, z2))


def test_bad_model_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(MedxganError, match="not a medxgan model file"):
        ckpt.load_classifier(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(MedxganError, match="no medxgan metadata"):
        ckpt.load_classifier(plain)
    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.zeros(2)}, newer, metadata={"format": "medxgan", "format_version": "99", "kind": "generator"})
    with pytest.raises(MedxganError, match="newer medxgan"):
        ckpt.load_generator(newer)
    # weights whose shapes disagree with the config
    ccfg = ClassifierConfig(width=8, depth=2)
    clf = build_classifier(ccfg, 16, 1)
    ckpt.save_classifier(tmp_path / "c.safetensors", clf, ClassifierConfig(width=4, depth=2), 16, 1)
    with pytest.raises(MedxganError, match="config says"):
        ckpt.load_classifier(tmp_path / "c.safetensors")
    with pytest.raises(MedxganError, match="not a classifier"):
        ckpt.save_generator(tmp_path / "g.safetensors", build_generator(TINY_GAN, 16, 1), TINY_GAN, 16, 1)
        ckpt.load_classifier(tmp_path / "g.safetensors")


def test_malicious_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "weights.pt"
    torch.save({"w": Evil()}, evil)
    net = nn.Linear(2, 1)
    with pytest.raises(MedxganError, match="refused"):
        ckpt.load_foreign_weights(net, evil)
    assert not marker.exists()


def test_lambda_warmup():
    cfg = GANConfig(lam=2.0, lam_start=0, lam_warmup=100)
    assert lambda_at(cfg, 0) == 0 and lambda_at(cfg, 50) == 1.0 and lambda_at(cfg, 500) == 2.0
    cfg = GANConfig(lam=2.0, lam_start=10, lam_warmup=0)
    assert lambda_at(cfg, 9) == 0 and lambda_at(cfg, 10) == 2.0


def test_training_moves_losses_the_right_way():
    """On a fixed batch of real images, a few dozen Eq. 4 steps lower the classifier term and the
    frozen classifier is untouched."""
    torch.manual_seed(0)
    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1).frozen()
    # a classifier that says "bright centre = positive", so the class term has something to learn
    with torch.no_grad():
        for p in clf.parameters():
            p.zero_()
    clf.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 1))
    with torch.no_grad():
        clf.net[2].weight.fill_(8.0)
        clf.net[2].bias.fill_(0.0)
    clf.frozen()
    before = [p.clone() for p in clf.parameters()]
    cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=8, ndf=8, batch_size=16, lam=2.0, lam_start=0, lam_warmup=0, diff_augment=False, lr_g=2e-3,
                    cls_augment=False, cls_margin=0.0, change_l1=0.0)  # Eq. 4 exactly as published
    state = init_state(cfg, 16, 1)
    real = torch.rand(16, 1, 16, 16) * 2 - 1
    losses = [train_step(state, real, clf, cfg)["loss_cls"] for _ in range(60)]
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:10]) / 10
    assert all(torch.equal(a, b) for a, b in zip(before, clf.parameters()))
    acc = generated_accuracy(state.ema.model, clf, n_z1=50, n_positive=3)
    assert acc["n"] == 200 and 0 <= acc["accuracy"] <= 1


def test_resume_continues_to_identical_weights(tmp_path):
    torch.manual_seed(0)
    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1)
    real = torch.rand(12, 1, 16, 16) * 2 - 1
    cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, batch_size=4, steps=6, checkpoint_every=3, sample_every=100, ema_start=1)
    G_full, _ = train_gan(cfg, real, clf, out_dir=tmp_path / "a", progress=False)
    import dataclasses

    train_gan(dataclasses.replace(cfg, steps=3), real, clf, out_dir=tmp_path / "b", progress=False)
    G_res, stats = train_gan(cfg, real, clf, out_dir=tmp_path / "b", resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(G_full.state_dict().values(), G_res.state_dict().values()))
    assert [s["step"] for s in stats] == sorted({s["step"] for s in stats})
    with pytest.raises(MedxganError, match="--resume"):
        train_gan(cfg, real, clf, out_dir=tmp_path / "a", progress=False)


def test_c2st_separates_different_and_not_identical_distributions():
    from medxgan.evaluate.realism import c2st_accuracy

    g = torch.Generator().manual_seed(0)
    real = torch.rand(200, 1, 16, 16, generator=g) * 2 - 1
    same = torch.rand(200, 1, 16, 16, generator=g) * 2 - 1
    bright = (torch.rand(200, 1, 16, 16, generator=g) * 2 - 1).clamp(-0.2, 1)
    assert c2st_accuracy(real, bright, epochs=4)["accuracy"] > 0.9
    assert abs(c2st_accuracy(real, same, epochs=4)["accuracy"] - 0.5) < 0.12


@pytest.mark.parametrize("d_norm", ["batch", "spectral", "none"])
def test_discriminator_norms(d_norm):
    D = build_discriminator(GANConfig(ndf=4, d_norm=d_norm), 32, 1)
    assert D(torch.zeros(2, 1, 32, 32)).shape == (2,)
    assert any(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == (d_norm == "batch")


def test_minibatch_std_feature_has_the_known_value():
    """Groups are strided (image i joins group i % (B/g)); identical images give 0, and two images
    at -1 and +1 give a standard deviation of 1 in every feature."""
    from medxgan.models.gan import MinibatchStd

    layer = MinibatchStd(group=2)
    h = torch.zeros(4, 3, 2, 2)
    h[1], h[3] = 5.0, 5.0  # group {1, 3}: identical; group {0, 2}: -1 / +1
    h[0], h[2] = -1.0, 1.0
    out = layer(h)
    assert out.shape == (4, 4, 2, 2) and torch.equal(out[:, :3], h)
    assert torch.allclose(out[[0, 2], 3], torch.ones(2, 2, 2), atol=1e-3)
    assert torch.allclose(out[[1, 3], 3], torch.zeros(2, 2, 2), atol=1e-3)
    # an odd batch uses the largest group size that divides it (here 1: no spread, all zero)
    assert torch.allclose(MinibatchStd(4)(torch.randn(5, 2, 3, 3))[:, 2], torch.zeros(5, 3, 3), atol=1e-3)
    D = build_discriminator(GANConfig(ndf=4, d_mbstd_group=4), 32, 1)
    assert D(torch.zeros(6, 1, 32, 32)).shape == (6,)
    with pytest.raises(MedxganError, match="d_mbstd_group"):
        GANConfig(d_mbstd_group=0)


def test_change_prior_pairs_codes_and_penalises_the_change():
    """gan.change_l1 > 0: G's batch is (negative, positive) pairs sharing z1, and the step reports
    the mean |G(z1, z2) - G(z1, 0)| it penalises."""
    from medxgan.training.gan import step_noise

    cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, batch_size=8, change_l1=1.0, lam_start=0, lam_warmup=0)
    G = build_generator(cfg, 16, 1)
    y, z1, z2 = step_noise(G, cfg, step=3)
    assert y.tolist() == [0, 1] * 4
    assert torch.equal(z1[0::2], z1[1::2]) and not torch.equal(z1[0], z1[2])
    assert torch.equal(z2[0::2], torch.zeros(4, 4)) and (z2[1::2] != 0).all()
    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1).frozen()
    state = init_state(cfg, 16, 1)
    record = train_step(state, torch.rand(8, 1, 16, 16) * 2 - 1, clf, cfg)
    assert record["change_l1"] > 0
    import dataclasses

    plain = dataclasses.replace(TINY_GAN, change_l1=0.0)
    assert train_step(init_state(plain, 16, 1), torch.rand(8, 1, 16, 16) * 2 - 1, clf, plain)["change_l1"] == 0
    with pytest.raises(MedxganError, match="even"):
        GANConfig(batch_size=7, change_l1=1.0)


def test_models_saved_before_new_options_rebuild_as_trained(tmp_path):
    """A generator file whose stored config predates gan.g_upsample / gan.d_mbstd_group is rebuilt
    as it was trained (nearest upsampling), bit-exactly; a stored run config without
    d_mbstd_group gets the D it was trained with (no minibatch-stddev feature)."""
    import dataclasses

    from safetensors.torch import load_file

    old_cfg = dataclasses.replace(TINY_GAN, g_upsample="nearest", d_mbstd_group=1)
    G = build_generator(old_cfg, 16, 1).eval()
    ckpt.save_generator(tmp_path / "g.safetensors", G, old_cfg, 16, 1)
    meta = ckpt.read_metadata(tmp_path / "g.safetensors")
    for key in ("g_upsample", "d_mbstd_group"):
        del meta["gan"][key]
    stripped = tmp_path / "old.safetensors"
    save_file(load_file(tmp_path / "g.safetensors"),
              stripped, metadata={k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in meta.items()})
    G_old, meta_old = ckpt.load_generator(stripped)
    z1, z2 = torch.randn(3, 8), torch.randn(3, 4)
    assert torch.equal(G_old(z1, z2), G(z1, z2))
    from medxgan.config import from_dict

    stored = dataclasses.asdict(TINY_GAN)
    del stored["d_mbstd_group"]
    assert from_dict(GANConfig, stored).d_mbstd_group == 1 and GANConfig().d_mbstd_group == 4


def test_classifier_term_margin_stops_at_confident_images():
    """cls_margin m: an image whose class log-odds exceed m adds nothing; the others keep -log p."""
    from medxgan.models.classifier import positive_class_loss

    clf = BinaryClassifier(nn.Sequential(nn.Flatten(), nn.Linear(1, 1)), 1)
    with torch.no_grad():
        clf.net[1].weight.fill_(1.0)
        clf.net[1].bias.fill_(0.0)
    logits = torch.tensor([5.0, 1.0, -5.0, -1.0])  # log-odds of positive = the pixel value
    x = logits.view(4, 1, 1, 1)
    y = torch.tensor([1, 1, 0, 0])
    plain = torch.nn.functional.softplus(-torch.tensor([5.0, 1.0, 5.0, 1.0]))  # -log p(y)
    assert torch.allclose(positive_class_loss(clf, x, y), plain.mean())
    # margin 3: the two confident images (class log-odds 5) drop out, the mean stays over 4
    assert torch.allclose(positive_class_loss(clf, x, y, margin=3.0), (plain[1] + plain[3]) / 4)
    with pytest.raises(MedxganError, match="cls_margin"):
        GANConfig(cls_margin=-1)


def test_classifier_term_sees_augmented_images_deterministically():
    """gan.cls_augment: C receives G's images flipped/shifted/jittered (never G's exact pixels),
    drawn from the step's own random stream, so two runs see the same augmentations."""
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return x.mean(dim=(1, 2, 3))[:, None]

    clf = BinaryClassifier(Recorder(), 1).frozen()
    real = torch.rand(8, 1, 16, 16) * 2 - 1
    for augment in (True, True, False):
        cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, batch_size=8, lam_start=0, lam_warmup=0, cls_augment=augment)
        state = init_state(cfg, 16, 1)
        train_step(state, real, clf, cfg)
    (a,), (b,), (plain,) = seen[0:1], seen[1:2], seen[2:3]
    assert torch.equal(a, b)  # same seed and step -> the same augmentation
    assert not torch.equal(a, plain)  # plain is G's exact output; a is its augmented copy
    assert a.shape == plain.shape and a.min() >= -1 and a.max() <= 1


def test_instance_noise_reaches_discriminator_inputs_only():
    """gan.instance_noise: D's real and fake inputs get seeded Gaussian noise of that std; the
    same seed and step give the same noise; noise 0 leaves D's inputs as the images."""
    import dataclasses

    real = torch.zeros(8, 1, 16, 16)
    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1).frozen()
    seen = {}
    for noise in (0.0, 0.5, 0.5):
        cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, batch_size=8, diff_augment=False, instance_noise=noise,
                        lam_start=0, lam_warmup=0)
        state = init_state(cfg, 16, 1)
        inputs = []
        hook = state.D.features.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
        train_step(state, real, clf, cfg)
        hook.remove()
        seen.setdefault(noise, []).append(inputs[0])  # the first D call sees the real batch
    assert torch.equal(seen[0.0][0], real)
    a, b = seen[0.5]
    assert torch.equal(a, b) and abs(float(a.std()) - 0.5) < 0.05
    with pytest.raises(MedxganError, match="instance_noise"):
        dataclasses.replace(TINY_GAN, instance_noise=-0.1)


def test_conditional_discriminator_adds_a_class_projection(tmp_path):
    """gan.d_conditional: D(x, y) = D's unconditional logit + <embed(y), mean features>; real
    images get the frozen classifier's decision as their class; training and resume work."""
    from medxgan.models.gan import Discriminator

    torch.manual_seed(0)
    D = build_discriminator(GANConfig(ndf=4, d_conditional=True), 16, 1).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        h = D.mbstd(D.features(x))
        base = D.head(h).squeeze(1)
        for label in (0, 1):
            y = torch.full((3,), label)
            expected = base + (D.embed(y) * h.mean(dim=(2, 3))).sum(1)
            torch.testing.assert_close(D(x, y), expected)
        assert not torch.allclose(D(x, torch.zeros(3)), D(x, torch.ones(3)))
    with pytest.raises(MedxganError, match="labels"):
        D(x)
    assert build_discriminator(GANConfig(ndf=4), 16, 1).embed is None  # Eq. 4's D: unconditional
    with pytest.raises(MedxganError, match="d_conditional"):
        GANConfig(arch="paper", d_conditional=True)

    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1)
    real = torch.rand(12, 1, 16, 16) * 2 - 1
    cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, batch_size=4, steps=4, checkpoint_every=2, sample_every=100,
                    ema_start=1, d_conditional=True)
    G_full, stats = train_gan(cfg, real, clf, out_dir=tmp_path / "a", progress=False)
    assert all(math.isfinite(v) for s in stats for v in s.values() if isinstance(v, float))
    import dataclasses

    train_gan(dataclasses.replace(cfg, steps=2), real, clf, out_dir=tmp_path / "b", progress=False)
    G_res, _ = train_gan(cfg, real, clf, out_dir=tmp_path / "b", resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(G_full.state_dict().values(), G_res.state_dict().values()))


def test_overlay_generator_adds_the_pathology_code_to_a_z1_only_base(tmp_path):
    """gan.pathology=overlay: G(z1, 0) is the z1-only trunk's image exactly (the change branch's
    weights cannot touch it), G(z1, z2) = tanh(base + gated change), a zero change gives the
    negative back, the model round-trips through its file, and it trains and resumes."""
    import dataclasses

    torch.manual_seed(0)
    cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, pathology="overlay")
    G = build_generator(cfg, 16, 1).eval()
    z1, z2 = torch.randn(3, 8), torch.randn(3, 4)
    with torch.no_grad():
        neg = G(z1, torch.zeros_like(z2))
        base, change = G.body.parts(z1, z2)
        torch.testing.assert_close(G(z1, z2), torch.tanh(base + change))
        torch.testing.assert_close(neg, torch.tanh(base))
        assert change.abs().amax(dim=(1, 2, 3)).min() > 0
        assert torch.equal(G.body.gate(torch.zeros(2, 4)), torch.zeros(2))
        assert (G.body.gate(z2) > 0).all() and (G.body.gate(z2) < 1).all()
        for p in [*G.body.branch.parameters(), *G.body.code_map.parameters(), *G.body.change.parameters()]:
            p.add_(torch.randn_like(p))
        assert torch.equal(G(z1, torch.zeros_like(z2)), neg)  # the branch never reaches the negative
        # a branch whose change is zero gives the negative back
        G.body.change.weight.zero_()
        G.body.change.bias.zero_()
        assert torch.equal(G(z1, z2), neg)
    # the latent path G(z1, alpha z2) starts at the negative code, z2 = 0
    assert torch.equal(G.path_code(z2, 0.0), torch.zeros_like(z2))
    ckpt.save_generator(tmp_path / "g.safetensors", G, cfg, 16, 1)
    G2, meta = ckpt.load_generator(tmp_path / "g.safetensors")
    assert G2.pathology == "overlay" and torch.equal(G2(z1, z2), G(z1, z2))
    with pytest.raises(MedxganError, match="overlay"):
        GANConfig(pathology="overlay", arch="paper")
    with pytest.raises(MedxganError, match="overlay"):
        GANConfig(pathology="overlay", code="discrete")
    with pytest.raises(MedxganError, match="pathology"):
        GANConfig(pathology="local")
    # a stored config from before the option rebuilds the joint generator
    from medxgan.config import from_dict

    stored = dataclasses.asdict(TINY_GAN)
    del stored["pathology"]
    assert from_dict(GANConfig, stored).pathology == "joint"

    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1)
    real = torch.rand(12, 1, 16, 16) * 2 - 1
    tcfg = dataclasses.replace(cfg, batch_size=4, steps=4, checkpoint_every=2, sample_every=100, ema_start=1,
                               lam_start=0, lam_warmup=0)
    G_full, stats = train_gan(tcfg, real, clf, out_dir=tmp_path / "a", progress=False)
    assert all(math.isfinite(v) for s in stats for v in s.values() if isinstance(v, float))
    assert stats[-1]["change_l1"] > 0
    train_gan(dataclasses.replace(tcfg, steps=2), real, clf, out_dir=tmp_path / "b", progress=False)
    G_res, _ = train_gan(tcfg, real, clf, out_dir=tmp_path / "b", resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(G_full.state_dict().values(), G_res.state_dict().values()))


def test_mode_seeking_and_change_diversity_terms_have_their_formulas():
    """gan.mode_seeking reports 1 / (mean |neg_a - neg_b| / mean |z1a - z1b|) over neighbouring
    pairs' negatives, gan.change_diversity the mean cosine similarity of neighbouring pairs'
    |positive - negative| maps, both on the same G forward the step trains on; both need pairs."""
    import dataclasses

    from medxgan.training.gan import step_noise

    cfg = GANConfig(z1_dim=8, z2_dim=4, ngf=4, ndf=4, batch_size=8, change_l1=1.0, lam_start=0, lam_warmup=0,
                    mode_seeking=0.5, change_diversity=2.0, pathology="overlay")
    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1).frozen()
    state = init_state(cfg, 16, 1)
    y, z1, z2 = step_noise(state.G, cfg, step=0)
    with torch.no_grad():
        fake = state.G.train()(z1, z2)  # batch statistics: what the step's forward computes
    neg, pos = fake[0::2], fake[1::2]
    zn = z1[0::2]
    pairs = [(i, (i - 1) % 4) for i in range(4)]
    image_gap = sum((neg[i] - neg[j]).abs().mean() for i, j in pairs) / 4
    code_gap = sum((zn[i] - zn[j]).abs().mean() for i, j in pairs) / 4
    maps = [(pos[i] - neg[i]).abs().flatten() for i in range(4)]
    overlap = sum(torch.dot(maps[i], maps[j]) / (maps[i].norm() * maps[j].norm()) for i, j in pairs) / 4
    record = train_step(state, torch.rand(8, 1, 16, 16) * 2 - 1, clf, cfg)
    assert record["mode_seeking"] == pytest.approx(float(1 / (image_gap / code_gap + 1e-5)), rel=1e-4)
    assert record["change_overlap"] == pytest.approx(float(overlap), rel=1e-4)
    assert 0 < record["change_overlap"] <= 1
    off = dataclasses.replace(cfg, mode_seeking=0.0, change_diversity=0.0)
    record = train_step(init_state(off, 16, 1), torch.rand(8, 1, 16, 16) * 2 - 1, clf, off)
    assert record["mode_seeking"] == 0 and record["change_overlap"] == 0
    for key in ("mode_seeking", "change_diversity"):
        with pytest.raises(MedxganError, match="change_l1"):
            GANConfig(**{key: 1.0}, change_l1=0.0)
        with pytest.raises(MedxganError, match=">= 0"):
            GANConfig(**{key: -1.0})


def test_adversarial_examples_are_the_known_worst_case_of_a_linear_classifier():
    from medxgan.training.classifier import adversarial_examples

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    clf = BinaryClassifier(net, 1).train()
    x = torch.rand(6, 1, 4, 4) - 0.5  # inside [-1,1] with room for the perturbation
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    eps = 0.1
    adv = adversarial_examples(clf, x, y, eps, steps=3)
    # For a logit w.x + b the L-inf ball's worst case moves every pixel by eps against its class.
    w_sign = torch.sign(net[1].weight.detach()).view(1, 1, 4, 4)
    expected = x + eps * w_sign * (1 - 2 * y.float()).view(-1, 1, 1, 1)
    assert torch.allclose(adv, expected, atol=1e-6)
    assert clf.training and all(p.grad is None for p in clf.parameters())


def test_the_attack_leaves_batchnorm_statistics_untouched_and_the_options_are_checked():
    from medxgan.training.classifier import adversarial_examples, train_classifier

    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1).train()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    adv = adversarial_examples(clf, x, torch.tensor([0, 1, 0, 1]), 0.05, steps=2)
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.abs().max() <= 1
    assert clf.training and all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    for bad in ({"adv_eps": -0.1}, {"adv_eps": 2.0}, {"adv_eps": float("nan")}, {"adv_steps": 0}):
        with pytest.raises(MedxganError, match="adv_"):
            ClassifierConfig(**bad)
    # Training with it differs from training without it, from the same seed.
    g = torch.Generator().manual_seed(0)
    imgs, labels = torch.rand(32, 1, 16, 16, generator=g) * 2 - 1, torch.arange(32) % 2
    base = ClassifierConfig(width=4, depth=2, epochs=1, batch_size=16, augment=False)
    plain, _ = train_classifier(base, imgs, labels, progress=False)
    robust, _ = train_classifier(ClassifierConfig(**{**base.__dict__, "adv_eps": 0.05}), imgs, labels, progress=False)
    assert not torch.allclose(plain(imgs), robust(imgs))
