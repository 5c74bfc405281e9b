"""Fresh models for the experiments that must train their own (data-randomisation sanity check,
class-code ablation): the run's own configs, the evaluation's budget and seed.

Budgets: the classifier is a re-initialised copy of ``ctx.C`` (its architecture, whatever the run's
config says) trained with the run's ``classifier`` settings (1 epoch in quick mode); the GAN
keeps the run's ``gan`` section with ``steps = ctx.gan_steps`` (default: the run's ``gan.steps``
capped at :data:`FRESH_GAN_STEPS`, so that a full evaluation, which trains three fresh generators,
stays within an hour on 2 CPU cores; at most :data:`QUICK_GAN_STEPS` in quick mode). When the step budget differs from the run's, the
step-counted schedule (``lam_start``, ``lam_warmup``, ``ema_start``) is scaled by the same factor,
so that a shorter run still spends the same share of its steps with the classifier term on.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from medxgan.config import ClassifierConfig, GANConfig, from_dict
from medxgan.inversion import InversionConfig

FRESH_GAN_STEPS = 800  # default cap on fresh generators' steps (ablation, data randomisation); --gan-steps overrides
QUICK_GAN_STEPS = 30  # GAN steps of freshly trained generators in quick mode (smoke test, not a result)
QUICK_CLASSIFIER_EPOCHS = 1


def classifier_config(ctx) -> ClassifierConfig:
    """The run's classifier config (defaults where the run has none), seeded by ``ctx.seed``,
    one epoch in quick mode."""
    cfg = from_dict(ClassifierConfig, ctx.run_config["classifier"]) if "classifier" in ctx.run_config else ClassifierConfig()
    cfg = dataclasses.replace(cfg, seed=ctx.seed, batch_size=min(cfg.batch_size, len(ctx.train_images)))
    if ctx.quick:
        cfg = dataclasses.replace(cfg, epochs=QUICK_CLASSIFIER_EPOCHS)
    return cfg


def gan_config(ctx, code: str | None = None) -> GANConfig:
    """The run's GAN config with the evaluation's step budget and seed (see the module docstring);
    ``code`` ("continuous" / "discrete") overrides the class code."""
    cfg = from_dict(GANConfig, ctx.run_config["gan"]) if "gan" in ctx.run_config else GANConfig()
    steps = ctx.gan_steps if ctx.gan_steps is not None else min(cfg.steps, QUICK_GAN_STEPS if ctx.quick else FRESH_GAN_STEPS)
    scale = steps / cfg.steps
    cfg = dataclasses.replace(
        cfg, steps=int(steps), seed=ctx.seed,
        lam_start=int(round(cfg.lam_start * scale)), lam_warmup=int(round(cfg.lam_warmup * scale)),
        ema_start=int(round(cfg.ema_start * scale)),
        batch_size=_fitting_batch(cfg, len(ctx.train_images)),
        code=code if code is not None else cfg.code,
    )
    return cfg


def _fitting_batch(cfg: GANConfig, n_images: int) -> int:
    """The run's GAN batch, shrunk to the training set if smaller (kept even when the change
    prior pairs images)."""
    batch = min(cfg.batch_size, n_images)
    return max(2, batch - batch % 2) if cfg.change_l1 > 0 else batch


def evaluation_inversion(ctx) -> InversionConfig:
    """The inversion config of the evaluation (``ctx.inversion``, else the defaults seeded by ``ctx.seed``)."""
    return ctx.inversion if ctx.inversion is not None else InversionConfig(seed=ctx.seed)


def fresh_model_inversion(ctx) -> InversionConfig:
    """The inversion config for generators the evaluation trains itself (random starts: they have
    no encoder): ``ctx.fresh_inversion``, else :func:`evaluation_inversion`."""
    return ctx.fresh_inversion if ctx.fresh_inversion is not None else evaluation_inversion(ctx)


def reinitialised_copy(module: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``module`` with every submodule that has ``reset_parameters`` (convolutions,
    linear layers, BatchNorm weights and running statistics) re-initialised from ``seed``: the same
    architecture, nothing learned. The global RNG is left as it was."""
    fresh = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return fresh


def train_fresh_classifier(ctx, labels: torch.Tensor):
    """Train a classifier with ``ctx.C``'s architecture (a re-initialised copy of it, so that the
    architecture is right even when the run's config does not describe the classifier) on
    ``ctx.train_images`` with ``labels`` [N] (e.g. shuffled ones), with the training settings of
    :func:`classifier_config`. Returns (frozen classifier on ``ctx.device``, its config)."""
    from medxgan.training.classifier import train_classifier

    cfg = classifier_config(ctx)
    fresh = reinitialised_copy(ctx.C, cfg.seed).train().requires_grad_(True)
    classifier, _ = train_classifier(cfg, ctx.train_images, labels, device=ctx.device, progress=ctx.progress,
                                     classifier=fresh)
    return classifier.to(ctx.device).frozen(), cfg


def train_fresh_gan(ctx, classifier, code: str | None = None):
    """Train a medXGAN on ``ctx.train_images`` with the frozen ``classifier`` (see :func:`gan_config`).
    Returns (EMA generator in eval mode on ``ctx.device``, its config)."""
    from medxgan.training.gan import train_gan

    cfg = gan_config(ctx, code)
    generator, _ = train_gan(cfg, ctx.train_images, classifier, device=ctx.device, progress=ctx.progress)
    return generator.to(ctx.device).eval().requires_grad_(False), cfg


__all__ = ["FRESH_GAN_STEPS", "QUICK_CLASSIFIER_EPOCHS", "QUICK_GAN_STEPS", "classifier_config", "evaluation_inversion", "fresh_model_inversion", "gan_config",
           "reinitialised_copy", "train_fresh_classifier", "train_fresh_gan"]
