"""Latent inversion, paper Eq. 5: find (z1, z2) whose image G(z1, z2) reproduces a real image x.

    argmin_{z1, z2}  MSE(G(z1, z2), x) + cls_weight * BCE(P_C(G(z1, z2)), P_C(x))

The pixel term matches the anatomy, the classifier term matches what C thinks of the image, so
that G(z1, negative_code(z2)) is a negative realization *of this image* (paper Sec. 3.1).

By default one term beyond Eq. 5 is added, ``neg_weight * -log(1 - P_C(G(z1, negative_code(z2))))``:
an imperfect G otherwise lets the optimiser put part of the lesion into the anatomy code, and the
"negative realization" keeps it. ``InversionConfig(neg_weight=0)`` is Eq. 5 exactly, and
``InversionConfig.paper()`` the paper's whole protocol.

All images of a batch and all restarts are optimised together as one batch of ``B * R`` latent
rows. Every row has its own loss, Adam moments and step count, so the rows are independent
problems that merely share forward passes: a row's trajectory does not depend on which other
images or restarts are in the batch. Rows that stop improving are frozen (no longer evaluated),
and the best restart of each image (lowest loss) is returned.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from medxgan.errors import MedxganError

_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class InversionConfig:
    steps: int = 1000  # hard cap on optimisation steps
    lr: float = 0.05  # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)
    restarts: int = 4  # independent starts per image; the lowest-loss one is kept
    schedule: str = "cosine"  # cosine (decays to 0 at ``steps``) | constant
    patience: int = 100  # freeze a row after this many steps without relative improvement; 0 = never
    min_delta: float = 1e-4  # relative improvement of the best loss that resets the patience counter
    cls_weight: float = 1.0  # weight of the BCE term of Eq. 5 (0 = pixels only)
    # Weight of a term beyond Eq. 5: -log(1 - P_C(G(z1, negative code))), which asks the image's
    # negative realization to be classified negative, so that the inversion cannot hide pathology
    # in the anatomy code z1 (on the demo's phantoms: negative realizations with P < 0.1 71 % ->
    # 100 %, monotone interpolations 64 % -> 96 %, SSIM -0.005; docs/RESULTS.md). 0 = Eq. 5 as
    # published (``paper()`` sets it).
    neg_weight: float = 1.0
    # Weight of an optional sparsity prior on the explanation itself: mean |G(z1, z2) - G(z1, neg)|
    # (in [-1,1] units), the smallest change that makes the image positive — the counterfactual
    # reading of the difference map. 0 (default) = off.
    change_weight: float = 0.0
    # Weight of an optional pull of the latents toward a reference, mean over coordinates of
    # (z - reference)^2: the encoder's guess E(x) when the inversion starts from it (``explain
    # --encoder``), else the prior mean 0 (a Gaussian prior, i.e. MAP inversion). Eq. 5's minimum is
    # a flat valley of latents that reproduce the image equally well; this term picks one point of
    # it, so that starts near the guess end at the same latent (hybrid convergence, docs/RESULTS.md).
    # 0 (default for random starts) = off.
    anchor_weight: float = 0.0
    # Optional pixels-only warm-up before the objective above: ``warmup_steps`` Adam steps on the
    # MSE alone (plus the anchor term, if any) at ``warmup_lr`` (cosine), every restart; then the
    # lowest-MSE restart of each image continues alone with the full objective for ``steps``
    # steps. A warm-up step runs G only (no classifier pass: about half the cost of an Eq. 5 step),
    # and the pixel fit is where the time goes; the Eq. 5 phase then matches the classifier's
    # output (on Br35H, from the encoder's start and batched: the paper protocol's mean SSIM in
    # 15 % of its steps and 1/35 of its time, docs/BENCHMARKS.md). 0 (default) = no warm-up.
    warmup_steps: int = 0
    warmup_lr: float = 0.1
    init: str = "random"  # random: z ~ N(0, I) | zeros: restart 0 starts at the prior mean
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.restarts < 1:
            raise MedxganError("inversion.steps and inversion.restarts must be positive")
        if not self.lr > 0 or not self.warmup_lr > 0:
            raise MedxganError(f"inversion.lr and inversion.warmup_lr must be positive, got {self.lr} and {self.warmup_lr}")
        if self.warmup_steps < 0:
            raise MedxganError(f"inversion.warmup_steps must be non-negative, got {self.warmup_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise MedxganError(f"inversion.betas must be two numbers in [0, 1), got {self.betas}")
        if self.schedule not in ("cosine", "constant"):
            raise MedxganError(f"inversion.schedule must be cosine or constant, got {self.schedule!r}")
        if self.init not in ("random", "zeros"):
            raise MedxganError(f"inversion.init must be random or zeros, got {self.init!r}")
        if not all(v >= 0 for v in (self.patience, self.min_delta, self.cls_weight, self.neg_weight, self.change_weight,
                                    self.anchor_weight)):  # NaN fails too
            raise MedxganError("inversion.patience, min_delta, cls_weight, neg_weight, change_weight and anchor_weight "
                               "must be non-negative")

    @classmethod
    def paper(cls) -> "InversionConfig":
        """The paper's protocol (Sec. 5): N(0, I) init, Adam lr 0.01, betas (0.5, 0.999),
        a fixed 10,000 steps, one run, constant lr, no early stopping, Eq. 5 alone (no negative
        realization term)."""
        return cls(steps=10_000, lr=0.01, betas=(0.5, 0.999), restarts=1, schedule="constant",
                   patience=0, init="random", neg_weight=0.0)


@dataclass
class InversionResult:
    """Per-image outcome of :func:`invert` (best restart), on the device of the input images."""

    z1: torch.Tensor  # [B,z1_dim]
    z2: torch.Tensor  # [B,code_dim]
    reconstruction: torch.Tensor  # [B,C,H,W] in [-1,1], G(z1, z2)
    loss: torch.Tensor  # [B] Eq. 5 at (z1, z2), BCE taken relative to its floor (see inversion_loss)
    mse: torch.Tensor  # [B] pixel MSE in [-1,1] units
    psnr: torch.Tensor  # [B] dB, on [0,1]-scaled images
    ssim: torch.Tensor  # [B] scikit-image SSIM on [0,1]-scaled images
    prob_target: torch.Tensor  # [B] P_C(positive | x)
    prob_reconstruction: torch.Tensor  # [B] P_C(positive | G(z1, z2))
    delta_prob: torch.Tensor  # [B] |P_C(recon) - P_C(x)|
    steps_run: torch.Tensor  # [B] optimisation steps the kept restart ran
    restart_loss: torch.Tensor  # [B,R] best loss of every restart
    loss_curve: torch.Tensor  # [T,B] loss of the kept restart per step (frozen steps repeat the last)


@contextmanager
def frozen(*modules: nn.Module | None):
    """Eval mode and no parameter gradients inside the block; every submodule's mode and every
    parameter's ``requires_grad`` are restored afterwards (BatchNorm must use running statistics
    so that rows of a batch stay independent)."""
    saved = []
    for module in modules:
        if module is None:
            continue
        saved.append((
            [(m, m.training) for m in module.modules()],
            [(p, p.requires_grad) for p in module.parameters()],
        ))
        module.eval().requires_grad_(False)
    try:
        yield
    finally:
        for modes, flags in saved:
            for m, training in modes:
                m.training = training
            for p, flag in flags:
                p.requires_grad_(flag)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -(p log p + (1-p) log(1-p)) in nats, 0 at p = 0 and p = 1 (a classifier saturated in
    float32 gives exactly 1.0; 0 * log 0 must then count as 0, not NaN)."""
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def inversion_loss(G, C, z1, z2, x, prob_target, cls_weight: float = 1.0, neg_weight: float = 0.0,
                   change_weight: float = 0.0):
    """Per-row Eq. 5. ``x`` [N,C,H,W] in [-1,1], ``prob_target`` [N] = P_C(x) (detached).

    Returns (loss [N], mse [N], reconstruction [N,C,H,W]). The BCE is between probabilities,
    computed from C's positive log-odds for numerical stability, minus its floor H(P_C(x)) — the
    binary entropy of the soft target — i.e. KL(P_C(x) || P_C(G(z))). The shift is a constant per
    image, so the argmin and the gradients are those of Eq. 5, but the loss reaches 0 at a perfect
    match, which makes the relative plateau test of early stopping meaningful.

    ``neg_weight > 0`` adds ``neg_weight * -log(1 - P_C(G(z1, negative_code(z2))))`` (not part of
    Eq. 5; its floor is 0): one more G and C forward pass per step. ``change_weight > 0`` adds
    ``change_weight * mean |G(z1, z2) - G(z1, negative_code(z2))|`` (shares that G pass).
    """
    recon = G(z1, z2)
    mse = (recon - x).pow(2).flatten(1).mean(1)
    loss = mse
    if cls_weight > 0:
        bce = F.binary_cross_entropy_with_logits(C.positive_logit(recon), prob_target, reduction="none")
        loss = loss + cls_weight * (bce - binary_entropy(prob_target))
    if neg_weight > 0 or change_weight > 0:
        negative = G(z1, G.negative_code(z2))
        if neg_weight > 0:
            loss = loss + neg_weight * F.softplus(C.positive_logit(negative))  # -log(1 - sigmoid(logit))
        if change_weight > 0:
            loss = loss + change_weight * (recon - negative).abs().flatten(1).mean(1)
    return loss, mse, recon


def _adam_rows(z, grad, m, v, t, lr, betas):
    """One Adam step (torch.optim.Adam's update, eps outside the sqrt) on rows with their own
    step counts ``t`` [n]. All tensors [n, D] except ``t``; updates z, m, v in place."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    t = t.to(z.dtype)[:, None]
    bias1 = 1 - b1**t
    bias2 = 1 - b2**t
    z.sub_(lr / bias1 * m / (v.sqrt() / bias2.sqrt() + _ADAM_EPS))


def _initial_latents(G, n_images: int, cfg: InversionConfig, init, device, first_index: int | None = None) -> torch.Tensor:
    """[B*R, z1_dim + code_dim] starting rows, image-major (row = b * R + r).

    Continuous code: z1, z2 ~ N(0, I). Discrete code: z2 is optimised as a free 2-vector that
    starts at (0.5, 0.5), half way between the negative and positive one-hot codes.
    ``init="zeros"`` puts restart 0 at the prior mean; a given ``init`` (e.g. from an encoder)
    replaces restart 0. The other restarts are always random, drawn from ``cfg.seed``.
    """
    R = cfg.restarts
    discrete = getattr(G, "code", "continuous") == "discrete"
    if first_index is None:
        gen = torch.Generator().manual_seed(cfg.seed)
        z1 = torch.randn(n_images * R, G.z1_dim, generator=gen)
        z2 = torch.full((n_images * R, G.code_dim), 0.5) if discrete else torch.randn(n_images * R, G.code_dim, generator=gen)
    else:  # one stream per image, keyed by its index in the whole job: independent of batching
        z1, z2 = torch.empty(n_images * R, G.z1_dim), torch.full((n_images * R, G.code_dim), 0.5)
        for j in range(n_images):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + first_index + j)
            z1[j * R:(j + 1) * R] = torch.randn(R, G.z1_dim, generator=gen)
            if not discrete:
                z2[j * R:(j + 1) * R] = torch.randn(R, G.code_dim, generator=gen)
    first = torch.arange(n_images) * R
    if init is not None:
        z1_init, z2_init = (t.detach().to("cpu", torch.float32) for t in init)
        if z1_init.shape != (n_images, G.z1_dim) or z2_init.shape != (n_images, G.code_dim):
            raise MedxganError(
                f"inversion init must be z1 [{n_images},{G.z1_dim}] and z2 [{n_images},{G.code_dim}], "
                f"got {tuple(z1_init.shape)} and {tuple(z2_init.shape)}"
            )
        z1[first], z2[first] = z1_init, z2_init
    elif cfg.init == "zeros":
        z1[first] = 0
        if getattr(G, "code", "continuous") != "discrete":
            z2[first] = 0
    return torch.cat([z1, z2], dim=1).to(device)


def image_quality(reconstruction: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mse [B] in [-1,1] units, psnr [B] dB and ssim [B] on [0,1]-scaled images) of
    ``reconstruction`` against ``image``, both [B,C,H,W] in [-1,1]."""
    from skimage.metrics import structural_similarity

    mse = (reconstruction - image).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / (mse / 4))  # [-1,1] -> [0,1] divides the MSE by 4
    a = ((reconstruction.detach().float().cpu() + 1) / 2).clamp(0, 1).numpy()
    b = ((image.detach().float().cpu() + 1) / 2).clamp(0, 1).numpy()
    ssim = []
    for ra, rb in zip(a, b):
        if ra.shape[0] == 1:
            ssim.append(structural_similarity(ra[0], rb[0], data_range=1.0))
        else:
            ssim.append(structural_similarity(np.moveaxis(ra, 0, -1), np.moveaxis(rb, 0, -1),
                                              data_range=1.0, channel_axis=-1))
    return mse, psnr, torch.tensor(ssim, dtype=torch.float32, device=image.device)


def _anchor_refs(G, n_images: int, init, anchor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference [B, z1+code], coordinate mask [z1+code]) of the anchor term: ``anchor`` if
    given, else ``init``, else the prior mean (0; a discrete code's coordinates are left free)."""
    ref = anchor if anchor is not None else init
    mask = torch.ones(G.z1_dim + G.code_dim, device=device)
    if ref is None:
        if getattr(G, "code", "continuous") == "discrete":
            mask[G.z1_dim:] = 0
        return torch.zeros(n_images, G.z1_dim + G.code_dim, device=device), mask
    z1_ref, z2_ref = (t.detach().to(device, torch.float32) for t in ref)
    if z1_ref.shape != (n_images, G.z1_dim) or z2_ref.shape != (n_images, G.code_dim):
        raise MedxganError(f"inversion anchor must be z1 [{n_images},{G.z1_dim}] and z2 [{n_images},{G.code_dim}], "
                           f"got {tuple(z1_ref.shape)} and {tuple(z2_ref.shape)}")
    return torch.cat([z1_ref, z2_ref], dim=1), mask


def _anchor_term(z: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((z - ref).pow(2) * mask).sum(1) / mask.sum()


def _objective(G, C, z, d1, x, prob_target, cfg: InversionConfig, ref, mask):
    """(loss [N], mse [N], reconstruction) of the rows ``z`` [N, z1+code] under ``cfg``."""
    loss, mse, recon = inversion_loss(G, C, z[:, :d1], z[:, d1:], x, prob_target, cfg.cls_weight, cfg.neg_weight,
                                      cfg.change_weight)
    if cfg.anchor_weight > 0:
        loss = loss + cfg.anchor_weight * _anchor_term(z, ref, mask)
    return loss, mse, recon


def _optimise(G, C, z, x_rows, t_rows, ref_rows, mask, cfg: InversionConfig, n_images: int, R: int, progress: bool,
              trace, trace_every: int, step_offset: int):
    """Adam on the rows ``z`` [B*R, z1+code] (image-major) for ``cfg.steps`` steps with ``cfg``'s
    objective, schedule and early stopping. Returns (best_z, best_loss [B*R], steps run per row,
    loss curve [T, B*R])."""
    device, rows, d1 = z.device, z.shape[0], G.z1_dim
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    t = torch.zeros(rows, dtype=torch.long, device=device)  # Adam steps per row
    best_loss = torch.full((rows,), math.inf, device=device)
    best_z = z.clone()
    last_loss = torch.full((rows,), math.nan, device=device)
    stale = torch.zeros(rows, dtype=torch.long, device=device)
    active = torch.ones(rows, dtype=torch.bool, device=device)
    curve = []
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="invert", leave=False)
    for step in steps:
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        lr = cfg.lr if cfg.schedule == "constant" else cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        za = z[idx].requires_grad_(True)
        with torch.enable_grad():
            loss, _, _ = _objective(G, C, za, d1, x_rows[idx], t_rows[idx], cfg, ref_rows[idx], mask)
            (grad,) = torch.autograd.grad(loss.sum(), za)
        with torch.no_grad():
            loss = loss.detach()
            last_loss[idx] = loss
            # snapshot the iterate that produced the best loss (Adam with a constant lr wanders)
            better = loss < best_loss[idx]
            best_z[idx[better]] = za.detach()[better]
            improved = loss < best_loss[idx] * (1 - cfg.min_delta)
            best_loss[idx] = torch.minimum(best_loss[idx], loss)
            stale[idx] = torch.where(improved, torch.zeros_like(stale[idx]), stale[idx] + 1)
            t[idx] += 1
            zi, mi, vi = z[idx], m[idx], v[idx]
            _adam_rows(zi, grad, mi, vi, t[idx], lr, cfg.betas)
            z[idx], m[idx], v[idx] = zi, mi, vi
            if cfg.patience:
                active[idx[stale[idx] >= cfg.patience]] = False
            curve.append(last_loss.clone())
            if trace is not None and (step + 1) % trace_every == 0:
                keep = best_loss.view(n_images, R).argmin(1) + torch.arange(n_images, device=device) * R
                trace(step_offset + step + 1, best_z[keep, :d1].clone(), best_z[keep, d1:].clone())
    curve = torch.stack(curve) if curve else torch.zeros(0, rows, device=device)
    return best_z, best_loss, t, curve


def invert(G, C, x: torch.Tensor, cfg: InversionConfig = InversionConfig(), init=None,
           progress: bool = False, first_index: int | None = None,
           trace: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None, trace_every: int = 100,
           anchor=None) -> InversionResult:
    """Eq. 5: find latent codes (z1, z2) with G(z1, z2) ≈ x and P_C(G(z1, z2)) ≈ P_C(x).

    Args:
        G: a medxgan ``Generator`` (anything with ``G(z1, z2)``, ``z1_dim``, ``code_dim``, ``code``).
        C: a ``BinaryClassifier``.
        x: [B,C,H,W] in [-1,1], on the models' device.
        cfg: optimiser and stopping settings (``InversionConfig.paper()`` for the paper's protocol).
        init: optional (z1 [B,z1_dim], z2 [B,code_dim]) to start restart 0 from.
        progress: show a tqdm bar over steps.
        first_index: the index of ``x[0]`` in a larger job: random starts are then drawn per image
            from (cfg.seed, first_index + j), so an image's result does not depend on how the job
            was cut into batches or shared between processes. None: one stream for the batch.
        trace: optional ``trace(steps_done, z1 [B,z1_dim], z2 [B,code_dim])`` called after every
            ``trace_every`` steps with each image's best latents so far (lowest loss over its
            restarts), e.g. to record an SSIM-versus-time trajectory (``bench/inversion.py``). It
            runs inside the optimisation loop (its time counts in a wall-clock measurement unless
            the caller subtracts it) and is not called after every row has stopped early. With a
            warm-up, ``steps_done`` counts the warm-up's steps too, and during the warm-up "best"
            means lowest pixel loss.
        anchor: optional (z1 [B,z1_dim], z2 [B,code_dim]) reference of the ``cfg.anchor_weight``
            term; default ``init``, else 0. Give it separately when the start is a perturbed guess.

    Returns:
        :class:`InversionResult` of the lowest-loss restart of every image. G and C are used in
        eval mode with frozen parameters and are left as they were found. With
        ``cfg.warmup_steps``, ``restart_loss`` holds the warm-up's (pixel) losses, where the
        restarts competed, ``loss_curve`` the warm-up's steps followed by the main phase's, and
        ``steps_run`` the sum of both phases.
    """
    if x.ndim != 4:
        raise MedxganError(f"invert expects images [B,C,H,W], got shape {tuple(x.shape)}")
    if trace_every < 1:
        raise MedxganError(f"trace_every must be positive, got {trace_every}")
    device = x.device
    n_images, R = x.shape[0], cfg.restarts
    d1 = G.z1_dim
    with frozen(G, C):
        x = x.detach().float()
        with torch.no_grad():
            prob_target = C.positive_prob(x)  # [B], the fixed target of the BCE term
        z = _initial_latents(G, n_images, cfg, init, device, first_index)  # [B*R, z1+code]
        ref, mask = _anchor_refs(G, n_images, init, anchor, device)  # [B, z1+code]
        image_rows = torch.arange(n_images, device=device)
        warm_steps = torch.zeros(n_images, dtype=torch.long, device=device)
        warm_curve = None
        offset = 0

        def phase(phase_cfg, z, R, offset):  # one optimisation phase over R rows per image
            return _optimise(G, C, z, x.repeat_interleave(R, 0), prob_target.repeat_interleave(R),
                             ref.repeat_interleave(R, 0), mask, phase_cfg, n_images, R, progress, trace, trace_every, offset)

        if cfg.warmup_steps > 0:  # pixels only, every restart; the best of each image goes on alone
            warm = dataclasses.replace(cfg, steps=cfg.warmup_steps, lr=cfg.warmup_lr, schedule="cosine",
                                       cls_weight=0.0, neg_weight=0.0, change_weight=0.0)
            best_z, best_loss, t, curve = phase(warm, z, R, 0)
            keep = best_loss.view(n_images, R).argmin(1) + image_rows * R
            restart_loss = best_loss.view(n_images, R).clone()
            z, warm_steps, warm_curve = best_z[keep].clone(), t[keep], curve[:, keep]
            offset, R = cfg.warmup_steps, 1
        best_z, best_loss, t, curve = phase(cfg, z, R, offset)
        keep = best_loss.view(n_images, R).argmin(1) + image_rows * R
        if warm_curve is None:
            restart_loss = best_loss.view(n_images, R).clone()
        with torch.no_grad():
            z_best = best_z[keep]
            z1, z2 = z_best[:, :d1].contiguous(), z_best[:, d1:].contiguous()
            loss, mse, recon = _objective(G, C, z_best, d1, x, prob_target, cfg, ref, mask)
            prob_recon = C.positive_prob(recon)
    _, psnr, ssim = image_quality(recon, x)
    loss_curve = curve[:, keep]
    if warm_curve is not None:
        loss_curve = torch.cat([warm_curve, loss_curve])
    return InversionResult(
        z1=z1, z2=z2, reconstruction=recon, loss=loss, mse=mse, psnr=psnr, ssim=ssim,
        prob_target=prob_target, prob_reconstruction=prob_recon,
        delta_prob=(prob_recon - prob_target).abs(), steps_run=warm_steps + t[keep],
        restart_loss=restart_loss, loss_curve=loss_curve,
    )


__all__ = ["InversionConfig", "InversionResult", "binary_entropy", "invert", "inversion_loss", "image_quality", "frozen"]
