"""Realism of generated images, measured offline (no downloaded networks).

A generator can please the classifier with noise (high generated accuracy, no anatomy), so
generated accuracy is always reported beside a realism figure:

* **C2ST** — classifier two-sample test (Lopez-Paz & Oquab 2017): a fresh small CNN is trained
  to tell held-out real images from generated ones; its accuracy on images it did not train on
  is 0.5 when the two are indistinguishable and 1.0 when every fake is spotted.
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


def c2st_accuracy(real: torch.Tensor, fake: torch.Tensor, epochs: int = 8, seed: int = 0, width: int = 16) -> dict:
    """Classifier two-sample test. ``real``/``fake`` [N,C,H,W] in [-1,1]; equal numbers of each
    are used, half of each to train a fresh CNN and half to measure its accuracy.

    Returns {accuracy, n_test}: accuracy on the held-out halves (0.5 = indistinguishable)."""
    n = min(len(real), len(fake))
    g = torch.Generator().manual_seed(seed)
    real, fake = real[torch.randperm(len(real), generator=g)[:n]], fake[torch.randperm(len(fake), generator=g)[:n]]
    half = n // 2
    x_train = torch.cat([real[:half], fake[:half]])
    y_train = torch.cat([torch.ones(half), torch.zeros(half)])
    x_test = torch.cat([real[half:], fake[half:]])
    y_test = torch.cat([torch.ones(n - half), torch.zeros(n - half)])
    torch.manual_seed(seed)
    _, c, h, _ = real.shape
    net = build_classifier(ClassifierConfig(width=width, depth=3, dropout=0.0), h, c)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.binary_cross_entropy_with_logits(net.positive_logit(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net.positive_logit(x_test[i : i + 256]) for i in range(0, len(x_test), 256)]) > 0
    return {"accuracy": float((pred.float() == y_test).float().mean()), "n_test": int(len(y_test))}
