"""Medical image formats: DICOM (pydicom) and NIfTI (nibabel), the optional extra ``medxgan[medical]``.

Both readers return float32 arrays in [0, 1] at the original in-plane size, like the rest of
:mod:`medxgan.data`; the folder loader calls them for ``.dcm``/``.dicom`` and ``.nii``/``.nii.gz``
files, so DICOM and NIfTI files can sit in class folders beside (or instead of) PNGs.

DICOM, in the order the standard applies them (PS3.3 C.7.6.3.1, C.11):

1. pixel data decoded by pydicom (compressed transfer syntaxes need the matching pydicom
   handler, e.g. ``pylibjpeg``; without one the error names the transfer syntax);
2. the Modality LUT: RescaleSlope / RescaleIntercept (or a Modality LUT Sequence);
3. the VOI LUT: an explicit ``window=(centre, width)`` from the caller wins, then the file's VOI
   LUT Sequence or Window Centre / Width (first pair); the result is scaled so that the window's
   bottom is 0 and its top is 1. A file with no VOI information is min/max normalised per image;
4. MONOCHROME1 (white = low values) is inverted, so bright always means high signal;
5. colour (RGB / YBR) images become gray by luminance unless 3 channels are asked for.

Multi-frame files contribute frame ``frame`` (default 0, as TIFF stacks contribute their first).

NIfTI volumes are reoriented to the closest canonical (RAS+) orientation first, so ``axis``
means the same in every file: 0 = sagittal, 1 = coronal, 2 = axial (default). ``index=None``
takes the middle slice. A volume is scaled once by its own 0.5 / 99.5 intensity percentiles
(robust to a few hot voxels), so all slices of one volume share one scale. Slices are shown
with anterior (axial) or superior (sagittal, coronal) up and the patient's left on the image's
left (the neurological convention that RAS+ gives; flip the images yourself for radiological).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medxgan.errors import MedxganError

DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
MEDICAL_EXTENSIONS = DICOM_EXTENSIONS + NIFTI_EXTENSIONS


def is_dicom(path) -> bool:
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def is_nifti(path) -> bool:
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def strip_extension(path) -> str:
    """File name without its image extension (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    return Path(name).stem


def as_channels(gray: np.ndarray, channels: int) -> np.ndarray:
    """[H, W] float in [0, 1] -> contiguous float32 [channels, H, W] (gray replicated for RGB)."""
    out = np.asarray(gray, dtype=np.float32)[None]
    if channels == 3:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out, dtype=np.float32)


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MedxganError(f"reading this file needs {module}: pip install 'medxgan[medical]'") from None


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear VOI window (PS3.3 C.11.2.1.2.1) mapped to [0, 1]."""
    if not width >= 1:
        raise MedxganError(f"window width must be >= 1, got {width}")
    lo = centre - 0.5 - (width - 1) / 2
    return np.clip((values - lo) / (width - 1), 0.0, 1.0)


def read_dicom(path, channels: int = 1, frame: int = 0, window: tuple[float, float] | None = None) -> np.ndarray:
    """float32 [C, H, W] in [0, 1] from one DICOM file (see the module docstring for the steps)."""
    pydicom = _need("pydicom")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise MedxganError(f"image not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for a broken file
        raise MedxganError(f"cannot read DICOM {path}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedxganError(f"DICOM {path} holds no image (no pixel data)")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        raise MedxganError(
            f"cannot decode the pixels of DICOM {path} (transfer syntax {ts_name}): "
            f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__}; a pydicom pixel handler "
            "(e.g. pip install pylibjpeg pylibjpeg-libjpeg) may be needed") from None
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        if not 0 <= frame < n_frames:
            raise MedxganError(f"DICOM {path} has {n_frames} frames; frame {frame} does not exist")
        arr = arr[frame]
    elif frame != 0:
        raise MedxganError(f"DICOM {path} has one frame; frame {frame} does not exist")

    if samples == 3:
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        rgb = arr.astype(np.float32) / float(2 ** int(ds.BitsStored) - 1)
        if channels == 3:
            return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
        gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise MedxganError(f"DICOM {path} has NaN or Inf pixels")
        if window is not None:
            gray = _window(values, float(window[0]), float(window[1]))
        elif "VOILUTSequence" in ds or "WindowCenter" in ds:
            out = apply_voi_lut(values, ds, index=0).astype(np.float64)
            # The VOI output range: what the same transform gives for the lowest and highest input.
            ends = apply_voi_lut(np.array([values.min() - 1e6, values.max() + 1e6]), ds, index=0).astype(np.float64)
            lo, hi = float(ends.min()), float(ends.max())
            gray = np.clip((out - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(out)
        else:
            lo, hi = float(values.min()), float(values.max())
            gray = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        if photometric == "MONOCHROME1":
            gray = 1.0 - gray
    if np.ndim(gray) != 2:
        raise MedxganError(f"unsupported DICOM pixel layout {np.shape(gray)} in {path}")
    return as_channels(gray, channels)


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def read_nifti_volume(path) -> np.ndarray:
    """float64 [X, Y, Z] in canonical RAS+ orientation (4-D volumes: the first volume)."""
    nib = _need("nibabel")
    path = Path(path)
    if not path.exists():
        raise MedxganError(f"image not found: {path}")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        vol = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a broken file
        raise MedxganError(f"cannot read NIfTI {path}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}") from None
    while vol.ndim > 3 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim == 4:
        vol = vol[..., 0]
    if vol.ndim == 2:
        vol = vol[..., None]
    if vol.ndim != 3 or vol.size == 0:
        raise MedxganError(f"NIfTI {path}: expected a 2-D or 3-D image, got shape {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise MedxganError(f"NIfTI {path} has NaN or Inf voxels")
    return vol


def volume_scale(vol: np.ndarray) -> tuple[float, float]:
    """(low, high) intensity of a volume: its 0.5 and 99.5 percentiles (min/max when they coincide)."""
    lo, hi = (float(v) for v in np.percentile(vol, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(vol.min()), float(vol.max())
    return lo, hi


def volume_slice(vol: np.ndarray, axis: int = 2, index: int | None = None) -> np.ndarray:
    """One slice [H, W] of a canonical volume in radiological display orientation."""
    if axis not in (0, 1, 2):
        raise MedxganError(f"slice axis must be 0, 1 or 2, got {axis}")
    n = vol.shape[axis]
    index = n // 2 if index is None else index
    if not -n <= index < n:
        raise MedxganError(f"slice {index} does not exist: the volume has {n} slices along axis {axis}")
    sl = np.take(vol, index, axis=axis)
    # The two remaining axes keep RAS+ order (a, b): transpose to rows = b, columns = a, then
    # flip the rows so that +b (anterior or superior) is at the top.
    return np.flipud(sl.T)


def read_nifti(path, channels: int = 1, axis: int = 2, index: int | None = None) -> np.ndarray:
    """float32 [C, H, W] in [0, 1]: slice ``index`` (default: middle) of a NIfTI volume along ``axis``."""
    vol = read_nifti_volume(path)
    lo, hi = volume_scale(vol)
    sl = volume_slice(vol, axis, index)
    gray = np.clip((sl - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros(sl.shape)
    return as_channels(gray, channels)


def read_nifti_mask(path, axis: int = 2, index: int | None = None) -> np.ndarray:
    """bool [H, W]: voxels > 0 of the same slice as :func:`read_nifti` takes."""
    return volume_slice(read_nifti_volume(path), axis, index) > 0


def nifti_slices(image_path, mask_path, axis: int = 2, channels: int = 1, min_lesion_voxels: int = 1):
    """Every slice of a volume with its label and lesion mask from a label volume of the same grid.

    Yields (index, image float32 [C,H,W] in [0,1], label 0/1, mask bool [H,W]); a slice is
    positive when at least ``min_lesion_voxels`` of its mask voxels are > 0.
    """
    vol = read_nifti_volume(image_path)
    mvol = read_nifti_volume(mask_path)
    if mvol.shape != vol.shape:
        raise MedxganError(f"mask volume {mask_path} has shape {mvol.shape} but image volume {image_path} has {vol.shape}")
    lo, hi = volume_scale(vol)
    for k in range(vol.shape[axis]):
        sl = volume_slice(vol, axis, k)
        m = volume_slice(mvol, axis, k) > 0
        gray = np.clip((sl - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros(sl.shape)
        yield k, as_channels(gray, channels), int(m.sum() >= min_lesion_voxels), m
