"""Realism of generated images, measured offline (no downloaded networks).

A generator can please the classifier with noise (high generated accuracy, no anatomy), so
generated accuracy is always reported beside a realism figure:

* **C2ST** — classifier two-sample test (Lopez-Paz & Oquab 2017): a fresh small CNN is trained
  to tell held-out real images from generated ones; its accuracy on images it did not train on
  is 0.5 when the two are indistinguishable and 1.0 when every fake is spotted.
* **Fréchet distance** in the feature space of a CNN trained here by self-supervised rotation
  prediction on the real training split (see :func:`train_feature_network`), reported beside
  the real-vs-real distance as its floor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medxgan.config import ClassifierConfig
from medxgan.models.classifier import build_classifier


@torch.no_grad()
def sample_images(generator, n: int, seed: int = 0, batch_size: int = 256, positive_fraction: float = 0.5) -> torch.Tensor:
    """``n`` generated images [n,C,H,W], a ``positive_fraction`` of them with z2 ~ N(0,I)."""
    device = next(generator.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = (torch.rand(b, generator=gen) < positive_fraction).long()
        out.append(generator(generator.sample_z1(b, gen).to(device), generator.sample_code(y, gen).to(device)).cpu())
    return torch.cat(out)


def c2st_accuracy(real: torch.Tensor, fake: torch.Tensor, epochs: int = 8, seed: int = 0, width: int = 16,
                  device=None) -> dict:
    """Classifier two-sample test. ``real``/``fake`` [N,C,H,W] in [-1,1]; equal numbers of each
    are used, half of each to train a fresh CNN and half to measure its accuracy. ``device``:
    where the CNN trains (default CPU).

    Returns {accuracy, n_test}: accuracy on the held-out halves (0.5 = indistinguishable)."""
    n = min(len(real), len(fake))
    g = torch.Generator().manual_seed(seed)
    real, fake = real[torch.randperm(len(real), generator=g)[:n]], fake[torch.randperm(len(fake), generator=g)[:n]]
    half = n // 2
    x_train = torch.cat([real[:half], fake[:half]])
    y_train = torch.cat([torch.ones(half), torch.zeros(half)])
    x_test = torch.cat([real[half:], fake[half:]])
    y_test = torch.cat([torch.ones(n - half), torch.zeros(n - half)])
    _, c, h, _ = real.shape
    device = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        net = build_classifier(ClassifierConfig(width=width, depth=3, dropout=0.0), h, c).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.binary_cross_entropy_with_logits(net.positive_logit(x_train[idx].to(device)), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net.positive_logit(x_test[i : i + 256].to(device)).cpu() for i in range(0, len(x_test), 256)]) > 0
    return {"accuracy": float((pred.float() == y_test).float().mean()), "n_test": int(len(y_test))}


# --- Fréchet distance in the feature space of a network trained here ------------------------
#
# FID needs an ImageNet Inception network, which medical images are far from and which this
# project does not download. Instead a small VGG-style CNN is trained, seeded, on the real
# *training* split with a self-supervised task — predicting which of four rotations (0/90/180/270°)
# was applied (Gidaris et al. 2018) — so its features describe anatomy and layout without using
# the class labels the explained classifier was trained on. The Fréchet distance is computed on its
# global-average-pooled penultimate features. Because the absolute value depends on this network,
# it is always reported beside the real-vs-real distance (training images vs held-out images, same
# sample size): the floor that a perfect generator would reach.

ROTATIONS = 4


class RotationFeatureNet(torch.nn.Module):
    """VGG-style conv blocks, global average pool -> features; a linear head predicts the rotation."""

    def __init__(self, channels: int, size: int, width: int = 16, depth: int = 3):
        super().__init__()
        from medxgan.models.classifier import VGGCompact

        depth = max(1, min(depth, size.bit_length() - 1))  # at least a 1x1 map after the last pool
        vgg = VGGCompact(channels, ROTATIONS, width=width, depth=depth, dropout=0.0, size=size)
        self.features = torch.nn.Sequential(vgg.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = vgg.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,C,H,W] in [-1,1] -> [B,4] rotation logits
        return self.head(self.features(x))


def _rotated_batch(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randint(0, ROTATIONS, (len(x),), generator=gen)
    rotated = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k)])
    return rotated, k


def train_feature_network(images: torch.Tensor, epochs: int = 6, seed: int = 0, width: int = 16,
                          batch_size: int = 64, device=None) -> RotationFeatureNet:
    """Train the realism feature network on real images by rotation prediction (self-supervised).

    Args:
        images: [N,C,H,W] in [-1,1], square; the real *training* split (never the held-out images
            the distance is measured on).
        epochs, seed, width, batch_size: training budget; the result is a function of ``seed``.
        device: where to train (default CPU).

    Returns:
        The trained network in eval mode, frozen, on CPU.
    """
    device = torch.device(device or "cpu")
    _, c, h, w = images.shape
    if h != w:
        raise ValueError("rotation prediction needs square images")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        net = RotationFeatureNet(c, h, width=width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(perm), batch_size):
            x, k = _rotated_batch(images[perm[i : i + batch_size]], gen)
            loss = F.cross_entropy(net(x.to(device)), k.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.cpu().eval().requires_grad_(False)


@torch.no_grad()
def extract_features(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """[N,D] float64 penultimate features of ``images`` [N,C,H,W] in [-1,1]."""
    device = next(net.parameters()).device
    feats = [net.features(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(feats)


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N,D] and [M,D]:
    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the FID formula, any feature space).

    Returns a float >= 0 (tiny negative round-off is clipped to 0)."""
    import warnings

    import numpy as np
    from scipy import linalg

    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs two [N,D] arrays with N >= 2 and the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    if min(len(a), len(b)) <= a.shape[1]:
        # Fewer samples than dimensions: the covariances are singular; regularise as pytorch-fid does.
        offset = np.eye(a.shape[1]) * 1e-6
        cov_a, cov_b = cov_a + offset, cov_b + offset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # near-singular products are expected; the result is checked
        covmean = np.atleast_2d(linalg.sqrtm(cov_a @ cov_b))
    if not np.isfinite(covmean).all():
        raise ValueError("frechet_distance: the covariance product has no finite square root")
    covmean = np.real(covmean)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)
