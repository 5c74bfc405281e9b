"""medXGAN generator G(z1, z2) and discriminator D.

z1 encodes anatomy, z2 the classifier-specific pathology code (paper Sec. 3.1):

* ``code="continuous"`` (medXGAN): z2 = 0 for a negative image, z2 ~ N(0, I) for a positive one;
* ``code="discrete"`` (the 2021 latent-traversal predecessor): z2 = one-hot(y), [1,0] / [0,1].

Either way ``negative_code(z2)`` is the code of the image's negative realization and the latent
path from negative to positive is ``negative + alpha * (z2 - negative)`` — for the continuous code
that is the paper's G(z1, alpha * z2).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

from medxgan.config import GANConfig
from medxgan.errors import MedxganError


def _start_side(size: int) -> tuple[int, int]:
    """Side of the first feature map and number of 2x upsamplings to reach ``size``."""
    for n_up in range(8, -1, -1):
        start = size / 2**n_up
        if start == int(start) and 4 <= start <= 7:
            return int(start), n_up
    raise MedxganError(f"image size {size} is not supported by the generator (use 28, 32, 64, 128, ...)")


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig, size: int, channels: int):
        super().__init__()
        self.code = cfg.code
        self.z1_dim = cfg.z1_dim
        self.code_dim = cfg.code_dim
        self.size = size
        self.channels = channels
        self.pathology = cfg.pathology
        if cfg.pathology == "overlay":
            self.body = OverlayGeneratorBody(cfg.z1_dim, cfg.code_dim, channels, size, cfg.ngf,
                                             norm=cfg.g_norm, upsample=cfg.g_upsample)
        else:
            self.body = _build_generator_body(cfg, size, channels, cfg.z1_dim + cfg.code_dim)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """[B,z1_dim], [B,code_dim] -> [B,C,H,W] in [-1,1]."""
        if self.pathology == "overlay":
            return self.body(z1, z2)
        return self.body(torch.cat([z1, z2], dim=1))

    # --- the latent sampling scheme -------------------------------------------------------
    def sample_z1(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.z1_dim, generator=generator, device=device)

    def sample_code(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class code for binary ``labels`` [B]: continuous -> 0 or N(0,I); discrete -> one-hot."""
        labels = labels.long()
        if self.code == "continuous":
            noise = torch.randn(labels.shape[0], self.code_dim, generator=generator, device=labels.device)
            return noise * labels[:, None].to(noise.dtype)
        return F.one_hot(labels, 2).float()

    def negative_code(self, z2: torch.Tensor) -> torch.Tensor:
        """Code of the negative realization of an image with code ``z2``."""
        if self.code == "continuous":
            return torch.zeros_like(z2)
        neg = torch.zeros_like(z2)
        neg[:, 0] = 1
        return neg

    def path_code(self, z2: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        """Point ``alpha`` in [0,1] on the straight latent path negative -> z2 (alpha [B] or scalar)."""
        neg = self.negative_code(z2)
        alpha = torch.as_tensor(alpha, dtype=z2.dtype, device=z2.device)
        if alpha.ndim == 1:
            alpha = alpha[:, None]
        return neg + alpha * (z2 - neg)


def _build_generator_body(cfg: GANConfig, size: int, channels: int, in_dim: int) -> nn.Module:
    if cfg.arch == "paper":
        return PaperGeneratorBody(in_dim, channels, size)
    return UpsampleGeneratorBody(in_dim, channels, size, cfg.ngf, norm=cfg.g_norm, upsample=cfg.g_upsample)


class UpsampleGeneratorBody(nn.Module):
    """Linear -> start x start map, then (2x upsample, 3x3 conv, BN, ReLU) blocks, 3x3 conv, tanh.

    Upsample+conv instead of transposed convs avoids checkerboard artefacts, which a classifier
    in the loop otherwise learns to exploit (see the unrealistic-generator example). Nearest
    upsampling is the default: bilinear gives smoother samples early on, but on the phantoms it
    could not draw their fine texture and D won outright (loss_d 0.04 at step 750)."""

    def __init__(self, in_dim, channels, size, ngf, norm: str = "batch", upsample: str = "nearest"):
        super().__init__()
        bn = nn.BatchNorm2d if norm == "batch" else (lambda c: nn.Identity())
        start, n_up = _start_side(size)
        widths = [min(ngf * 2 ** (n_up - i), ngf * 8) for i in range(n_up + 1)]
        self.start, self.c0 = start, widths[0]
        self.fc = nn.Linear(in_dim, widths[0] * start * start, bias=False)
        self.bn0 = bn(widths[0])
        blocks = []
        for i in range(n_up):
            blocks += [
                nn.Upsample(scale_factor=2, mode=upsample, **({"align_corners": False} if upsample == "bilinear" else {})),
                nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=norm != "batch"),
                bn(widths[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z):
        h = self.fc(z).view(z.shape[0], self.c0, self.start, self.start)
        h = F.relu(self.bn0(h))
        return torch.tanh(self.out(self.blocks(h)))


class OverlayGeneratorBody(nn.Module):
    """``gan.pathology=overlay``: z1 alone draws the anatomy, z2 adds a change to it.

    The trunk is :class:`UpsampleGeneratorBody` on z1 only; its image is the negative
    realization. A change branch reads z2 as a coarse spatial map (a linear layer to an 8x8 grid at
    64 px: where the change goes) beside the trunk's features at that scale (what anatomy is
    there), upsamples like the trunk and ends in one linear conv, added before the final tanh::

        G(z1, z2) = tanh(base(z1) + g(z2) * change(z1, z2)),   g(z2) = 1 - exp(-4 |z2|^2 / d)

    The gate makes G(z1, 0) = tanh(base(z1)) exactly, whatever the branch's weights, and is near 1
    for a typical positive code (|z2|^2 ~ d). Unlike a joint G(cat(z1, z2)), z2 cannot reach the
    trunk's features and their normalisation, so every pixel it changes is paid for in full by the
    change prior (``gan.change_l1``): a local lesion is cheaper than a global contrast shift.
    (A sigmoid mask in place of the additive change closed for good during the pure-GAN steps,
    before the classifier term starts: D prefers no change, and a saturated sigmoid has no
    gradient to reopen.) The branch has no BatchNorm, whose statistics would mix the negatives'
    zero changes with the positives'."""

    def __init__(self, z1_dim, z2_dim, channels, size, ngf, norm: str = "batch", upsample: str = "nearest"):
        super().__init__()
        self.trunk = UpsampleGeneratorBody(z1_dim, channels, size, ngf, norm=norm, upsample=upsample)
        self.z2_dim = z2_dim
        n_up = len(self.trunk.blocks) // 4
        # the branch joins the trunk after its first upsampling (8x8 at 64 px), or at the start
        self.tap = 1 if n_up >= 1 else 0
        c_tap = self.trunk.blocks[1].out_channels if self.tap else self.trunk.c0
        self.side = self.trunk.start * 2**self.tap
        self.k = max(8, ngf)  # channels of the z2 map
        self.code_map = nn.Linear(z2_dim, self.k * self.side * self.side)
        cb = max(16, ngf * 2)
        layers = [nn.Conv2d(c_tap + self.k, cb, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n_up - self.tap):
            layers += [nn.Upsample(scale_factor=2, mode=upsample, **({"align_corners": False} if upsample == "bilinear" else {})),
                       nn.Conv2d(cb, cb, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        self.branch = nn.Sequential(*layers)
        self.change = nn.Conv2d(cb, channels, 3, padding=1)

    def gate(self, z2: torch.Tensor) -> torch.Tensor:
        """[B] in [0, 1): 0 exactly at z2 = 0, ~0.98 at |z2|^2 = d."""
        return 1 - torch.exp(-z2.float().pow(2).sum(1) * (4.0 / self.z2_dim)).to(z2.dtype)

    def parts(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, gated change), both before the tanh: G(z1, z2) = tanh(base + change)."""
        t = self.trunk
        h = F.relu(t.bn0(t.fc(z1).view(z1.shape[0], t.c0, t.start, t.start)))
        feat = t.blocks[:4 * self.tap](h)
        base = t.out(t.blocks[4 * self.tap:](feat))
        code = self.code_map(z2).view(z2.shape[0], self.k, self.side, self.side)
        b = self.branch(torch.cat([feat, code.to(feat.dtype)], dim=1))
        return base, self.change(b) * self.gate(z2).to(base.dtype)[:, None, None, None]

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        base, change = self.parts(z1, z2)
        return torch.tanh(base + change)


class PaperGeneratorBody(nn.Module):
    """The official medXGAN repository's 64x64 generator layout: Linear(z -> 768), then
    ConvTranspose2d 768 -> 384 -> 256 -> 192 -> C (kernels 5, 5, 5, 8; stride 2), BN + ReLU, tanh.
    With z1 = 1000, z2 = 100 the linear layer is the paper's Linear(1100 -> 768)."""

    def __init__(self, in_dim, channels, size):
        super().__init__()
        if size != 64:
            raise MedxganError(f"gan.arch=paper exists for 64x64 images only, got {size}")
        self.fc = nn.Linear(in_dim, 768)
        layers = []
        for cin, cout in ((768, 384), (384, 256), (256, 192)):
            layers += [nn.ConvTranspose2d(cin, cout, 5, 2, 0, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(192, channels, 8, 2, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return torch.tanh(self.net(self.fc(z).view(z.shape[0], 768, 1, 1)))


class Discriminator(nn.Module):
    """Unconditional D (as in Eq. 4). ``medxgan``: strided 4x4 convs with spectral norm and
    LeakyReLU, no BatchNorm; ``paper``: the official repository's AC-GAN-style D."""

    def __init__(self, cfg: GANConfig, size: int, channels: int):
        super().__init__()
        sn = spectral_norm if cfg.d_norm == "spectral" else (lambda m: m)
        if cfg.arch == "paper":
            if size != 64:
                raise MedxganError(f"gan.arch=paper exists for 64x64 images only, got {size}")
            spec = [(channels, 16, 2, False), (16, 32, 1, True), (32, 64, 2, True), (64, 128, 1, True),
                    (128, 256, 2, True), (256, 512, 1, True)]
            layers = []
            for cin, cout, stride, bn in spec:
                layers.append(sn(nn.Conv2d(cin, cout, 3, stride, 1, bias=False)))
                if bn:
                    layers.append(nn.BatchNorm2d(cout))
                layers += [nn.LeakyReLU(0.2, inplace=True), nn.Dropout(0.5)]
            self.features = nn.Sequential(*layers)
            self.mbstd = None  # the official layout, unchanged
            self.embed = None
            self.head = nn.Sequential(nn.Flatten(), sn(nn.Linear(512 * (size // 8) ** 2, 1)))
            return
        n_down = max(1, int(math.log2(size)) - 2)  # down to a 3..4 px map
        layers, cin = [], channels
        side = size
        for i in range(n_down):
            cout = min(cfg.ndf * 2**i, cfg.ndf * 8)
            layers.append(sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=cfg.d_norm != "batch")))
            if cfg.d_norm == "batch" and i > 0:  # DCGAN: no BN on the first layer
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin, side = cout, side // 2
        self.features = nn.Sequential(*layers)
        self.mbstd = MinibatchStd(cfg.d_mbstd_group) if cfg.d_mbstd_group > 1 else None
        extra = 1 if self.mbstd is not None else 0
        self.head = nn.Sequential(nn.Flatten(), sn(nn.Linear((cin + extra) * side * side, 1)))
        # projection term <embed(y), spatially averaged features>: one learnt direction per class
        self.embed = sn(nn.Embedding(2, cin + extra)) if cfg.d_conditional else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """[B,C,H,W] (and, for a conditional D, binary class labels [B]) -> [B] realness logits."""
        h = self.features(x)
        if getattr(self, "mbstd", None) is not None:
            h = self.mbstd(h)
        out = self.head(h).squeeze(1)
        if getattr(self, "embed", None) is not None:
            if y is None:
                raise MedxganError("this discriminator is class-conditional (gan.d_conditional): give the labels")
            out = out + (self.embed(y.long()) * h.mean(dim=(2, 3))).sum(1)
        return out


class MinibatchStd(nn.Module):
    """Appends the mean feature standard deviation over groups of ``group`` images as one more
    channel (Karras et al. 2018, ProGAN). A generator that draws the same anatomy for every z1
    gives a tell-tale low value, so D can punish mode collapse — which a plain D cannot see."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B,C,H,W] -> [B,C+1,H,W]
        b, c, hh, ww = h.shape
        g = min(self.group, b)
        while b % g:  # the largest group size <= self.group that divides the batch
            g -= 1
        std = h.float().reshape(g, b // g, c, hh, ww).var(dim=0, unbiased=False).add(1e-8).sqrt()
        std = std.mean(dim=(1, 2, 3))  # [B/g] one number per group
        std = std.repeat(g)[:, None, None, None].expand(b, 1, hh, ww).to(h.dtype)
        return torch.cat([h, std], dim=1)


def build_generator(cfg: GANConfig, size: int, channels: int) -> Generator:
    return Generator(cfg, size, channels)


def build_discriminator(cfg: GANConfig, size: int, channels: int) -> Discriminator:
    return Discriminator(cfg, size, channels)


class EMA:
    """Exponential moving average of G's parameters *and* floating-point buffers.

    BatchNorm running statistics are averaged with the same decay: copying the live statistics
    next to averaged weights mismatches them and the EMA generator draws garbage."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None):
        d = self.decay if decay is None else decay
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            if b.is_floating_point():
                b_ema.lerp_(b, 1 - d)
            else:
                b_ema.copy_(b)
