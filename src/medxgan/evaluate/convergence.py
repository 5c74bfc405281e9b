"""Inversion convergence, paper Table 3: do independent random starts of Eq. 5 agree?

For every test positive, R = ``ctx.repeats`` inversions run from different random starts (one
restart each, seeds ``inversion.seed + r``; otherwise the evaluation's inversion config).

With an encoder (``medxgan evaluate --encoder``, hybrid inversion) the start is not random: it is
E(x), the same for every repeat, so agreement would be 1 by construction. The question Table 3
asks of it is whether the refined solution is a stable one — whether starts *around* the
encoder's guess come back to the same latent: repeat r starts at E(x) + σ·ε_r with ε_r ~ N(0, I)
(seed ``inversion.seed + r``) and σ = ``ctx.convergence_sigma`` (``evaluate --convergence-sigma``,
default :data:`HYBRID_START_SIGMA`, half the prior's own scale: z1's norm is about sqrt(z1_dim), so
two such starts begin at a latent cosine of about 0.8; σ = 0 is the deterministic hybrid start,
which agrees with itself exactly). The
recovered latents (z1, z2 concatenated) are compared by pairwise cosine similarity and the
reconstructions G(z1, z2) by pairwise SSIM; each image contributes the mean over its R(R-1)/2
pairs, and the table gives mean ± std over images (paper, brain MRI: 0.965 ± 0.008 / 0.970 ± 0.020).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F

from medxgan.evaluate.registry import ExperimentResult, Table, mean_std_ci, register_experiment
from medxgan.evaluate.retrain import evaluation_inversion
from medxgan.inversion import InversionConfig, image_quality, invert

PAPER_MRI = {"cosine": (0.965, 0.008), "ssim": (0.970, 0.020)}  # paper Table 3, brain MRI
MIN_REPEATS = 2  # pairwise agreement needs at least two starts
HYBRID_START_SIGMA = 0.5  # std of the perturbation around the encoder's guess (prior std = 1)


def pairwise_latent_cosine(latents: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity of R latent vectors per image.

    Args:
        latents: [R,B,D] (z1 and z2 concatenated), R >= 2.
    Returns:
        [B] float64: mean over the R(R-1)/2 pairs of restarts.
    """
    pairs = list(itertools.combinations(range(latents.shape[0]), 2))
    sims = [F.cosine_similarity(latents[r].double(), latents[s].double(), dim=1) for r, s in pairs]
    return torch.stack(sims).mean(0).cpu()


def pairwise_reconstruction_ssim(reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean pairwise SSIM (scikit-image, on [0,1]-scaled images, via
    :func:`medxgan.inversion.image_quality`) of R reconstructions per image.

    Args:
        reconstructions: [R,B,C,H,W] in [-1,1], R >= 2.
    Returns:
        [B] float64.
    """
    pairs = list(itertools.combinations(range(reconstructions.shape[0]), 2))
    ssims = [image_quality(reconstructions[r], reconstructions[s])[2].double().cpu() for r, s in pairs]
    return torch.stack(ssims).mean(0)


def perturbed_start(init, sigma: float, seed: int):
    """(z1 + σ·ε1, z2 + σ·ε2) with ε ~ N(0, I) drawn on the CPU from ``seed`` (same device and
    dtype as the given latents)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(z + sigma * torch.randn(z.shape, generator=gen).to(z.device, z.dtype) for z in init)


def restart_agreement(G, C, images: torch.Tensor, inversion: InversionConfig, repeats: int,
                      progress: bool = False, init=None, sigma: float = HYBRID_START_SIGMA) -> dict[str, torch.Tensor]:
    """Invert ``images`` ``repeats`` times from independent starts (Eq. 5, one restart each,
    seeds ``inversion.seed + r``) and measure how far the solutions agree (Table 3).

    Args:
        images: [B,C,H,W] in [-1,1] on the models' device.
        inversion: optimiser settings; ``restarts`` and ``seed`` are replaced per repeat and
            ``init`` is forced to "random" (a prior-mean start would be identical across repeats).
        repeats: R >= 2.
        init: optional (z1 [B,z1_dim], z2 [B,code_dim]) guess (an encoder's): repeat r then starts
            at ``init`` + σ·ε_r instead of a random latent (hybrid inversion; module docstring).
        sigma: the std σ of that perturbation.
    Returns:
        {"cosine": [B], "ssim": [B], "reconstruction_ssim": [B]} float64 — the last is the mean
        SSIM of each repeat's reconstruction against the image (how well the inversion fits).
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"convergence needs at least {MIN_REPEATS} repeats, got {repeats}")
    latents, reconstructions, fits = [], [], []
    for r in range(repeats):
        cfg = dataclasses.replace(inversion, restarts=1, seed=inversion.seed + r, init="random")
        start = perturbed_start(init, sigma, cfg.seed) if init is not None else None
        result = invert(G, C, images, cfg, init=start, progress=progress, first_index=0, anchor=init)
        latents.append(torch.cat([result.z1, result.z2], dim=1).detach())  # [B, z1_dim + code_dim]
        reconstructions.append(result.reconstruction.detach())
        fits.append(result.ssim.double().cpu())
    return {
        "cosine": pairwise_latent_cosine(torch.stack(latents)),
        "ssim": pairwise_reconstruction_ssim(torch.stack(reconstructions)),
        "reconstruction_ssim": torch.stack(fits).mean(0),
    }


@register_experiment("convergence", "Inversion convergence (paper Table 3)", order=40)
def run_convergence(ctx) -> ExperimentResult:
    """Experiment ``convergence``: metrics ``convergence.cosine`` and ``convergence.ssim`` ({mean,
    std, ci95, n} over test positives), ``convergence.reconstruction_ssim`` (fit to the image),
    ``convergence.repeats``, ``convergence.seeds``, ``convergence.inversion_steps`` and
    ``convergence.start`` ("random", or the encoder start and its perturbation)."""
    images, _, _ = ctx.positives(costly=True)
    device = next(ctx.C.parameters()).device
    inversion = evaluation_inversion(ctx)
    repeats = max(MIN_REPEATS, ctx.repeats)
    seeds = [inversion.seed + r for r in range(repeats)]
    images = images.to(device)
    init = ctx.inversion_start(images)
    sigma = float(ctx.convergence_sigma)
    agreement = restart_agreement(ctx.G, ctx.C, images, inversion, repeats, ctx.progress, init=init, sigma=sigma)
    metrics = {key: mean_std_ci(values, seed=ctx.seed) for key, values in agreement.items()}
    start = "random" if init is None else f"encoder + {sigma:g} N(0, I)"
    metrics.update(repeats=repeats, seeds=seeds, inversion_steps=inversion.steps, start=start)
    rows = []
    for key, label in (("cosine", "latent cosine similarity"), ("ssim", "reconstruction SSIM")):
        paper_mean, paper_std = PAPER_MRI[key]
        rows.append([label, metrics[key]["mean"], metrics[key]["std"], metrics[key]["n"], f"{paper_mean:.3f} ± {paper_std:.3f}"])
    table = Table(
        title="Agreement between independent inversions",
        columns=["quantity", "mean", "std", "images", "paper (brain MRI)"],
        rows=rows,
        note=(f"{repeats} {'random starts' if init is None else f'starts E(x) + {sigma:g}·N(0, I) (hybrid inversion)'} "
              f"per test positive (one restart each, seeds {seeds}, {inversion.steps} steps max, "
              f"lr {inversion.lr}); per image the mean over all pairs of starts, then mean ± std over images."),
    )
    notes = [f"Mean SSIM of a reconstruction against its image: {metrics['reconstruction_ssim']['mean']:.3f} "
             "(high agreement with a poor fit would mean the starts collapse onto the same wrong image)."]
    # Prefixed: metrics.json merges every experiment's keys into one namespace.
    return ExperimentResult(metrics={f"convergence.{k}": v for k, v in metrics.items()}, tables=[table], notes=notes)


__all__ = ["HYBRID_START_SIGMA", "PAPER_MRI", "perturbed_start", "pairwise_latent_cosine", "pairwise_reconstruction_ssim", "restart_agreement", "run_convergence"]
