"""Pixel-space baselines, computed by Captum (not re-implemented): Grad-CAM and Integrated
Gradients with the paper's black baseline or with medXGAN's negative realization as baseline.

The explained scalar is ``target(C(x))`` (:mod:`medxgan.explain.targets`), passed to Captum as
the forward function with ``target=None``; for a one-logit classifier and PositiveLogit this is
exactly Captum on the BinaryClassifier with ``target=1``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

from medxgan.errors import MedxganError
from medxgan.explain.targets import PositiveLogit, Target, TargetScore
from medxgan.inversion import frozen
from medxgan.models.classifier import last_conv_layer


def grad_cam(C: nn.Module, x: torch.Tensor, layer: nn.Module | None = None,
             target: "Target | str | None" = PositiveLogit(), relu: bool = True,
             interpolate_mode: str = "bilinear") -> torch.Tensor:
    """Grad-CAM (Captum ``LayerGradCam``) of the positive-class target on ``layer`` (default:
    the classifier's last Conv2d), ReLU'd, upsampled to the input size with Captum's
    ``LayerAttribution.interpolate``.

    Args:
        x: [B,C,H,W] in [-1,1].
    Returns:
        [B,1,H,W] map (Grad-CAM has no channel dimension).
    """
    layer = layer if layer is not None else last_conv_layer(C)
    with frozen(C):
        cam = LayerGradCam(TargetScore(C, target), layer).attribute(x, target=None, relu_attributions=relu)
        return LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode=interpolate_mode)


def integrated_gradients(C: nn.Module, x: torch.Tensor, baseline: "torch.Tensor | str" = "black",
                         n_steps: int = 32, target: "Target | str | None" = PositiveLogit(),
                         method: str = "gausslegendre", internal_batch_size: int | None = 64,
                         return_convergence_delta: bool = False):
    """Integrated Gradients (Captum ``IntegratedGradients``) of the positive-class target.

    Args:
        x: [B,C,H,W] in [-1,1].
        baseline: ``"black"`` (all -1, the paper's IG baseline) or a tensor shaped like ``x``,
            e.g. the negative realization G(z1, neg) ("medXGAN + IG").
        n_steps, method: Captum's path discretisation.
        internal_batch_size: rows per Captum forward/backward pass (bounds memory); Captum wants
            at least one row per example, so it is raised to ``B`` when smaller.
    Returns:
        [B,C,H,W] attributions; with ``return_convergence_delta`` also Captum's delta [B].
    """
    if isinstance(baseline, str):
        if baseline != "black":
            raise MedxganError(f"unknown IG baseline {baseline!r} (use 'black' or a tensor)")
        baseline = torch.full_like(x, -1.0)
    if baseline.shape != x.shape:
        raise MedxganError(f"IG baseline shape {tuple(baseline.shape)} differs from the input {tuple(x.shape)}")
    if internal_batch_size is not None:
        internal_batch_size = max(internal_batch_size, x.shape[0])
    with frozen(C):
        out = IntegratedGradients(TargetScore(C, target)).attribute(
            x, baselines=baseline.detach(), target=None, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size, return_convergence_delta=return_convergence_delta,
        )
    if return_convergence_delta:
        return out[0].detach(), out[1].detach()
    return out.detach()


__all__ = ["grad_cam", "integrated_gradients"]
