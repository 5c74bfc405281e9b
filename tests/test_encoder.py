"""The inversion encoder: shapes, what it learns, hybrid inversion vs random start, its model file."""

import pytest
import torch

from medxgan import checkpoint as ckpt
from medxgan.encoder import EncoderConfig, build_encoder, encode, train_encoder
from medxgan.errors import MedxganError
from medxgan.inversion import InversionConfig, invert

from toy_models import tiny_models


@pytest.mark.parametrize("size", [28, 32, 64])
def test_encoder_shapes(size):
    G, _ = tiny_models(size=size)
    E = build_encoder(G, size, 1, EncoderConfig(nef=4))
    z1, z2 = E.encode(torch.zeros(3, 1, size, size))
    assert z1.shape == (3, G.z1_dim) and z2.shape == (3, G.code_dim)


@pytest.fixture(scope="module")
def trained():
    return _trained()


def _trained(steps=300):
    G, C = tiny_models(size=16)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        y = torch.randint(0, 2, (64,), generator=gen)
        real = G(G.sample_z1(64, gen), G.sample_code(y, gen))  # images the generator can make
    E, hist = train_encoder(EncoderConfig(steps=steps, batch_size=32, nef=16, lr=2e-3), G, real, progress=False)
    return G, C, E, hist


def test_encoder_learns_the_generators_inverse(trained):
    G, _, E, hist = trained
    assert hist[-1]["latent"] < 0.6 * hist[0]["latent"]
    gen = torch.Generator().manual_seed(99)
    z1 = G.sample_z1(64, gen)
    y = torch.randint(0, 2, (64,), generator=gen)
    z2 = G.sample_code(y, gen)
    with torch.no_grad():
        e1, e2 = encode(E, G(z1, z2))
    # latent ranges: outputs live on the prior's scale (unit variance), finite
    assert torch.isfinite(e1).all() and 0.2 < float(e1.std()) < 3
    # the negative code is recognised: |z2| is much smaller for negatives (z2 = 0) than for positives
    n2 = e2.norm(dim=1)
    assert float(n2[y == 0].mean()) < 0.6 * float(n2[y == 1].mean())
    # and E's latents are closer to the truth than a random guess
    err = ((e1 - z1).pow(2).mean() + (e2 - z2).pow(2).mean()) / 2
    assert float(err) < 0.8


def test_hybrid_inversion_beats_random_start_in_a_small_budget(trained):
    G, C, E, _ = trained
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        x = G(G.sample_z1(8, gen), G.sample_code(torch.ones(8, dtype=torch.long), gen))
    cfg = InversionConfig(steps=30, restarts=1, seed=0)
    rand = invert(G, C, x, cfg)
    hybrid = invert(G, C, x, cfg, init=encode(E, x))
    assert float(hybrid.mse.mean()) < float(rand.mse.mean())
    assert float(hybrid.ssim.mean()) > float(rand.ssim.mean())


def test_encoder_file_round_trip_and_refusals(tmp_path, trained):
    G, _, E, _ = trained
    meta = {"size": 16, "channels": 1, "gan": {"z1_dim": 8}}
    cfg = EncoderConfig(steps=20, batch_size=32, nef=16, lr=2e-3)
    path = tmp_path / "encoder.safetensors"
    ckpt.save_encoder(path, E, cfg, G, meta)
    E2, m2 = ckpt.load_encoder(path, G, meta)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(E(x), E2(x)) and m2["kind"] == "encoder"
    # an encoder for other generator weights is refused
    G_other, _ = tiny_models(size=16, seed=3)
    with pytest.raises(MedxganError, match="other generator weights"):
        ckpt.load_encoder(path, G_other, meta)
    with pytest.raises(MedxganError, match="different generator"):
        ckpt.load_encoder(path, G, {**meta, "size": 32})
    with pytest.raises(MedxganError, match="not an encoder"):
        ckpt.save_model(tmp_path / "g.safetensors", G, "generator", meta)
        ckpt.load_encoder(tmp_path / "g.safetensors")
    with pytest.raises(MedxganError):
        EncoderConfig(steps=0)
