"""Explanations read off the generator's latent space (paper Sec. 3.1, 4.2, Figs. 4, 5, 9).

Given an image's latent codes (z1, z2) — from :func:`medxgan.inversion.invert` — the *negative
realization* G(z1, negative_code(z2)) keeps the anatomy z1 and removes the pathology code, and the
straight latent path ``negative_code(z2) + alpha * (z2 - negative_code(z2))``, alpha in [0, 1],
morphs it into the positive image G(z1, z2) (for the continuous code: G(z1, alpha * z2)).

All functions take tensors and return tensors on the generator's device, use G and C in eval
mode with frozen parameters (restored afterwards) and never touch files.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from medxgan.errors import MedxganError
from medxgan.explain.targets import PositiveLogit, Target, TargetScore, resolve_target
from medxgan.inversion import frozen

MONOTONE_TOL = 1e-3  # a drop of P(positive) smaller than this between frames still counts as monotone
QUADRATURES = ("gausslegendre", "riemann_middle")


def _check_latents(G, z1: torch.Tensor, z2: torch.Tensor):
    if z1.ndim != 2 or z2.ndim != 2 or z1.shape[0] != z2.shape[0]:
        raise MedxganError(f"latents must be z1 [B,z1_dim] and z2 [B,code_dim], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[1] != G.z1_dim or z2.shape[1] != G.code_dim:
        raise MedxganError(
            f"latents have dims ({z1.shape[1]}, {z2.shape[1]}) but the generator expects ({G.z1_dim}, {G.code_dim})"
        )


def path_codes(G, z2: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Codes on the latent path negative -> z2 at ``alphas`` [K]: [B,K,code_dim].

    alpha = 0 and alpha = 1 are set to ``negative_code(z2)`` and ``z2`` themselves, so the path's
    endpoints are bit-exact whatever rounding ``neg + alpha * (z2 - neg)`` does."""
    B, K = z2.shape[0], alphas.shape[0]
    alphas = alphas.to(z2.device, z2.dtype)
    codes = G.path_code(z2.repeat_interleave(K, 0), alphas.repeat(B)).view(B, K, -1).clone()
    codes[:, alphas == 0] = G.negative_code(z2)[:, None]
    codes[:, alphas == 1] = z2[:, None]
    return codes


@torch.no_grad()
def _render(G, z1: torch.Tensor, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """G(z1_b, codes_bk) for codes [B,K,code]: [B,K,C,H,W]."""
    B, K = codes.shape[:2]
    flat_z1 = z1.repeat_interleave(K, 0)
    flat_codes = codes.reshape(B * K, -1)
    out = [G(flat_z1[i:i + batch_size], flat_codes[i:i + batch_size]) for i in range(0, B * K, batch_size)]
    out = torch.cat(out)
    return out.view(B, K, *out.shape[1:])


def path_endpoints(G, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G(z1, neg), G(z1, z2)), each [B,C,H,W] in [-1,1], rendered in one batch."""
    _check_latents(G, z1, z2)
    with frozen(G):
        ends = _render(G, z1, path_codes(G, z2, torch.tensor([0.0, 1.0], device=z2.device)))
    return ends[:, 0], ends[:, 1]


def interpolation_frames(G, z1: torch.Tensor, z2: torch.Tensor, n_steps: int = 11,
                         batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames G(z1, path(alpha_k)) at ``n_steps`` evenly spaced alphas from 0 to 1.

    Returns (frames [B,K,C,H,W] in [-1,1], alphas [K]); frame 0 is the negative realization,
    frame K-1 is G(z1, z2)."""
    if n_steps < 2:
        raise MedxganError(f"an interpolation needs at least 2 frames, got {n_steps}")
    _check_latents(G, z1, z2)
    alphas = torch.linspace(0, 1, n_steps, device=z2.device)
    with frozen(G):
        frames = _render(G, z1, path_codes(G, z2, alphas), batch_size)
    return frames, alphas


@torch.no_grad()
def negative_realization(G, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """G(z1, negative_code(z2)): the image's anatomy without its pathology code. [B,C,H,W] in [-1,1]."""
    _check_latents(G, z1, z2)
    with frozen(G):
        return G(z1, G.negative_code(z2))


class LatentInterpolation(NamedTuple):
    frames: torch.Tensor  # [B,K,C,H,W] in [-1,1]
    probs: torch.Tensor  # [B,K] P(positive) of every frame
    alphas: torch.Tensor  # [K] from 0 (negative realization) to 1 (G(z1, z2))
    monotone: torch.Tensor  # [B] bool: probs never drop by more than ``tol`` from frame to frame


@torch.no_grad()
def latent_interpolation(G, C, z1: torch.Tensor, z2: torch.Tensor, n_steps: int = 11,
                         tol: float = MONOTONE_TOL, batch_size: int = 256) -> LatentInterpolation:
    """Latent interpolation of paper Sec. 3.1 / Fig. 5 with the classifier's P(positive) per frame.

    ``monotone`` checks the paper's observation that P(positive) increases along the path; it
    allows drops smaller than ``tol`` (default 1e-3) between consecutive frames so that a
    saturated, numerically flat curve still counts as non-decreasing."""
    frames, alphas = interpolation_frames(G, z1, z2, n_steps, batch_size)
    B, K = frames.shape[:2]
    with frozen(C):
        flat = frames.reshape(B * K, *frames.shape[2:])
        probs = torch.cat([C.positive_prob(flat[i:i + batch_size]) for i in range(0, B * K, batch_size)])
    probs = probs.view(B, K)
    monotone = (probs.diff(dim=1) >= -tol).all(dim=1)
    return LatentInterpolation(frames, probs, alphas, monotone)


def accumulated_difference(frames: torch.Tensor) -> torch.Tensor:
    """sum_k |frame_{k+1} - frame_k| for frames [B,K,C,H,W]: [B,C,H,W] (paper Fig. 5)."""
    return frames.diff(dim=1).abs().sum(dim=1)


@torch.no_grad()
def difference_maps(G, z1: torch.Tensor, z2: torch.Tensor, n_steps: int = 11) -> dict[str, torch.Tensor]:
    """Pixel-wise differences between the positive image and its negative realization.

    Returns {"signed": G(z1,z2) - G(z1,neg), "absolute": |signed|, "accumulated": sum over the
    ``n_steps`` interpolation frames of |frame_{k+1} - frame_k|}, each [B,C,H,W] (Figs. 4, 5).
    The accumulated map is >= the absolute one (triangle inequality) and equals it when every
    pixel changes monotonically along the path."""
    frames, _ = interpolation_frames(G, z1, z2, n_steps)
    signed = frames[:, -1] - frames[:, 0]
    return {"signed": signed, "absolute": signed.abs(), "accumulated": accumulated_difference(frames)}


def quadrature(n_steps: int, rule: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes in (0, 1) and weights summing to 1 for the integral over alpha in Eq. 7.

    ``gausslegendre`` (Captum's default for IG) or ``riemann_middle`` (midpoint rule)."""
    if n_steps < 1:
        raise MedxganError(f"n_steps must be positive, got {n_steps}")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return torch.tensor((nodes + 1) / 2, dtype=torch.float64), torch.tensor(weights / 2, dtype=torch.float64)
    if rule == "riemann_middle":
        return (torch.arange(n_steps, dtype=torch.float64) + 0.5) / n_steps, torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    raise MedxganError(f"unknown quadrature {rule!r} (use {', '.join(QUADRATURES)})")


def _input_gradients(score: TargetScore, x: torch.Tensor) -> torch.Tensor:
    """d score(x) / d x for a batch x [N,C,H,W] (rows are independent in eval mode)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(x).sum(), x)
    return grad


def latent_integrated_gradients(G, C, z1: torch.Tensor, z2: torch.Tensor, n_steps: int = 32,
                                target: "Target | str | None" = PositiveLogit(), method: str = "paper",
                                quadrature_rule: str = "gausslegendre",
                                internal_batch_size: int = 64) -> torch.Tensor:
    """Latent Integrated Gradients (LIG): pixel attributions of f = target(C(x)) for the
    positive image G(z1, z2) against its negative realization G(z1, neg), integrating gradients
    along the *latent* path x(alpha) = G(z1, neg + alpha (z2 - neg)) instead of a pixel-space line.

    method="paper" — Eq. 7, Latent Integrated Gradients:
        [G(z1, z2) - G(z1, neg)] ⊙ ∫_0^1 ∂f/∂x |_{x = x(alpha)} dα,
        the integral by ``quadrature_rule`` on ``n_steps`` nodes. Because the path is curved, this
        is *not* complete in general: sum(attr) != f(G(z1, z2)) - f(G(z1, neg)). It is when G is
        affine in the code (then it is pixel IG with the negative-realization baseline).
    method="path" — the exact path integral ∫_0^1 ∇f(x(α)) ⊙ dx(α)/dα dα (chain rule along the
        curved path), discretised on ``n_steps`` equal segments with the trapezoid rule:
        sum_k ½(∇f(x_k) + ∇f(x_{k+1})) ⊙ (x_{k+1} - x_k). It satisfies completeness up to the
        discretisation error (O(1/n_steps²) for smooth G and f; ReLU kinks make it converge
        less regularly), so use finer steps (e.g. 128) than for "paper".

    Args:
        z1, z2: [B,z1_dim], [B,code_dim] latent codes (e.g. ``invert(...).z1/.z2``).
        target: PositiveLogit() (default) or PositiveProbability(), or "logit" / "probability".
        internal_batch_size: images per forward/backward pass (bounds memory).

    Returns:
        [B,C,H,W] attributions (signed), on G's device.
    """
    if method not in ("paper", "path"):
        raise MedxganError(f"latent_integrated_gradients method must be paper or path, got {method!r}")
    if n_steps < 1:
        raise MedxganError(f"n_steps must be positive, got {n_steps}")
    _check_latents(G, z1, z2)
    score = TargetScore(C, target)
    B = z1.shape[0]
    per_chunk = max(1, internal_batch_size // B)  # alphas per forward pass
    with frozen(G, C):
        if method == "paper":
            alphas, weights = quadrature(n_steps, quadrature_rule)
            alphas, weights = alphas.to(z2.device, z2.dtype), weights.to(z2.device, z2.dtype)
            start, end = path_endpoints(G, z1, z2)
            mean_grad = torch.zeros_like(start)
            for i in range(0, n_steps, per_chunk):
                xs = _render(G, z1, path_codes(G, z2, alphas[i:i + per_chunk]))  # [B,k,C,H,W]
                grads = _input_gradients(score, xs.flatten(0, 1)).view_as(xs)
                w = weights[i:i + per_chunk].view(1, -1, *[1] * (xs.ndim - 2))
                mean_grad += (w * grads).sum(1)
            return (end - start) * mean_grad
        alphas = torch.linspace(0, 1, n_steps + 1, device=z2.device, dtype=z2.dtype)
        attr, prev_x, prev_g = None, None, None
        for i in range(0, n_steps + 1, per_chunk):
            xs = _render(G, z1, path_codes(G, z2, alphas[i:i + per_chunk]))
            grads = _input_gradients(score, xs.flatten(0, 1)).view_as(xs)
            if prev_x is not None:
                xs, grads = torch.cat([prev_x, xs], 1), torch.cat([prev_g, grads], 1)
            if xs.shape[1] > 1:
                part = (0.5 * (grads[:, 1:] + grads[:, :-1]) * xs.diff(dim=1)).sum(1)
                attr = part if attr is None else attr + part
            prev_x, prev_g = xs[:, -1:], grads[:, -1:]
        return attr


@torch.no_grad()
def completeness_error(attr: torch.Tensor, G, C, z1: torch.Tensor, z2: torch.Tensor,
                       target: "Target | str | None" = PositiveLogit()) -> torch.Tensor:
    """|sum(attr) - (f(G(z1, z2)) - f(G(z1, neg)))| per image, f = target(C(x)): [B].

    Zero for a complete attribution against the negative realization (IG's completeness axiom)."""
    score = TargetScore(C, resolve_target(target))
    start, end = path_endpoints(G, z1, z2)
    with frozen(C):
        delta = score(end) - score(start)
    return (attr.flatten(1).sum(1) - delta).abs()


__all__ = [
    "MONOTONE_TOL",
    "LatentInterpolation",
    "accumulated_difference",
    "completeness_error",
    "difference_maps",
    "interpolation_frames",
    "latent_integrated_gradients",
    "latent_interpolation",
    "negative_realization",
    "path_codes",
    "path_endpoints",
    "quadrature",
]
