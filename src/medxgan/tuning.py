"""Per-image generator tuning after the inversion: pivotal tuning (Roich et al., ACM TOG 2022)
with medXGAN's two constraints on the image's negative realization.

The inversion (Eq. 5) moves only the latents. A generator trained for minutes on a CPU cannot
reproduce a held-out scan from its latents alone (on the demo's phantoms: SSIM about 0.6, and no
lesion drawn where the scan has it), so the difference map G(z1, z2) - G(z1, neg) shows where
*the generator* puts pathology, not where this image has it (docs/RESULTS.md). Tuning takes the
inversion's latents as a fixed pivot and fine-tunes a copy of G's weights for this one image:

    G'(z1, z2)  ≈ x                           mean (G'(z1, z2) - x)^2 + cls_weight * KL(P_C(x) || P_C(G'(z1, z2)))
    G'(z1, neg) is negative                   neg_weight * -log(1 - P_C(G'(z1, neg)))
    G'(z1, neg) is x wherever it can be       proximity_weight * mean |x - G'(z1, neg)|  (or a log penalty)
    what changes, changes in smooth regions   smooth_weight * TV(G'(z1, z2) - G'(z1, neg))
    (optional) the two differ little          change_weight * mean |G'(z1, z2) - G'(z1, neg)|

The first line is Eq. 5's objective, now over weights; the second is the inversion's negative
realization term. The third is the proximity term of counterfactual explanations (Wachter et al.,
2017): the negative realization should be the image itself, up to a sparse (L1) change. It is
measured against x, not against the reconstruction, so the negative is pulled onto the scan's own
texture and noise as well, which also helps the shared weights fit the scan. The fourth
(anisotropic total variation: the mean absolute difference of neighbouring pixels of the change,
across rows plus across columns) asks that change to be a few connected regions rather than
speckle: without it, the scanner noise that G' fits differs between the two codes, and the
difference map's maximum lands on an isolated pixel beside the lesion about half the time
(docs/RESULTS.md). The last term is session 10's change prior, kept for reproducing its runs (0 by
default). Together they make the tuned generator's negative realization the image with its
pathology removed as the frozen classifier sees it, and the difference map the part that was
removed. The classifier is never changed, so every probability, LIG and IG map is still about the
user's classifier; what is image-specific is the generator that the latent methods use.

Optionally (``neg_views`` = K > 0, ``--tune-neg-views K``) the negative term is averaged over the
negative realization and K of the classifier's own training augmentations of it (flip, a few
pixels' shift, intensity jitter; expectation over transformation, Athalye et al., ICML 2018), drawn
afresh every step from ``seed``. A negative realization that fools the classifier only at one exact
pixel alignment does not satisfy it; one with the lesion removed does. Off by default: it costs K
more classifier passes per step, and on the 100 phantom test positives it did not move the
pointing game (docs/RESULTS.md, "Sessions 15–17").

Two more options, off by default, were measured on 50 validation positives without a gain
(docs/RESULTS.md, "Session 22"): ``proximity_sigma`` applies the log proximity to |change| averaged
over a Gaussian window, so that a region's depth of change, not a pixel's, gets cheaper; and
``neg_target`` stops the negative term once P_C(G'(z1, neg)) is below the target.

Cost: ``steps`` forward and backward passes of G (twice: both codes) and C, one image at a time
(every image gets its own copy of the weights). Off unless asked for (``explain --tune-steps``,
``evaluate --tune-steps``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from medxgan.augment import classifier_augment
from medxgan.errors import MedxganError
from medxgan.inversion import binary_entropy, frozen


@dataclass(frozen=True)
class TuningConfig:
    steps: int = 1500  # Adam steps on the copy's weights, per image
    lr: float = 1e-4  # constant Adam learning rate (the weights, not the latents: keep it small)
    cls_weight: float = 1.0  # the Eq. 5 classifier term on G'(z1, z2)
    neg_weight: float = 1.0  # -log(1 - P_C(G'(z1, neg)))
    proximity_weight: float = 0.2  # mean |x - G'(z1, neg)| in [-1,1] units
    smooth_weight: float = 0.3  # total variation of G'(z1, z2) - G'(z1, neg)
    change_weight: float = 0.0  # mean |G'(z1, z2) - G'(z1, neg)| (session 10's recipe: 0.2, with the two above at 0)
    # 0: the proximity term is mean |x - G'(z1, neg)| (L1). delta > 0: mean delta * log(1 + |x - G'(z1, neg)| / delta),
    # the same for changes much smaller than delta, ever cheaper per unit for larger ones (a log penalty, the
    # concave surrogate of counting changed pixels; Candes, Wakin & Boyd 2008): one deep change over two shallow ones
    proximity_delta: float = 0.0
    # 0: the log penalty acts on each pixel's |change|. sigma > 0 (with delta > 0): on the change's local mean
    # magnitude, |change| averaged over a Gaussian window of sigma px, so that the penalty is concave in the depth of
    # a *region's* change: a compact deep change costs less than the same change spread thin or split over regions
    proximity_sigma: float = 0.0
    # 0: the negative term pushes P_C(G'(z1, neg)) toward 0 without end. p in (0, 1): it stops at p (a hinge on
    # -log(1 - P) at -log(1 - p); the confidence margin of Carlini & Wagner 2017), so that once the negative
    # realization is negative enough only the proximity and smoothness terms act on it
    neg_target: float = 0.0
    neg_views: int = 0  # 0: the negative term on G'(z1, neg) alone; K: its mean over it and K augmented views
    seed: int = 0  # seeds the augmented views' draws (the same image and seed: the same tuned weights)

    def __post_init__(self):
        if self.steps < 1:
            raise MedxganError(f"tuning steps must be positive, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MedxganError(f"tuning lr must be a positive number, got {self.lr}")
        weights = {"cls_weight": self.cls_weight, "neg_weight": self.neg_weight, "proximity_weight": self.proximity_weight,
                   "smooth_weight": self.smooth_weight, "change_weight": self.change_weight}
        bad = [k for k, w in weights.items() if not (w >= 0 and math.isfinite(w))]
        if bad:
            raise MedxganError(f"tuning {', '.join(bad)} must be non-negative numbers")
        if not (self.proximity_delta >= 0 and math.isfinite(self.proximity_delta)):
            raise MedxganError(f"tuning proximity_delta must be a non-negative number (0 = L1), got {self.proximity_delta}")
        if not (self.proximity_sigma >= 0 and math.isfinite(self.proximity_sigma)):
            raise MedxganError(f"tuning proximity_sigma must be a non-negative number of pixels, got {self.proximity_sigma}")
        if self.proximity_sigma > 0 and not self.proximity_delta > 0:
            raise MedxganError("tuning proximity_sigma needs proximity_delta > 0 (averaging |change| before an L1 "
                               "penalty changes nothing)")
        if not (0 <= self.neg_target < 1):
            raise MedxganError(f"tuning neg_target must be a probability in [0, 1) (0 = off), got {self.neg_target}")
        if not (isinstance(self.neg_views, int) and 0 <= self.neg_views <= 256):
            raise MedxganError(f"tuning neg_views must be an integer from 0 to 256, got {self.neg_views}")


def tuning_settings(cfg: TuningConfig) -> dict:
    """The config as a dict for run fingerprints: without the augmented views' fields, the log
    proximity's delta and sigma and the negative target while they are off, so that runs made
    before they existed keep their fingerprint (and resume)."""
    d = dataclasses.asdict(cfg)
    for key in ("proximity_delta", "proximity_sigma", "neg_target"):
        if not d[key]:
            d.pop(key)
    if not cfg.neg_views:
        d.pop("neg_views"), d.pop("seed")
    return d


def tuning_loss(G, C, z1: torch.Tensor, z2: torch.Tensor, x: torch.Tensor, prob_target: torch.Tensor,
                cfg: TuningConfig, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [N], G(z1, z2), G(z1, neg)) of the objective in the module docstring, per row.

    The classifier term is the BCE minus its floor H(P_C(x)), as in
    :func:`medxgan.inversion.inversion_loss`, so that a perfect match scores 0. With
    ``cfg.neg_views`` = K > 0 the negative term is the mean of -log(1 - P_C) over the negative
    realization and K draws of :func:`medxgan.augment.classifier_augment` of it (``generator``
    draws them).
    """
    recon = G(z1, z2)
    negative = G(z1, G.negative_code(z2))
    loss = (recon - x).pow(2).flatten(1).mean(1)
    if cfg.cls_weight > 0:
        bce = F.binary_cross_entropy_with_logits(C.positive_logit(recon), prob_target, reduction="none")
        loss = loss + cfg.cls_weight * (bce - binary_entropy(prob_target))
    if cfg.neg_weight > 0:
        term = negative_term(C, negative, cfg.neg_views, generator)
        if cfg.neg_target > 0:
            term = F.relu(term + math.log1p(-cfg.neg_target))
        loss = loss + cfg.neg_weight * term
    if cfg.proximity_weight > 0:
        loss = loss + cfg.proximity_weight * proximity(x - negative, cfg.proximity_delta, cfg.proximity_sigma)
    if cfg.smooth_weight > 0:
        loss = loss + cfg.smooth_weight * total_variation(recon - negative)
    if cfg.change_weight > 0:
        loss = loss + cfg.change_weight * (recon - negative).abs().flatten(1).mean(1)
    return loss, recon, negative


def negative_term(C, negative: torch.Tensor, views: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """[N] -log(1 - P_C(negative)); with ``views`` = K > 0, its mean over the image and K of the
    classifier's training augmentations of it (expectation over transformation, Athalye et al.,
    ICML 2018). A change that turns the classifier negative only at one exact pixel alignment
    does not survive a flip, a few pixels' shift or an intensity jitter; removing the lesion does."""
    if views <= 0:
        return F.softplus(C.positive_logit(negative))
    n = negative.shape[0]
    augmented = classifier_augment(negative.repeat(views, 1, 1, 1), generator)
    logits = C.positive_logit(torch.cat([negative, augmented]))
    return F.softplus(logits).view(views + 1, n).mean(0)


def proximity(change: torch.Tensor, delta: float = 0.0, sigma: float = 0.0) -> torch.Tensor:
    """[B] cost of a change of [B,C,H,W] pixels: mean |change| (delta = 0), or mean
    delta * log(1 + m / delta) with m = |change|, which equals |change| to first order for changes much
    smaller than delta and grows only logarithmically beyond it, so that deepening a change already made
    costs less than starting another elsewhere. With ``sigma`` > 0, m is |change| averaged over a
    Gaussian window of sigma pixels (:func:`local_mean`): the concavity is then in a region's depth of
    change, and a thin or scattered change (a rim, speckle, a faint shift over much of the scan) pays
    nearly its full L1 cost while a compact deep one is cheap."""
    if delta <= 0:
        return change.abs().flatten(1).mean(1)
    magnitude = change.abs() if sigma <= 0 else local_mean(change.abs(), sigma)
    return (delta * torch.log1p(magnitude / delta)).flatten(1).mean(1)


def local_mean(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B,C,H,W] Gaussian-weighted local mean of [B,C,H,W] maps (separable kernel truncated at 4 sigma,
    edges mirrored), differentiable."""
    radius = min(int(math.ceil(4 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return y.view(b, c, h, w)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """[B] anisotropic total variation of [B,C,H,W] maps: the mean absolute difference between
    vertically neighbouring pixels plus that between horizontally neighbouring pixels."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1))


def tune_generator(G: nn.Module, C: nn.Module, x: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                   cfg: TuningConfig = TuningConfig(), progress: bool = False) -> nn.Module:
    """A copy of ``G`` fine-tuned so that it reproduces the one image ``x`` at the pivot (z1, z2).

    Args:
        G: the trained generator; it is not modified.
        C: the frozen classifier.
        x: [1,C,H,W] in [-1,1], the image, on the models' device.
        z1, z2: [1,z1_dim], [1,code_dim], the image's latents from :func:`medxgan.inversion.invert`.

    Returns:
        The tuned copy, in eval mode with frozen parameters (BatchNorm keeps G's running
        statistics throughout: the copy is tuned in eval mode).
    """
    if x.ndim != 4 or x.shape[0] != 1 or z1.shape[0] != 1 or z2.shape[0] != 1:
        raise MedxganError(f"tune_generator tunes one image at a time: got images {tuple(x.shape)}, "
                           f"z1 {tuple(z1.shape)}, z2 {tuple(z2.shape)}")
    if not torch.isfinite(x).all():
        raise MedxganError("tune_generator: the image contains NaN or Inf")
    tuned = copy.deepcopy(G).eval()
    with frozen(C):
        x, z1, z2 = x.detach().float(), z1.detach().float(), z2.detach().float()
        with torch.no_grad():
            prob_target = C.positive_prob(x)
        params = [p for p in tuned.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        views = torch.Generator().manual_seed(cfg.seed) if cfg.neg_views > 0 else None
        steps = range(cfg.steps)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="tune", leave=False)
        with torch.enable_grad():
            for _ in steps:
                loss, _, _ = tuning_loss(tuned, C, z1, z2, x, prob_target, cfg, views)
                if not torch.isfinite(loss).all():
                    raise MedxganError("generator tuning diverged (the loss became NaN or Inf); lower --tune-lr")
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
    return tuned.requires_grad_(False)


__all__ = ["TuningConfig", "local_mean", "negative_term", "proximity", "total_variation", "tune_generator", "tuning_loss", "tuning_settings"]
