"""DICOM and NIfTI loading: files built on the fly, pixel values checked after loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid  # noqa: E402

from medxgan import data as D  # noqa: E402
from medxgan import medical as M  # noqa: E402
from medxgan.errors import MedxganError  # noqa: E402


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", slope=None, intercept=None, window=None,
                signed=False):
    """A minimal valid DICOM file holding ``pixels`` ([H,W] or [frames,H,W]) as 16-bit integers."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    dtype = np.int16 if signed else np.uint16
    ds.set_pixel_data(pixels.astype(dtype), photometric_interpretation=photometric, bits_stored=16)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_and_window(tmp_path):
    raw = np.array([[0, 50, 100], [150, 200, 1000]])
    # stored 0..1000 -> HU = 2*stored - 100; window centre 100, width 201 covers HU [0, 200]
    f = write_dicom(tmp_path / "a.dcm", raw, slope=2, intercept=-100, window=(100, 201))
    got = M.read_dicom(f)[0]
    hu = raw * 2.0 - 100
    expect = np.clip((hu - (100 - 0.5 - 100)) / 200, 0, 1)
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert got[0, 0] == 0.0 and got[1, 2] == 1.0  # below / above the window clip
    # a caller's window wins over the file's
    got2 = M.read_dicom(f, window=(900, 1801))[0]  # HU [0, 1800]
    np.testing.assert_allclose(got2, np.clip((hu - (900 - 0.5 - 900)) / 1800, 0, 1), atol=1e-5)


def test_dicom_monochrome1_is_inverted_and_no_window_is_minmax(tmp_path):
    raw = np.array([[0, 10], [20, 40]])
    m2 = M.read_dicom(write_dicom(tmp_path / "m2.dcm", raw))[0]
    m1 = M.read_dicom(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))[0]
    np.testing.assert_allclose(m2, raw / 40.0, atol=1e-6)
    np.testing.assert_allclose(m1, 1 - raw / 40.0, atol=1e-6)


def test_dicom_signed_pixels_and_three_channels(tmp_path):
    raw = np.array([[-1000, 0], [500, 1000]])
    got = M.read_dicom(write_dicom(tmp_path / "s.dcm", raw, signed=True), channels=3)
    assert got.shape == (3, 2, 2)
    np.testing.assert_allclose(got[1], (raw + 1000) / 2000.0, atol=1e-6)


def test_dicom_multiframe(tmp_path):
    frames = np.stack([np.full((4, 4), 10), np.arange(16).reshape(4, 4), np.zeros((4, 4))])
    f = write_dicom(tmp_path / "mf.dcm", frames)
    np.testing.assert_allclose(M.read_dicom(f, frame=1)[0], np.arange(16).reshape(4, 4) / 15.0, atol=1e-6)
    with pytest.raises(MedxganError, match="3 frames"):
        M.read_dicom(f, frame=5)


def test_dicom_errors(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"definitely not dicom")
    with pytest.raises(MedxganError, match="bad.dcm"):
        M.read_dicom(bad)
    # a compressed transfer syntax whose data no installed handler can decode
    from pydicom.encaps import encapsulate

    f = write_dicom(tmp_path / "j2k.dcm", np.zeros((4, 4)))
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00garbage"])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.save_as(f, enforce_file_format=True)
    with pytest.raises(MedxganError, match="transfer syntax"):
        M.read_dicom(f)


def test_dicom_in_class_folders(tmp_path):
    for cls, val in (("positive", 300), ("negative", 100)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            raw = np.zeros((20, 20))
            raw[5:15, 5:15] = val
            raw[0, 0] = 400
            write_dicom(tmp_path / cls / f"{cls}{i}.dcm", raw)
    ds = D.load_folder(tmp_path, size=16, progress=False)
    assert ds.labels.tolist() == [1, 1, 0, 0]
    assert ds.names[0] == "positive/positive0.dcm"
    centre = ds.images[:, 0, 8, 8]
    np.testing.assert_allclose(centre.numpy(), [300 / 400 * 2 - 1] * 2 + [100 / 400 * 2 - 1] * 2, atol=0.02)


def _nifti(path, vol, affine=None):
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def test_nifti_slice_orientation_and_scale(tmp_path):
    vol = np.zeros((4, 5, 6))
    vol[:, :, 0] = 10.0  # enough bright voxels that the 99.5th percentile is 10
    vol[3, 4, 2] = 10.0  # x = 3 (towards the right), y = 4 (most anterior), z = 2
    vol[0, 0, 2] = 5.0
    f = _nifti(tmp_path / "v.nii.gz", vol)
    sl = M.read_nifti(f, axis=2, index=2)[0]
    assert sl.shape == (5, 4)  # rows = y, columns = x
    # anterior at the top row, +x (patient's right) on the right: neurological display
    assert sl[0, 3] == pytest.approx(1.0) and sl[4, 0] == pytest.approx(0.5, abs=0.01)
    # the same voxel in a file stored with x flipped lands in the same place after reorientation
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = 3
    g = _nifti(tmp_path / "flipped.nii", vol[::-1], affine=flip)
    np.testing.assert_allclose(M.read_nifti(g, axis=2, index=2)[0], sl, atol=1e-6)
    # the default slice is the middle one
    assert M.read_nifti(f, axis=2).shape == (1, 5, 4)
    with pytest.raises(MedxganError, match="slice 9"):
        M.read_nifti(f, axis=2, index=9)


def test_nifti_volumes_layout_and_group_split(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for v in range(4):
        vol = rng.random((8, 8, 5)) * 100
        mask = np.zeros((8, 8, 5))
        mask[2:4, 2:4, 1:3] = 1  # slices 1 and 2 hold a lesion
        _nifti(tmp_path / "images" / f"case{v}.nii.gz", vol)
        _nifti(tmp_path / "masks" / f"case{v}.nii.gz", mask)
    ds = D.load_nifti_volumes(tmp_path, size=16, progress=False)
    assert len(ds) == 20
    assert ds.labels.view(4, 5).tolist() == [[0, 1, 1, 0, 0]] * 4
    assert ds.names[6] == "case1#0001"
    assert bool(ds.masks[1].any()) and not bool(ds.masks[0].any())
    split = D.group_split(ds.names, ds.labels.numpy(), (0.5, 0.25, 0.25), seed=0)
    owners = {s: {ds.names[i].split("#")[0] for i in idx} for s, idx in split.items()}
    assert sum(len(o) for o in owners.values()) == 4  # every volume in exactly one split
    assert not (owners["train"] & owners["test"]) and not (owners["train"] & owners["val"])
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(20))
    (tmp_path / "masks" / "case3.nii.gz").unlink()
    with pytest.raises(MedxganError, match="no mask volume for case3"):
        D.load_nifti_volumes(tmp_path, size=16, progress=False)


def test_nifti_nan_refused(tmp_path):
    vol = np.ones((3, 3, 3))
    vol[1, 1, 1] = np.nan
    with pytest.raises(MedxganError, match="NaN"):
        M.read_nifti(_nifti(tmp_path / "nan.nii", vol))


def test_nifti_mask_beside_nifti_image_in_class_folder(tmp_path):
    for cls in ("positive", "negative"):
        (tmp_path / cls).mkdir()
    (tmp_path / "masks").mkdir()
    vol = np.zeros((8, 8, 3))
    vol[2:6, 2:6, 1] = 1.0
    _nifti(tmp_path / "positive" / "p.nii.gz", vol)
    _nifti(tmp_path / "negative" / "n.nii.gz", vol * 0.5)
    _nifti(tmp_path / "masks" / "p_mask.nii.gz", (vol > 0).astype(float))
    ds = D.load_folder(tmp_path, size=16, progress=False)
    assert ds.has_mask.tolist() == [True, False]
    m = ds.masks[0, 0]
    assert int(m.sum()) == 64 and bool(m[8, 8])
    assert torch.equal(m, ds.images[0, 0] > 0)
