"""Localisation against ground-truth lesion masks (phantom masks, Br35H outlines, any mask folder).

Four scores per image and method, each on the attribution summed over channels (``a``):

* **pointing game** (Zhang et al. 2018): 1 if the pixel of largest ``a`` lies inside the mask;
* **AUPRC**: average precision of the pixels ranked by the positive part ``max(a, 0)`` against
  the mask (sklearn ``average_precision_score``). Only evidence *for* the positive class can point
  at a lesion; negative attribution is evidence against it, so it is clipped to 0 (tied last);
* **IoU**: the top-|mask| pixels of ``a`` (the map thresholded at the mask's area percentile,
  ties broken by a seeded permutation) against the mask;
* **relevance mass** (Arras et al. 2022): positive attribution inside the mask / all positive
  attribution (NaN for a map with none, left out of the mean).

Images whose mask is empty are skipped (a negative-looking positive, or no outline available).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from medxgan.evaluate.mapstats import pixel_relevance, pointing_game, positive_mass_share
from medxgan.evaluate.perturbation import saliency_order
from medxgan.evaluate.registry import EvalContext, ExperimentResult, Table, mean_std_ci, register_experiment

LOCALISATION_SCORES = ("pointing_game", "auprc", "iou", "mass")


def localisation_scores(attributions: torch.Tensor, masks: torch.Tensor, seed: int = 0) -> dict[str, np.ndarray]:
    """Pointing game, AUPRC, IoU at the mask's area and relevance mass, per image.

    Args:
        attributions: [N,C,H,W] maps (summed over channels).
        masks: [N,1,H,W] bool ground truth; every mask must be non-empty.
        seed: tie-breaking of the IoU ranking.

    Returns:
        {"pointing_game", "auprc", "iou", "mass"} -> [N] float64 arrays (mass NaN where a map has
        no positive attribution).
    """
    truth = masks.detach().cpu().bool().flatten(1)  # [N,P]
    area = truth.sum(1)  # [N]
    if (area == 0).any():
        raise ValueError("localisation_scores needs a non-empty mask for every image")
    rank = saliency_order(attributions, seed).flatten(1)  # [N,P], 0 = most salient
    top = rank < area[:, None]
    iou = (top & truth).sum(1).double() / (top | truth).sum(1).double()
    positive = pixel_relevance(attributions).flatten(1).clamp(min=0)  # [N,P]
    auprc = np.array([average_precision_score(truth[i].numpy(), positive[i].numpy()) for i in range(len(truth))])
    return {"pointing_game": pointing_game(attributions, masks).numpy(), "auprc": auprc, "iou": iou.numpy(),
            "mass": positive_mass_share(attributions, masks).numpy()}


@register_experiment("localisation", title="Localisation against ground-truth lesion masks", order=50)
def localisation_experiment(ctx: EvalContext) -> ExperimentResult:
    """For every method: pointing game, AUPRC, IoU at the mask's area percentile and relevance mass
    inside the mask, over the held-out test positives that have a non-empty lesion mask (no paper
    table: the paper only shows localisation qualitatively, Fig. 7 and 9)."""
    if ctx.test_masks is None:
        return ExperimentResult(metrics={"localization.n_images": 0},
                                notes=["Skipped: the data set has no lesion masks (give --masks or --via, or a masks/ folder)."])
    explanations = ctx.explanations()
    keep = [i for i, e in enumerate(explanations) if e.mask is not None and bool(e.mask.any())]
    if not keep:
        return ExperimentResult(metrics={"localization.n_images": 0},
                                notes=["Skipped: none of the explained test positives has a non-empty lesion mask."])
    masks = torch.stack([explanations[i].mask for i in keep])  # [M,1,H,W] bool
    metrics, rows = {"localization.n_images": len(keep)}, []
    for method in ctx.methods:
        scores = localisation_scores(ctx.maps(method)[keep], masks, seed=ctx.seed)
        row = [method]
        for name in LOCALISATION_SCORES:
            metrics[f"localization.{method}.{name}"] = mean_std_ci(scores[name], seed=ctx.seed)
            row.append(metrics[f"localization.{method}.{name}"])
        rows.append(row)
    mask_share = float(masks.double().mean())
    table = Table(
        title="Localisation scores per method",
        columns=["method", "pointing game", "AUPRC", "IoU at mask area", "relevance mass in mask"],
        rows=rows,
        note=(f"{len(keep)} held-out test positives with a lesion mask (mean mask area {mask_share:.1%} of the image: "
              "chance level of AUPRC and relevance mass). Mean ± std [95 % bootstrap CI]. "
              "a = attribution summed over channels; AUPRC and mass use its positive part."),
    )
    metrics["localization.mask_area_fraction"] = mask_share
    return ExperimentResult(metrics=metrics, tables=[table])


__all__ = ["LOCALISATION_SCORES", "localisation_scores"]
