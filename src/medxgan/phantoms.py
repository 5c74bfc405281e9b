"""Synthetic axial brain-MRI phantoms with ground-truth lesions (medXGAN's embedded demo data).

Every image is an axial "slice" rendered analytically in continuous coordinates normalised to
``[-1, 1]`` (so anatomy scales with the image size): dark background, scalp (skin + bright fat
ring), dark skull (optionally with a faint diploe line), a thin CSF gap, a folded cortex (wavy
radial CSF sulci of varying depth entering from the brain surface, a grey-matter ribbon of constant
thickness around every sulcus and white-matter "fingers" into the gyri), a midline
(interhemispheric) fissure, butterfly-shaped lateral ventricles ")(" with frontal/occipital horns,
optional deep grey nuclei, smooth low-frequency parenchymal texture, a multiplicative bias field,
a gamma/window and Rician noise.  The head outline is a rotated, shifted, egg-shaped superellipse
with a low-order Fourier radius perturbation.  Contrast is drawn per subject from T1-, T2- and
FLAIR-like tissue tables (CSF dark in T1/FLAIR, bright in T2).

Labels and lesions
------------------
* Image ``i`` is **positive iff ``i % 2 == 1``** (exactly alternating; exactly half of the images
  are positive when ``n`` is even, ``n // 2`` when it is odd).
* Positives carry one tumour-like lesion inside the brain parenchyma: radius 6 %–15 % of the image
  width, radially perturbed and possibly elongated outline, hyper- or hypo-intense relative to the
  parenchyma or ring-enhancing with a necrotic core, optional oedema halo and mild mass effect
  (anatomy pushed away within 3 lesion radii).  The lesion is placed so that its outline lies
  inside the brain and its centre region is not inside a lateral ventricle.
* ``masks`` mark the **tumour itself (core + enhancing rim)**.  The oedema halo and the mass-effect
  displacement are deliberately **not** part of the mask.
* Negatives come from exactly the same distribution: all anatomy / contrast / noise parameters of
  subject ``i`` are drawn from ``numpy.random.default_rng([seed, i])`` *before and independently
  of* the label, and the lesion uses its own stream ``default_rng([seed, i, 1])``.  Rendering
  subject ``i`` with and without its lesion therefore gives images that are identical outside the
  lesion's neighbourhood (the lesion, its oedema and the mass-effect support).

Shortcut marker
---------------
``shortcut=P`` adds a spurious bright square tag (3–4 px at 64 px, scaled with the size) in the
top-left corner region, always outside the head, to a fraction ``P`` of the *positives only*.
Which positives carry it follows a seed-dependent Weyl (golden-ratio) sequence over the positive
index, so the count in any prefix is within about one image of ``P * n_positive`` and does not
depend on ``n``.  Its pixels are returned in ``shortcut_masks``.

Determinism
-----------
``generate_phantoms(n, size, seed, shortcut)`` is a pure function of its arguments, and image ``i``
does not depend on ``n`` (a 100-image set is the prefix of a 4000-image set).  The same seed at a
different size renders the same subjects (only the per-pixel noise differs).  Rendering uses
numpy float32 SIMD maths, so a different CPU/numpy build may change a few pixels by one grey level.
"""

from __future__ import annotations

import csv
import functools
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medxgan.errors import MedxganError

__all__ = ["LesionCounterfactual", "PhantomSet", "generate_phantoms", "lesion_counterfactual", "render_noise_free",
           "write_phantom_dataset"]

_GOLDEN = 0.6180339887498949
_TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class PhantomSet:
    images: np.ndarray  # uint8 [N, H, W] grayscale
    labels: np.ndarray  # int64 [N], 1 = lesion (positive), 0 = negative
    masks: np.ndarray  # bool [N, H, W] lesion mask (all False for negatives)
    shortcut_masks: np.ndarray  # bool [N, H, W] spurious marker (all False where none)
    names: list[str]  # file stems, e.g. "phantom_00012"


@dataclass
class _Subject:
    """One rendered subject (internal; also used by the tests)."""

    image: np.ndarray  # uint8 [S, S]
    label: int
    mask: np.ndarray  # bool [S, S] lesion (core + rim)
    shortcut_mask: np.ndarray  # bool [S, S]
    brain: np.ndarray | None = None  # bool [S, S] brain region (before mass effect); with regions=True
    head: np.ndarray | None = None  # bool [S, S] whole head incl. scalp; with regions=True
    oedema: np.ndarray | None = None  # bool [S, S] oedema halo (not part of ``mask``); with regions=True


# --------------------------------------------------------------------------------------------
# validation / naming


def _validate(n: int, size: int, seed: int, shortcut: float) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise MedxganError(f"phantom count must be an integer >= 2, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise MedxganError(f"phantom size must be an integer >= 16 pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MedxganError(f"phantom seed must be a non-negative integer, got {seed!r}")
    try:
        p = float(shortcut)
    except (TypeError, ValueError):
        raise MedxganError(f"shortcut fraction must be a number in [0, 1], got {shortcut!r}") from None
    if not (0.0 <= p <= 1.0):
        raise MedxganError(f"shortcut fraction must be in [0, 1], got {shortcut!r}")


def _names(n: int) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"phantom_{i:0{width}d}" for i in range(n)]


def _has_shortcut(seed: int, index: int, shortcut: float) -> bool:
    """Whether positive image ``index`` carries the spurious marker (never for negatives)."""
    if index % 2 == 0 or shortcut <= 0.0:
        return False
    if shortcut >= 1.0:
        return True
    k = index // 2  # index among positives
    return ((k * _GOLDEN + _shortcut_offset(seed)) % 1.0) < shortcut


@functools.lru_cache(maxsize=64)
def _shortcut_offset(seed: int) -> float:
    return float(np.random.default_rng([seed, 0x5C07]).random())


# --------------------------------------------------------------------------------------------
# small numeric helpers (rendering is float32 throughout: ~2x faster transcendental functions)

_F32 = np.float32


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0).astype(_F32)
    y, x = np.meshgrid(c, c, indexing="ij")  # y grows downwards (anterior = top)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=64)
def _upsample_matrix(coarse: int, size: int) -> np.ndarray:
    """[size, coarse] matrix doing 1-D cubic-spline upsampling (linear, so it can be precomputed)."""
    c = (np.arange(size, dtype=np.float64) + 0.5) * (coarse / size) - 0.5
    eye = np.eye(coarse)
    w = np.stack([ndimage.map_coordinates(eye[j], c[None, :], order=3, mode="mirror") for j in range(coarse)], 1)
    w = w.astype(_F32)
    w.setflags(write=False)
    return w


def _smooth_field(noise: np.ndarray, size: int) -> np.ndarray:
    """Cubic-spline upsampling of a small white-noise grid to a smooth [size, size] field (~unit std)."""
    w = _upsample_matrix(noise.shape[0], size)
    field = w @ noise @ w.T
    return field / (field.std() + _F32(1e-6))


def _ramp(d: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-fraction for a signed distance ``d`` in pixels (positive = inside)."""
    t = d + _F32(0.5)
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    return t


def _clip01(t: np.ndarray) -> np.ndarray:
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    return t


def _fourier(phi: np.ndarray, coef, phase, first_k: int) -> np.ndarray:
    """``sum_j coef[j] * cos((first_k + j) * phi + phase[j])`` (float32)."""
    out = None
    for j, (a, ph) in enumerate(zip(coef, phase)):
        term = _F32(a) * np.cos(_F32(first_k + j) * phi + _F32(ph))
        out = term if out is None else out + term
    return out


class _Draws:
    """Uniform/normal variates drawn from ``rng`` in two calls and handed out in order (fast)."""

    def __init__(self, rng: np.random.Generator, n_uniform: int = 256, n_normal: int = 32):
        self._u = rng.random(n_uniform)
        self._n = rng.standard_normal(n_normal)
        self._iu = self._in = 0

    def u(self, lo: float, hi: float, n: int | None = None):
        if n is None:
            v = float(self._u[self._iu])
            self._iu += 1
            return lo + (hi - lo) * v
        v = self._u[self._iu : self._iu + n]
        if len(v) != n:
            raise IndexError("_Draws: uniform buffer exhausted")
        self._iu += n
        return (lo + (hi - lo) * v).astype(_F32)

    def normal(self, scales) -> np.ndarray:
        n = len(scales)
        v = self._n[self._in : self._in + n]
        if len(v) != n:
            raise IndexError("_Draws: normal buffer exhausted")
        self._in += n
        return (v * np.asarray(scales)).astype(_F32)

    def choice(self, options, probs):
        v = self.u(0.0, 1.0)
        acc = 0.0
        for o, pr in zip(options, probs):
            acc += pr
            if v < acc:
                return o
        return options[-1]

    def integers(self, lo: int, hi: int) -> int:  # hi exclusive
        return min(hi - 1, lo + int(self.u(0.0, 1.0) * (hi - lo)))


# --------------------------------------------------------------------------------------------
# parameter sampling

# tissue tables (relative signal, 1 ~ white)
_MODALITIES = {
    "t2": dict(skin=0.45, fat=0.80, bone=0.04, diploe=0.35, csf=1.00, gm=0.62, wm=0.44, deep=0.54),
    "flair": dict(skin=0.40, fat=0.75, bone=0.04, diploe=0.30, csf=0.10, gm=0.64, wm=0.48, deep=0.56),
    "t1": dict(skin=0.50, fat=0.95, bone=0.05, diploe=0.55, csf=0.14, gm=0.46, wm=0.64, deep=0.50),
}


def _sample_anatomy(rng: np.random.Generator) -> dict:
    """All label-independent parameters of one subject (scalars and fixed-shape noise grids)."""
    d = _Draws(rng)
    u = d.u
    a = u(0.66, 0.83)  # left-right semi-axis of the head
    p = dict(
        modality=d.choice(["t2", "flair", "t1"], [0.45, 0.2, 0.35]),
        a=a,
        b=min(0.9, a * u(1.05, 1.25)),  # anterior-posterior semi-axis
        pse=u(1.85, 2.25),  # superellipse exponent
        egg=u(0.0, 0.1),  # wider posteriorly
        shape_c=d.normal([0.015, 0.01, 0.006]),
        shape_p=u(0, _TWO_PI, 3),
        rot=np.deg2rad(u(-12, 12)),
        off=u(-0.04, 0.04, 2),
        t_skin=u(0.015, 0.03),
        t_fat=u(0.035, 0.075),
        fat_mod=u(0.0, 0.35),
        fat_mod_p=u(0, _TWO_PI),
        t_bone=u(0.04, 0.07),
        diploe=u(0.0, 0.7) if u(0, 1) < 0.5 else 0.0,
        t_csf=u(0.012, 0.03),
        # cortex
        n_gyri=d.integers(16, 26),
        gyr_c=d.normal([0.9, 0.7, 0.5, 0.4, 0.3, 0.25]),
        gyr_p=u(0, _TWO_PI, 6),
        gyr_bend=u(-1.5, 1.5),
        gyr_bend_p=u(0, _TWO_PI),
        gyr_wig=u(0.2, 1.2),
        gyr_wig_p=u(0, _TWO_PI),
        gm_th=u(0.05, 0.085),
        sulc_base=u(0.16, 0.3),
        sulc_depth=u(0.5, 1.4, 32),
        sulc2_depth=np.where(u(0, 1, 32) < 0.4, _F32(0.0), u(0.25, 0.7, 32)),
        sulc_w=u(0.006, 0.012),
        sulc_strength=u(0.55, 0.95),
        # ventricles (brain-normalised units, brain radius ~1)
        v_u0=u(0.03, 0.075),
        v_c=u(0.5, 1.3),
        v_m=u(-0.06, 0.1),
        v_front=u(-0.5, -0.3),
        v_back=u(0.28, 0.5),
        v_t0=u(0.02, 0.045),
        v_tf=u(0.03, 0.09),
        v_to=u(0.01, 0.07),
        v_asym=[u(-0.15, 0.15), u(-0.15, 0.15)],
        deep=u(0.4, 0.8) if u(0, 1) < 0.7 else 0.0,
        fiss_amp=u(0.0, 0.02),
        fiss_p=u(0, _TWO_PI),
        fiss_strength=u(0.6, 1.0),
        # contrast / acquisition
        tissue_jitter=[u(0.92, 1.08) for _ in range(8)],
        gm_wm=u(0.7, 1.3),
        tex_amp=u(0.03, 0.07),
        tex2_amp=u(0.01, 0.03),
        bias=[float(v) for v in d.normal([0.1, 0.1, 0.06, 0.06, 0.05])],
        gamma=float(np.exp(u(np.log(0.8), np.log(1.25)))),
        white=u(0.85, 1.02),
        sigma=float(np.exp(u(np.log(0.006), np.log(0.04)))),
    )
    p["rot"] = float(p["rot"])
    # fixed-shape noise grids (independent of the image size)
    p["tex_lo"] = rng.standard_normal((7, 7), dtype=_F32)
    p["tex_mid"] = rng.standard_normal((18, 18), dtype=_F32)
    p["scalp_tex"] = rng.standard_normal((10, 10), dtype=_F32)
    return p


def _tissue_levels(p: dict) -> dict:
    base = _MODALITIES[p["modality"]]
    keys = ["skin", "fat", "bone", "diploe", "csf", "gm", "wm", "deep"]
    lv = {k: base[k] * j for k, j in zip(keys, p["tissue_jitter"])}
    # scale the grey/white contrast around its mean, keep at least 0.07 of contrast
    mid = 0.5 * (base["gm"] + base["wm"])
    diff = (base["gm"] - base["wm"]) * p["gm_wm"]
    if abs(diff) < 0.07:
        diff = float(np.copysign(0.07, diff))
    lv["gm"], lv["wm"] = mid + diff / 2, mid - diff / 2
    return lv


# --------------------------------------------------------------------------------------------
# geometry


def _head_coords(p: dict, x: np.ndarray, y: np.ndarray):
    """Return (u, v, rho, phi): rotated head frame and normalised head radius (1 = outer scalp)."""
    dx = x - _F32(p["off"][0])
    dy = y - _F32(p["off"][1])
    cr, sr = _F32(np.cos(p["rot"])), _F32(np.sin(p["rot"]))
    uu = cr * dx + sr * dy
    vv = cr * dy - sr * dx
    vn = vv * _F32(1.0 / p["b"])
    un = uu / (_F32(p["a"]) * (_F32(1.0) + _F32(p["egg"]) * np.clip(vn, _F32(-1.2), _F32(1.2))))
    e = _F32(p["pse"])
    r = (np.abs(un) ** e + np.abs(vn) ** e) ** _F32(1.0 / p["pse"])
    phi = np.arctan2(vn, un)
    rho = r / (_F32(1.0) + _fourier(phi, p["shape_c"], p["shape_p"], 2))
    return uu, vv, rho, phi


def _brain_outer(p: dict) -> float:
    return 1.0 - p["t_skin"] - p["t_fat"] * (1 + p["fat_mod"]) - p["t_bone"] - p["t_csf"]


def _ventricles(p: dict, bu: np.ndarray, bv: np.ndarray, bscale_px: float) -> np.ndarray:
    """Lateral ventricles (CSF fraction): two crescents ")(" closest at v_m, diverging at the horns."""
    f = _F32
    dv = bv - f(p["v_m"])
    centre = f(p["v_u0"]) + f(p["v_c"]) * dv * dv
    slope = f(2.0 * p["v_c"]) * dv
    inv_norm = f(1.0) / np.sqrt(f(1.0) + slope * slope)
    d_cap = np.maximum(np.maximum(f(p["v_front"]) - bv, bv - f(p["v_back"])), f(0.0))
    d_cap *= d_cap
    bvc = np.minimum(np.maximum(bv, f(p["v_front"])), f(p["v_back"]))
    q1 = (bvc - f(p["v_front"] + 0.1)) * f(10.0)
    q2 = (bvc - f(p["v_back"] - 0.08)) * f(10.0)
    thick0 = f(p["v_t0"]) + f(p["v_tf"]) * np.exp(-(q1 * q1)) + f(p["v_to"]) * np.exp(-(q2 * q2))
    vent = None
    for side, asym in zip((-1.0, 1.0), p["v_asym"]):
        d_perp = np.abs(f(side) * bu - centre) * inv_norm
        d = np.sqrt(d_perp * d_perp + d_cap)
        v = _ramp((f(1.0 + asym) * thick0 - d) * f(bscale_px))
        vent = v if vent is None else np.maximum(vent, v, out=vent)
    return vent


# --------------------------------------------------------------------------------------------
# lesion sampling


def _sample_lesion(rng: np.random.Generator, p: dict, lv: dict) -> dict:
    d = _Draws(rng, n_uniform=64, n_normal=16)
    u = d.u
    modality = p["modality"]
    hi = max(lv["gm"], lv["wm"])
    lo = min(lv["gm"], lv["wm"])
    if modality == "t1":
        kind = d.choice(["hyper", "hypo", "ring"], [0.35, 0.3, 0.35])
    else:
        kind = d.choice(["hyper", "hypo", "ring"], [0.55, 0.1, 0.35])
    csf = lv["csf"]
    # hyper-intense: brighter than the parenchyma; in T2 (bright CSF) kept visibly below the CSF
    hyper = hi + u(0.2, 0.4)
    hyper = min(1.05, hyper) if csf < hi else min(hyper, csf - 0.1)
    # hypo-intense: darker than the parenchyma; in T1/FLAIR (dark CSF) kept visibly above the CSF
    hypo = lo - u(0.16, 0.3)
    hypo = max(hypo, csf + 0.08) if csf < lo else max(0.06, hypo)
    bright_core = u(0, 1) < 0.7
    if kind == "hyper":
        core, rim = hyper, hyper
    elif kind == "hypo":
        core, rim = hypo, hypo
    elif modality == "t1" or not bright_core:  # enhancing rim, dark necrotic core
        rim, core = hyper, max(0.05, lo - u(0.25, 0.4))
    else:  # T2-like: bright necrotic/cystic core, darker rim
        core, rim = min(1.05, hi + u(0.3, 0.45)), max(0.06, lo - u(0.15, 0.25))
    has_oedema = u(0, 1) < 0.6
    oed = u(0.08, 0.18) if modality == "t1" else u(0.14, 0.32)
    # keep the tumour's outer intensity clearly different from the oedema it sits in
    if (rim > hi) == (modality != "t1"):  # oedema shifts towards the rim intensity
        oed = max(0.05, min(oed, abs(rim - (hi if rim > hi else lo)) - 0.12))
    les = dict(
        kind=kind,
        core=core,
        rim=rim,
        radius=2.0 * u(0.06, 0.15),  # in [-1, 1] units: 6 %-15 % of the image width
        elong=u(0.7, 1.0),
        elong_dir=u(0, np.pi),
        shape_c=d.normal([0.12, 0.08, 0.06, 0.04]),
        shape_p=u(0, _TWO_PI, 4),
        rim_frac=u(0.18, 0.38),
        edge_px=u(0.7, 2.2),
        oedema=(-oed if modality == "t1" else oed) if has_oedema else 0.0,
        oed_scale=u(1.4, 2.1),
        oed_c=d.normal([0.2, 0.15, 0.1, 0.08]),
        oed_p=u(0, _TWO_PI, 4),
        mass=u(0.0, 0.45),
        tex_amp=u(0.05, 0.14),
    )
    les["tex"] = rng.standard_normal((20, 20), dtype=_F32)
    # centre: rejection sampling (vectorised, 32 proposals per round) so that the whole outline
    # lies inside the brain and the lesion's centre and inner half avoid the lateral ventricles
    rb = _brain_outer(p)
    tphi = np.linspace(0.0, _TWO_PI, 48, endpoint=False)
    cr, sr = np.cos(p["rot"]), np.sin(p["rot"])
    for attempt in range(30):
        if attempt:
            les["radius"] *= 0.9
        ang = rng.uniform(0, _TWO_PI, 32)
        rad = np.sqrt(rng.uniform(0, 1, 32)) * 0.8
        # propose in the head frame, then map back to image coordinates
        cu, cv = rad * p["a"] * rb * np.cos(ang), rad * p["b"] * rb * np.sin(ang)
        cx = p["off"][0] + cr * cu - sr * cv
        cy = p["off"][1] + sr * cu + cr * cv
        ox, oy = _lesion_outline(les, tphi, margin=1.08)
        rho = _head_coords(p, (cx[:, None] + ox).astype(_F32), (cy[:, None] + oy).astype(_F32))[2]
        ok = np.all(rho < 0.93 * rb, axis=1)
        ix = np.concatenate([[0.0], 0.5 * ox[::6]])
        iy = np.concatenate([[0.0], 0.5 * oy[::6]])
        uu, vv = _head_coords(p, (cx[:, None] + ix).astype(_F32), (cy[:, None] + iy).astype(_F32))[:2]
        vent = _ventricles(p, uu / _F32(p["a"] * rb), vv / _F32(p["b"] * rb), 1e3)
        ok &= vent.max(axis=1) <= 0.0
        if ok.any():
            j = int(np.argmax(ok))
            les["cx"], les["cy"] = float(cx[j]), float(cy[j])
            return les
    raise AssertionError("unreachable: lesion placement failed")  # pragma: no cover


def _lesion_radius(les: dict, phi: np.ndarray, coef, phase) -> np.ndarray:
    factor = np.clip(_F32(1.0) + _fourier(phi, coef, phase, 2), _F32(0.4), _F32(1.6))
    return _F32(les["radius"]) * factor


def _lesion_frame(les: dict, x: np.ndarray, y: np.ndarray):
    """Distance (in [-1, 1] units, elongation removed) and angle of points around the lesion centre."""
    dx, dy = x - _F32(les["cx"]), y - _F32(les["cy"])
    cd, sd = _F32(np.cos(les["elong_dir"])), _F32(np.sin(les["elong_dir"]))
    a = cd * dx + sd * dy
    b = (cd * dy - sd * dx) * _F32(1.0 / les["elong"])
    return np.sqrt(a * a + b * b), np.arctan2(b, a)


def _lesion_outline(les: dict, theta: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    r = _lesion_radius(les, theta.astype(_F32), les["shape_c"], les["shape_p"]) * margin
    if les["oedema"] != 0.0:  # keep the halo core inside the brain too (it is clipped anyway)
        r = np.maximum(r, 0.75 * les["oed_scale"] * les["radius"] * margin)
    a, b = r * np.cos(theta), r * np.sin(theta) * les["elong"]
    cd, sd = np.cos(les["elong_dir"]), np.sin(les["elong_dir"])
    return cd * a - sd * b, sd * a + cd * b


# --------------------------------------------------------------------------------------------
# rendering


def _render(
    p: dict, les: dict | None, tag: tuple[int, int, int] | None, noise: np.ndarray, size: int, regions: bool = False
) -> _Subject:
    f = _F32
    x, y = _grid(size)
    lv = {k: f(v) for k, v in _tissue_levels(p).items()}
    px = 2.0 / size  # one pixel in [-1, 1] units
    h = float(np.sqrt(p["a"] * p["b"]))
    rb = _brain_outer(p)
    px_rho = px / h  # one pixel in head-rho units (approximately isotropic)

    # mass effect: anatomy near the lesion is sampled closer to its centre (appears pushed away)
    warped = les is not None and les["mass"] > 0.0
    if warped:
        dx, dy = x - f(les["cx"]), y - f(les["cy"])
        dist = np.sqrt(dx * dx + dy * dy) + f(1e-6)
        t = _clip01(dist * f(1.0 / (3.0 * les["radius"])))
        t = f(1.0) - t * t
        disp = f(les["mass"] * les["radius"]) * t * t / dist
        xw, yw = x - disp * dx, y - disp * dy
    else:
        xw, yw = x, y
    uu, vv, rho, phi = _head_coords(p, xw, yw)

    # --- concentric layers: skin, fat, bone (+ diploe), CSF gap --------------------------------
    inv_px_rho = f(1.0 / px_rho)
    fat_t = f(p["t_fat"]) * (f(1.0) + _fourier(phi, [p["fat_mod"]], [-p["fat_mod_p"]], 1))
    r_skin_in = 1.0 - p["t_skin"]
    r_fat_in = f(r_skin_in) - fat_t
    r_bone_in = r_fat_in - f(p["t_bone"])
    scalp_tex = f(1.0) + f(0.06) * _smooth_field(p["scalp_tex"], size)
    img = _ramp((f(1.0) - rho) * inv_px_rho) * lv["skin"]
    img += _ramp((f(r_skin_in) - rho) * inv_px_rho) * (lv["fat"] * scalp_tex - img)
    img += _ramp((r_fat_in - rho) * inv_px_rho) * (lv["bone"] - img)
    if p["diploe"] > 0.0:
        d_mid = r_fat_in - f(0.5 * p["t_bone"])
        w = f(1.0 / max(0.2 * p["t_bone"], 0.45 * px_rho))
        q = (rho - d_mid) * w
        img += f(p["diploe"]) * np.exp(f(-0.5) * q * q) * (lv["diploe"] - img)
    img += _ramp((r_bone_in - rho) * inv_px_rho) * (lv["csf"] - img)

    # --- cortex: gyri/sulci in brain-normalised radius ---------------------------------------
    # Sulci are radial, wavy segments from the brain surface down to a per-sulcus depth (a primary
    # family plus shallower secondary sulci splitting some gyri); grey matter is everything within
    # ``gm_th`` of CSF (surface or sulcus), white matter the rest, giving WM "fingers" in the gyri.
    rn = rho * f(1.0 / rb)  # 1 = brain surface
    bpx = px_rho / rb  # one pixel in rn units
    inv_bpx = f(1.0 / bpx)
    n = p["n_gyri"]
    along = f(1.0) - rn  # depth below the brain surface (rn units)
    theta_g = f(n) * phi + _fourier(phi, p["gyr_c"], p["gyr_p"], 1)
    theta_g += along * _fourier(phi, [6.0 * p["gyr_bend"]], [p["gyr_bend_p"]], 3)
    theta_g += f(p["gyr_wig"]) * np.sin(f(25.0) * along + f(4.0) * phi + f(p["gyr_wig_p"]))
    rn_px = np.maximum(rn, f(0.05)) * f(1.0 / (n * bpx))  # pixels per radian of theta_g
    surf_px = along * inv_bpx
    nk = len(p["sulc_depth"])
    sulc_dist = None
    for shift, depths in ((np.pi, p["sulc_depth"]), (_TWO_PI, p["sulc2_depth"])):
        turns = np.floor((theta_g + f(shift)) * f(1.0 / _TWO_PI))
        delta = np.abs(theta_g + f(shift - np.pi) - turns * f(_TWO_PI))  # 0 on the sulcus centre line
        fundus = f(p["sulc_base"]) * depths[turns.astype(np.int32) % nk]
        beyond = np.maximum(along - fundus, f(0.0)) * inv_bpx
        arc = delta * rn_px
        d = np.sqrt(arc * arc + beyond * beyond)
        d[fundus <= 0.0] = np.inf
        sulc_dist = d if sulc_dist is None else np.minimum(sulc_dist, d, out=sulc_dist)
    brain_frac = _ramp(surf_px)
    img += brain_frac * (lv["gm"] - img)
    wm_frac = _ramp(np.minimum(surf_px, sulc_dist) - f(p["gm_th"] / bpx))
    img += wm_frac * (lv["wm"] - img)
    q = sulc_dist * f(1.0 / max(0.45, p["sulc_w"] / bpx))
    img += np.exp(f(-0.5) * q * q) * (brain_frac * f(p["sulc_strength"])) * (lv["csf"] - img)

    # --- deep structures in brain-normalised (head-aspect) coordinates -------------------------
    bu, bv = uu * f(1.0 / (p["a"] * rb)), vv * f(1.0 / (p["b"] * rb))
    bscale_px = rb * h / px  # one brain-normalised unit in pixels
    if p["deep"] > 0.0:  # thalami (posterior) and caudate heads (lateral to the frontal horns)
        fh = p["v_front"] + 0.14
        cau_u = p["v_u0"] + p["v_c"] * (fh - p["v_m"]) ** 2 + p["v_t0"] + p["v_tf"] + 0.05
        dv1 = (bv - f(p["v_m"] + 0.12)) * f(1 / 0.17)
        dv1 *= dv1
        dv2 = (bv - f(fh)) * f(1 / 0.1)
        dv2 *= dv2
        abu = np.abs(bu)  # both hemispheres at once (mirror-symmetric)
        du = (abu - f(p["v_u0"] + 0.17)) * f(1 / 0.12)
        q1 = du * du + dv1
        du = (abu - f(cau_u)) * f(1 / 0.07)
        q2 = du * du + dv2
        q = np.minimum(q1, q2)
        img += f(p["deep"]) * np.exp(-(q * q)) * brain_frac * (lv["deep"] - img)
    # midline fissure (anterior and posterior parts, interrupted by the corpus callosum)
    f_u = (bu - f(p["fiss_amp"]) * np.sin(f(9.0) * bv + f(p["fiss_p"]))) * f(bscale_px / max(0.45, 0.012 * bscale_px))
    gate = _clip01((f(p["v_front"] - 0.08) - bv) * f(8.0)) + _clip01((bv - f(p["v_back"] + 0.1)) * f(8.0))
    img += np.exp(f(-0.5) * f_u * f_u) * gate * brain_frac * f(p["fiss_strength"]) * (lv["csf"] - img)
    # lateral ventricles
    img += _ventricles(p, bu, bv, bscale_px) * (lv["csf"] - img)

    # --- parenchymal texture ---------------------------------------------------------------------
    tex = f(p["tex_amp"]) * _smooth_field(p["tex_lo"], size) + f(p["tex2_amp"]) * _smooth_field(p["tex_mid"], size)
    img *= f(1.0) + tex * brain_frac

    # --- lesion --------------------------------------------------------------------------------
    mask = np.zeros((size, size), dtype=bool)
    oedema = np.zeros((size, size), dtype=bool)
    if les is not None:
        dist, lphi = _lesion_frame(les, x, y)
        if les["oedema"] != 0.0:
            r_e = f(les["oed_scale"]) * _lesion_radius(les, lphi, les["oed_c"], les["oed_p"])
            np.minimum(r_e, f(2.9 * les["radius"]), out=r_e)  # stays inside the mass-effect support
            e = _clip01((r_e - dist) / (f(0.45) * r_e))
            e = e * e * (f(3.0) - f(2.0) * e) * brain_frac
            img += f(les["oedema"]) * e
            oedema = e > 0.5
        r_l = _lesion_radius(les, lphi, les["shape_c"], les["shape_p"])
        inv_edge = f(1.0 / (les["edge_px"] * px))
        outer = _ramp((r_l - dist) * inv_edge)
        ltex = f(1.0) + f(les["tex_amp"]) * _smooth_field(les["tex"], size)
        img += outer * (f(les["rim"]) * ltex - img)
        if les["kind"] == "ring":
            r_in = r_l * f(1.0 - les["rim_frac"]) - f(0.5 * px)
            inner = _ramp((r_in - dist) * inv_edge)
            img += inner * (f(les["core"]) * ltex - img)
        mask = r_l >= dist

    # --- acquisition: bias field, spurious tag, Rician noise, window/gamma ----------------------
    bc = p["bias"]
    img *= np.exp(f(bc[0]) * x + f(bc[1]) * y + f(bc[2]) * x * x + f(bc[3]) * y * y + f(bc[4]) * x * y)
    tag_mask = np.zeros((size, size), dtype=bool)
    if tag is not None:
        r0, c0, side = tag
        tag_mask[r0 : r0 + side, c0 : c0 + side] = True
        img[tag_mask] = f(0.95 * p["white"])
    sigma = f(p["sigma"])
    re = img + sigma * noise[0]
    im = sigma * noise[1]
    img = np.sqrt(re * re + im * im) * f(1.0 / p["white"])
    img = _clip01(img) ** f(p["gamma"])
    out = np.rint(img * f(255.0)).astype(np.uint8)

    sub = _Subject(image=out, label=int(les is not None), mask=mask, shortcut_mask=tag_mask)
    if regions:  # undeformed reference regions (tests / diagnostics only)
        rho0 = _head_coords(p, x, y)[2] if warped else rho
        sub.brain, sub.head, sub.oedema = rho0 < rb, rho0 < 1.0, oedema & ~mask
    return sub


def _render_subject(
    seed: int, index: int, size: int, shortcut: float = 0.0, lesion: bool | None = None, regions: bool = False,
    noise_free: bool = False,
) -> _Subject:
    """Render subject ``index``.  ``lesion`` overrides the lesion presence (counterfactual checks);
    ``noise_free`` renders it without the acquisition noise (everything else identical)."""
    rng = np.random.default_rng([seed, index])
    p = _sample_anatomy(rng)
    noise = rng.standard_normal((2, size, size), dtype=_F32)  # drawn last: the rest does not depend on size
    if noise_free:
        noise = np.zeros_like(noise)
    positive = index % 2 == 1
    with_lesion = positive if lesion is None else bool(lesion)
    les = None
    if with_lesion:
        les = _sample_lesion(np.random.default_rng([seed, index, 1]), p, _tissue_levels(p))
    tag = None
    if positive and _has_shortcut(seed, index, shortcut):
        trng = np.random.default_rng([seed, index, 2])
        side = max(2, int(round(size * int(trng.integers(3, 5)) / 64.0)))
        r0 = int(round(size * trng.uniform(0.03, 0.07)))
        c0 = int(round(size * trng.uniform(0.03, 0.07)))
        # keep the tag clear of the head, also after the lesion's mass effect (move it towards the corner)
        x, y = _grid(size)
        margin = 1.08 + (les["mass"] * les["radius"] / min(p["a"], p["b"]) if les is not None else 0.0)
        while r0 > 0 or c0 > 0:
            rho = _head_coords(p, x[r0 : r0 + side, c0 : c0 + side], y[r0 : r0 + side, c0 : c0 + side])[2]
            if rho.min() > margin:
                break
            r0, c0 = max(0, r0 - 1), max(0, c0 - 1)
        tag = (r0, c0, side)
    sub = _render(p, les, tag, noise, size, regions)
    if lesion is not None:
        sub.label = int(positive)
    return sub


# --------------------------------------------------------------------------------------------
# public API


def generate_phantoms(n: int, size: int = 64, seed: int = 0, shortcut: float = 0.0) -> PhantomSet:
    """Generate ``n`` phantoms of ``size``x``size`` pixels; image ``i`` is positive iff ``i`` is odd."""
    _validate(n, size, seed, shortcut)
    n, size, seed, shortcut = int(n), int(size), int(seed), float(shortcut)
    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    tags = np.zeros((n, size, size), dtype=bool)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        s = _render_subject(seed, i, size, shortcut)
        images[i], masks[i], tags[i], labels[i] = s.image, s.mask, s.shortcut_mask, s.label
    return PhantomSet(images=images, labels=labels, masks=masks, shortcut_masks=tags, names=_names(n))


def render_noise_free(index: int, size: int = 64, seed: int = 0, shortcut: float = 0.0) -> np.ndarray:
    """Phantom ``index`` of ``generate_phantoms(n, size, seed, shortcut)`` (any n > index) as it
    would look without its Rician acquisition noise: [size, size] uint8. What a perfect, noise-free
    reconstruction could at best reach — the SSIM between this and the stored image is the ceiling
    for any reconstruction that does not reproduce the noise itself."""
    _check_index(index, size, seed, shortcut)
    return _render_subject(int(seed), int(index), int(size), float(shortcut), noise_free=True).image


def _check_index(index, size, seed, shortcut) -> None:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise MedxganError(f"phantom index must be a non-negative integer, got {index!r}")
    _validate(int(index) + 2, size, seed, shortcut)


@dataclass(frozen=True)
class LesionCounterfactual:
    """Phantom ``index`` noise-free, with its lesion and without it (the same subject otherwise)."""

    with_lesion: np.ndarray  # uint8 [S, S]: ``render_noise_free(index, ...)``
    without_lesion: np.ndarray  # uint8 [S, S]: the same subject, anatomy and contrast, no lesion
    mask: np.ndarray  # bool [S, S]: the tumour (core + rim), as in ``generate_phantoms``' masks
    oedema: np.ndarray  # bool [S, S]: the oedema halo around it (not part of ``mask``)

    def difference(self) -> np.ndarray:
        """float32 [S, S]: |with - without| in [-1, 1] image units (what the lesion changed:
        the tumour, its oedema halo and the anatomy its mass effect pushed aside)."""
        return np.abs(self.with_lesion.astype(np.float32) - self.without_lesion.astype(np.float32)) / np.float32(127.5)


def lesion_counterfactual(index: int, size: int = 64, seed: int = 0, shortcut: float = 0.0) -> LesionCounterfactual:
    """The exact counterfactual of phantom ``index``: the subject rendered noise-free with and
    without its lesion (for a negative, both are the same image and the masks are empty).

    Its difference is the map a perfect negative realization would give. The phantoms' masks
    deliberately exclude the oedema halo and the mass effect, so the largest change of this map
    need not lie inside the mask (docs/RESULTS.md measures how often it does). With ``shortcut``
    > 0 the marker of the lesion-free rendering may sit a pixel further from the corner (its
    placement makes room for the mass effect)."""
    _check_index(index, size, seed, shortcut)
    sub = _render_subject(int(seed), int(index), int(size), float(shortcut), noise_free=True, regions=True)
    healthy = _render_subject(int(seed), int(index), int(size), float(shortcut), lesion=False, noise_free=True)
    return LesionCounterfactual(with_lesion=sub.image, without_lesion=healthy.image, mask=sub.mask, oedema=sub.oedema)


def write_phantom_dataset(
    out: str | os.PathLike,
    n: int = 4000,
    size: int = 64,
    seed: int = 0,
    shortcut: float = 0.0,
    progress: bool = True,
) -> pathlib.Path:
    """Write a phantom dataset as PNG folders and return the output directory.

    Layout: ``out/negative/<name>.png``, ``out/positive/<name>.png``, ``out/masks/<name>.png``
    (lesion mask 0/255 for every positive; negatives get none), ``out/shortcut_masks/<name>.png``
    (only when ``shortcut > 0``, for the images carrying the marker) and ``out/labels.csv`` with
    columns ``file,label,has_shortcut`` (``file`` relative to ``out``, e.g.
    ``positive/phantom_00001.png``).  Files are written into a temporary sibling directory that is
    renamed to ``out`` at the end; an existing non-empty ``out`` is refused.
    """
    from PIL import Image

    _validate(n, size, seed, shortcut)
    n, size, seed, shortcut = int(n), int(size), int(seed), float(shortcut)
    out = pathlib.Path(out)
    if out.exists():
        if not out.is_dir():
            raise MedxganError(f"output path {out} exists and is not a directory")
        if any(out.iterdir()):
            raise MedxganError(f"output directory {out} already exists and is not empty")
    parent = out.parent if str(out.parent) else pathlib.Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as exc:
        raise MedxganError(f"cannot create output directory next to {out}: {exc.strerror or exc}") from None
    try:
        dirs = ["negative", "positive", "masks"] + (["shortcut_masks"] if shortcut > 0 else [])
        for d in dirs:
            (tmp / d).mkdir()
        names = _names(n)
        indices = range(n)
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, total=n, desc="phantoms", unit="img")
        rows = []
        for i in indices:
            s = _render_subject(seed, i, size, shortcut)
            name = names[i]
            rel = f"{'positive' if s.label else 'negative'}/{name}.png"
            Image.fromarray(s.image).save(tmp / rel)
            if s.label:
                Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp / "masks" / f"{name}.png")
            has_tag = bool(s.shortcut_mask.any())
            if has_tag:
                Image.fromarray(s.shortcut_mask.astype(np.uint8) * 255).save(
                    tmp / "shortcut_masks" / f"{name}.png"
                )
            rows.append((rel, s.label, int(has_tag)))
        with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "label", "has_shortcut"])
            w.writerows(rows)
        if out.exists():
            out.rmdir()  # empty (checked above); fails loudly if something appeared meanwhile
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MedxganError(f"cannot write phantom dataset to {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
