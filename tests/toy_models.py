"""Tiny randomly initialised G and C shared by the explanation and inversion tests."""

import torch
import torch.nn as nn

from medxgan.config import ClassifierConfig, GANConfig
from medxgan.models import build_classifier, build_generator


def calibrate_batchnorm(model, *inputs):
    """Set BN running statistics from one batch so randomly initialised nets give images with
    contrast (default stats 0/1 leave a random G nearly flat)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        out = model(*inputs)
    model.eval()
    return out


def tiny_models(size=16, channels=1, code="continuous", n_logits=1, seed=0, pathology="joint"):
    torch.manual_seed(seed)
    G = build_generator(GANConfig(z1_dim=8, z2_dim=4, ngf=8, code=code, pathology=pathology), size, channels)
    C = build_classifier(ClassifierConfig(width=8, depth=2, n_logits=n_logits), size, channels)
    gen = torch.Generator().manual_seed(seed + 1)
    z1 = G.sample_z1(128, gen)
    z2 = G.sample_code(torch.randint(0, 2, (128,), generator=gen), gen)
    calibrate_batchnorm(C, calibrate_batchnorm(G, z1, z2))
    return G, C


def lesion_images(n=4, size=16, seed=0):
    """[n,1,size,size] background in [-1,0] with a 4x4 lesion at 1.0; masks [n,1,size,size] bool."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=gen) - 1.0
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, size - 4, (2,), generator=gen).tolist()
        masks[i, :, r : r + 4, c : c + 4] = True
    images[masks] = 1.0
    return images, masks
