"""Real-data loaders: image folders (with optional lesion masks / VIA annotations) and MedMNIST .npz.

Everything here returns a :class:`LabeledImages`: float32 images in [-1, 1] shaped [N, C, H, W],
int64 labels (1 = positive, 0 = negative), optional boolean lesion masks, and the names of the
images relative to the data root, so that a run directory can record which images it used.

Conventions
-----------
* Intensities. 8-bit images are divided by 255. 16-bit images (Pillow modes ``I;16*``, and
  ``I`` when the file is a PNG, which cannot hold more than 16 bits) are divided by 65535, so the
  full 16-bit dynamic range is kept and the scale is the same for every image of a data set.
  32-bit integer images (``I`` from TIFF) and float images (``F``) have no fixed range: floats
  already in [0, 1] are kept as they are, everything else is min/max normalised per image. A float
  image with NaN or Inf pixels is refused. Colour images become gray by luminance
  (0.299 R + 0.587 G + 0.114 B, ITU-R 601) when ``channels=1``; gray images are replicated when
  ``channels=3``. Alpha is ignored. EXIF orientation is applied first. Multi-frame files
  (TIFF stacks) contribute their first frame.
* Geometry. :func:`resize_geometry` decides, once, how an h x w image becomes size x size
  (``pad``: longest side scaled to ``size``, centred on black; ``crop``: shortest side scaled to
  ``size``, centre crop; ``stretch``). Images and masks both go through :func:`_transform`, which
  uses that geometry with torch's antialiased bilinear interpolation; masks are interpolated as
  0/1 floats and thresholded at > 0.5, so a mask stays registered with its image exactly.
* VIA coordinates. A pixel (row r, column c) is inside a region when the point (x=c, y=r) is
  inside it (the convention of :func:`skimage.draw.polygon`, which is used for polygons; polygon
  edges are inclusive, ellipse/circle boundaries exclusive). VIA 2 draws an ellipse with the HTML
  canvas call ``ctx.ellipse(cx, cy, rx, ry, theta)``: the ``rx`` semi-axis points along
  (cos theta, sin theta) in image coordinates with y pointing down, i.e. a positive theta turns
  the ellipse *clockwise* on screen. ``skimage.draw.ellipse(cy, cx, ry, rx, rotation=...)`` turns
  counter-clockwise on screen, so it agrees with VIA for ``rotation=-theta``; this module
  rasterises ellipses itself with the VIA convention (same result, but bounded to the image and
  safe for degenerate radii), and the tests check both facts on hand-computed examples.
"""

from __future__ import annotations

import inspect
import json
import math
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medxgan.errors import MedxganError
from medxgan.medical import MEDICAL_EXTENSIONS, as_channels, is_dicom, is_nifti, strip_extension

__all__ = [
    "IMAGE_EXTENSIONS",
    "LabeledImages",
    "load_image",
    "load_mask",
    "load_folder",
    "load_medmnist",
    "load_nifti_volumes",
    "load_dataset",
    "MedicalOptions",
    "group_split",
    "stratified_split",
    "save_split",
    "load_split",
    "parse_via",
    "rasterize_via_regions",
    "resize_geometry",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp") + MEDICAL_EXTENSIONS
RESIZE_MODES = ("pad", "crop", "stretch")
SPLITS = ("train", "val", "test")
VIA_SHAPES = ("polygon", "rect", "circle", "ellipse")
_MAX_COORD = 1e7  # |coordinate| above this in a VIA file is nonsense, refused rather than rasterised


def _one_line(text: Any, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _fail(msg: str) -> MedxganError:
    return MedxganError(_one_line(msg, 1000))


# --------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------


@dataclass
class LabeledImages:
    """A labelled image set.

    ``images`` float32 [N, C, H, W] in [-1, 1]; ``labels`` int64 [N] (1 positive, 0 negative);
    ``masks`` bool [N, 1, H, W] lesion masks (all False where an image has none) or None when the
    data set has no mask source at all; ``has_mask`` bool [N] which images have a ground-truth
    mask; ``names`` paths relative to the data root (``"yes/y12.jpg"``, ``"test/000123"``);
    ``skipped`` names of unreadable files left out by ``skip_bad=True``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    has_mask: torch.Tensor
    names: list[str]
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = int(self.images.shape[0])
        if self.labels.shape[0] != n or self.has_mask.shape[0] != n or len(self.names) != n:
            raise ValueError("LabeledImages: images, labels, has_mask and names differ in length")
        if self.masks is not None and self.masks.shape[0] != n:
            raise ValueError("LabeledImages: masks and images differ in length")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx) -> "LabeledImages":
        """Rows ``idx`` (index array/list/tensor, boolean mask, or slice), in the given order."""
        n = len(self)
        if isinstance(idx, slice):
            index = torch.arange(n)[idx]
        else:
            t = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
            if t.dtype == torch.bool:
                if t.shape != (n,):
                    raise IndexError(f"boolean index of shape {tuple(t.shape)} for {n} images")
                index = torch.nonzero(t).flatten()
            else:
                index = t.reshape(-1).long()
                if index.numel() and (index.min() < -n or index.max() >= n):
                    raise IndexError(f"index out of range for {n} images")
                index = torch.where(index < 0, index + n, index)
        il = index.tolist()
        return LabeledImages(
            images=self.images[index],
            labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
            has_mask=self.has_mask[index],
            names=[self.names[i] for i in il],
            skipped=list(self.skipped),
        )


# --------------------------------------------------------------------------------------------
# Geometry (shared by images and masks)
# --------------------------------------------------------------------------------------------


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 1:
        raise _fail(f"image size must be a positive integer, got {size!r}")
    return int(size)


def _check_resize(resize) -> str:
    if resize not in RESIZE_MODES:
        raise _fail(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def _check_channels(channels) -> int:
    if channels not in (1, 3):
        raise _fail(f"channels must be 1 or 3, got {channels!r}")
    return int(channels)


def resize_geometry(h: int, w: int, size: int, resize: str = "pad") -> tuple[int, int, int, int]:
    """How an h x w image becomes size x size: ``(nh, nw, top, left)``.

    The image is resized to nh x nw and its top-left corner placed at (top, left) of the
    size x size output; negative offsets mean cropping, positive ones padding.
    """
    size = _check_size(size)
    resize = _check_resize(resize)
    if resize == "stretch":
        return size, size, 0, 0
    if resize == "pad":
        s = size / max(h, w)
        nh = min(size, max(1, int(round(h * s))))
        nw = min(size, max(1, int(round(w * s))))
        return nh, nw, (size - nh) // 2, (size - nw) // 2
    s = size / min(h, w)  # crop
    nh = max(size, int(round(h * s)))
    nw = max(size, int(round(w * s)))
    return nh, nw, -((nh - size) // 2), -((nw - size) // 2)


def _transform(x: torch.Tensor, size: int, resize: str, fill: float = 0.0) -> torch.Tensor:
    """Apply :func:`resize_geometry` to a float batch [N, C, h, w] -> [N, C, size, size]."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    nh, nw, top, left = resize_geometry(h, w, size, resize)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    if (nh, nw, top, left) == (size, size, 0, 0):
        return x.contiguous()
    out = x.new_full((x.shape[0], x.shape[1], size, size), fill)
    r0, r1 = max(0, -top), min(nh, size - top)
    c0, c1 = max(0, -left), min(nw, size - left)
    out[:, :, r0 + top : r1 + top, c0 + left : c1 + left] = x[:, :, r0:r1, c0:c1]
    return out


def _check_not_upscaled(arr: np.ndarray, path, size: int, resize: str) -> None:
    """Refuse an image that would have to be enlarged to reach ``size`` (``allow_upscale=False``)."""
    h, w = arr.shape[-2:]
    side = {"pad": max(h, w), "crop": min(h, w), "stretch": min(h, w)}[resize]
    if side < size:
        raise _fail(f"image {path} is {w}x{h} pixels, smaller than the model size {size} "
                    f"(upscaling refused by --no-upscale / data.allow_upscale=false)")


def _image_to_tensor(arr: np.ndarray, size: int, resize: str) -> torch.Tensor:
    """float [C, h, w] in [0, 1] -> float32 [C, size, size] in [-1, 1] (padding is black = -1)."""
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    y = _transform(x, size, resize, fill=0.0)[0]
    return (y * 2.0 - 1.0).clamp_(-1.0, 1.0)


def _mask_to_tensor(mask: np.ndarray, size: int, resize: str) -> torch.Tensor:
    """bool [h, w] -> bool [1, size, size] through exactly the image geometry."""
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return _transform(x, size, resize, fill=0.0)[0] > 0.5


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

_BAD_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    MemoryError,
    ZeroDivisionError,
    struct.error,
)


def _open(path: Path, gray: bool = False):
    """Open and fully decode an image with EXIF orientation applied (Pillow Image).

    ``gray=True`` lets the JPEG decoder produce the luminance plane directly (same size; JPEG's
    Y is the ITU-R 601 luminance), which skips the colour conversion and is much faster.
    """
    from PIL import Image, ImageOps

    try:
        im = Image.open(path)
        if gray and im.format == "JPEG" and im.mode in ("RGB", "YCbCr"):
            im.draft("L", im.size)
        im.load()
    except Image.DecompressionBombError as e:
        raise _fail(f"image {path} is too large to decode safely: {e}") from None
    except FileNotFoundError:
        raise _fail(f"image not found: {path}") from None
    except IsADirectoryError:
        raise _fail(f"expected an image file, got a folder: {path}") from None
    except _BAD_IMAGE_ERRORS as e:
        raise _fail(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF block: keep the pixels as stored
        pass
    return im


def _gray_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] float -> [...] luminance (ITU-R 601, as Pillow's convert('L'))."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _pil_to_float(im, path: Path, channels: int) -> np.ndarray:
    """Pillow image -> float32 [C, H, W] in [0, 1] (see the module docstring for the rules)."""
    mode = im.mode
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32) / 65535.0
        gray = a
    elif mode == "I":
        a = np.asarray(im).astype(np.float64)
        if (im.format or "").upper() == "PNG" and a.size and a.min() >= 0 and a.max() <= 65535:
            gray = (a / 65535.0).astype(np.float32)
        else:
            gray = _minmax(a)
    elif mode == "F":
        a = np.asarray(im).astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise _fail(f"image {path} has NaN or Inf pixels")
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            gray = a.astype(np.float32)
        else:
            gray = _minmax(a)
    else:
        if mode in ("L", "1", "LA", "La"):
            g = im if mode == "L" else im.convert("L")
            gray = np.asarray(g).astype(np.float32) / 255.0
        else:
            try:
                rgb = im if mode == "RGB" else im.convert("RGB")
            except (ValueError, OSError) as e:
                raise _fail(f"unsupported image mode {mode!r} in {path}: {e}") from None
            if channels == 3:
                a = np.asarray(rgb).astype(np.float32) / 255.0
                return np.ascontiguousarray(a.transpose(2, 0, 1))
            gray = np.asarray(rgb.convert("L")).astype(np.float32) / 255.0  # ITU-R 601 luminance
    if gray.ndim != 2:
        raise _fail(f"unsupported image layout {gray.shape} in {path}")
    return as_channels(gray, channels)


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class MedicalOptions:
    """How DICOM and NIfTI files become 2-D images (see :mod:`medxgan.medical`)."""

    dicom_frame: int = 0  # frame of a multi-frame DICOM
    dicom_window: tuple[float, float] | None = None  # (centre, width) overriding the file's VOI
    nifti_axis: int = 2  # 0 sagittal, 1 coronal, 2 axial (after reorientation to RAS+)
    nifti_slice: int | None = None  # None = the middle slice


_DEFAULT_MEDICAL = MedicalOptions()


def _read_image(path, channels: int = 1, medical: MedicalOptions = _DEFAULT_MEDICAL) -> np.ndarray:
    """float32 [C, H, W] in [0, 1] at the original size."""
    from medxgan import medical as M

    path = Path(path)
    channels = _check_channels(channels)
    if is_dicom(path):
        return M.read_dicom(path, channels, frame=medical.dicom_frame, window=medical.dicom_window)
    if is_nifti(path):
        return M.read_nifti(path, channels, axis=medical.nifti_axis, index=medical.nifti_slice)
    return _pil_to_float(_open(path, gray=channels == 1), path, channels)


def _read_mask(path, medical: MedicalOptions = _DEFAULT_MEDICAL) -> np.ndarray:
    """bool [H, W] at the original size.

    Mode '1' is used as is; palette images: index > 0; integer images: > 0 when the largest value
    is <= 1 (0/1 label maps), otherwise above half the bit depth (127 for 8-bit, 32767 for 16-bit);
    colour images use their brightest channel; float images: > 0.5 if within [0, 1] else > max/2.
    """
    path = Path(path)
    if is_nifti(path):
        from medxgan.medical import read_nifti_mask

        return read_nifti_mask(path, axis=medical.nifti_axis, index=medical.nifti_slice)
    if is_dicom(path):
        from medxgan.medical import read_dicom

        return read_dicom(path, 1, frame=medical.dicom_frame, window=None)[0] > 0.5
    im = _open(path)
    mode = im.mode
    if mode == "1":
        return np.asarray(im).astype(bool)
    if mode in ("P", "PA"):
        a = np.asarray(im.convert("P") if mode == "PA" else im)
        return a > 0
    if mode.startswith("I;16") or mode in ("I", "F", "L"):
        a = np.asarray(im)
    elif mode in ("LA", "La"):
        a = np.asarray(im.convert("L"))
    else:
        try:
            a = np.asarray(im.convert("RGB")).max(axis=-1)
        except (ValueError, OSError) as e:
            raise _fail(f"unsupported mask mode {mode!r} in {path}: {e}") from None
    if a.ndim != 2:
        raise _fail(f"unsupported mask layout {a.shape} in {path}")
    if a.dtype.kind == "f":
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise _fail(f"mask {path} has NaN or Inf pixels")
        mx = float(a.max()) if a.size else 0.0
        return a > (0.5 if mx <= 1.0 else mx / 2.0)
    a = a.astype(np.int64)
    mx = int(a.max()) if a.size else 0
    if mx <= 1:
        return a > 0
    if mx <= 255:
        return a > 127
    if mx <= 65535:
        return a > 32767
    return a > mx // 2


def load_image(path, size: int, channels: int = 1, resize: str = "pad",
               medical: MedicalOptions = _DEFAULT_MEDICAL, allow_upscale: bool = True) -> torch.Tensor:
    """One image file -> float32 [channels, size, size] in [-1, 1]."""
    size, resize = _check_size(size), _check_resize(resize)
    arr = _read_image(path, channels, medical)
    if not allow_upscale:
        _check_not_upscaled(arr, path, size, resize)
    return _image_to_tensor(arr, size, resize)


def load_mask(path, size: int, resize: str = "pad", medical: MedicalOptions = _DEFAULT_MEDICAL) -> torch.Tensor:
    """One mask file -> bool [1, size, size], geometrically transformed exactly like its image."""
    size, resize = _check_size(size), _check_resize(resize)
    return _mask_to_tensor(_read_mask(path, medical), size, resize)


# --------------------------------------------------------------------------------------------
# VIA annotations
# --------------------------------------------------------------------------------------------


def _via_entries(obj: Any, where: str) -> dict[str, list[dict]]:
    if isinstance(obj, dict) and isinstance(obj.get("_via_img_metadata"), dict):
        obj = obj["_via_img_metadata"]  # a VIA project file rather than an export
    if not isinstance(obj, dict):
        raise _fail(f"malformed VIA JSON {where}: the top level must be an object, got {type(obj).__name__}")
    out: dict[str, list[dict]] = {}
    for key, entry in obj.items():
        k = _one_line(repr(key), 60)
        if not isinstance(entry, dict):
            raise _fail(f"malformed VIA JSON {where}: entry {k} is not an object")
        fname = entry.get("filename")
        if not isinstance(fname, str) or not fname:
            raise _fail(f"malformed VIA JSON {where}: entry {k} has no 'filename' string")
        regions = entry.get("regions", [])
        if isinstance(regions, dict):  # VIA 1.x: {"0": {...}, "1": {...}}
            regions = list(regions.values())
        if not isinstance(regions, list):
            raise _fail(f"malformed VIA JSON {where}: 'regions' of {_one_line(fname, 80)} is not a list")
        shapes = out.setdefault(fname, [])
        for i, region in enumerate(regions):
            sa = region.get("shape_attributes") if isinstance(region, dict) else None
            if not isinstance(sa, dict) or not isinstance(sa.get("name"), str):
                raise _fail(
                    f"malformed VIA JSON {where}: region {i} of {_one_line(fname, 80)} "
                    "has no 'shape_attributes' with a 'name'"
                )
            shapes.append(dict(sa))
    return out


def parse_via(json_path) -> dict[str, list[dict]]:
    """Read a VIA (1.x or 2.x export, or VIA 2 project) JSON file.

    Returns ``filename -> list of shape_attributes dicts`` (a file listed twice gets its regions
    concatenated). Any problem raises :class:`MedxganError` naming the file.
    """
    path = Path(json_path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise _fail(f"VIA annotation file not found: {path}") from None
    except IsADirectoryError:
        raise _fail(f"VIA annotation path is a folder, expected a .json file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"cannot read VIA JSON {path}: {e}") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _fail(f"malformed VIA JSON {path}: {e}") from None
    return _via_entries(obj, str(path))


def _num(sa: dict, key: str, name: str) -> float:
    v = sa.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(f"VIA {name} region: '{key}' must be a number, got {_one_line(repr(v), 40)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or abs(f) > _MAX_COORD:
        raise _fail(f"VIA {name} region: '{key}' = {_one_line(repr(v), 40)} is not a usable coordinate")
    return f


def _nums(sa: dict, key: str, name: str) -> list[float]:
    v = sa.get(key)
    if not isinstance(v, list):
        raise _fail(f"VIA {name} region: '{key}' must be a list of numbers")
    return [_num({key: x}, key, name) for x in v]


def _fill_ellipse(m: np.ndarray, cx, cy, rx, ry, theta) -> None:
    """Set pixels strictly inside the VIA ellipse (rx axis along (cos t, sin t), y down)."""
    if rx <= 0 or ry <= 0:
        return
    h, w = m.shape
    c, s = math.cos(theta), math.sin(theta)
    ex = math.hypot(rx * c, ry * s)  # half extents of the rotated bounding box
    ey = math.hypot(rx * s, ry * c)
    x0, x1 = max(0, math.ceil(cx - ex)), min(w - 1, math.floor(cx + ex))
    y0, y1 = max(0, math.ceil(cy - ey)), min(h - 1, math.floor(cy + ey))
    if x0 > x1 or y0 > y1:
        return
    dx = np.arange(x0, x1 + 1, dtype=np.float64)[None, :] - cx
    dy = np.arange(y0, y1 + 1, dtype=np.float64)[:, None] - cy
    u = dx * c + dy * s  # coordinate along the rx axis
    v = -dx * s + dy * c  # along the ry axis
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # tiny radii -> inf, outside
        m[y0 : y1 + 1, x0 : x1 + 1] |= (u / rx) ** 2 + (v / ry) ** 2 < 1.0


def _fill_polygon(m: np.ndarray, xs: list[float], ys: list[float]) -> None:
    from skimage.draw import polygon

    rr, cc = polygon(np.asarray(ys, np.float64), np.asarray(xs, np.float64), shape=m.shape)
    m[rr, cc] = True


def rasterize_via_regions(regions, height: int, width: int) -> np.ndarray:
    """Union of VIA regions as a bool [height, width] mask, in original image pixels.

    ``regions``: shape_attributes dicts (as returned by :func:`parse_via`) or region dicts holding
    ``shape_attributes``. Supported: polygon, rect, circle, ellipse (theta in radians, clockwise on
    screen as VIA draws it). Points, polylines and unknown shapes raise :class:`MedxganError`.
    Parts of a region outside the image are clipped.
    """
    for v, what in ((height, "height"), (width, "width")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise _fail(f"mask {what} must be a positive integer, got {_one_line(repr(v), 40)}")
    m = np.zeros((int(height), int(width)), dtype=bool)
    if isinstance(regions, dict):
        regions = list(regions.values())
    if not isinstance(regions, (list, tuple)):
        raise _fail(f"VIA regions must be a list, got {type(regions).__name__}")
    for sa in regions:
        if isinstance(sa, dict) and "name" not in sa and isinstance(sa.get("shape_attributes"), dict):
            sa = sa["shape_attributes"]
        if not isinstance(sa, dict) or not isinstance(sa.get("name"), str):
            raise _fail("VIA region without shape_attributes 'name'")
        name = sa["name"]
        if name == "polygon":
            xs, ys = _nums(sa, "all_points_x", name), _nums(sa, "all_points_y", name)
            if len(xs) != len(ys):
                raise _fail(f"VIA polygon region: {len(xs)} x coordinates but {len(ys)} y coordinates")
            if not xs:
                raise _fail("VIA polygon region has no points")
            _fill_polygon(m, xs, ys)
        elif name == "rect":
            x, y = _num(sa, "x", name), _num(sa, "y", name)
            rw, rh = _num(sa, "width", name), _num(sa, "height", name)
            if rw < 0 or rh < 0:
                raise _fail(f"VIA rect region has a negative size ({rw} x {rh})")
            _fill_polygon(m, [x, x + rw, x + rw, x], [y, y, y + rh, y + rh])
        elif name == "circle":
            cx, cy, r = _num(sa, "cx", name), _num(sa, "cy", name), _num(sa, "r", name)
            if r < 0:
                raise _fail(f"VIA circle region has a negative radius {r}")
            _fill_ellipse(m, cx, cy, r, r, 0.0)
        elif name == "ellipse":
            cx, cy = _num(sa, "cx", name), _num(sa, "cy", name)
            rx, ry = _num(sa, "rx", name), _num(sa, "ry", name)
            theta = _num(sa, "theta", name) if sa.get("theta") is not None else 0.0
            if rx < 0 or ry < 0:
                raise _fail(f"VIA ellipse region has a negative radius ({rx}, {ry})")
            _fill_ellipse(m, cx, cy, rx, ry, theta)
        else:
            raise _fail(
                f"unsupported VIA region shape {_one_line(repr(name), 40)} "
                f"(supported: {', '.join(VIA_SHAPES)})"
            )
    return m


# --------------------------------------------------------------------------------------------
# Folder data sets
# --------------------------------------------------------------------------------------------


def _natural_key(s: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in IMAGE_EXTENSIONS or is_nifti(p))


def _class_dir(root: Path, name: str, role: str) -> Path:
    d = root / name
    if d.is_dir():
        return d
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    ci = [s for s in subdirs if s.lower() == str(name).lower()]
    if len(ci) == 1:
        return root / ci[0]
    listing = ", ".join(subdirs) if subdirs else "none"
    raise _fail(
        f"{role} class folder '{name}' not found in {root} (subfolders: {listing}); "
        f"set {role}= to the folder name"
    )


def _list_images(d: Path, role: str) -> list[Path]:
    files = sorted((p for p in d.iterdir() if _is_image(p)), key=lambda p: _natural_key(p.name))
    if not files:
        raise _fail(
            f"no images ({' '.join(IMAGE_EXTENSIONS)}) in {role} class folder {d}: "
            "medxgan needs images of both classes"
        )
    return files


def _mask_index(mask_dir: Path) -> dict[str, Path]:
    """stem -> mask file; ``y12_mask.png`` also counts as the mask of ``y12`` unless a file with
    the exact stem exists. Two files claiming the same image are an error."""
    files = [p for p in sorted(mask_dir.iterdir()) if _is_image(p)]
    index: dict[str, Path] = {}
    for exact in (True, False):
        claimed: dict[str, Path] = {}
        for p in files:
            own = strip_extension(p)
            stem = own if exact else re.sub(r"[_-]mask$", "", own, flags=re.IGNORECASE)
            if not exact and (stem == own or stem in index):
                continue
            if stem in claimed:
                raise _fail(f"two mask files for image '{stem}' in {mask_dir}: {claimed[stem].name} and {p.name}")
            claimed[stem] = p
        index.update(claimed)
    return index


def load_folder(
    root,
    size: int = 64,
    channels: int = 1,
    positive: str = "positive",
    negative: str = "negative",
    resize: str = "pad",
    masks=None,
    via=None,
    skip_bad: bool = False,
    progress: bool = True,
    medical: MedicalOptions = _DEFAULT_MEDICAL,
    allow_upscale: bool = True,
) -> LabeledImages:
    """Load ``root/<positive>/*`` (label 1) and ``root/<negative>/*`` (label 0).

    DICOM (.dcm, .dicom) and NIfTI (.nii, .nii.gz) files count as images too: ``medical`` says
    which frame, window, axis and slice they contribute (needs ``medxgan[medical]``).

    Files with extensions .png .jpg .jpeg .tif .tiff .bmp (any case) are read in natural name
    order, positives first. Lesion masks come from ``masks`` (a folder whose files share the
    image's stem, optionally with a ``_mask`` suffix; default ``root/masks`` if it exists) and/or
    ``via`` (a VIA JSON; default ``root/annotations/via_regions.json`` if it exists), matched by
    file name; both sources are united. ``masks`` is None in the result only when there is no mask
    source at all. ``skip_bad=True`` leaves unreadable images out (listed in ``.skipped`` and in a
    warning) instead of raising. Problems with masks always raise. ``allow_upscale=False`` refuses
    (or, with ``skip_bad``, skips) images that would have to be enlarged to reach ``size``.
    """
    from tqdm.auto import tqdm

    size, resize, channels = _check_size(size), _check_resize(resize), _check_channels(channels)
    root = Path(root)
    if not root.exists():
        raise _fail(f"data folder not found: {root}")
    if not root.is_dir():
        raise _fail(f"expected a data folder with class subfolders, got a file: {root}")
    pos_dir = _class_dir(root, positive, "positive")
    neg_dir = _class_dir(root, negative, "negative")
    if pos_dir.resolve() == neg_dir.resolve():
        raise _fail(f"positive and negative class folders are the same folder: {pos_dir}")
    files = [(p, 1) for p in _list_images(pos_dir, "positive")] + [
        (p, 0) for p in _list_images(neg_dir, "negative")
    ]
    names = [p.relative_to(root).as_posix() for p, _ in files]

    # ---- mask sources
    mask_dir: Path | None = None
    if masks is not None:
        mask_dir = Path(masks)
        if not mask_dir.is_dir():
            raise _fail(f"mask folder not found: {mask_dir}")
    elif (root / "masks").is_dir():
        mask_dir = root / "masks"
    via_path: Path | None = None
    if via is not None:
        via_path = Path(via)
        if not via_path.is_file():
            raise _fail(f"VIA annotation file not found: {via_path}")
    elif (root / "annotations" / "via_regions.json").is_file():
        via_path = root / "annotations" / "via_regions.json"
    mask_files = _mask_index(mask_dir) if mask_dir is not None else {}
    via_for: dict[int, list[dict]] = {}
    if via_path is not None:
        entries = parse_via(via_path)
        by_name = {n: i for i, n in enumerate(names)}
        by_base: dict[str, list[int]] = {}
        for i, (p, _) in enumerate(files):
            by_base.setdefault(p.name, []).append(i)
        for fname, shapes in entries.items():
            rel = fname.replace("\\", "/")
            if rel in by_name:
                hits = [by_name[rel]]
            else:
                hits = by_base.get(PurePosixPath(rel).name, [])
            if len(hits) > 1:
                raise _fail(
                    f"VIA file {via_path}: '{_one_line(fname, 80)}' matches several images "
                    f"({', '.join(names[i] for i in hits)}); use paths relative to {root} as VIA filenames"
                )
            if hits:
                via_for.setdefault(hits[0], []).extend(shapes)
        if entries and not via_for:
            warnings.warn(f"VIA file {via_path}: none of its {len(entries)} file names match an image in {root}")
    any_mask_source = mask_dir is not None or via_path is not None
    if mask_dir is not None and mask_files and not any(strip_extension(p) in mask_files for p, _ in files):
        warnings.warn(f"mask folder {mask_dir}: no mask file name matches an image in {root}")

    # ---- decode
    n = len(files)
    images = torch.empty((n, channels, size, size), dtype=torch.float32)
    mask_t = torch.zeros((n, 1, size, size), dtype=torch.bool) if any_mask_source else None
    has_mask = torch.zeros(n, dtype=torch.bool)
    keep: list[int] = []
    skipped: list[str] = []
    for i, (path, _) in enumerate(tqdm(files, desc=f"loading {root.name or root}", unit="img", disable=not progress)):
        try:
            arr = _read_image(path, channels, medical)
            if not allow_upscale:
                _check_not_upscaled(arr, names[i], size, resize)
        except MedxganError:
            if not skip_bad:
                raise
            skipped.append(names[i])
            continue
        keep.append(i)
        images[i] = _image_to_tensor(arr, size, resize)
        if not any_mask_source:
            continue
        h, w = arr.shape[-2:]
        full = None
        mfile = mask_files.get(strip_extension(path))
        if mfile is not None:
            full = _read_mask(mfile, medical)
            if full.shape != (h, w):
                raise _fail(
                    f"mask {mfile} is {full.shape[1]}x{full.shape[0]} pixels but image {path} "
                    f"is {w}x{h}; masks must have their image's original size"
                )
        if i in via_for:
            try:
                vm = rasterize_via_regions(via_for[i], h, w)
            except MedxganError as e:
                raise _fail(f"VIA file {via_path}, image {path.name}: {e}") from None
            full = vm if full is None else (full | vm)
        if full is not None:
            has_mask[i] = True
            mask_t[i] = _mask_to_tensor(full, size, resize)
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {root}: {shown}")
    labels = torch.tensor([lab for _, lab in files], dtype=torch.int64)
    if len(keep) < n:
        idx = torch.tensor(keep, dtype=torch.long)
        images, labels, has_mask = images[idx], labels[idx], has_mask[idx]
        mask_t = None if mask_t is None else mask_t[idx]
        names = [names[i] for i in keep]
    for lab, role, d in ((1, "positive", pos_dir), (0, "negative", neg_dir)):
        if not bool((labels == lab).any()):
            raise _fail(f"no readable images left in {role} class folder {d} after skipping bad files")
    return LabeledImages(images, labels, mask_t, has_mask, names, skipped)


CACHE_FORMAT_VERSION = 1


def _tree_signature(paths) -> list:
    """(relative path, size, mtime_ns) of every file under each of ``paths`` (files or folders)."""
    sig = []
    for base in paths:
        base = Path(base)
        files = [base] if base.is_file() else sorted(q for q in base.rglob("*") if q.is_file() and not q.name.startswith("."))
        for q in files:
            st = q.stat()
            sig.append([q.relative_to(base).as_posix() if q != base else q.name, st.st_size, st.st_mtime_ns])
    return sig


def folder_fingerprint(root, **settings) -> str:
    """Hash of the files under ``root`` (and of ``masks`` / ``via`` when given elsewhere): names,
    sizes and modification times, plus the loader ``settings``. Any added, removed, replaced or
    touched file, or any other setting, gives another fingerprint."""
    import hashlib

    extra = [settings[k] for k in ("masks", "via") if settings.get(k) is not None]
    blob = json.dumps({"version": CACHE_FORMAT_VERSION, "files": _tree_signature([root, *extra]),
                       "settings": {k: repr(v) for k, v in sorted(settings.items()) if k != "progress"}},
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def load_folder_cached(root, cache_dir, **kw) -> LabeledImages:
    """:func:`load_folder`, decoded once: the result is kept as a tensor file
    ``cache_dir/<fingerprint>.pt`` (see :func:`folder_fingerprint`) and later calls with the same
    files and settings load it instead of decoding every image again. The file holds only tensors,
    strings and lists and is read with ``weights_only=True``; an unreadable cache file is rebuilt.
    """
    from medxgan.checkpoint import atomic_write

    cache = Path(cache_dir) / f"images-{folder_fingerprint(root, **kw)}.pt"
    if cache.is_file():
        try:
            d = torch.load(cache, weights_only=True)
            return LabeledImages(d["images"], d["labels"], d["masks"], d["has_mask"], list(d["names"]), list(d["skipped"]))
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
            pass  # a damaged or foreign file (torch.load raises these): decode again and replace it
    data = load_folder(root, **kw)
    record = {"images": data.images, "labels": data.labels, "masks": data.masks, "has_mask": data.has_mask,
              "names": list(data.names), "skipped": list(data.skipped)}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: torch.save(record, tmp))
    except OSError as e:
        warnings.warn(f"could not write the image cache {cache}: {e}")
    return data


# --------------------------------------------------------------------------------------------
# NIfTI volumes: every slice, labelled by a lesion-mask volume
# --------------------------------------------------------------------------------------------


def load_nifti_volumes(root, size: int = 64, channels: int = 1, resize: str = "pad", axis: int = 2,
                       min_lesion_voxels: int = 1, progress: bool = True) -> LabeledImages:
    """All slices of ``root/images/*.nii[.gz]``, labelled and masked by ``root/masks/<same name>``.

    A slice is positive when its mask slice holds at least ``min_lesion_voxels`` voxels > 0;
    the mask becomes the slice's lesion mask. Names are ``"<volume>#<slice:04d>"`` so that
    :func:`group_split` keeps all slices of one volume in one split.
    """
    from tqdm.auto import tqdm

    from medxgan.medical import nifti_slices

    size, resize, channels = _check_size(size), _check_resize(resize), _check_channels(channels)
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise _fail(f"NIfTI volume layout needs {d} (folders images/ and masks/ with volumes of the same names)")
    vols = sorted((p for p in img_dir.iterdir() if is_nifti(p) and not p.name.startswith(".")), key=lambda p: _natural_key(p.name))
    if not vols:
        raise _fail(f"no NIfTI volumes (.nii, .nii.gz) in {img_dir}")
    masks_by = {strip_extension(p): p for p in mask_dir.iterdir() if is_nifti(p)}
    images, labels, masks, names = [], [], [], []
    for v in tqdm(vols, desc=f"loading {root.name}", unit="vol", disable=not progress):
        m = masks_by.get(strip_extension(v))
        if m is None:
            raise _fail(f"no mask volume for {v.name} in {mask_dir}")
        for k, img, lab, msk in nifti_slices(v, m, axis=axis, channels=channels, min_lesion_voxels=min_lesion_voxels):
            images.append(_image_to_tensor(img, size, resize))
            masks.append(_mask_to_tensor(msk, size, resize))
            labels.append(lab)
            names.append(f"{strip_extension(v)}#{k:04d}")
    lab_t = torch.tensor(labels, dtype=torch.int64)
    for lab, role in ((1, "positive (lesion)"), (0, "negative (lesion-free)")):
        if not bool((lab_t == lab).any()):
            raise _fail(f"{root}: no {role} slices along axis {axis}; a binary classifier needs both classes")
    mask_t = torch.stack(masks)
    return LabeledImages(torch.stack(images), lab_t, mask_t, torch.ones(len(names), dtype=torch.bool), names, [])


def group_split(names: Sequence[str], labels, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Split whole groups (the part of each name before ``#``: a volume) into train/val/test.

    Groups are shuffled with ``seed`` and allocated by volume count so that no volume is divided
    between splits (slices of one patient are near-duplicates: splitting them would leak).
    """
    labels = np.asarray(labels)
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(str(n).split("#", 1)[0], []).append(i)
    keys = sorted(groups, key=_natural_key)
    if len(keys) < 3:
        raise _fail(f"a volume-wise split needs at least 3 volumes, got {len(keys)}")
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    counts = _allocate(len(order), fractions)
    out, start = {}, 0
    for split, c in zip(SPLITS, counts):
        out[split] = np.array(sorted(i for k in order[start:start + c] for i in groups[k]), dtype=np.int64)
        start += c
    return out


# --------------------------------------------------------------------------------------------
# MedMNIST
# --------------------------------------------------------------------------------------------


def load_medmnist(path, split: str, size: int | None = None, channels: int = 1, resize: str = "pad") -> LabeledImages:
    """A split of a MedMNIST-style .npz (``{split}_images`` uint8 [N,H,W] or [N,H,W,3],
    ``{split}_labels`` [N,1] or [N] with 0/1 labels). ``size=None`` keeps the native size.
    Names are ``"{split}/{index:06d}"``. No masks."""
    path = Path(path)
    channels = _check_channels(channels)
    resize = _check_resize(resize)
    if size is not None:
        size = _check_size(size)
    if split not in SPLITS:
        raise _fail(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not path.exists():
        raise _fail(f"MedMNIST file not found: {path}")
    if not path.is_file():
        raise _fail(f"expected a MedMNIST .npz file, got a folder: {path}")
    ki, kl = f"{split}_images", f"{split}_labels"
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (ki, kl) if k not in z.files]
            if missing:
                raise _fail(
                    f"{path} lacks array(s) {', '.join(missing)} (it has: {', '.join(z.files) or 'none'})"
                )
            x, y = z[ki], z[kl]
    except MedxganError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise _fail(f"cannot read MedMNIST file {path}: {type(e).__name__}: {e}") from None
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)) or x.shape[0] == 0 or 0 in x.shape:
        raise _fail(f"{path}: {ki} has shape {x.shape}, expected (N, H, W) or (N, H, W, 3) with N > 0")
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / 255.0
    elif x.dtype == np.uint16:
        xf = x.astype(np.float32) / 65535.0
    elif x.dtype.kind == "f" and np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1:
        xf = x.astype(np.float32)
    else:
        raise _fail(f"{path}: {ki} has dtype {x.dtype}; expected uint8, uint16 or floats in [0, 1]")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise _fail(f"{path}: {kl} has shape {y.shape}, expected ({x.shape[0]}, 1) to match {ki}")
    if y.dtype.kind not in "biuf" or not np.all(np.isin(y, (0, 1))):
        vals = np.unique(y)[:10] if y.dtype.kind in "biuf" else y.dtype
        raise _fail(f"{path}: {kl} must be binary 0/1 (found {vals}); medxgan explains binary classifiers")
    if xf.ndim == 4:
        xf = xf.transpose(0, 3, 1, 2)
        if channels == 1:
            xf = _gray_from_rgb(xf.transpose(0, 2, 3, 1))[:, None]
    else:
        xf = xf[:, None]
        if channels == 3:
            xf = np.repeat(xf, 3, axis=1)
    imgs = torch.from_numpy(np.ascontiguousarray(xf, dtype=np.float32))
    if size is not None and tuple(imgs.shape[-2:]) != (size, size):
        imgs = torch.cat([_transform(imgs[i : i + 512], size, resize) for i in range(0, len(imgs), 512)])
    imgs = (imgs * 2.0 - 1.0).clamp_(-1.0, 1.0)
    n = imgs.shape[0]
    return LabeledImages(
        images=imgs.contiguous(),
        labels=torch.from_numpy(y.astype(np.int64)),
        masks=None,
        has_mask=torch.zeros(n, dtype=torch.bool),
        names=[f"{split}/{i:06d}" for i in range(n)],
    )


def load_dataset(spec, **kw) -> LabeledImages:
    """Dispatch on ``spec``: a ``.npz`` file (optionally ``file.npz:split``) -> :func:`load_medmnist`
    (needs ``split``), a folder -> :func:`load_folder`.

    Keyword arguments the chosen loader does not take but the other does are dropped (a folder has
    no predefined split: use :func:`stratified_split`); unknown keywords raise TypeError.
    """
    s = str(spec)
    m = re.match(r"^(.*\.npz):(train|val|test)$", s, flags=re.IGNORECASE)
    if m and not Path(s).exists():
        s = m.group(1)
        if kw.get("split") not in (None, m.group(2)):
            raise _fail(f"data {spec} names split '{m.group(2)}' but split={kw['split']!r} was given")
        kw["split"] = m.group(2)
    path = Path(s)
    if not path.exists():
        raise _fail(f"data not found: {path} (expected a folder of class subfolders or a MedMNIST .npz)")
    if path.is_dir():
        fn = load_folder
    elif path.suffix.lower() == ".npz":
        fn = load_medmnist
        if kw.get("split") is None:
            raise _fail(f"{path} is a MedMNIST file: choose a split (train, val or test)")
    else:
        raise _fail(f"unsupported data file {path}: expected a folder of class subfolders or a .npz")
    own = set(inspect.signature(fn).parameters)
    other = set(inspect.signature(load_medmnist if fn is load_folder else load_folder).parameters)
    unknown = set(kw) - own - other
    if unknown:
        raise TypeError(f"load_dataset() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    return fn(path, **{k: v for k, v in kw.items() if k in own})


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda k: (-(raw[k] - counts[k]), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    wanted = [k for k, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):  # give every split with a positive fraction at least one item
        for k in wanted:
            if counts[k] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[k] += 1
    return counts


def stratified_split(labels, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Split indices into train/val/test with the same class proportions in each part.

    Deterministic given ``seed``; the parts are disjoint, cover every index and are returned as
    sorted int64 arrays. Each class contributes at least one item to every part with a positive
    fraction when it has enough items.
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.reshape(-1)
    if y.size == 0:
        raise _fail("cannot split an empty data set")
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise _fail(f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for k, cnt in enumerate(_allocate(len(idx), fr)):
            parts[k].append(idx[start : start + cnt])
            start += cnt
    return {name: np.sort(np.concatenate(p)).astype(np.int64) for name, p in zip(SPLITS, parts)}


def save_split(split: dict, path, names=None) -> None:
    """Write a split as JSON. Pass ``names`` (a list, or a LabeledImages) to record the image
    names too, so the split survives a reordering of the data set."""
    if isinstance(names, LabeledImages):
        names = names.names
    out: dict[str, Any] = {"format": "medxgan-split", "version": 1, "indices": {}}
    for k in SPLITS:
        if k not in split:
            raise _fail(f"split has no '{k}' part (has: {', '.join(map(str, split))})")
        out["indices"][k] = [int(i) for i in np.asarray(split[k]).reshape(-1)]
    if names is not None:
        names = list(names)
        try:
            out["names"] = {k: [names[i] for i in out["indices"][k]] for k in SPLITS}
        except IndexError:
            raise _fail(f"split indices exceed the {len(names)} names given") from None
    out["counts"] = {k: len(out["indices"][k]) for k in SPLITS}
    path = Path(path)
    try:
        path.write_text(json.dumps(out, indent=1) + "\n")
    except OSError as e:
        raise _fail(f"cannot write split file {path}: {e}") from None


def load_split(path, names=None) -> dict[str, np.ndarray]:
    """Read :func:`save_split`'s JSON -> ``{"train", "val", "test"}`` sorted int64 index arrays.

    With ``names`` (the current data set's names, or a LabeledImages) and a file that recorded
    names, indices are recomputed from the names; a recorded name missing from the data is an error.
    """
    if isinstance(names, LabeledImages):
        names = names.names
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(f"split file not found: {path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise _fail(f"cannot read split file {path}: {e}") from None
    ind = obj.get("indices") if isinstance(obj, dict) else None
    if not isinstance(ind, dict) or any(not isinstance(ind.get(k), list) for k in SPLITS):
        raise _fail(f"malformed split file {path}: expected 'indices' with train, val and test lists")
    out: dict[str, np.ndarray] = {}
    rec = obj.get("names")
    if names is not None and isinstance(rec, dict):
        pos = {n: i for i, n in enumerate(names)}
        for k in SPLITS:
            lst = rec.get(k)
            if not isinstance(lst, list) or not all(isinstance(s, str) for s in lst):
                raise _fail(f"malformed split file {path}: 'names.{k}' is not a list of strings")
            missing = [s for s in lst if s not in pos]
            if missing:
                raise _fail(
                    f"split file {path} lists {len(missing)} image(s) not in the data set "
                    f"(e.g. {_one_line(missing[0], 80)})"
                )
            out[k] = np.sort(np.array([pos[s] for s in lst], dtype=np.int64))
        return out
    for k in SPLITS:
        lst = ind[k]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in lst):
            raise _fail(f"malformed split file {path}: '{k}' indices must be non-negative integers")
        arr = np.sort(np.array(lst, dtype=np.int64))
        if names is not None and arr.size and arr[-1] >= len(names):
            raise _fail(f"split file {path} has index {arr[-1]} but the data set has {len(names)} images")
        out[k] = arr
    return out
