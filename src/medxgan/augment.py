"""Batch-level augmentations, vectorised (no per-sample Python loops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_translate(x: torch.Tensor, max_frac: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_frac`` of its side, filling with -1 (black). Differentiable
    in ``x`` (DiffAugment-style translation for D; also light augmentation for the classifier)."""
    b, _, h, w = x.shape
    max_shift = max(1, int(round(h * max_frac)))
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).to(x.device)
    pad = F.pad(x, (max_shift, max_shift, max_shift, max_shift), value=-1.0)
    ys = (torch.arange(h, device=x.device)[None, :] + max_shift - shifts[:, :1])  # [B,H]
    xs = (torch.arange(w, device=x.device)[None, :] + max_shift - shifts[:, 1:])  # [B,W]
    idx_y = ys[:, None, :, None].expand(b, x.shape[1], h, pad.shape[3])
    rows = torch.gather(pad, 2, idx_y)
    idx_x = xs[:, None, None, :].expand(b, x.shape[1], h, w)
    return torch.gather(rows, 3, idx_x)


def classifier_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light augmentation for classifier training: horizontal flip, small shift, intensity jitter."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    x = random_translate(x, 0.0625, generator)
    scale = (1 + 0.1 * (2 * torch.rand(b, generator=generator) - 1)).to(x.device)[:, None, None, None]
    shift = (0.05 * (2 * torch.rand(b, generator=generator) - 1)).to(x.device)[:, None, None, None]
    return ((x + 1) * scale - 1 + shift).clamp(-1, 1)
