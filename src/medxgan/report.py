"""Self-contained interactive HTML report of medXGAN explanations.

``write_explanations(explanations, out_dir)`` writes, for a list of explanation objects (duck-typed:
any object with the attributes of ``medxgan.explain.Explanation``), one offline HTML page plus the
raw material behind it::

    out_dir/report.html                      one page: inline CSS/JS, images as data: URIs
    out_dir/summary.json                     the summary table's rows
    out_dir/images/<name>_<kind>.png         original, reconstruction, negative, difference, maps
    out_dir/images/<name>_interpolation.gif  animated negative -> positive interpolation
    out_dir/raw/<name>.npz                   every raw array
    out_dir/json/<name>.json                 probabilities, quality, completeness, frame curve
    out_dir/sections/<name>.html             the image's detailed panel (an HTML fragment of the page)

For long jobs (``medxgan explain`` over thousands of images) the per-image files are written as
each batch finishes (:func:`write_image_outputs`, which returns a small summary row) and the page
is assembled at the end from the rows (:func:`write_report`): every image is listed in the summary
table, detailed panels are inlined for the first N only, so the page stays a few MB.

Every file is written to a temporary name and renamed into place; ``report.html`` is removed first
and written last, so a directory holding a ``report.html`` holds a complete, consistent report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

__all__ = ["write_explanations", "render_html", "write_image_outputs", "write_overview_figure", "write_report", "read_image_row",
           "safe_names"]

ROBUST_PERCENTILE = 99.5
#: maps whose values are attributions of the same classifier output (same units): one colour scale
SHARED_SCALE_METHODS = ("lig", "lig_path", "ig", "ig_negative")
METHOD_ORDER = ("difference", "accumulated", "lig", "lig_path", "gradcam", "ig", "ig_negative", "random")
METHOD_LABELS = {
    "difference": ("|Difference|", "|reconstruction \u2212 negative| image change"),
    "accumulated": ("Accumulated change", "\u03a3 |frame k+1 \u2212 frame k| along the interpolation"),
    "lig": ("Latent IG", "latent integrated gradients, negative \u2192 image"),
    "lig_path": ("Latent IG (path)", "latent IG accumulated along the generated path"),
    "gradcam": ("Grad-CAM", "class activation map of the classifier"),
    "ig": ("Integrated Gradients", "pixel-space IG, standard baseline"),
    "ig_negative": ("IG vs negative", "pixel-space IG, negative realization as baseline"),
    "random": ("Random", "random map: a sanity-check baseline"),
}
MASK_RGB = (0, 255, 255)
HTML_MAX_SIDE = 256  # images larger than this are downscaled for the page (files keep full size)
OVERLAY_MAX_ALPHA = 0.85


# ----------------------------------------------------------------------------- small helpers


def _np(x, dtype=np.float32) -> np.ndarray | None:
    """Tensor / array / list -> numpy array (CPU), or None."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if dtype is not None and getattr(x, "dtype", None) is not None and str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    return a.astype(dtype, copy=False) if dtype is not None else a


def _float(x) -> float | None:
    """Scalar (float, 0-d tensor/array) -> finite float, or None when missing/NaN/inf."""
    if x is None:
        return None
    try:
        v = float(_np(x).reshape(-1)[0]) if hasattr(x, "detach") or isinstance(x, np.ndarray) else float(x)
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x, spec: str = ".3f", suffix: str = "") -> str:
    v = _float(x)
    return "\u2014" if v is None else f"{v:{spec}}{suffix}"


def _jsonable(x):
    """Recursively make ``x`` strict-JSON safe (non-finite floats -> None, tensors -> lists)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _float(x)
    if hasattr(x, "detach") or isinstance(x, np.ndarray):
        a = _np(x, dtype=None)
        return _jsonable(a.item()) if a.ndim == 0 else _jsonable(a.tolist())
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _safe_names(names: list[str]) -> list[str]:
    """File-system/URL/id-safe, unique (case-insensitively) versions of ``names``."""
    out, seen = [], set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")[:80] or "image"
        cand, k = base, 2
        while cand.casefold() in seen:
            cand, k = f"{base}_{k}", k + 1
        seen.add(cand.casefold())
        out.append(cand)
    return out


_RESERVED_KEYS = ("original", "reconstruction", "negative", "interpolation")


def _method_key(m: str) -> str:
    """Map name -> file-name-safe key that cannot collide with the non-map panels."""
    k = re.sub(r"[^A-Za-z0-9_]+", "_", str(m)) or "map"
    return f"map_{k}" if k in _RESERVED_KEYS else k


def _to_uint8_image(x: np.ndarray) -> np.ndarray:
    """[C,H,W] in [-1,1] -> uint8 [H,W] (1 channel) or [H,W,3]."""
    a = np.nan_to_num(x, nan=-1.0)
    a = np.clip((a + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return a
    if a.shape[0] == 1:
        return a[0]
    if a.shape[0] >= 3:
        return np.ascontiguousarray(a[:3].transpose(1, 2, 0))
    return a.mean(0).astype(np.uint8)


def _gray01(x: np.ndarray) -> np.ndarray:
    """[C,H,W] in [-1,1] -> [H,W] luminance in [0,1]."""
    a = np.clip((np.nan_to_num(x, nan=-1.0) + 1.0) / 2.0, 0, 1)
    if a.ndim == 2:
        return a
    if a.shape[0] >= 3:
        return 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    return a.mean(0)


def _heat(m: np.ndarray) -> np.ndarray:
    """Attribution map [C,H,W] or [H,W] -> [H,W] absolute value averaged over channels."""
    a = np.abs(np.nan_to_num(m.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    return a.mean(0) if a.ndim == 3 else a


def _robust_max(values: list[np.ndarray]) -> float:
    flat = np.concatenate([v.reshape(-1) for v in values]) if values else np.zeros(1)
    s = float(np.percentile(flat, ROBUST_PERCENTILE)) if flat.size else 0.0
    if not (s > 0 and math.isfinite(s)):
        s = float(flat.max()) if flat.size else 0.0
    return s if s > 0 and math.isfinite(s) else 1.0


_LUT = None


def _colormap_lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)
    return _LUT


def _overlay(gray: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Gray base [H,W] in [0,1], normalised heat [H,W] (clipped to [0,1]) -> uint8 RGB overlay."""
    v = np.clip(v, 0, 1)
    colour = _colormap_lut()[np.round(v * 255).astype(np.int64)]
    alpha = (OVERLAY_MAX_ALPHA * np.sqrt(v))[..., None]
    base = np.repeat((gray * 255.0)[..., None], 3, axis=2)
    return np.clip(base * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)


def _mask_boundary(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Bool mask [1,H,W]/[H,W] -> bool [H,W] inner boundary (pixels of the mask touching outside)."""
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask).astype(bool)
    while m.ndim > 2:
        m = m.any(0) if m.shape[0] != 1 else m[0]
    if m.shape != shape:
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)) > 127
    if not m.any():
        return None
    return m & ~binary_erosion(m, structure=np.ones((3, 3), bool), border_value=1)


def _with_outline(rgb_or_gray: np.ndarray, boundary: np.ndarray | None) -> np.ndarray:
    if boundary is None:
        return rgb_or_gray
    rgb = rgb_or_gray if rgb_or_gray.ndim == 3 else np.repeat(rgb_or_gray[..., None], 3, axis=2)
    rgb = rgb.copy()
    rgb[boundary] = MASK_RGB
    return rgb


def _png(a: np.ndarray, max_side: int | None = None) -> bytes:
    im = Image.fromarray(a)
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(png).decode("ascii")


def _gif(frames: list[np.ndarray]) -> bytes:
    """uint8 frames -> looping ping-pong GIF, upscaled (nearest) to >= 128 px, ends held longer."""
    side = max(frames[0].shape[:2])
    k = max(1, 128 // side)
    ims = [Image.fromarray(f).resize((f.shape[1] * k, f.shape[0] * k), Image.NEAREST) for f in frames]
    ims = [im.convert("RGB").quantize(colors=256) if im.mode == "RGB" else im for im in ims]
    order = list(range(len(ims))) + list(range(len(ims) - 2, 0, -1))
    seq = [ims[i] for i in order]
    durations = [600 if i in (0, len(ims) - 1) else 110 for i in order]
    buf = io.BytesIO()
    if len(seq) == 1:
        seq[0].save(buf, format="GIF")
    else:
        seq[0].save(buf, format="GIF", save_all=True, append_images=seq[1:], duration=durations, loop=0, disposal=1)
    return buf.getvalue()


# ----------------------------------------------------------------------------- preparation


@dataclass
class _Panel:
    key: str  # file suffix: original, reconstruction, negative, difference, <method>
    title: str
    subtitle: str
    png: bytes  # full resolution (file)
    html_png: bytes  # possibly downscaled (page)
    scale: float | None = None  # robust max used for a map
    shared: bool = False


@dataclass
class _Prepared:
    name: str
    safe: str
    e: object
    probs: dict
    quality: dict
    completeness: dict
    monotone: bool | None
    has_mask: bool
    members: int = 1
    agreement: float | None = None
    smoothing: float = 0.0
    panels: list[_Panel] = field(default_factory=list)
    frames_png: list[bytes] = field(default_factory=list)
    frames_html: list[bytes] = field(default_factory=list)
    frame_probs: list = field(default_factory=list)
    alphas: list = field(default_factory=list)
    gif: bytes | None = None
    arrays: dict = field(default_factory=dict)
    small: bool = True

    def row(self) -> dict:
        q = self.quality
        return {
            "name": self.name,
            "safe_name": self.safe,
            "prob_image": self.probs["image"],
            "prob_reconstruction": self.probs["reconstruction"],
            "prob_negative": self.probs["negative"],
            "ssim": _float(q.get("ssim")),
            "psnr": _float(q.get("psnr")),
            "mse": _float(q.get("mse")),
            "delta_prob": _float(q.get("delta_prob")),
            "monotone": self.monotone,
            "has_mask": self.has_mask,
            "members": self.members,
            "agreement": self.agreement,
            "section": f"#img-{self.safe}",
            "json": f"json/{self.safe}.json",
        }


def _depends_on_generator(method: str) -> bool:
    """Whether a map comes from the generator (so differs between an ensemble's members)."""
    from medxgan.explain.registry import EXPLAINERS

    return method == "accumulated" or (method in EXPLAINERS and EXPLAINERS[method].uses_latents)


def _prepare_one(e, safe: str) -> _Prepared:
    name = str(getattr(e, "name", safe))
    image = _np(e.image)
    if image.ndim == 2:
        image = image[None]
    H, W = image.shape[-2:]
    recon = _np(getattr(e, "reconstruction", None))
    negative = _np(getattr(e, "negative", None))
    mask = getattr(e, "mask", None)
    mask_np = _np(mask, dtype=None) if mask is not None else None
    boundary = _mask_boundary(mask_np, (H, W)) if mask_np is not None else None
    maps = {str(k): _np(v) for k, v in (getattr(e, "maps", None) or {}).items() if v is not None}
    if "difference" not in maps and recon is not None and negative is not None:
        maps["difference"] = np.abs(recon - negative)
    accumulated = _np(getattr(e, "accumulated", None))
    if accumulated is not None and "accumulated" not in maps:
        maps["accumulated"] = accumulated
    monotone = getattr(e, "monotone", None)
    p = _Prepared(
        name=name,
        safe=safe,
        e=e,
        probs={k: _float(getattr(e, f"prob_{k}", None)) for k in ("image", "reconstruction", "negative")},
        quality={str(k): int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else _float(v)
                 for k, v in (getattr(e, "quality", None) or {}).items()},
        completeness={str(k): _float(v) for k, v in (getattr(e, "completeness", None) or {}).items()},
        monotone=None if monotone is None else bool(monotone),
        has_mask=boundary is not None,
        small=max(H, W) <= 128,
        members=int(getattr(e, "members", 1) or 1),
        agreement=_float(getattr(e, "agreement", None)),
        smoothing=float(getattr(e, "smoothing", 0.0) or 0.0),
    )

    def add(key, title, subtitle, rgb, scale=None, shared=False):
        png = _png(rgb)
        html_png = png if max(H, W) <= HTML_MAX_SIDE else _png(rgb, HTML_MAX_SIDE)
        p.panels.append(_Panel(key, title, subtitle, png, html_png, scale, shared))

    add("original", "Original", "input image" + (" \u00b7 cyan: lesion outline" if boundary is not None else ""),
        _with_outline(_to_uint8_image(image), boundary))
    if recon is not None:
        add("reconstruction", "Reconstruction", "G(z1, z2): the image re-generated from its latent code",
            _to_uint8_image(recon))
    if negative is not None:
        add("negative", "Negative realization", "G(z1, negative code): same anatomy, classified negative",
            _to_uint8_image(negative))

    # colour scales: attribution maps share one robust max per image; the others have their own
    heats = {m: _heat(v) for m, v in maps.items()}
    shared_keys = [m for m in heats if m in SHARED_SCALE_METHODS]
    shared_scale = _robust_max([heats[m] for m in shared_keys]) if shared_keys else None
    gray = _gray01(image)
    order = [m for m in METHOD_ORDER if m in heats] + sorted(m for m in heats if m not in METHOD_ORDER)
    for m in order:
        h = heats[m]
        if h.shape != (H, W):
            h = np.asarray(Image.fromarray(h.astype(np.float32), mode="F").resize((W, H), Image.BILINEAR))
        shared = m in SHARED_SCALE_METHODS
        s = shared_scale if shared else _robust_max([h])
        title, subtitle = METHOD_LABELS.get(m, (m, "attribution map"))
        if p.members > 1 and _depends_on_generator(m):  # the classifier-only maps are the same in every member
            subtitle += f" \u00b7 mean of {p.members} explanations"
        if p.smoothing:
            subtitle += f" \u00b7 blurred, \u03c3 = {p.smoothing:g} px"
        add(_method_key(m), title, subtitle, _with_outline(_overlay(gray, h / s), boundary), s, shared)

    frames = _np(getattr(e, "frames", None))
    if frames is not None and frames.ndim >= 3 and len(frames) > 0:
        if frames.ndim == 3:
            frames = frames[:, None]
        u8 = [_to_uint8_image(f) for f in frames]
        p.frames_png = [_png(f) for f in u8]
        p.frames_html = p.frames_png if max(H, W) <= HTML_MAX_SIDE else [_png(f, HTML_MAX_SIDE) for f in u8]
        p.gif = _gif(u8)
        fp = _np(getattr(e, "frame_probs", None))
        al = _np(getattr(e, "alphas", None))
        K = len(frames)
        p.frame_probs = [_float(v) for v in (fp.reshape(-1)[:K] if fp is not None else [])]
        p.frame_probs += [None] * (K - len(p.frame_probs))
        al_list = [_float(v) for v in al.reshape(-1)[:K]] if al is not None else []
        p.alphas = al_list if len(al_list) == K and None not in al_list else [
            i / (K - 1) if K > 1 else 0.0 for i in range(K)]

    arrays = {"image": image}
    for key, val in (("reconstruction", recon), ("negative", negative), ("frames", frames)):
        if val is not None:
            arrays[key] = val
    for key in ("frame_probs", "alphas", "z1", "z2"):
        a = _np(getattr(e, key, None))
        if a is not None:
            arrays[key] = a
    for m, v in maps.items():
        arrays[f"map_{_method_key(m)}"] = v
    if mask_np is not None:
        arrays["mask"] = mask_np.astype(bool)
    p.arrays = arrays
    return p


def _prepare(explanations) -> list[_Prepared]:
    explanations = list(explanations)
    safes = _safe_names([str(getattr(e, "name", f"image_{i}")) for i, e in enumerate(explanations)])
    return [_prepare_one(e, s) for e, s in zip(explanations, safes)]


# ----------------------------------------------------------------------------- HTML

_CSS = """
:root{--fg:#1d2733;--muted:#5d6b7a;--line:#dde3ea;--bg:#f5f7fa;--card:#fff;--accent:#1f6feb;
--ok:#1a7f37;--warn:#b35900;--cyan:#00b8c8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
header.top{background:#13233a;color:#fff;padding:18px 32px 14px}
header.top h1{margin:0 0 2px;font-size:22px;font-weight:600;letter-spacing:.2px}
header.top .sub{color:#b9c6d6;font-size:13px}
main{max-width:1240px;margin:0 auto;padding:20px 32px 48px}
h2{font-size:18px;margin:0;font-weight:600}
h3{font-size:13px;margin:18px 0 8px;color:var(--muted);text-transform:uppercase;letter-spacing:.6px;font-weight:600}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:0 0 20px}
.notice{font-size:12.5px;color:var(--muted)}
.notice b{color:var(--fg)}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.summary-row:hover{background:#f0f5ff}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;font-size:13px}
.kv dt{color:var(--muted)}.kv dd{margin:0;font-variant-numeric:tabular-nums;word-break:break-word}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.yes{background:#dafbe1;color:var(--ok)}.badge.no{background:#fff1e0;color:var(--warn)}
.badge.na{background:#eef1f4;color:var(--muted)}
.sec-head{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 20px;margin-bottom:6px}
.sec-head .probs{color:var(--muted);font-size:13px}.sec-head .probs b{color:var(--fg)}
.sec-head .top-link{margin-left:auto;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px 14px}
figure{margin:0;width:128px}
figure img{width:128px;height:128px;object-fit:contain;display:block;border-radius:4px;background:#000}
figcaption{font-size:12px;margin-top:4px;line-height:1.3}
figcaption .t{font-weight:600;display:block}
figcaption .s{color:var(--muted);display:block}
figcaption .sc{color:var(--muted);font-variant-numeric:tabular-nums;display:block;font-size:11px}
img.px{image-rendering:pixelated}
.cbar{display:flex;align-items:center;gap:8px;font-size:12px;color:var(--muted);margin:10px 0 2px}
.cbar img{width:220px;height:12px;border:1px solid var(--line);border-radius:2px}
.legend-mask{display:inline-flex;align-items:center;gap:6px;margin-left:18px}
.legend-mask i{display:inline-block;width:14px;height:3px;background:#00ffff;outline:1px solid #0aa}
.interp{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.interp .plot{flex:0 1 380px}
.interp .plot .notice{margin:6px 0 0}
.interp .viewer img{width:256px;height:256px;object-fit:contain;display:block;border-radius:4px;background:#000}
.controls{display:flex;align-items:center;gap:10px;margin-top:10px;width:256px}
.controls input[type=range]{flex:1;accent-color:var(--accent)}
.controls button{border:1px solid var(--line);background:#fff;border-radius:4px;padding:2px 10px;cursor:pointer;font:inherit}
.frame-readout{margin-top:6px;font-variant-numeric:tabular-nums;font-size:13px}
.frame-readout .frame-index{color:var(--muted);margin-right:8px}
svg.curve{background:#fff;border:1px solid var(--line);border-radius:4px}
svg.curve text{font:11px system-ui,sans-serif;fill:#5d6b7a}
.details{display:flex;flex-wrap:wrap;gap:36px}
.details table{width:auto}
.details > div{max-width:360px}
.files{font-size:12px;color:var(--muted);margin-top:12px}
.files a{margin-right:10px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:8px 0 24px}
"""

_JS = """
(function(){
  document.querySelectorAll('.interp').forEach(function(panel){
    var data = JSON.parse(panel.querySelector('script.frame-data').textContent);
    var slider = panel.querySelector('.frame-slider');
    var img = panel.querySelector('.frame-img');
    var prob = panel.querySelector('.frame-prob');
    var idx = panel.querySelector('.frame-index');
    var marker = panel.querySelector('.frame-marker');
    var play = panel.querySelector('.frame-play');
    var timer = null, dir = 1;
    function show(i){
      i = Math.max(0, Math.min(data.src.length - 1, i|0));
      img.src = data.src[i];
      prob.textContent = data.label[i];
      idx.textContent = data.index[i];
      slider.setAttribute('aria-valuetext', data.label[i]);
      if (marker){ marker.setAttribute('cx', data.cx[i]); marker.setAttribute('cy', data.cy[i]); }
      panel.setAttribute('data-frame', i);
    }
    slider.addEventListener('input', function(){ show(+slider.value); });
    if (play) play.addEventListener('click', function(){
      if (timer){ clearInterval(timer); timer = null; play.textContent = 'Play'; return; }
      play.textContent = 'Pause';
      timer = setInterval(function(){
        var v = +slider.value + dir;
        if (v >= data.src.length - 1 || v <= 0) dir = -dir;
        slider.value = Math.max(0, Math.min(data.src.length - 1, v));
        show(+slider.value);
      }, 180);
    });
  });
})();
"""

_E = html.escape


def _badge(flag: bool | None) -> str:
    if flag is None:
        return '<span class="badge na">n/a</span>'
    return '<span class="badge yes">yes</span>' if flag else '<span class="badge no">no</span>'


def _frame_label(alpha, prob) -> str:
    return f"\u03b1 = {_fmt(alpha, '.2f')} \u00b7 P(positive) = {_fmt(prob, '.3f')}"


def _curve_svg(p: _Prepared, w: int = 360, h: int = 220) -> tuple[str, list[float], list[float]]:
    """Inline SVG of P(positive) along the interpolation; returns (svg, marker xs, marker ys)."""
    ml, mr, mt, mb = 44, 14, 14, 40
    a0, a1 = p.alphas[0], p.alphas[-1]
    span = (a1 - a0) or 1.0

    def X(a):
        return round(ml + (a - a0) / span * (w - ml - mr), 1)

    def Y(v):
        return round(mt + (1 - v) * (h - mt - mb), 1)

    xs = [X(a) for a in p.alphas]
    ys = [Y(v if v is not None else 0.0) for v in p.frame_probs]
    parts = [f'<svg class="curve" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="P(positive) along the interpolation">']
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        dash = ' stroke-dasharray="4 3"' if v == 0.5 else ""
        col = "#b0bac5" if v == 0.5 else "#edf0f3"
        parts.append(f'<line x1="{ml}" x2="{w - mr}" y1="{Y(v)}" y2="{Y(v)}" stroke="{col}"{dash}/>')
        parts.append(f'<text x="{ml - 6}" y="{Y(v) + 4}" text-anchor="end">{v:.2f}</text>')
    for a in (a0, (a0 + a1) / 2, a1):
        parts.append(f'<text x="{X(a)}" y="{h - mb + 16}" text-anchor="middle">{a:.2f}</text>')
    parts.append(f'<line x1="{ml}" x2="{w - mr}" y1="{h - mb}" y2="{h - mb}" stroke="#8a96a3"/>')
    parts.append(f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{h - mb}" stroke="#8a96a3"/>')
    parts.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 6}" text-anchor="middle">'
                 f'\u03b1 (0 = negative realization, 1 = reconstruction)</text>')
    parts.append(f'<text transform="translate(12 {(mt + h - mb) / 2}) rotate(-90)" text-anchor="middle">'
                 f'P(positive)</text>')
    valid = [(x, y) for x, y, v in zip(xs, ys, p.frame_probs) if v is not None]
    if valid:
        pts = " ".join(f"{x},{y}" for x, y in valid)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#1f6feb" stroke-width="2"/>')
        parts.extend(f'<circle cx="{x}" cy="{y}" r="2.5" fill="#1f6feb"/>' for x, y in valid)
    parts.append(f'<circle class="frame-marker" cx="{xs[0]}" cy="{ys[0]}" r="6" fill="none" '
                 f'stroke="#d1242f" stroke-width="2.5"/>')
    parts.append("</svg>")
    return "".join(parts), xs, ys


def _kv_table(d: dict, headers: tuple[str, str], fmt) -> str:
    if not d:
        return '<p class="notice">none</p>'
    rows = "".join(f'<tr><td>{_E(str(k))}</td><td class="num">{fmt(k, v)}</td></tr>' for k, v in d.items())
    return f'<table><tr><th>{_E(headers[0])}</th><th class="num">{_E(headers[1])}</th></tr>{rows}</table>'


def _quality_fmt(k, v):
    if k == "psnr":
        return _fmt(v, ".2f", " dB")
    if k == "mse":
        return _fmt(v, ".5f")
    if isinstance(v, int) or (v is not None and float(v).is_integer() and abs(v) >= 1):
        return f"{int(v)}"  # counts such as steps_run, indices such as an ensemble's member
    return _fmt(v, ".4g") if v is not None and (abs(v) >= 1e4 or 0 < abs(v) < 1e-3) else _fmt(v, ".4f")


def _section(p: _Prepared, i: int, links: bool, cbar_uri: str) -> str:
    px = ' class="px"' if p.small else ""
    out = [f'<section class="card image-section" id="img-{p.safe}" data-name="{_E(p.name)}" '
           f'data-mask="{"true" if p.has_mask else "false"}">']
    out.append('<div class="sec-head">'
               f'<h2>{i}. {_E(p.name)}</h2>'
               f'<span class="probs">P(image) <b>{_fmt(p.probs["image"])}</b> \u00b7 '
               f'P(reconstruction) <b>{_fmt(p.probs["reconstruction"])}</b> \u00b7 '
               f'P(negative) <b>{_fmt(p.probs["negative"])}</b> \u00b7 monotone path {_badge(p.monotone)}'
               + (f' \u00b7 agreement of {p.members} explanations <b>{_fmt(p.agreement)}</b>' if p.members > 1 else "")
               + '</span>'
               '<a class="top-link" href="#summary">\u2191 summary</a></div>')

    images = [q for q in p.panels if q.scale is None]
    maps = [q for q in p.panels if q.scale is not None]

    def fig(q: _Panel) -> str:
        cls = "map" if q.scale is not None else "img"
        sc = ""
        if q.scale is not None:
            sc = f'<span class="sc">scale s = {q.scale:.3g}{" (shared)" if q.shared else ""}</span>'
        return (f'<figure class="{cls}" data-kind="{_E(q.key)}"><img{px} src="{_data_uri(q.html_png)}" '
                f'alt="{_E(q.title)}"><figcaption><span class="t">{_E(q.title)}</span>'
                f'<span class="s">{_E(q.subtitle)}</span>{sc}</figcaption></figure>')

    out.append("<h3>Images</h3><div class=\"grid\">" + "".join(fig(q) for q in images) + "</div>")
    if maps:
        mask_legend = ('<span class="legend-mask"><i></i>ground-truth lesion outline</span>'
                       if p.has_mask else "")
        out.append("<h3>Attribution maps</h3><div class=\"grid\">" + "".join(fig(q) for q in maps) + "</div>")
        out.append(f'<div class="cbar"><span>0</span><img src="{cbar_uri}" alt="colour scale">'
                   f'<span>\u2265 s</span><span>|map| / s over the gray image</span>{mask_legend}</div>')

    if p.frames_html:
        svg, xs, ys = _curve_svg(p)
        K = len(p.frames_html)
        data = {
            "src": [_data_uri(b) for b in p.frames_html],
            "label": [_frame_label(a, v) for a, v in zip(p.alphas, p.frame_probs)],
            "index": [f"frame {k + 1} / {K}" for k in range(K)],
            "cx": xs,
            "cy": ys,
        }
        data_json = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        out.append("<h3>Latent interpolation: negative realization \u2192 reconstruction</h3>")
        out.append(
            f'<div class="interp" data-frames="{K}" data-frame="0">'
            f'<script type="application/json" class="frame-data">{data_json}</script>'
            f'<div class="viewer"><img class="frame-img{" px" if p.small else ""}" src="{data["src"][0]}" alt="interpolation frame">'
            f'<div class="controls"><button type="button" class="frame-play">Play</button>'
            f'<input type="range" class="frame-slider" min="0" max="{K - 1}" step="1" value="0" '
            f'aria-label="interpolation frame" aria-valuetext="{_E(data["label"][0])}"></div>'
            f'<div class="frame-readout"><span class="frame-index">{_E(data["index"][0])}</span>'
            f'<span class="frame-prob">{_E(data["label"][0])}</span></div></div>'
            f"<div class=\"plot\">{svg}<p class=\"notice\">Classifier P(positive) for each generated frame; the red ring "
            f"follows the slider. Dashed line: 0.5. A monotone path means P(positive) never decreases "
            f"from the negative realization to the reconstruction.</p></div></div>")

    q = {k: p.quality.get(k) for k in ("ssim", "psnr", "mse", "delta_prob") if k in p.quality}
    q.update({k: v for k, v in p.quality.items() if k not in q})
    out.append('<div class="details">'
               f'<div><h3>Reconstruction quality</h3>{_kv_table(q, ("metric", "value"), _quality_fmt)}</div>'
               f'<div><h3>Attribution completeness</h3>'
               f'{_kv_table(p.completeness, ("method", "value"), lambda k, v: _fmt(v, ".4g"))}'
               '<p class="notice">|\u03a3 map \u2212 \u0394f|: how far the map\'s total is from the change '
               "in classifier output it explains (0 = exact).</p></div></div>")
    if links:
        s = quote(p.safe)
        files = [(f"images/{s}_{q.key}.png", q.key) for q in p.panels]
        if p.gif is not None:
            files.append((f"images/{s}_interpolation.gif", "interpolation.gif"))
        files += [(f"raw/{s}.npz", "raw arrays (.npz)"), (f"json/{s}.json", "values (.json)")]
        out.append('<div class="files">Files: ' + "".join(f'<a href="{_E(h)}">{_E(t)}</a>' for h, t in files)
                   + "</div>")
    out.append("</section>")
    return "".join(out)


def _colour_bar_uri() -> str:
    lut = _colormap_lut()
    return _data_uri(_png(np.repeat(lut[None, :, :], 12, axis=0).astype(np.uint8)))


def _render(prepared: list[_Prepared], title: str, model_info: dict | None, links: bool) -> str:
    cbar_uri = _colour_bar_uri()
    sections = [_section(p, i, links, cbar_uri) for i, p in enumerate(prepared, 1)]
    return _render_page([p.row() for p in prepared], sections, title, model_info)


def _render_page(rows: list[dict], sections: list[str], title: str, model_info: dict | None,
                 note: str = "") -> str:
    """The page: summary table of every row in ``rows`` (``_Prepared.row()`` dicts), then the
    detailed ``sections`` (HTML fragments) of the first ``len(sections)`` rows. Rows without a
    section link to their per-image JSON file instead of an anchor."""
    table_rows = []
    ensemble = any((r.get("members") or 1) > 1 for r in rows)
    for i, r in enumerate(rows, 1):
        name, safe = str(r.get("name", "")), str(r.get("safe_name", ""))
        href = f"#img-{safe}" if i <= len(sections) else r.get("json", f"json/{quote(safe)}.json")
        monotone = r.get("monotone")
        table_rows.append(
            f'<tr class="summary-row" data-name="{_E(name)}"><td class="num">{i}</td>'
            f'<td><a href="{_E(href)}">{_E(name)}</a></td>'
            f'<td class="num">{_fmt(r.get("prob_image"))}</td><td class="num">{_fmt(r.get("prob_reconstruction"))}</td>'
            f'<td class="num">{_fmt(r.get("prob_negative"))}</td><td class="num">{_fmt(r.get("ssim"))}</td>'
            f'<td class="num">{_fmt(r.get("psnr"), ".2f")}</td><td>{_badge(None if monotone is None else bool(monotone))}</td>'
            f'<td>{"yes" if r.get("has_mask") else ""}</td>'
            + (f'<td class="num">{_fmt(r.get("agreement"))}</td>' if ensemble else "") + '</tr>')
    table = ('<table class="summary"><thead><tr><th class="num">#</th><th>Image</th>'
             '<th class="num">P(image)</th><th class="num">P(recon)</th><th class="num">P(negative)</th>'
             '<th class="num">SSIM</th><th class="num">PSNR (dB)</th><th>Monotone</th><th>Lesion mask</th>'
             + ('<th class="num" title="mean correlation of the difference maps of the explanations averaged">'
                'Agreement</th>' if ensemble else "")
             + f'</tr></thead><tbody>{"".join(table_rows)}</tbody></table>')
    if not rows:
        table += '<p class="notice">No images were explained.</p>'
    if note:
        table += f'<p class="notice">{_E(note)}</p>'
    n = len(rows)

    info = ""
    if model_info:
        items = "".join(f"<dt>{_E(str(k))}</dt><dd>{_E(_info_value(v))}</dd>" for k, v in model_info.items())
        info = f'<div class="card"><h3 style="margin-top:0">Model</h3><dl class="kv">{items}</dl></div>'

    how = (
        '<div class="card notice"><b>How to read this report.</b> P(\u00b7) is the classifier\'s probability '
        "of the <b>positive</b> class. medXGAN encodes each image into an anatomy code z1 and a class code z2; "
        "the <b>negative realization</b> keeps the anatomy but is generated with a negative class code, and "
        "the <b>interpolation</b> walks the latent space from it to the reconstruction. "
        "<b>Colour scale:</b> every map shows its absolute value (averaged over channels) divided by a robust "
        f"maximum s, the {ROBUST_PERCENTILE:g}th percentile of |values|, clipped to [0, 1] and drawn with the "
        "inferno colour map over the gray image (transparent at 0). "
        "Latent IG, Latent IG (path), Integrated Gradients and IG vs negative share one s per image, so their "
        "intensities are directly comparable; |Difference|, Accumulated change, Grad-CAM and other maps are "
        "scaled on their own. "
        "Cyan pixels (where shown) outline the ground-truth lesion mask. "
        + ("<b>Ensemble:</b> each image was explained several times from independent random starts; its maps "
           "are the mean of those explanations, its images and probabilities come from the one that reproduces "
           "the image best, and <b>agreement</b> is the mean correlation of their |Difference| maps (1 = the "
           "same change). A low agreement means the explanation depends on where the inversion started: read "
           "that image's maps with care. " if ensemble else "")
        + "<b>Research use only; not a diagnostic device.</b></div>")

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        '<link rel="icon" href="data:,">'
        f"<title>{_E(title)}</title><style>{_CSS}</style></head><body>"
        f'<header class="top"><h1>{_E(title)}</h1><div class="sub">medXGAN visual explanations \u00b7 '
        f"{n} image{'s' if n != 1 else ''}</div></header><main>"
        f"{info}"
        f'<div class="card" id="summary"><h3 style="margin-top:0">Summary</h3>{table}</div>'
        f"{how}"
        + "".join(sections)
        + '<footer>Generated by medXGAN. Self-contained page: no network access needed.</footer>'
        f"</main><script>{_JS}</script></body></html>\n"
    )


def _info_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(_jsonable(v))
    return str(v)


# ----------------------------------------------------------------------------- public API


def render_html(explanations, title: str = "medXGAN report", model_info: dict | None = None) -> str:
    """The report page as a string (no links to per-image files, since none are written)."""
    return _render(_prepare(explanations), title, model_info, links=False)


def _atomic_bytes(path: Path, data: bytes) -> None:
    from medxgan.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared

    atomic_write(path, write)


def _atomic_json(path: Path, obj) -> None:
    _atomic_bytes(path, (json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n").encode("utf-8"))


def _atomic_npz(path: Path, arrays: dict) -> None:
    from medxgan.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)

    atomic_write(path, write)


SECTIONS_DIR = "sections"  # per-image HTML fragments of the detailed panels, joined into report.html


def _write_prepared(p: _Prepared, out: Path, position: int | None, cbar_uri: str | None = None) -> dict:
    """Write one prepared image's files; its JSON last (its presence marks the image done)."""
    for q in p.panels:
        _atomic_bytes(out / "images" / f"{p.safe}_{q.key}.png", q.png)
    if p.gif is not None:
        _atomic_bytes(out / "images" / f"{p.safe}_interpolation.gif", p.gif)
    _atomic_npz(out / "raw" / f"{p.safe}.npz", p.arrays)
    if position is not None:
        _atomic_bytes(out / SECTIONS_DIR / f"{p.safe}.html",
                      _section(p, position, True, cbar_uri or _colour_bar_uri()).encode("utf-8"))
    row = p.row()
    _atomic_json(out / "json" / f"{p.safe}.json", {
        **row,
        "quality": p.quality,
        "completeness": p.completeness,
        **({"smoothing_sigma_px": p.smoothing} if p.smoothing else {}),
        "frame_probs": p.frame_probs,
        "alphas": p.alphas,
        "maps": {q.key: {"scale": q.scale, "shared_scale": q.shared} for q in p.panels if q.scale is not None},
        "colour_scale": f"|map| / (percentile {ROBUST_PERCENTILE} of |map|), clipped to [0, 1]",
        "files": {
            **{q.key: f"images/{p.safe}_{q.key}.png" for q in p.panels},
            **({"interpolation": f"images/{p.safe}_interpolation.gif"} if p.gif is not None else {}),
            "raw": f"raw/{p.safe}.npz",
        },
    })
    return _jsonable(row)


def safe_names(names: list[str]) -> list[str]:
    """File-name-safe, case-insensitively unique names for a whole job's image names, in order.
    Computed once over the job's full list so that streamed batches and resumed runs agree."""
    return _safe_names(names)


def write_image_outputs(explanation, out_dir, safe_name: str, position: int | None = None) -> dict:
    """Write one explanation's per-image files into ``out_dir`` and return its summary row.

    Files: ``images/<safe>_<kind>.png``, ``images/<safe>_interpolation.gif``, ``raw/<safe>.npz``,
    ``json/<safe>.json`` (written last: its presence means the image is complete) and, when
    ``position`` (1-based place in the report) is given, ``sections/<safe>.html``: the image's
    detailed panel for :func:`write_report`. Only the returned row (a few numbers) needs to be
    kept for the final report, so a job of any length runs in bounded memory.
    """
    out = Path(out_dir)
    return _write_prepared(_prepare_one(explanation, safe_name), out, position)


def read_image_row(out_dir, safe_name: str) -> dict | None:
    """The summary row of an image written by :func:`write_image_outputs`, or None if it is
    missing or unreadable (an interrupted write leaves no JSON: writes are atomic)."""
    path = Path(out_dir) / "json" / f"{safe_name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = ("name", "safe_name", "prob_image", "prob_reconstruction", "prob_negative", "ssim", "psnr", "mse",
            "delta_prob", "monotone", "has_mask", "members", "agreement", "section", "json")
    return {k: data.get(k) for k in keys} if isinstance(data, dict) else None


def write_report(out_dir, rows: list[dict], title: str = "medXGAN report", model_info: dict | None = None,
                 detailed: int | None = None) -> Path:
    """Write ``summary.json`` (every row) and ``report.html``: the summary table lists every row,
    detailed panels are shown for the first ``detailed`` rows (all when None) from their
    ``sections/<safe>.html`` fragments, with a note saying where the others' files are.
    ``report.html`` is written last (atomically)."""
    out = Path(out_dir)
    report = out / "report.html"
    report.unlink(missing_ok=True)
    shown = len(rows) if detailed is None else min(detailed, len(rows))
    sections = []
    for r in rows[:shown]:
        fragment = out / SECTIONS_DIR / f"{r['safe_name']}.html"
        try:
            sections.append(fragment.read_text(encoding="utf-8"))
        except OSError:
            from medxgan.errors import MedxganError

            raise MedxganError(f"{fragment}: detailed panel missing; rerun the explanation with --resume") from None
    note = ""
    if shown < len(rows):
        note = (f"Detailed panels are shown for the first {shown} of {len(rows)} images; for the others, "
                "follow the link to the image's JSON file, which lists its PNG, GIF and raw-array files.")
    _atomic_json(out / "summary.json", {"title": title, "model_info": model_info or {}, "images": rows,
                                        "detailed_panels": shown})
    _atomic_bytes(report, _render_page(rows, sections, title, model_info, note).encode("utf-8"))
    return report


OVERVIEW_PANELS = (("original", "original"), ("reconstruction", "G(z1, z2)"), ("negative", "G(z1, 0)"),
                   ("difference", "|difference|"), ("lig", "Latent IG"), ("gradcam", "Grad-CAM"), ("ig", "IG"),
                   ("ig_negative", "IG, negative baseline"))


def write_overview_figure(out_dir, rows: list[dict], max_images: int = 8) -> Path | None:
    """``overview.png``: one row per image (the first ``max_images`` rows), its original,
    reconstruction, negative realization and attribution maps side by side, assembled from the
    per-image panels already written (lesion outlines included), P(positive) in the titles.
    Returns the path, or None when no row has panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medxgan.checkpoint import atomic_write

    out = Path(out_dir)
    rows = rows[:max_images]
    files = []
    for r in rows:
        try:
            files.append(json.loads((out / "json" / f"{r['safe_name']}.json").read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError):
            files.append({})
    columns = [(k, label) for k, label in OVERVIEW_PANELS if any(_method_key(k) in f or k in f for f in files)]
    if not rows or not columns:
        return None
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.6 * len(columns), 1.75 * len(rows)), squeeze=False)
    for i, (r, f) in enumerate(zip(rows, files)):
        for j, (key, label) in enumerate(columns):
            ax = axes[i, j]
            ax.axis("off")
            path = f.get(key) or f.get(_method_key(key))
            if path and (out / path).is_file():
                ax.imshow(Image.open(out / path).convert("RGB"))
            title = label if i == 0 else ""
            if key == "original" and r.get("prob_image") is not None:
                title += ("\n" if title else "") + f"P={r['prob_image']:.2f}"
            elif key == "negative" and r.get("prob_negative") is not None:
                title += ("\n" if title else "") + f"P={r['prob_negative']:.2f}"
            ax.set_title(title, fontsize=7)
    fig.tight_layout(pad=0.3)
    path = out / "overview.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_explanations(explanations, out_dir, title: str = "medXGAN report",
                       model_info: dict | None = None) -> Path:
    """Write the report for ``explanations`` into ``out_dir`` (created); returns the report.html path.

    Every image gets a detailed panel. ``report.html`` is removed first and written last
    (atomically), so it exists only when every other file of this report has been written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").unlink(missing_ok=True)
    prepared = _prepare(explanations)
    cbar_uri = _colour_bar_uri()
    rows = [_write_prepared(p, out, i, cbar_uri) for i, p in enumerate(prepared, 1)]
    return write_report(out, rows, title, model_info)
