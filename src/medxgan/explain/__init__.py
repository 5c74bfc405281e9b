"""Explanations of a binary classifier: medXGAN's latent methods and Captum's pixel baselines.

* :mod:`~medxgan.explain.targets` — what is explained (positive log-odds or probability);
* :mod:`~medxgan.explain.latent` — negative realization, latent interpolation, difference maps,
  Latent Integrated Gradients (Eq. 7) and its exact path-integral variant;
* :mod:`~medxgan.explain.attribution` — Grad-CAM and Integrated Gradients through Captum;
* :mod:`~medxgan.explain.registry` — the ``Explainer`` interface and the name registry;
* :mod:`~medxgan.explain.pipeline` — ``explain_images``: one inversion, every method;
  ``combine_explanations``: several explanations of an image from independent starts, as one;
  ``smooth_maps``: the optional Gaussian blur of the maps.
"""

from medxgan.explain.attribution import grad_cam, integrated_gradients
from medxgan.explain.latent import (
    MONOTONE_TOL,
    LatentInterpolation,
    accumulated_difference,
    completeness_error,
    difference_maps,
    interpolation_frames,
    latent_integrated_gradients,
    latent_interpolation,
    negative_realization,
    path_codes,
    path_endpoints,
    quadrature,
)
from medxgan.explain.pipeline import DEFAULT_METHODS, Explanation, combine_explanations, explain_images, smooth_maps
from medxgan.explain.registry import EXPLAINERS, Explainer, get_explainer, list_explainers, register_explainer
from medxgan.explain.targets import PositiveLogit, PositiveProbability, Target, TargetScore, resolve_target

__all__ = [
    "DEFAULT_METHODS",
    "EXPLAINERS",
    "Explainer",
    "Explanation",
    "LatentInterpolation",
    "MONOTONE_TOL",
    "PositiveLogit",
    "PositiveProbability",
    "Target",
    "TargetScore",
    "accumulated_difference",
    "combine_explanations",
    "completeness_error",
    "difference_maps",
    "explain_images",
    "get_explainer",
    "grad_cam",
    "integrated_gradients",
    "interpolation_frames",
    "latent_integrated_gradients",
    "latent_interpolation",
    "list_explainers",
    "negative_realization",
    "path_codes",
    "path_endpoints",
    "quadrature",
    "register_explainer",
    "resolve_target",
    "smooth_maps",
]
