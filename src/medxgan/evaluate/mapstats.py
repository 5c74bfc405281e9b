"""Comparisons of attribution maps used by the localisation, robustness, sanity, ablation and shortcut
experiments.

Every function takes maps ``[N,C,H,W]`` (any sign) and returns one number per image ``[N]``
(float64, on the CPU). A map is first reduced to a per-pixel relevance ``[N,H,W]`` by summing its
channels; *saliency* is the absolute value of that relevance (what the map highlights, whatever
the sign), *positive relevance* its positive part (what speaks for the positive class).
"""

from __future__ import annotations

import numpy as np
import torch


def pixel_relevance(maps: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,H,W] float64: the channels of each pixel summed."""
    if maps.ndim != 4:
        raise ValueError(f"attribution maps must be [N,C,H,W], got shape {tuple(maps.shape)}")
    return maps.detach().to("cpu", torch.float64).sum(dim=1)


def saliency(maps: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,H,W]: |channel-summed relevance|."""
    return pixel_relevance(maps).abs()


def normalise_unit(x: torch.Tensor) -> torch.Tensor:
    """Scale each image of ``x`` [N,H,W] (non-negative) to [0,1] by its maximum; all-zero stays 0."""
    peak = x.flatten(1).amax(dim=1).clamp_min(1e-12)
    return x / peak[:, None, None]


def map_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (scikit-image, data range 1) between the saliencies of ``a`` and ``b``, each scaled to
    [0,1] by its own maximum so that a map's overall gain does not count. Returns [N]."""
    from skimage.metrics import structural_similarity

    sa, sb = normalise_unit(saliency(a)).numpy(), normalise_unit(saliency(b)).numpy()
    win = min(7, *sa.shape[1:])
    win -= 1 - win % 2  # odd window that fits the image
    return torch.tensor([structural_similarity(x, y, data_range=1.0, win_size=win) for x, y in zip(sa, sb)],
                        dtype=torch.float64)


def spearman_rank(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation (scipy) between the saliencies of ``a`` and ``b``, per image [N].

    A constant saliency has no ranking to share: its correlation is reported as 0 (scipy would
    return NaN), so that a layer randomisation that wipes a map out counts as a changed map."""
    from scipy.stats import spearmanr

    sa, sb = saliency(a).flatten(1).numpy(), saliency(b).flatten(1).numpy()
    out = []
    for x, y in zip(sa, sb):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(1.0 if np.array_equal(x, y) else 0.0)
        else:
            out.append(float(spearmanr(x, y).statistic))
    return torch.tensor(out, dtype=torch.float64)


def top_fraction_mask(maps: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """[N,H,W] bool: the ``fraction`` of pixels with the largest saliency (at least one pixel;
    ties broken by pixel order, deterministically)."""
    sal = saliency(maps).flatten(1)  # [N,H*W]
    k = max(1, int(round(fraction * sal.shape[1])))
    # a stable descending sort: equal values keep pixel order, so identical maps select identical pixels
    order = torch.sort(sal, dim=1, descending=True, stable=True).indices[:, :k]
    top = torch.zeros_like(sal, dtype=torch.bool)
    top.scatter_(1, order, True)
    return top.view(-1, *maps.shape[-2:])


def topk_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """Intersection over union of the top-``fraction`` salient pixels of ``a`` and of ``b`` [N]."""
    ta, tb = top_fraction_mask(a, fraction).flatten(1), top_fraction_mask(b, fraction).flatten(1)
    inter = (ta & tb).sum(1).double()
    union = (ta | tb).sum(1).double()
    return inter / union


def positive_mass_share(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of the positive relevance that falls inside ``region`` (relevance mass, Arras et al.
    2022, on the positive part of the map) [N]; NaN where a map has no positive relevance or the
    region is empty (nothing to point at: left out of ``mean_std_ci``'s mean).

    Args:
        maps: [N,C,H,W] attributions.
        region: [N,1,H,W] or [N,H,W] bool (lesion mask, spurious marker, ...).
    """
    pos = pixel_relevance(maps).clamp_min(0)  # [N,H,W]
    region = region.detach().cpu().bool().reshape(pos.shape)
    total = pos.flatten(1).sum(1)
    inside = (pos * region).flatten(1).sum(1)
    defined = (total > 0) & region.flatten(1).any(1)
    return torch.where(defined, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan")))


def pointing_game(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """1.0 where the pixel of largest relevance lies inside ``region``, else 0.0 [N] (Zhang et al.
    2018, no tolerance margin; the first pixel in row-major order wins a tie); NaN where the
    region is empty."""
    rel = pixel_relevance(maps).flatten(1)  # [N,H*W]
    region = region.detach().cpu().bool().reshape(rel.shape)
    hit = region.gather(1, rel.argmax(dim=1, keepdim=True)).squeeze(1).double()
    return torch.where(region.any(1), hit, torch.full_like(hit, float("nan")))


__all__ = ["map_ssim", "normalise_unit", "pixel_relevance", "pointing_game", "positive_mass_share", "saliency",
           "spearman_rank", "top_fraction_mask", "topk_iou"]


# --- computing maps --------------------------------------------------------------------------

def attribution_maps(G, C, images: torch.Tensor, methods, inversion=None, latents=None, ig_steps: int = 32,
                     lig_steps: int = 32, path_steps: int = 128, init=None) -> dict[str, torch.Tensor]:
    """Every method's map of ``images`` with classifier ``C`` (registered explainers, default
    targets), sharing one set of latents between the latent methods.

    Args:
        images: [B,C,H,W] in [-1,1] on the models' device.
        methods: explainer names.
        inversion: InversionConfig used to invert ``images`` (Eq. 5, one call, random starts keyed
            by the image index) when a latent method needs latents and ``latents`` is None.
        latents: optional fixed (z1 [B,z1_dim], z2 [B,code_dim]).
        ig_steps, lig_steps, path_steps: the same quadrature budgets as ``explain_images``.
        init: optional (z1, z2) start of that inversion (e.g. an encoder's guess, hybrid inversion).
    Returns:
        {method: [B,C,H,W] CPU float32 map}.
    """
    from medxgan.explain import EXPLAINERS, get_explainer
    from medxgan.inversion import InversionConfig, invert

    inversion = inversion if inversion is not None else InversionConfig()
    if latents is None and any(EXPLAINERS[m].uses_latents for m in methods if m in EXPLAINERS):
        result = invert(G, C, images, inversion, init=init, first_index=0)
        latents = (result.z1, result.z2)
    options = {"ig": {"n_steps": ig_steps}, "ig_negative": {"n_steps": ig_steps}, "lig": {"n_steps": lig_steps},
               "lig_path": {"n_steps": path_steps}}
    out = {}
    for method in methods:
        explainer = get_explainer(method, G, C, inversion=inversion, **options.get(method, {}))
        out[method] = explainer.attribute(images, latents=latents if explainer.uses_latents else None).to("cpu", torch.float32)
    return out


__all__ += ["attribution_maps"]
