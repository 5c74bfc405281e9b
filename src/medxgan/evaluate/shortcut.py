"""Shortcut detection: does an explanation reveal that the classifier looks at a spurious marker?

On phantoms written with ``medxgan phantoms --shortcut P`` a fraction P of the positives carries a
bright square tag outside the head (``medxgan.phantoms``); the writer saves its pixels as
``DIR/shortcut_masks/<name>.png``. For every test positive that carries the marker, each method's
positive relevance is split into the share on the marker and the share on the lesion (relevance
mass of the positive part, :func:`medxgan.evaluate.mapstats.positive_mass_share`). A classifier
trained on such data may use the marker; a faithful explanation then puts mass on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medxgan.evaluate.mapstats import positive_mass_share
from medxgan.evaluate.registry import ExperimentResult, Table, mean_std_ci, register_experiment
from medxgan.training.classifier import predict_proba

MARKER_DIR = "shortcut_masks"


def load_marker_masks(data_dir, names: list[str], size: int, resize: str = "pad") -> torch.Tensor | None:
    """Spurious-marker masks of the images ``names`` from ``data_dir/shortcut_masks/<stem>.png``.

    Args:
        data_dir: the dataset folder given to ``--data`` (phantoms written with ``--shortcut``).
        names: image names as the data loader reports them (e.g. ``positive/phantom_00001.png``);
            the mask of an image is found by its file stem.
        size, resize: the run's ``data.size`` and ``data.resize``, so that masks are transformed
            exactly like their images.
    Returns:
        [N,1,size,size] bool (all False for images without a marker), or None when the folder has
        no ``shortcut_masks`` directory.
    """
    from medxgan.data import load_mask

    folder = Path(data_dir) / MARKER_DIR
    if not folder.is_dir():
        return None
    files = {p.stem: p for p in folder.iterdir() if p.is_file()}
    out = torch.zeros(len(names), 1, size, size, dtype=torch.bool)
    for i, name in enumerate(names):
        path = files.get(Path(name).stem)
        if path is not None:
            out[i] = load_mask(path, size, resize)
    return out


def marker_and_lesion_share(maps: torch.Tensor, marker: torch.Tensor, lesion: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Share of each map's positive relevance on the marker and on the lesion.

    Args:
        maps: [N,C,H,W] attributions; marker, lesion: [N,1,H,W] bool (lesion may be None).
    Returns:
        {"marker": [N], "lesion": [N] (if lesion is given)} float64, NaN where a map has no
        positive relevance.
    """
    out = {"marker": positive_mass_share(maps, marker)}
    if lesion is not None:
        out["lesion"] = positive_mass_share(maps, lesion)
    return out


@register_experiment("shortcut", "Shortcut detection: attribution on a spurious marker vs on the lesion", order=90)
def run_shortcut(ctx) -> ExperimentResult:
    """Experiment ``shortcut``. Metrics (each key prefixed ``shortcut.``): ``<method>`` = {mean,
    std, ci95, n} of the marker's share of positive relevance over marked test positives;
    ``lesion`` = {method: the lesion's share}; ``marked_images``, ``explained_positives``;
    ``prob_marked`` / ``prob_unmarked`` (mean P(positive) of test positives with and without the
    marker). Skipped (``skipped`` with the reason, and a note) without marker masks."""
    marker_masks = ctx.test_marker_masks
    if marker_masks is None:
        return ExperimentResult(metrics={"shortcut.skipped": "no spurious-marker masks (data written without --shortcut?)"},
                                notes=["Skipped: the data has no shortcut_masks/ folder (write phantoms with --shortcut P)."])
    positive_idx = torch.nonzero(ctx.test_labels == 1).flatten()[: ctx.n_images]
    markers = marker_masks[positive_idx].bool()  # [N,1,H,W], aligned with ctx.positives()
    marked = markers.flatten(1).any(1)
    if not bool(marked.any()):
        return ExperimentResult(metrics={"shortcut.skipped": "no test positive carries the spurious marker",
                                         "shortcut.marked_images": 0},
                                notes=["Skipped: none of the explained test positives carries the marker."])
    images, lesions, _ = ctx.positives()
    probs = predict_proba(ctx.C, images)  # [N] P(positive)
    metrics: dict = {"marked_images": int(marked.sum()), "explained_positives": len(positive_idx),
                     "prob_marked": mean_std_ci(probs[marked], seed=ctx.seed),
                     "prob_unmarked": mean_std_ci(probs[~marked], seed=ctx.seed), "lesion": {}}
    rows = []
    for method in ctx.methods:
        maps = ctx.maps(method)[marked]
        shares = marker_and_lesion_share(maps, markers[marked], lesions[marked] if lesions is not None else None)
        metrics[method] = mean_std_ci(shares["marker"], seed=ctx.seed)
        row = [method, metrics[method]["mean"], metrics[method]["std"]]
        if "lesion" in shares:
            metrics["lesion"][method] = mean_std_ci(shares["lesion"], seed=ctx.seed)
            row += [metrics["lesion"][method]["mean"], metrics["lesion"][method]["std"]]
        rows.append(row + [metrics[method]["n"]])
    columns = ["method", "share on marker", "std"] + (["share on lesion", "std"] if lesions is not None else []) + ["images"]
    marker_area = markers[marked].flatten(1).double().mean(1).mean().item()
    table = Table(
        title="Positive attribution mass on the spurious marker vs on the lesion (marked test positives)",
        columns=columns, rows=rows,
        note=(f"{metrics['marked_images']} of {len(positive_idx)} explained test positives carry the marker, which covers "
              f"{marker_area:.4f} of the image (the share a uniform map would give it). Mean P(positive): "
              f"{metrics['prob_marked']['mean']:.3f} with marker, {metrics['prob_unmarked']['mean']:.3f} without."),
    )
    # Prefixed: metrics.json merges every experiment's keys into one namespace.
    return ExperimentResult(metrics={f"shortcut.{k}": v for k, v in metrics.items()}, tables=[table])


__all__ = ["MARKER_DIR", "load_marker_masks", "marker_and_lesion_share", "run_shortcut"]
