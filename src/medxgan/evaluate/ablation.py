"""Class-code ablation, paper Sec. 3.3: medXGAN's continuous code vs a discrete one-hot code.

Two generators are trained from scratch with the same data (``ctx.train_images``), the same
frozen classifier (``ctx.C``), the same budget and the same seed; they differ only in
``GANConfig.code``: "continuous" (medXGAN: z2 = 0 negative, z2 ~ N(0, I) positive) or "discrete"
(the 2021 predecessor: one-hot class code). Both are compared by

* generated accuracy / AUC (paper Table 1 protocol, :func:`medxgan.evaluate.fidelity.generated_accuracy`);
* the share of test positives whose latent interpolation from the negative realization to the
  reconstruction raises P(positive) monotonically (Sec. 3.1, ``latent_interpolation(...).monotone``),
  after inverting each test positive with each generator (Eq. 5; the discrete code's z2 is
  optimised as a free 2-vector, see ``medxgan.inversion``);
* localisation of the difference map and LIG (relevance mass of the positive part inside the lesion
  mask and pointing game), when the test split has masks.

The trained run's own generator is not one of the two rows: the continuous model is retrained so
that the only difference between the rows is the code.
"""

from __future__ import annotations

import torch

from medxgan.evaluate.fidelity import generated_accuracy
from medxgan.evaluate.mapstats import attribution_maps, pointing_game, positive_mass_share
from medxgan.evaluate.registry import ExperimentResult, Table, mean_std_ci, register_experiment
from medxgan.evaluate.retrain import fresh_model_inversion, gan_config, train_fresh_gan
from medxgan.explain.latent import latent_interpolation
from medxgan.inversion import invert

CODES = ("continuous", "discrete")
LOCALISING_METHODS = ("difference", "lig")
N_Z1 = 1000  # Table 1 protocol
QUICK_N_Z1 = 50
QUICK_IMAGES = 3


def code_properties(G, C, images: torch.Tensor, masks: torch.Tensor | None, inversion, n_z1: int = N_Z1, seed: int = 0,
                    lig_steps: int = 32) -> dict:
    """What one generator's class code buys (Sec. 3.3): fidelity, monotone interpolations, localisation.

    Args:
        G, C: a generator (either code) and the frozen classifier it was trained with.
        images: [B,C,H,W] test positives in [-1,1] on the models' device; masks [B,1,H,W] bool or None.
        inversion: InversionConfig for Eq. 5 (one call; latents shared by the maps and the interpolation).
        n_z1: anatomy codes of the Table 1 protocol (seeded by ``seed``).
    Returns:
        {"generated_accuracy", "generated_auc": float, "monotone": [B] float64 (1 = monotone),
         and with masks "<method>": {"mass": [B], "pointing_game": [B]}}.
    """
    fidelity = generated_accuracy(G, C, n_z1=n_z1, seed=seed)
    result = invert(G, C, images, inversion, first_index=0)
    latents = (result.z1, result.z2)
    monotone = latent_interpolation(G, C, *latents).monotone.double().cpu()
    out = {"generated_accuracy": fidelity["accuracy"], "generated_auc": fidelity["auc"], "monotone": monotone}
    if masks is not None:
        maps = attribution_maps(G, C, images, LOCALISING_METHODS, latents=latents, lig_steps=lig_steps)
        for m in LOCALISING_METHODS:
            out[m] = {"mass": positive_mass_share(maps[m], masks), "pointing_game": pointing_game(maps[m], masks)}
    return out


@register_experiment("code_ablation", "Class-code ablation: continuous (medXGAN) vs discrete code (paper Sec. 3.3)", order=80)
def run_code_ablation(ctx) -> ExperimentResult:
    """Experiment ``code_ablation``. Metrics (each key prefixed ``code_ablation.``), per code
    (``continuous`` / ``discrete``): ``generated_accuracy``, ``generated_auc`` (floats),
    ``monotone_share`` and, with masks, ``<method>.{mass,pointing_game}`` ({mean, std, ci95, n}
    over test positives); plus ``gan_steps``, ``gan_seed``, ``n_z1``, ``images``."""
    images, masks, _ = ctx.positives(costly=True)
    if ctx.quick:
        images = images[:QUICK_IMAGES]
        masks = masks[:QUICK_IMAGES] if masks is not None else None
    device = next(ctx.C.parameters()).device
    images = images.to(device)
    n_z1 = QUICK_N_Z1 if ctx.quick else N_Z1
    inversion = fresh_model_inversion(ctx)
    lig_steps = 8 if ctx.quick else 32
    metrics: dict = {}
    rows = []
    for code in CODES:
        G, _ = train_fresh_gan(ctx, ctx.C, code=code)
        props = code_properties(G, ctx.C, images, masks, inversion, n_z1=n_z1, seed=ctx.seed, lig_steps=lig_steps)
        entry = {"generated_accuracy": props["generated_accuracy"], "generated_auc": props["generated_auc"],
                 "monotone_share": mean_std_ci(props["monotone"], seed=ctx.seed)}
        row = [code, entry["generated_accuracy"], entry["generated_auc"], entry["monotone_share"]["mean"]]
        for m in LOCALISING_METHODS:
            if m in props:
                entry[m] = {k: mean_std_ci(v, seed=ctx.seed) for k, v in props[m].items()}
                row += [entry[m]["mass"]["mean"], entry[m]["pointing_game"]["mean"]]
        metrics[code] = entry
        rows.append(row)
    cfg = gan_config(ctx)
    metrics.update(gan_steps=cfg.steps, gan_seed=cfg.seed, n_z1=n_z1, images=len(images))
    columns = ["code", "generated accuracy", "generated AUC", "monotone interpolations"]
    if masks is not None:
        columns += [f"{m} {k}" for m in LOCALISING_METHODS for k in ("mass in lesion", "pointing game")]
    table = Table(
        title="Continuous vs discrete class code, same data, classifier, budget and seed",
        columns=columns, rows=rows,
        note=(f"Both generators trained for {cfg.steps} steps (seed {cfg.seed}) with the run's classifier; "
              f"generated accuracy over {n_z1} z1 x (1 negative + 3 positives); monotone share and localisation "
              f"over {len(images)} inverted test positives."),
    )
    notes = [] if masks is not None else ["Localisation columns omitted: the test split has no lesion masks."]
    # Prefixed: metrics.json merges every experiment's keys into one namespace.
    return ExperimentResult(metrics={f"code_ablation.{k}": v for k, v in metrics.items()}, tables=[table], notes=notes)


__all__ = ["CODES", "code_properties", "run_code_ablation"]
