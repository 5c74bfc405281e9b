"""An encoder E: x -> (z1, z2) that starts the Eq. 5 inversion close to the answer ("hybrid" inversion).

The paper inverts each image from a random latent with 10,000 Adam steps. A learned encoder gives
a first guess in one forward pass; the Eq. 5 objective then refines it for a few hundred steps.
E is trained after G, with G frozen (its EMA weights, as saved), on two losses:

* latent loss on generated pairs: z = (z1, z2) from the prior (half negatives with the negative
  code), x = G(z); ||E(x) - z||² teaches E the generator's own inverse map;
* reconstruction loss on real training images: ||G(E(x)) - x||² (through the frozen G), so that E
  also lands near the best latent of images G cannot reproduce exactly.

The encoder is saved next to the generator (``encoder.safetensors``, self-describing like every
model file); `medxgan explain --encoder` starts its inversions from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from medxgan.errors import MedxganError

ENCODER_FILE = "encoder.safetensors"


@dataclass(frozen=True)
class EncoderConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    nef: int = 32  # channels of the first conv block
    latent_weight: float = 0.25  # ||E(G(z)) - z||^2 on generated pairs (ambiguous for a many-to-one G: kept low)
    recon_weight: float = 4.0  # ||G(E(x)) - x||^2 on real training images
    seed: int = 0

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.nef) < 1 or not self.lr > 0:
            raise MedxganError("encoder steps, batch_size, nef and lr must be positive")
        if self.latent_weight < 0 or self.recon_weight < 0 or self.latent_weight + self.recon_weight == 0:
            raise MedxganError("encoder loss weights must be >= 0 and not both 0")


class Encoder(nn.Module):
    """Strided 4x4 convs (LeakyReLU) down to 4x4, then a linear head to [z1 | z2]."""

    def __init__(self, z1_dim: int, code_dim: int, size: int, channels: int, nef: int = 32):
        super().__init__()
        self.z1_dim, self.code_dim = z1_dim, code_dim
        n_down = int(round(math.log2(size / 4)))
        if n_down < 1 or 4 * 2 ** n_down != size:
            n_down = max(1, int(math.floor(math.log2(size / 4))))
        layers, cin = [], channels
        for i in range(n_down):
            cout = min(nef * 2 ** i, nef * 8)
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, channels, size, size)).numel()
        self.head = nn.Linear(flat, z1_dim + code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,C,H,W] -> [B, z1_dim + code_dim]
        z = self.head(self.features(x).flatten(1))
        # z1 is put on the sphere of radius sqrt(z1_dim), where N(0, I) latents concentrate: the
        # regression's natural answer for an ambiguous image (the mean, near 0) is a latent G has
        # never seen and draws garbage for.
        z1 = F.normalize(z[:, : self.z1_dim], dim=1) * math.sqrt(self.z1_dim)
        return torch.cat([z1, z[:, self.z1_dim:]], dim=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self(x)
        return z[:, : self.z1_dim], z[:, self.z1_dim:]


def build_encoder(G, size: int, channels: int, cfg: EncoderConfig = EncoderConfig()) -> Encoder:
    return Encoder(G.z1_dim, G.code_dim, size, channels, cfg.nef)


def train_encoder(cfg: EncoderConfig, G, real: torch.Tensor, device="cpu", progress: bool = True) -> tuple[Encoder, list[dict]]:
    """Train E for a frozen generator ``G`` on real training images ``real`` [N,C,H,W] in [-1,1].

    Returns (encoder in eval mode, loss records every 50 steps).
    """
    if len(real) < 1:
        raise MedxganError("the encoder needs training images")
    _, channels, size, _ = real.shape
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    G = G.to(device).eval().requires_grad_(False)
    E = build_encoder(G, size, channels, cfg).to(device).train()
    opt = torch.optim.Adam(E.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    half = max(1, cfg.batch_size // 2)
    history = []
    bar = tqdm(range(cfg.steps), desc="encoder", disable=not progress, unit="step")
    for step in bar:
        y = (torch.rand(half, generator=gen) < 0.5).long()
        z1 = G.sample_z1(half, gen).to(device)
        z2 = G.sample_code(y, gen).to(device)
        with torch.no_grad():
            x_gen = G(z1, z2)
        loss_lat = F.mse_loss(E(x_gen), torch.cat([z1, z2], 1))
        idx = torch.randint(0, len(real), (cfg.batch_size - half if cfg.batch_size > 1 else 1,), generator=gen)
        x_real = real[idx].to(device)
        z_hat = E(x_real)
        loss_rec = F.mse_loss(G(z_hat[:, : G.z1_dim], z_hat[:, G.z1_dim:]), x_real)
        loss = cfg.latent_weight * loss_lat + cfg.recon_weight * loss_rec
        if not torch.isfinite(loss):
            raise MedxganError(f"encoder training diverged at step {step} (NaN loss); lower encoder lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, "latent": round(loss_lat.item(), 5), "reconstruction": round(loss_rec.item(), 5)}
            history.append(rec)
            bar.set_postfix(lat=rec["latent"], rec=rec["reconstruction"])
    return E.eval().requires_grad_(False), history


@torch.no_grad()
def encode(E: Encoder, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(z1, z2) = E(x), batched, on E's device."""
    device = next(E.parameters()).device
    parts = [E.encode(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
