"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018), named as future work by the paper.

(a) **Cascading model-parameter randomisation.** The classifier's learnable layers (Conv2d and
    Linear, in module order) are re-initialised one at a time from the top (the logits) down, each
    with its own default initialiser and a seeded draw, on a deep copy of C (``ctx.C`` is never
    touched); BatchNorm layers keep their statistics and affine parameters. After every cumulative
    step the maps of the gradient methods are recomputed and compared with the trained classifier's
    by the Spearman rank correlation and the SSIM of the saliencies |map|. A method that passes
    shows a falling correlation. The latent methods are run with the test positives' latents from
    the trained model's inversion (G was trained with the original C, so randomising C changes
    ``lig`` and ``ig_negative`` only through the classifier's gradients; the baseline G(z1, neg) is
    fixed). The difference map |G(z1,z2) - G(z1,neg)| does not read C once the latents are fixed, so
    it would pass through (a) unchanged by construction; it is tested by (b).
(b) **Data randomisation for medXGAN.** A classifier of the run's architecture is trained on the
    training images with *shuffled* labels, a medXGAN is trained with it (the evaluation's GAN
    budget), and its difference / LIG maps of the test positives are scored against the lesion masks
    (relevance mass of the positive part and pointing game) next to the trained model's. An
    explanation that still localises the lesion after the label-image link is destroyed would
    describe the data or the generator, not the classifier.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from medxgan.evaluate.mapstats import attribution_maps, map_ssim, pointing_game, positive_mass_share, spearman_rank
from medxgan.evaluate.registry import ExperimentResult, Table, mean_std_ci, register_experiment
from medxgan.evaluate.retrain import evaluation_inversion, fresh_model_inversion, train_fresh_classifier, train_fresh_gan

GRADIENT_METHODS = ("gradcam", "ig", "ig_negative", "lig", "lig_path")  # maps that read C's gradients
LOCALISING_METHODS = ("difference", "lig")  # medXGAN's maps scored in the data-randomisation check
QUICK_IMAGES = 3
RANDOMISED_TYPES = (nn.Conv2d, nn.Linear)


def randomisable_layers(classifier: nn.Module) -> list[str]:
    """Names of the classifier's Conv2d / Linear layers from the top (last in module order) down."""
    return [name for name, m in classifier.named_modules() if isinstance(m, RANDOMISED_TYPES)][::-1]


def randomise_layer(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` with its own ``reset_parameters`` from a seeded CPU draw (the global
    RNG is left as it was; the result does not depend on the module's device)."""
    fresh = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    module.load_state_dict(fresh.state_dict())


def cascading_randomisation(G, C, images: torch.Tensor, methods, latents=None, seed: int = 0, ig_steps: int = 32,
                            lig_steps: int = 32) -> dict:
    """Adebayo et al.'s cascading randomisation of C's layers, top down (see the module docstring).

    Args:
        images: [B,C,H,W] in [-1,1] on the models' device.
        methods: explainer names (gradient methods; latent ones need ``latents``).
        latents: (z1, z2) of ``images`` from the trained models, kept fixed throughout.
        seed: layer ``k`` (0 = top) is drawn from ``seed * 1000 + k``.
    Returns:
        {"layers": [L names, top first], "spearman": {method: [L,B]}, "ssim": {method: [L,B]}},
        row ``k`` after randomising layers 0..k.
    """
    original = attribution_maps(G, C, images, methods, latents=latents, ig_steps=ig_steps, lig_steps=lig_steps)
    randomised = copy.deepcopy(C)
    modules = dict(randomised.named_modules())
    layers = randomisable_layers(randomised)
    spearman = {m: [] for m in methods}
    ssim = {m: [] for m in methods}
    for k, name in enumerate(layers):
        randomise_layer(modules[name], seed * 1000 + k)
        maps = attribution_maps(G, randomised, images, methods, latents=latents, ig_steps=ig_steps, lig_steps=lig_steps)
        for m in methods:
            spearman[m].append(spearman_rank(original[m], maps[m]))
            ssim[m].append(map_ssim(original[m], maps[m]))
    return {"layers": layers, "spearman": {m: torch.stack(v) for m, v in spearman.items()},
            "ssim": {m: torch.stack(v) for m, v in ssim.items()}}


def _cascade_figure(layers: list[str], curves: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6, 1.1 * len(layers) + 3), 3.8))
    axes = fig.subplots(1, 2)
    x = list(range(len(layers) + 1))
    ticks = ["trained"] + [f"+{name}" for name in layers]
    for ax, key, label in zip(axes, ("spearman", "ssim"), ("Spearman rank correlation of |map|", "SSIM of |map|")):
        for method, curve in curves.items():
            ax.plot(x, [1.0] + [c["mean"] for c in curve[key]], marker="o", label=method)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(ticks, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.set_xlabel("layers randomised (cumulative, from the logits down)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _maps(G, C, images: torch.Tensor, methods, inversion, steps: int, init, tuning) -> dict[str, torch.Tensor]:
    """{method: [B,C,H,W] CPU map}; with ``tuning``, through a copy of ``G`` tuned on each image
    (as the evaluation's shared explanations are), so that both models of the comparison are
    explained the same way."""
    if tuning is None:
        return attribution_maps(G, C, images, methods, inversion=inversion, ig_steps=steps, lig_steps=steps, init=init)
    from medxgan.explain import explain_images

    explanations = explain_images(G, C, images, methods=methods, inversion=inversion, lig_steps=steps, ig_steps=steps,
                                  init=init, first_index=0, tuning=tuning)
    return {m: torch.stack([e.maps[m] for e in explanations]).to("cpu", torch.float32) for m in methods}


def _data_randomisation(ctx, images: torch.Tensor, masks: torch.Tensor) -> tuple[dict, Table, list[str]]:
    """Part (b): train C and G on shuffled labels and score their maps against the lesion masks."""
    from medxgan.training.classifier import binary_metrics, predict_proba

    shuffle_seed = ctx.seed + 7919
    order = torch.randperm(len(ctx.train_labels), generator=torch.Generator().manual_seed(shuffle_seed))
    shuffled_labels = ctx.train_labels[order]
    C_shuffled, c_cfg = train_fresh_classifier(ctx, shuffled_labels)
    G_shuffled, g_cfg = train_fresh_gan(ctx, C_shuffled)
    device = next(ctx.C.parameters()).device
    steps = 8 if ctx.quick else 32
    methods = list(LOCALISING_METHODS)
    shuffled_maps = _maps(G_shuffled, C_shuffled, images.to(device), methods, fresh_model_inversion(ctx), steps, None, ctx.tuning)
    missing = [m for m in methods if m not in ctx.methods]
    trained_maps = _maps(ctx.G, ctx.C, images.to(device), missing, evaluation_inversion(ctx), steps,
                         ctx.inversion_start(images.to(device)), ctx.tuning) if missing else {}
    for m in methods:
        if m not in trained_maps:
            trained_maps[m] = ctx.maps(m)[: len(images)]
    test_probs = predict_proba(C_shuffled, ctx.test_images)
    area = masks.flatten(1).double().mean(1)  # a uniform map's mass = mask area; an empty mask scores nothing (NaN)
    metrics = {
        "chance_mass": mean_std_ci(area.where(area > 0, torch.full_like(area, float("nan"))), seed=ctx.seed),
        "shuffled_classifier_test_accuracy": binary_metrics(test_probs, ctx.test_labels.long())["accuracy"],
        "label_shuffle_seed": shuffle_seed, "classifier_epochs": c_cfg.epochs, "gan_steps": g_cfg.steps, "gan_seed": g_cfg.seed,
    }
    rows = []
    for m in methods:
        metrics[m] = {}
        for model, maps in (("trained", trained_maps[m]), ("shuffled_labels", shuffled_maps[m])):
            mass = mean_std_ci(positive_mass_share(maps, masks), seed=ctx.seed)
            pointing = mean_std_ci(pointing_game(maps, masks), seed=ctx.seed)
            metrics[m][model] = {"mass": mass, "pointing_game": pointing}
            rows.append([m, model.replace("_", " "), mass["mean"], mass["std"], pointing["mean"], mass["n"]])
    table = Table(
        title="Data randomisation: medXGAN trained with a classifier fitted to shuffled labels",
        columns=["method", "classifier labels", "relevance mass in lesion", "std", "pointing game", "images"],
        rows=rows,
        note=(f"Shuffled-label classifier: {c_cfg.epochs} epochs, "
              f"test accuracy {metrics['shuffled_classifier_test_accuracy']:.3f}; "
              f"its medXGAN: {g_cfg.steps} steps (seed {g_cfg.seed}). A uniform map puts "
              f"{metrics['chance_mass']['mean']:.3f} of its mass in the lesion (chance)."),
    )
    notes = ["Data randomisation passes when the shuffled-label rows fall to about chance while the trained rows stay above it. "
             "The trained model may have had a larger training budget than the shuffled-label one "
             f"({g_cfg.steps} GAN steps here); the comparison with chance does not depend on that."]
    return metrics, table, notes


@register_experiment("sanity", "Sanity checks: model and data randomisation (Adebayo et al. 2018)", order=60)
def run_sanity(ctx) -> ExperimentResult:
    """Experiment ``sanity``. Metrics (each key prefixed ``sanity.``): ``<method>`` = {mean, std,
    ci95, n} of the Spearman rank correlation between the trained and the fully randomised
    classifier's maps (lower = the map depends on the model); ``cascade`` (per layer step, per
    method: spearman and ssim); ``data_randomisation`` (part (b)) or ``data_randomisation_skipped``
    with the reason; ``seed``."""
    images, masks, _ = ctx.positives(costly=True)
    if ctx.quick:
        images = images[:QUICK_IMAGES]
        masks = masks[:QUICK_IMAGES] if masks is not None else None
    device = next(ctx.C.parameters()).device
    methods = [m for m in ctx.methods if m in GRADIENT_METHODS]
    metrics: dict = {"seed": ctx.seed}
    tables, figures, notes = [], {}, []
    if methods:
        latents = None
        if any(m in ("ig_negative", "lig", "lig_path") for m in methods):
            explanations = ctx.explanations()[: len(images)]
            latents = (torch.stack([e.z1 for e in explanations]).to(device), torch.stack([e.z2 for e in explanations]).to(device))
        steps = 8 if ctx.quick else 32
        cascade = cascading_randomisation(ctx.G, ctx.C, images.to(device), methods, latents, ctx.seed, steps, steps)
        layers = cascade["layers"]
        curves = {m: {k: [mean_std_ci(v, seed=ctx.seed) for v in cascade[k][m]] for k in ("spearman", "ssim")} for m in methods}
        for m in methods:
            metrics[m] = mean_std_ci(cascade["spearman"][m][-1], seed=ctx.seed)
        metrics["cascade"] = {"layers": layers, "layer_seeds": [ctx.seed * 1000 + k for k in range(len(layers))]}
        for m in methods:
            metrics["cascade"][m] = {k: [c["mean"] for c in v] for k, v in curves[m].items()}
        tables.append(Table(
            title="Cascading randomisation of the classifier (Spearman rank correlation of |map| with the trained model's)",
            columns=["layers randomised"] + methods,
            rows=[[f"{k + 1}: ..{name}"] + [curves[m]["spearman"][k]["mean"] for m in methods] for k, name in enumerate(layers)],
            note=(f"{len(images)} test positives; layers re-initialised top down, cumulatively; BatchNorm kept. "
                  "1 = unchanged map; a method passes when its correlation falls. "
                  "lig / ig_negative keep the trained model's latents (G was trained with the original C)."),
        ))
        figures["sanity_cascading_randomisation"] = _cascade_figure(layers, curves)
    if "difference" in ctx.methods:
        notes.append("The difference map is not in the cascading test: with the latents fixed it does not read the classifier, "
                     "so it is unchanged by construction; the data-randomisation check (b) tests it.")
    if masks is None:
        metrics["data_randomisation_skipped"] = "the test split has no lesion masks"
        notes.append("Data randomisation (b) skipped: the test split has no lesion masks to measure localisation against.")
    elif not bool(masks.any()):
        metrics["data_randomisation_skipped"] = "no explained test positive has a non-empty lesion mask"
        notes.append("Data randomisation (b) skipped: none of the explained test positives has a non-empty lesion mask.")
    else:
        data_metrics, table, data_notes = _data_randomisation(ctx, images, masks)
        metrics["data_randomisation"] = data_metrics
        tables.append(table)
        notes += data_notes
    # Prefixed: metrics.json merges every experiment's keys into one namespace.
    return ExperimentResult(metrics={f"sanity.{k}": v for k, v in metrics.items()}, tables=tables, figures=figures, notes=notes)


__all__ = ["GRADIENT_METHODS", "cascading_randomisation", "randomisable_layers", "randomise_layer", "run_sanity"]
