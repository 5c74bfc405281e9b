"""One Captum-like interface for every explanation method, registered by name.

    explainer = get_explainer("lig", G, C)
    attr = explainer.attribute(images, latents=(z1, z2))   # [B,C,H,W], shaped like images

Latent methods ("difference", "lig", "lig_path", "ig_negative") need the images' latent codes:
pass ``latents=(z1, z2)`` (e.g. from one shared :func:`medxgan.inversion.invert` call) or let the
explainer invert the inputs itself with its ``inversion`` config. Their maps describe the
reconstruction G(z1, z2) — they match the input as far as the inversion succeeded.
"""

from __future__ import annotations

import abc

from typing import Callable, ClassVar

import torch
import torch.nn as nn

from medxgan.errors import MedxganError
from medxgan.explain.attribution import grad_cam, integrated_gradients
from medxgan.explain.latent import latent_integrated_gradients, negative_realization, path_endpoints
from medxgan.explain.targets import Target, resolve_target
from medxgan.inversion import InversionConfig, invert

EXPLAINERS: dict[str, type["Explainer"]] = {}


def register_explainer(name: str) -> Callable[[type], type]:
    """Class decorator: make an :class:`Explainer` subclass available as ``get_explainer(name, ...)``."""

    def wrap(cls):
        if name in EXPLAINERS:
            raise MedxganError(f"explainer {name!r} is already registered")
        cls.name = name
        EXPLAINERS[name] = cls
        return cls

    return wrap


def list_explainers() -> list[str]:
    return sorted(EXPLAINERS)


def get_explainer(name: str, G: nn.Module | None, C: nn.Module, **opts) -> "Explainer":
    """Build the explainer registered as ``name`` around generator ``G`` (may be None for the
    pixel-space methods) and classifier ``C``; ``opts`` go to its constructor."""
    if name not in EXPLAINERS:
        raise MedxganError(f"unknown explanation method {name!r} (known: {', '.join(list_explainers())})")
    return EXPLAINERS[name](G, C, **opts)


class Explainer(abc.ABC):
    """Base class: ``attribute(inputs, target=1, **kw) -> Tensor shaped like inputs``.

    ``target`` follows Captum's convention where 1 is the positive class; it is the only class
    medXGAN explains, so an int must be 1 (None means the same). How the positive class is
    scored is the explainer's ``target`` option (PositiveLogit by default); a Target instance (or
    "logit" / "probability") passed to ``attribute`` overrides it for that call."""

    name: ClassVar[str] = ""
    uses_latents: ClassVar[bool] = False

    def __init__(self, G: nn.Module | None, C: nn.Module, target: "Target | str | None" = None,
                 inversion: InversionConfig | None = None):
        self.G = G
        self.C = C
        self.target = resolve_target(target)
        self.inversion = inversion if inversion is not None else InversionConfig()
        if self.uses_latents and G is None:
            raise MedxganError(f"explainer {self.name!r} needs a generator")

    def _resolve(self, target) -> Target:
        if target is None or (isinstance(target, int) and not isinstance(target, bool) and target == 1):
            return self.target
        if isinstance(target, (Target, str)):
            return resolve_target(target)
        raise MedxganError(f"medxgan explains the positive class: target must be 1 or a Target, got {target!r}")

    def latents(self, inputs: torch.Tensor, latents=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z1, z2) for ``inputs``: the given ones, or found by inverting the inputs (Eq. 5)."""
        if latents is None:
            result = invert(self.G, self.C, inputs, self.inversion)
            return result.z1, result.z2
        z1, z2 = latents
        if z1.shape[0] != inputs.shape[0] or z2.shape[0] != inputs.shape[0]:
            raise MedxganError(f"latents for {z1.shape[0]} images given with {inputs.shape[0]} inputs")
        return z1.to(inputs.device), z2.to(inputs.device)

    def attribute(self, inputs: torch.Tensor, target=1, **kw) -> torch.Tensor:  # [B,C,H,W] -> [B,C,H,W]
        if inputs.ndim != 4:
            raise MedxganError(f"explainers expect images [B,C,H,W], got shape {tuple(inputs.shape)}")
        out = self._attribute(inputs, self._resolve(target), **kw)
        if out.shape[1] == 1 and inputs.shape[1] != 1:  # channel-less maps (Grad-CAM) cover every channel
            out = out.expand(-1, inputs.shape[1], -1, -1)
        if out.shape != inputs.shape:
            raise MedxganError(
                f"{self.name}: attribution shape {tuple(out.shape)} differs from the input {tuple(inputs.shape)} "
                "(does the generator produce images of the input's size?)"
            )
        return out.detach().contiguous()

    @abc.abstractmethod
    def _attribute(self, inputs, target, **kw):
        """Implemented by each subclass."""


@register_explainer("difference")
class DifferenceExplainer(Explainer):
    """|G(z1, z2) - G(z1, neg)|: what changes between the image and its negative realization (Fig. 4)."""

    uses_latents = True

    def _attribute(self, inputs, target, latents=None):
        z1, z2 = self.latents(inputs, latents)
        negative, positive = path_endpoints(self.G, z1, z2)
        return (positive - negative).abs()


@register_explainer("lig")
class LatentIGExplainer(Explainer):
    """Latent Integrated Gradients, paper Eq. 7 (see :func:`latent_integrated_gradients`)."""

    uses_latents = True
    method = "paper"
    default_steps = 32

    def __init__(self, G, C, target=None, inversion=None, n_steps: int | None = None,
                 quadrature_rule: str = "gausslegendre", internal_batch_size: int = 64):
        super().__init__(G, C, target, inversion)
        self.n_steps = n_steps if n_steps is not None else self.default_steps
        self.quadrature_rule = quadrature_rule
        self.internal_batch_size = internal_batch_size

    def _attribute(self, inputs, target, latents=None):
        z1, z2 = self.latents(inputs, latents)
        return latent_integrated_gradients(
            self.G, self.C, z1, z2, n_steps=self.n_steps, target=target, method=self.method,
            quadrature_rule=self.quadrature_rule, internal_batch_size=self.internal_batch_size,
        )


@register_explainer("lig_path")
class LatentPathIGExplainer(LatentIGExplainer):
    """The exact path integral along the curved latent path (complete up to discretisation)."""

    method = "path"
    default_steps = 128


@register_explainer("gradcam")
class GradCAMExplainer(Explainer):
    """Captum Grad-CAM on ``layer`` (default: last conv), ReLU, bilinear upsampling."""

    def __init__(self, G, C, target=None, inversion=None, layer: nn.Module | None = None,
                 relu: bool = True, interpolate_mode: str = "bilinear"):
        super().__init__(G, C, target, inversion)
        self.layer, self.relu, self.interpolate_mode = layer, relu, interpolate_mode

    def _attribute(self, inputs, target, latents=None):
        return grad_cam(self.C, inputs, self.layer, target, self.relu, self.interpolate_mode)


@register_explainer("ig")
class IGExplainer(Explainer):
    """Captum Integrated Gradients from a black image (all -1): the paper's IG baseline."""

    def __init__(self, G, C, target=None, inversion=None, n_steps: int = 32, method: str = "gausslegendre",
                 internal_batch_size: int | None = 64):
        super().__init__(G, C, target, inversion)
        self.n_steps, self.method, self.internal_batch_size = n_steps, method, internal_batch_size

    def baseline(self, inputs, latents):
        return "black"

    def _attribute(self, inputs, target, latents=None):
        return integrated_gradients(self.C, inputs, self.baseline(inputs, latents), self.n_steps, target,
                                    self.method, self.internal_batch_size)


@register_explainer("ig_negative")
class NegativeIGExplainer(IGExplainer):
    """"medXGAN + IG": Captum Integrated Gradients of the *input image* with its negative
    realization G(z1, neg) as baseline instead of a black image (a straight pixel-space line)."""

    uses_latents = True

    def baseline(self, inputs, latents):
        z1, z2 = self.latents(inputs, latents)
        return negative_realization(self.G, z1, z2).to(inputs.dtype)


@register_explainer("random")
class RandomExplainer(Explainer):
    """Uniform [0,1) noise, seeded (the same map for the same call): a control for evaluations."""

    def __init__(self, G, C, target=None, inversion=None, seed: int = 0):
        super().__init__(G, C, target, inversion)
        self.seed = seed

    def _attribute(self, inputs, target, latents=None):
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(inputs.shape, generator=gen).to(inputs.device, inputs.dtype)


__all__ = ["EXPLAINERS", "Explainer", "get_explainer", "list_explainers", "register_explainer"]
