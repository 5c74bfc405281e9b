"""Explain a batch of images with every method at once, sharing one inversion (Eq. 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from medxgan.explain.latent import LatentInterpolation, accumulated_difference, completeness_error, latent_interpolation
from medxgan.explain.registry import get_explainer
from medxgan.explain.targets import Target, resolve_target
from medxgan.inversion import InversionConfig, image_quality, invert
from medxgan.tuning import TuningConfig, tune_generator

DEFAULT_METHODS = ("difference", "lig", "gradcam", "ig", "ig_negative")


def _check_sigma(sigma) -> float:
    sigma = float(sigma)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"the smoothing sigma must be a non-negative number of pixels, got {sigma}")
    return sigma


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``maps`` [..., H, W] blurred over the last two axes by a Gaussian of ``sigma`` pixels
    (``scipy.ndimage.gaussian_filter``, edges mirrored about the pixel border, truncated at
    4 sigma); 0 returns them as they are. The blur is linear, so it commutes with averaging the
    members of an ensemble, and with these edges it keeps every map's total exactly: what would
    spill over an edge is mirrored back in. LIG's completeness (its total equals Δf) therefore
    holds for the smoothed map too.

    Why: a map's largest *pixel* can be a one-pixel peak of generator texture or a thin rim
    where anatomy shifted; after the blur the largest value marks where the change is
    concentrated over a neighbourhood of about ``sigma`` pixels (docs/RESULTS.md, session 21).
    """
    sigma = _check_sigma(sigma)
    if sigma == 0:
        return maps
    from scipy.ndimage import gaussian_filter

    arr = maps.detach().to("cpu", torch.float64).numpy()
    out = gaussian_filter(arr, sigma=[0.0] * (arr.ndim - 2) + [sigma, sigma], mode="reflect", truncate=4.0)
    return torch.from_numpy(out).to(maps.device, maps.dtype)


@dataclass
class Explanation:
    """Everything medXGAN says about one image; tensors on CPU, float32, detached."""

    image: torch.Tensor  # [C,H,W] in [-1,1]
    reconstruction: torch.Tensor  # [C,H,W] G(z1, z2)
    negative: torch.Tensor  # [C,H,W] G(z1, neg)
    frames: torch.Tensor  # [K,C,H,W] latent interpolation, negative -> reconstruction
    frame_probs: torch.Tensor  # [K] P(positive) per frame
    alphas: torch.Tensor  # [K]
    monotone: bool  # frame_probs non-decreasing within MONOTONE_TOL
    prob_image: float
    prob_reconstruction: float
    prob_negative: float
    quality: dict[str, float]  # inversion quality: mse, psnr, ssim, delta_prob, loss, steps_run
    maps: dict[str, torch.Tensor]  # method name -> [C,H,W] attribution
    accumulated: torch.Tensor  # [C,H,W] sum_k |frame_{k+1} - frame_k| (Fig. 5)
    z1: torch.Tensor  # [z1_dim]
    z2: torch.Tensor  # [code_dim]
    completeness: dict[str, float] = field(default_factory=dict)  # "lig"/"lig_path" -> |sum - Δf|
    name: str = ""  # where the image came from (file name), shown in the report
    mask: torch.Tensor | None = None  # [1,H,W] bool ground-truth lesion, outlined on every map
    members: int = 1  # explanations averaged into ``maps`` (explain_images(..., ensemble=K))
    agreement: float | None = None  # with members > 1: mean pairwise correlation of their |difference|
    smoothing: float = 0.0  # sigma (pixels) of the Gaussian blur applied to ``maps`` and ``accumulated``; 0 = none


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32)


def _latent_explanations(G, C, images, z1, z2, methods, inversion, options, n_frames, target, progress):
    """(interpolation, {method: maps}, {"lig"/"lig_path": completeness error}) of ``images`` at
    their latents under generator ``G``."""
    interp = latent_interpolation(G, C, z1, z2, n_frames)
    maps, completeness = {}, {}
    method_names = list(methods)
    if progress:
        from tqdm.auto import tqdm

        method_names = tqdm(method_names, desc="explain", leave=False)
    for name in method_names:
        explainer = get_explainer(name, G, C, target=target, inversion=inversion, **options.get(name, {}))
        maps[name] = explainer.attribute(images, latents=(z1, z2))
        if name in ("lig", "lig_path"):
            completeness[name] = completeness_error(maps[name], G, C, z1, z2, target)
    return interp, maps, completeness


def explain_images(G, C, images: torch.Tensor, methods=DEFAULT_METHODS,
                   inversion: InversionConfig = InversionConfig(), n_frames: int = 11, lig_steps: int = 32,
                   target: "str | Target" = "logit", progress: bool = False, path_steps: int = 128,
                   ig_steps: int = 32, internal_batch_size: int = 64, init=None,
                   names: list[str] | None = None, masks: torch.Tensor | None = None,
                   first_index: int | None = None, tuning: TuningConfig | None = None,
                   ensemble: int = 1, smooth: float = 0.0) -> list[Explanation]:
    """Invert ``images`` once (Eq. 5), then run every method in ``methods`` on the shared latents.

    Args:
        images: [B,C,H,W] in [-1,1] (moved to the classifier's device).
        methods: registered explainer names (see ``list_explainers()``).
        n_frames: frames of the latent interpolation (Fig. 5).
        lig_steps: quadrature nodes of "lig" (Eq. 7); ``path_steps`` segments of "lig_path";
            ``ig_steps`` Captum steps of "ig" / "ig_negative".
        target: "logit" (positive log-odds, default) or "probability", or a Target.
        init: optional (z1, z2) starting point for the inversion.
        names, masks: optional per-image names and [B,1,H,W] bool lesion masks, carried into
            the explanations (for the report).
        first_index: index of ``images[0]`` in a larger job (see :func:`medxgan.inversion.invert`).
        tuning: optional per-image generator tuning after the inversion
            (:func:`medxgan.tuning.tune_generator`): each image's reconstruction, negative
            realization, interpolation and latent maps then come from its own tuned copy of G.
            ``quality`` then describes the tuned reconstruction and keeps the latent-only
            inversion's SSIM as ``ssim_latent``.
        ensemble: explain every image this many times, member k inverting with seed
            ``inversion.seed + k`` (its own random starts, hence its own tuned generator; with
            augmented views, tuning seed ``tuning.seed + k``), and
            combine them with :func:`combine_explanations`: the maps are the members' mean and
            ``agreement`` says how alike the members' difference maps are. K times the cost.
        smooth: sigma in pixels of a Gaussian blur (:func:`smooth_maps`) applied to every map and
            the accumulated difference after they are computed (0 = the raw maps, default). The
            images, interpolation and completeness errors are not blurred.

    Returns:
        One :class:`Explanation` per image. ``completeness`` holds |sum(attr) - Δf| for "lig" and
        "lig_path" when they were computed (Δf = f(G(z1,z2)) - f(G(z1,neg)) for the chosen target).
    """
    if ensemble < 1:
        raise ValueError(f"ensemble must be at least 1, got {ensemble}")
    _check_sigma(smooth)  # a bad sigma fails before any work
    if ensemble > 1:  # member k is exactly the single explanation with inversion seed + k
        members = [explain_images(G, C, images, methods=methods, inversion=replace(inversion, seed=inversion.seed + k),
                                  n_frames=n_frames, lig_steps=lig_steps, target=target, progress=progress,
                                  path_steps=path_steps, ig_steps=ig_steps, internal_batch_size=internal_batch_size,
                                  init=init, names=names, masks=masks, first_index=first_index,
                                  tuning=replace(tuning, seed=tuning.seed + k) if tuning is not None else None,
                                  smooth=smooth)
                   for k in range(ensemble)]
        return combine_explanations(members)
    device = next(C.parameters()).device
    images = images.to(device, torch.float32)
    target = resolve_target(target)
    inv = invert(G, C, images, inversion, init=init, progress=progress, first_index=first_index)
    z1, z2 = inv.z1, inv.z2
    options = {
        "lig": {"n_steps": lig_steps, "internal_batch_size": internal_batch_size},
        "lig_path": {"n_steps": path_steps, "internal_batch_size": internal_batch_size},
        "ig": {"n_steps": ig_steps, "internal_batch_size": internal_batch_size},
        "ig_negative": {"n_steps": ig_steps, "internal_batch_size": internal_batch_size},
    }
    quality = {"mse": inv.mse, "psnr": inv.psnr, "ssim": inv.ssim, "delta_prob": inv.delta_prob}
    recon, prob_recon = inv.reconstruction, inv.prob_reconstruction
    if tuning is None:
        interp, maps, completeness = _latent_explanations(G, C, images, z1, z2, methods, inversion, options, n_frames,
                                                          target, progress)
    else:  # every image with its own tuned generator
        parts = []
        images_iter = range(images.shape[0])
        if progress:
            from tqdm.auto import tqdm

            images_iter = tqdm(images_iter, desc="tune", leave=False)
        for b in images_iter:
            sl = slice(b, b + 1)
            Gb = tune_generator(G, C, images[sl], z1[sl], z2[sl], tuning)
            parts.append(_latent_explanations(Gb, C, images[sl], z1[sl], z2[sl], methods, inversion, options, n_frames,
                                              target, False))
        interp = LatentInterpolation(*(torch.cat([getattr(p[0], f) for p in parts]) if f != "alphas" else parts[0][0].alphas
                                       for f in LatentInterpolation._fields))
        maps = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
        completeness = {k: torch.cat([p[2][k] for p in parts]) for k in parts[0][2]}
        recon = interp.frames[:, -1]
        prob_recon = interp.probs[:, -1]
        mse, psnr, ssim = image_quality(recon, images)
        quality = {"mse": mse, "psnr": psnr, "ssim": ssim, "delta_prob": (prob_recon - inv.prob_target).abs(),
                   "ssim_latent": inv.ssim}
    accumulated = smooth_maps(accumulated_difference(interp.frames), smooth)
    maps = {k: smooth_maps(v, smooth) for k, v in maps.items()}  # after the completeness errors
    negative = interp.frames[:, 0]
    out = []
    for b in range(images.shape[0]):
        out.append(Explanation(
            image=_cpu(images[b]), reconstruction=_cpu(recon[b]), negative=_cpu(negative[b]),
            frames=_cpu(interp.frames[b]), frame_probs=_cpu(interp.probs[b]), alphas=_cpu(interp.alphas),
            monotone=bool(interp.monotone[b]),
            prob_image=float(inv.prob_target[b]), prob_reconstruction=float(prob_recon[b]),
            prob_negative=float(interp.probs[b, 0]),
            quality={**{k: float(v[b]) for k, v in quality.items()}, "loss": float(inv.loss[b]),
                     "steps_run": int(inv.steps_run[b]),
                     **({"tune_steps": tuning.steps} if tuning is not None else {})},
            maps={k: _cpu(v[b]) for k, v in maps.items()}, accumulated=_cpu(accumulated[b]),
            z1=_cpu(z1[b]), z2=_cpu(z2[b]),
            completeness={k: float(v[b]) for k, v in completeness.items()},
            name=names[b] if names is not None else f"image_{b}",
            mask=masks[b].detach().cpu().bool() if masks is not None else None,
            smoothing=float(smooth),
        ))
    return out


def combine_explanations(members: Sequence[Sequence[Explanation]]) -> list[Explanation]:
    """One explanation per image from K explanations of the same images, made from independent
    random starts (``members[k][b]``: member k's explanation of image b).

    Where the inversion can settle in different places, the change each member's negative
    realization makes differs too; a change every member makes is what the classifier needs for
    this image, one that only some make depends on the start. So:

    * every map (and the accumulated difference) is the members' mean: a change shared by all
      keeps its strength, one made by a single member is divided by K;
    * ``agreement`` is the mean over member pairs of the Pearson correlation of their
      |G(z1, z2) - G(z1, 0)| maps (1 = the same change, NaN when a member changed nothing;
      docs/RESULTS.md relates it to how often the map finds the lesion);
    * the images, probabilities, interpolation, latents and quality shown are those of the member
      that reproduces the image best (highest SSIM; the first on ties), with ``quality["member"]``
      its index and ``quality["ssim_members_min"]`` the worst member's SSIM;
    * ``completeness`` is the members' mean error, an upper bound on the mean map's
      |Σ mean map − mean Δf|.
    """
    members = [list(m) for m in members]
    if not members:
        raise ValueError("combine_explanations needs at least one member")
    n = len(members[0])
    if any(len(m) != n for m in members):
        raise ValueError("every member must explain the same images")
    K = len(members)
    out = []
    for b in range(n):
        ms = [m[b] for m in members]
        if any(e.name != ms[0].name or e.image.shape != ms[0].image.shape for e in ms):
            raise ValueError(f"members disagree on image {b} ({ms[0].name})")
        ssims = [float(e.quality.get("ssim", float("nan"))) for e in ms]
        best = max(range(K), key=lambda k: (ssims[k] if ssims[k] == ssims[k] else float("-inf"), -k))
        diffs = torch.stack([(e.reconstruction - e.negative).abs().reshape(-1) for e in ms]).double()
        pairs = torch.corrcoef(diffs)[tuple(torch.triu_indices(K, K, 1))]  # NaN where a member changed nothing
        rep = ms[best]
        out.append(replace(
            rep,
            maps={k: torch.stack([e.maps[k] for e in ms]).mean(0) for k in rep.maps},
            accumulated=torch.stack([e.accumulated for e in ms]).mean(0),
            completeness={k: sum(e.completeness[k] for e in ms) / K for k in rep.completeness},
            quality={**rep.quality, "member": best, "ssim_members_min": min((v for v in ssims if v == v), default=float("nan"))},
            members=K * rep.members,
            agreement=float(pairs.mean()) if K > 1 else rep.agreement,
        ))
    return out


__all__ = ["DEFAULT_METHODS", "Explanation", "combine_explanations", "explain_images", "smooth_maps"]
