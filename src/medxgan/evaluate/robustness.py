"""Noise robustness of the explanations (the paper's abstract: medXGAN + IG is more robust to noise).

Gaussian noise of increasing σ (in [-1,1] image units, seeded, clipped to [-1,1]) is added to the
test positives and every method's map is recomputed — the latent methods re-invert the noisy
image. Stability against the clean map is measured per image by the SSIM of the two saliencies
(each scaled to [0,1]) and by the intersection over union of their top 5 % pixels.

Inversion budget: half of the evaluation inversion's steps and one restart (noise levels multiply
the inversion work). The clean reference maps use the *same* shortened config and the same
per-image starts, so at σ = 0 every map is reproduced exactly and stability is 1: what lowers it
is the noise, not a different optimiser run. With an encoder (hybrid inversion) each inversion
starts from the encoder's guess for the image it inverts, clean or noisy: the encoder's own
response to noise is part of what is measured, as it is in use. The "random" control is left out: its map does
not depend on the input, so its stability is 1 by construction.
"""

from __future__ import annotations

import dataclasses

import torch

from medxgan.evaluate.mapstats import attribution_maps, map_ssim, topk_iou
from medxgan.evaluate.registry import ExperimentResult, Table, mean_std_ci, register_experiment
from medxgan.evaluate.retrain import evaluation_inversion
from medxgan.inversion import InversionConfig

SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2)  # noise std in [-1,1] units (0.1 = 5 % of the intensity range)
QUICK_SIGMAS = (0.0, 0.05, 0.2)
QUICK_IMAGES = 4  # test positives in quick mode
TOP_FRACTION = 0.05  # top-k overlap: the 5 % most salient pixels
INPUT_INDEPENDENT = ("random",)  # maps that ignore the input: stability is 1 by construction


def add_gaussian_noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """``images`` [B,C,H,W] in [-1,1] plus N(0, σ²) noise drawn from ``seed`` (on the CPU, so the
    draw is device independent), clipped to [-1,1]. σ = 0 returns the images unchanged."""
    if sigma == 0:
        return images.clone()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise.to(images.device, images.dtype)).clamp(-1, 1)


def robustness_inversion(base: InversionConfig) -> InversionConfig:
    """The shortened inversion of this experiment: half of ``base.steps`` (at least one), one restart."""
    return dataclasses.replace(base, steps=max(1, base.steps // 2), restarts=1)


def explanation_stability(G, C, images: torch.Tensor, methods, sigmas=SIGMAS, inversion: InversionConfig | None = None,
                          seed: int = 0, top_fraction: float = TOP_FRACTION, ig_steps: int = 32,
                          lig_steps: int = 32, start=None) -> dict[str, dict[str, torch.Tensor]]:
    """Stability of every method's map under Gaussian input noise.

    Args:
        images: [B,C,H,W] in [-1,1] on the models' device.
        methods: explainer names (latent methods re-invert every noisy image with ``inversion``).
        sigmas: noise levels; level ``i`` draws its noise from seed ``seed * 1000 + i``.
        inversion: used as given for the clean and the noisy images (see the module docstring).
        start: optional ``start(images) -> (z1, z2)``, e.g. an encoder: each inversion (clean and
            noisy) then starts from the guess for the image it inverts (hybrid inversion).
    Returns:
        {method: {"ssim": [S,B], "topk_iou": [S,B]}} float64, one row per σ.
    """
    def init(x):
        return start(x) if start is not None else None

    clean = attribution_maps(G, C, images, methods, inversion=inversion, ig_steps=ig_steps, lig_steps=lig_steps,
                             init=init(images))
    out = {m: {"ssim": [], "topk_iou": []} for m in methods}
    for i, sigma in enumerate(sigmas):
        noisy_images = add_gaussian_noise(images, sigma, seed * 1000 + i)
        noisy = clean if sigma == 0 else attribution_maps(G, C, noisy_images, methods, inversion=inversion,
                                                          ig_steps=ig_steps, lig_steps=lig_steps, init=init(noisy_images))
        for m in methods:
            out[m]["ssim"].append(map_ssim(clean[m], noisy[m]))
            out[m]["topk_iou"].append(topk_iou(clean[m], noisy[m], top_fraction))
    return {m: {k: torch.stack(v) for k, v in d.items()} for m, d in out.items()}


def _stability_figure(curves: dict, sigmas):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(axes, ("ssim", "topk_iou"), ("map SSIM vs clean", f"top-{TOP_FRACTION:.0%} IoU vs clean")):
        for method, curve in curves.items():
            mean = [c["mean"] for c in curve[key]]
            lo, hi = [c["ci95"][0] for c in curve[key]], [c["ci95"][1] for c in curve[key]]
            ax.plot(sigmas, mean, marker="o", label=method)
            ax.fill_between(sigmas, lo, hi, alpha=0.15)
        ax.set_xlabel("noise σ ([-1,1] units)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


@register_experiment("noise_robustness", "Explanation stability under input noise", order=70)
def run_noise_robustness(ctx) -> ExperimentResult:
    """Experiment ``noise_robustness``. Metrics (each key prefixed ``noise_robustness.``):
    ``<method>`` = {mean, std, ci95, n} over test positives of the map SSIM averaged over the noise
    levels σ > 0; ``curves`` = {method: {ssim, topk_iou}: one {mean, std, ci95, n} per σ};
    ``sigmas``, ``noise_seeds``, ``inversion_steps``, ``top_fraction``."""
    images, _, _ = ctx.positives(costly=True)
    if ctx.quick:
        images = images[:QUICK_IMAGES]
    device = next(ctx.C.parameters()).device
    sigmas = QUICK_SIGMAS if ctx.quick else SIGMAS
    methods = [m for m in ctx.methods if m not in INPUT_INDEPENDENT]
    inversion = robustness_inversion(evaluation_inversion(ctx))
    steps = 8 if ctx.quick else 32
    stability = explanation_stability(ctx.G, ctx.C, images.to(device), methods, sigmas, inversion, ctx.seed,
                                      ig_steps=steps, lig_steps=steps,
                                      start=ctx.inversion_start)
    noisy_levels = [i for i, s in enumerate(sigmas) if s > 0]
    metrics: dict = {}
    curves: dict = {}
    rows = []
    for m in methods:
        metrics[m] = mean_std_ci(stability[m]["ssim"][noisy_levels].mean(0), seed=ctx.seed)
        curves[m] = {k: [mean_std_ci(v[i], seed=ctx.seed) for i in range(len(sigmas))] for k, v in stability[m].items()}
        for i, sigma in enumerate(sigmas):
            s, o = curves[m]["ssim"][i], curves[m]["topk_iou"][i]
            rows.append([m, sigma, s["mean"], f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]",
                         o["mean"], f"[{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]", s["n"]])
    metrics.update(curves=curves, sigmas=list(sigmas), noise_seeds=[ctx.seed * 1000 + i for i in range(len(sigmas))],
                   inversion_steps=inversion.steps, top_fraction=TOP_FRACTION)
    table = Table(
        title="Map stability against the clean image's map",
        columns=["method", "σ", "map SSIM", "SSIM 95% CI", f"top-{TOP_FRACTION:.0%} IoU", "IoU 95% CI", "images"],
        rows=rows,
        note=(f"Gaussian noise in [-1,1] units, clipped; latent methods re-invert the noisy image "
              f"({inversion.steps} steps, 1 restart, the clean reference inverted the same way). "
              "Metric per method: SSIM averaged over σ > 0."),
    )
    notes = ["'random' is not compared: its map ignores the input, so its stability is 1 by construction."] \
        if any(m in INPUT_INDEPENDENT for m in ctx.methods) else []
    # Prefixed: metrics.json merges every experiment's keys into one namespace.
    return ExperimentResult(metrics={f"noise_robustness.{k}": v for k, v in metrics.items()}, tables=[table],
                            figures={"noise_robustness": _stability_figure(curves, sigmas)}, notes=notes)


__all__ = ["QUICK_SIGMAS", "SIGMAS", "TOP_FRACTION", "add_gaussian_noise", "explanation_stability", "robustness_inversion",
           "run_noise_robustness"]
