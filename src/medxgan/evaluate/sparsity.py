"""Attribution sparsity (paper Sec. 4.2): how many pixels does a method attribute?

The paper reports "the ratio of pixels with some non-zero attribution value through latent vs.
pixel interpolation", averaged over images: LIG / IG = 0.21 ± 0.09. Floating-point maps are
almost never exactly zero, so a pixel counts as attributed when ``|a| > ε`` with ε relative to the
map's own peak: ``ε = NONZERO_EPS_REL · max |a|`` per image (1 %), where ``a`` is the attribution
summed over channels. The strict ε = 0 count is reported too. Because any threshold is a choice,
a threshold-free sparseness is reported beside it: the Gini index of ``|a|`` (Hurley & Rickard
2009; Chalasani et al. 2020): 0 for a uniform map, 1 − 1/n for a single attributed pixel.
"""

from __future__ import annotations

import torch

from medxgan.evaluate.mapstats import saliency
from medxgan.evaluate.registry import EvalContext, ExperimentResult, Table, mean_std_ci, register_experiment

NONZERO_EPS_REL = 0.01  # a pixel is attributed when |a| > 1 % of the map's largest |a|


def _pixel_magnitude(attributions: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,H*W] float64 |attribution summed over channels|."""
    return saliency(attributions).flatten(1)


def nonzero_fraction(attributions: torch.Tensor, eps_rel: float = NONZERO_EPS_REL) -> torch.Tensor:
    """Share of pixels with non-negligible attribution, per image.

    Args:
        attributions: [N,C,H,W]; summed over channels before thresholding.
        eps_rel: ε as a share of each image's max |a| (0 = strictly non-zero).

    Returns:
        [N] float64 fractions in [0, 1] (0 for an all-zero map)."""
    magnitude = _pixel_magnitude(attributions)  # [N,P]
    eps = eps_rel * magnitude.max(dim=1, keepdim=True).values
    return (magnitude > eps).double().mean(1)


def gini_index(attributions: torch.Tensor) -> torch.Tensor:
    """Gini sparseness of |a| per image (Hurley & Rickard 2009):
    ``1 - 2 Σ_k (c_k / ||c||_1) (n - k + 1/2) / n`` with ``c`` sorted ascending, k = 1..n.

    Args:
        attributions: [N,C,H,W]; summed over channels, then magnitude.

    Returns:
        [N] float64 in [0, 1 - 1/n]; NaN for an all-zero map (no attribution to spread)."""
    c = torch.sort(_pixel_magnitude(attributions), dim=1).values  # [N,P] ascending
    n = c.shape[1]
    k = torch.arange(1, n + 1, dtype=torch.float64)
    total = c.sum(1, keepdim=True)
    share = c / total.where(total > 0, torch.ones_like(total))
    gini = 1 - 2 * (share * (n - k + 0.5) / n).sum(1)
    return gini.where(total.squeeze(1) > 0, torch.full_like(gini, float("nan")))


@register_experiment("sparsity", title="Attribution sparsity (paper Sec. 4.2: LIG vs IG)", order=30)
def sparsity_experiment(ctx: EvalContext) -> ExperimentResult:
    """Paper Sec. 4.2 number (ratio of attributed pixels, LIG / IG; paper 0.21 ± 0.09) on the held-out
    test positives, plus every method's attributed-pixel share and Gini sparseness."""
    metrics, rows = {}, []
    fractions = {}
    for method in ctx.methods:
        maps = ctx.maps(method)
        fractions[method] = nonzero_fraction(maps)
        strict = nonzero_fraction(maps, eps_rel=0.0)
        gini = gini_index(maps)
        metrics[f"sparsity.nonzero_fraction.{method}"] = mean_std_ci(fractions[method], seed=ctx.seed)
        metrics[f"sparsity.nonzero_fraction_strict.{method}"] = mean_std_ci(strict, seed=ctx.seed)
        metrics[f"sparsity.gini.{method}"] = mean_std_ci(gini, seed=ctx.seed)
        rows.append([method, metrics[f"sparsity.nonzero_fraction.{method}"], metrics[f"sparsity.nonzero_fraction_strict.{method}"],
                     metrics[f"sparsity.gini.{method}"]])
    tables = [Table(
        title="Share of attributed pixels and Gini sparseness per method",
        columns=["method", f"share |a| > {NONZERO_EPS_REL:g}·max|a|", "share |a| > 0", "Gini of |a| (higher = sparser)"],
        rows=rows,
        note=f"{len(ctx.explanations())} held-out test positives; a = attribution summed over channels; mean ± std [95 % bootstrap CI].",
    )]
    notes = []
    if "lig" in fractions and "ig" in fractions:
        ig = fractions["ig"]
        ratio = fractions["lig"] / ig.where(ig > 0, torch.full_like(ig, float("nan")))  # per image
        metrics["lig_ig_nonzero_ratio"] = mean_std_ci(ratio, seed=ctx.seed)
        metrics["sparsity.epsilon_relative"] = NONZERO_EPS_REL
        tables.append(Table(
            title="Ratio of attributed pixels, LIG / IG (per image, then averaged)",
            columns=["", "LIG / IG"],
            rows=[["ours", metrics["lig_ig_nonzero_ratio"]], ["paper (Br35H MRI)", "0.21 ± 0.09"]],
            note=f"A pixel is attributed when |a| > {NONZERO_EPS_REL:g} x the image's max |a| (the paper says \"non-zero\" "
                 "without a threshold). Lower = LIG attributes fewer pixels than IG.",
        ))
    else:
        notes.append("lig_ig_nonzero_ratio not computed: it needs both 'lig' and 'ig' in the methods.")
    return ExperimentResult(metrics=metrics, tables=tables, notes=notes)


__all__ = ["NONZERO_EPS_REL", "gini_index", "nonzero_fraction"]
