"""Tests of medxgan.data: decoding, geometry, masks/VIA, MedMNIST, splits and user errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medxgan.data import (
    LabeledImages,
    load_dataset,
    load_folder,
    load_image,
    load_mask,
    load_medmnist,
    load_split,
    parse_via,
    rasterize_via_regions,
    resize_geometry,
    save_split,
    stratified_split,
)
from medxgan.errors import MedxganError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BR35H = DATA / "br35h"
NPZ = DATA / "pneumoniamnist" / "pneumoniamnist.npz"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return path


def gray_u8(h: int, w: int, value: int = 0) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def make_folder(root: Path, n_pos: int = 2, n_neg: int = 2, h: int = 20, w: int = 30) -> Path:
    for i in range(n_pos):
        save(root / "positive" / f"p{i}.png", gray_u8(h, w, 200))
    for i in range(n_neg):
        save(root / "negative" / f"n{i}.png", gray_u8(h, w, 50))
    return root


def raises_naming(fn, *needles):
    with pytest.raises(MedxganError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


# ------------------------------------------------------------------------------- real data


def test_br35h_folder_with_via(tmp_path):
    need(BR35H / "annotations" / "via_regions.json")
    via = parse_via(BR35H / "annotations" / "via_regions.json")
    kinds = {}
    for fname, shapes in via.items():
        for s in shapes:
            kinds.setdefault(s["name"], fname)
    assert {"polygon", "ellipse", "circle"} <= set(kinds)
    pos = ["y0.jpg", kinds["ellipse"], kinds["circle"], "y1499.jpg"]  # y1499 has no annotation
    (tmp_path / "yes").mkdir()
    (tmp_path / "no").mkdir()
    for f in pos:
        shutil.copy(BR35H / "yes" / f, tmp_path / "yes" / f)
    for f in ["no1.jpg", "no2.jpg"]:
        shutil.copy(BR35H / "no" / f, tmp_path / "no" / f)
    (tmp_path / "annotations").mkdir()
    shutil.copy(BR35H / "annotations" / "via_regions.json", tmp_path / "annotations")

    d = load_folder(tmp_path, size=48, positive="yes", negative="no", progress=False)
    assert isinstance(d, LabeledImages) and len(d) == 6
    assert d.images.shape == (6, 1, 48, 48) and d.images.dtype == torch.float32
    assert -1.0 <= d.images.min() and d.images.max() <= 1.0 and d.images.max() > 0.5
    assert d.labels.tolist() == [1, 1, 1, 1, 0, 0] and d.labels.dtype == torch.int64
    assert d.names[-2:] == ["no/no1.jpg", "no/no2.jpg"] and d.names[0] == "yes/y0.jpg"
    assert d.masks is not None and d.masks.dtype == torch.bool and d.masks.shape == (6, 1, 48, 48)
    expect_has = [n.split("/")[1] in via for n in d.names]
    assert d.has_mask.tolist() == expect_has and sum(expect_has) == 3
    for i in range(6):
        area = d.masks[i].float().mean().item()
        assert (0.0 < area < 0.5) if expect_has[i] else area == 0.0
    assert d.skipped == []
    # the lesion is brighter than the image on average (a weak but real check of registration)
    i = d.names.index("yes/y0.jpg")
    assert d.images[i, 0][d.masks[i, 0]].mean() > d.images[i, 0].mean()

    d3 = load_folder(tmp_path, size=32, channels=3, positive="yes", negative="no", resize="crop", progress=False)
    assert d3.images.shape == (6, 3, 32, 32)
    assert torch.equal(d3.images[:, 0], d3.images[:, 1])  # gray scans stay gray
    # an explicit VIA path works too, and masks=None without any source
    (tmp_path / "annotations" / "via_regions.json").rename(tmp_path / "via.json")
    assert load_folder(tmp_path, size=16, positive="yes", negative="no", progress=False).masks is None
    d4 = load_folder(tmp_path, size=16, positive="yes", negative="no", via=tmp_path / "via.json", progress=False)
    assert d4.has_mask.sum() == 3


def test_medmnist_test_split():
    need(NPZ)
    d = load_medmnist(NPZ, "test")
    assert d.images.shape == (621, 1, 28, 28) and d.images.dtype == torch.float32
    assert int((d.labels == 0).sum()) == 234 and int((d.labels == 1).sum()) == 387
    assert d.names[0] == "test/000000" and d.names[123] == "test/000123"
    assert d.masks is None and not d.has_mask.any()
    raw = np.load(NPZ)["test_images"]
    assert torch.allclose(d.images[5, 0], torch.from_numpy(raw[5] / 255.0 * 2 - 1).float(), atol=1e-6)
    d2 = load_medmnist(NPZ, "val", size=32, channels=3)
    assert d2.images.shape == (524, 3, 32, 32) and -1 <= d2.images.min() and d2.images.max() <= 1
    d3 = load_dataset(f"{NPZ}:val")
    assert len(d3) == 524
    d4 = load_dataset(NPZ, split="test", size=16, resize="pad", positive="x", progress=False)
    assert d4.images.shape == (621, 1, 16, 16)
    raises_naming(lambda: load_dataset(NPZ), str(NPZ), "split")
    raises_naming(lambda: load_medmnist(NPZ, "training"), "training")


# ------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_keeps_range(tmp_path, ext):
    a = np.zeros((16, 16), np.uint16)
    a[0, 0], a[0, 1], a[0, 2], a[0, 3] = 1000, 30000, 60000, 65535
    p = save(tmp_path / f"x.{ext}", a)
    assert Image.open(p).mode.startswith("I")
    x = load_image(p, size=16)
    assert x.shape == (1, 16, 16)
    expect = torch.tensor([1000, 30000, 60000, 65535]) / 65535.0 * 2 - 1
    assert torch.allclose(x[0, 0, :4], expect.float(), atol=1e-6)
    assert x[0, 5, 5] == -1.0
    # values a 8-bit conversion would crush stay distinct
    assert x[0, 0, 0] != x[0, 0, 5]
    x3 = load_image(p, size=16, channels=3)
    assert x3.shape == (3, 16, 16) and torch.equal(x3[0], x3[2])


def test_float_tiff(tmp_path):
    a = np.linspace(-5, 15, 64, dtype=np.float32).reshape(8, 8)
    x = load_image(save(tmp_path / "f.tif", a), size=8)
    assert x.min() == -1.0 and x.max() == 1.0  # min/max normalised
    b = np.linspace(0.2, 0.6, 64, dtype=np.float32).reshape(8, 8)
    y = load_image(save(tmp_path / "g.tif", b), size=8)
    assert torch.allclose(y, torch.from_numpy(b * 2 - 1)[None], atol=1e-6)  # [0, 1] floats kept
    b[3, 3] = np.nan
    p = save(tmp_path / "nan.tif", b)
    raises_naming(lambda: load_image(p, size=8), p, "NaN")


def test_rgb_to_gray_and_palette(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x = load_image(save(tmp_path / "r.png", rgb), size=4)
    assert x.shape == (1, 4, 4)
    assert abs(x[0, 0, 0].item() - (round(0.299 * 255) / 255 * 2 - 1)) < 1e-6
    x3 = load_image(tmp_path / "r.png", size=4, channels=3)
    assert torch.allclose(x3[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    rgba = np.dstack([rgb, np.full((4, 4), 7, np.uint8)])
    assert torch.allclose(load_image(save(tmp_path / "r.tif", rgba), size=4), x)
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.bmp")
    assert torch.allclose(load_image(tmp_path / "p.bmp", size=4), x, atol=2 / 255)
    g = save(tmp_path / "g.jpg", gray_u8(8, 8, 128))
    assert load_image(g, size=8, channels=3).shape == (3, 8, 8)


def test_exif_orientation(tmp_path):
    a = gray_u8(10, 20)
    a[0, 0] = 255
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    p = tmp_path / "o.jpg"
    im.save(p, exif=exif, quality=100)
    x = load_image(p, size=20, resize="crop")  # 20x10 after orientation -> crop keeps a 20x20 centre
    raw = np.asarray(Image.open(p))
    assert raw.shape == (10, 20)
    full = load_image(p, size=20, resize="stretch")
    # after rotating clockwise, the stored top-left pixel is at the top-right
    assert full[0, :3, -3:].max() > 0 and full[0, :3, :3].max() < 0
    assert x.shape == (1, 20, 20)


# ------------------------------------------------------------------------------- geometry


def test_resize_geometry_table():
    assert resize_geometry(20, 40, 20, "pad") == (10, 20, 5, 0)
    assert resize_geometry(40, 20, 20, "pad") == (20, 10, 0, 5)
    assert resize_geometry(20, 40, 20, "crop") == (20, 40, 0, -10)
    assert resize_geometry(20, 40, 20, "stretch") == (20, 20, 0, 0)
    assert resize_geometry(64, 64, 64, "pad") == (64, 64, 0, 0)
    assert resize_geometry(1, 1000, 10, "pad") == (1, 10, 4, 0)
    raises_naming(lambda: resize_geometry(4, 4, 4, "zoom"), "zoom")
    raises_naming(lambda: resize_geometry(4, 4, 0, "pad"), "size")


def test_pad_crop_stretch_bright_pixel(tmp_path):
    a = gray_u8(20, 40)
    a[4:6, 10:12] = 255
    p = save(tmp_path / "b.png", a)
    pad = load_image(p, size=20, resize="pad")[0]
    # scale 0.5 -> 10x20 placed at rows 5..14: the block lands on row 5+2, column 5
    assert divmod(int(pad.argmax()), 20) == (7, 5)
    assert (pad[:5] == -1).all() and (pad[15:] == -1).all()
    crop = load_image(p, size=20, resize="crop")[0]
    # no scaling, columns 10..29 kept: the block lands at rows 4-5, columns 0-1
    assert (crop[4:6, 0:2] == 1).all() and (crop[:, 2:] == -1).all() and (crop[:4] == -1).all()
    stretch = load_image(p, size=20, resize="stretch")[0]
    r, c = divmod(int(stretch.argmax()), 20)
    assert r in (4, 5) and c == 5


@pytest.mark.parametrize("resize", ["pad", "crop", "stretch"])
@pytest.mark.parametrize("size", [16, 23, 64])
def test_mask_follows_image(tmp_path, resize, size):
    img = gray_u8(30, 50)
    img[10:20, 30:41] = 255
    make_folder(tmp_path, n_pos=0, n_neg=1, h=30, w=50)
    save(tmp_path / "positive" / "a.png", img)
    save(tmp_path / "masks" / "a.png", img)  # found automatically
    d = load_folder(tmp_path, size=size, resize=resize, progress=False)
    i = d.names.index("positive/a.png")
    assert d.has_mask.tolist()[i] and not d.has_mask[d.labels == 0].any()
    assert d.masks[i, 0].any()
    assert torch.equal(d.images[i, 0] > 0, d.masks[i, 0])
    # the single-file loaders agree with the folder loader
    assert torch.equal(load_mask(tmp_path / "masks" / "a.png", size, resize), d.masks[i])
    assert torch.equal(load_image(tmp_path / "positive" / "a.png", size, resize=resize), d.images[i])


def test_via_mask_follows_image(tmp_path):
    img = gray_u8(30, 50)
    img[10:21, 30:41] = 255  # rows 10..20, columns 30..40 inclusive
    make_folder(tmp_path, n_pos=0, n_neg=1, h=30, w=50)
    save(tmp_path / "positive" / "a.png", img)
    via = {"a.png123": {"filename": "a.png", "size": 123, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": [30, 40, 40, 30], "all_points_y": [10, 10, 20, 20]},
         "region_attributes": {}}]}}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "via_regions.json").write_text(json.dumps(via))
    for resize in ("pad", "crop"):
        d = load_folder(tmp_path, size=19, resize=resize, progress=False)
        assert torch.equal(d.images[0, 0] > 0, d.masks[0, 0]) and d.masks[0].any()


def test_mask_file_conventions(tmp_path):
    make_folder(tmp_path, n_pos=2, n_neg=1)
    m = gray_u8(20, 30)
    m[2:5, 3:9] = 1  # a 0/1 label map
    save(tmp_path / "mk" / "p0_mask.png", m)
    save(tmp_path / "mk" / "p1.bmp", (m * 255).astype(np.uint8))
    d = load_folder(tmp_path, size=30, resize="stretch", masks=tmp_path / "mk", progress=False)
    assert d.has_mask.tolist() == [True, True, False]
    assert int(d.masks[0].sum()) == int(d.masks[1].sum()) > 0
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[2:5, 3:9, 0] = 255  # red outline-style colour mask
    assert torch.equal(load_mask(save(tmp_path / "c.png", rgb), 30, "stretch"), d.masks[0])


# ------------------------------------------------------------------------------- VIA


def test_via_polygon_and_rect():
    m = rasterize_via_regions([{"name": "polygon", "all_points_x": [2, 5, 5, 2], "all_points_y": [3, 3, 7, 7]}], 12, 10)
    expect = np.zeros((12, 10), bool)
    expect[3:8, 2:6] = True  # vertices and edges are inside
    assert m.shape == (12, 10) and np.array_equal(m, expect)
    r = rasterize_via_regions([{"name": "rect", "x": 2, "y": 3, "width": 3, "height": 4}], 12, 10)
    assert np.array_equal(r, expect)
    # regions may be full region dicts, clipped at the border, and unite
    big = rasterize_via_regions(
        [{"shape_attributes": {"name": "rect", "x": -5, "y": -5, "width": 7, "height": 7}},
         {"name": "polygon", "all_points_x": [2, 5, 5, 2], "all_points_y": [3, 3, 7, 7]}], 12, 10)
    assert big[:3, :3].all() and big[3:8, 2:6].all() and big.sum() == 9 + 20  # rows 0-2 x cols 0-2, no overlap


def hand_ellipse(h, w, cx, cy, rx, ry, theta):
    """VIA/canvas ellipse: points cx + rx cos(t) (cos th, sin th) + ry sin(t) (-sin th, cos th), y down."""
    out = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            dx, dy = c - cx, r - cy
            u = dx * math.cos(theta) + dy * math.sin(theta)
            v = -dx * math.sin(theta) + dy * math.cos(theta)
            out[r, c] = (u / rx) ** 2 + (v / ry) ** 2 < 1
    return out


def test_via_circle():
    m = rasterize_via_regions([{"name": "circle", "cx": 10.3, "cy": 12.7, "r": 5}], 30, 30)
    assert np.array_equal(m, hand_ellipse(30, 30, 10.3, 12.7, 5, 5, 0))
    assert abs(int(m.sum()) - math.pi * 25) < 6
    half = rasterize_via_regions([{"name": "circle", "cx": 0, "cy": 15, "r": 6}], 30, 30)
    assert half[:, 0].sum() == 11 and half[:, 7:].sum() == 0


def test_via_ellipse_theta_convention():
    base = dict(name="ellipse", cx=15.3, cy=14.6, rx=8, ry=3)
    e0 = rasterize_via_regions([dict(base, theta=0)], 30, 30)
    assert np.array_equal(e0, hand_ellipse(30, 30, 15.3, 14.6, 8, 3, 0))
    rows, cols = np.nonzero(e0)
    assert np.ptp(cols) > np.ptp(rows)  # rx is horizontal at theta=0
    e90 = rasterize_via_regions([dict(base, theta=math.pi / 2)], 30, 30)
    swapped = rasterize_via_regions([dict(base, rx=3, ry=8, theta=0)], 30, 30)
    assert np.array_equal(e90, swapped)
    assert "theta" not in dict(base) and np.array_equal(rasterize_via_regions([base], 30, 30), e0)
    # positive theta turns clockwise on screen (y down): the long axis points down-right
    e45 = rasterize_via_regions([dict(name="ellipse", cx=20, cy=20, rx=10, ry=2, theta=math.pi / 4)], 41, 41)
    assert e45[26, 26] and e45[14, 14] and not e45[14, 26] and not e45[26, 14]
    assert np.array_equal(e45, hand_ellipse(41, 41, 20, 20, 10, 2, math.pi / 4))


def test_via_ellipse_matches_skimage_with_negated_rotation():
    from skimage.draw import ellipse

    rng = np.random.default_rng(3)
    for _ in range(20):
        cx, cy = rng.uniform(5, 35, 2)
        rx, ry = rng.uniform(1.5, 15, 2)
        th = rng.uniform(-math.pi, math.pi)
        ours = rasterize_via_regions([dict(name="ellipse", cx=cx, cy=cy, rx=rx, ry=ry, theta=th)], 40, 45)
        ref = np.zeros((40, 45), bool)
        rr, cc = ellipse(cy, cx, ry, rx, shape=ref.shape, rotation=-th)
        ref[rr, cc] = True
        assert np.array_equal(ours, ref)


def test_parse_via_formats(tmp_path):
    sa = {"name": "circle", "cx": 3, "cy": 3, "r": 2}
    v2 = {"a.jpg10": {"filename": "a.jpg", "size": 10, "regions": [{"shape_attributes": sa, "region_attributes": {}}]},
          "b.jpg5": {"filename": "b.jpg", "size": 5, "regions": []}}
    (tmp_path / "v2.json").write_text(json.dumps(v2))
    assert parse_via(tmp_path / "v2.json") == {"a.jpg": [sa], "b.jpg": []}
    v1 = {"a.jpg10": {"filename": "a.jpg", "size": 10, "regions": {"0": {"shape_attributes": sa}, "1": {"shape_attributes": sa}}}}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    assert parse_via(tmp_path / "v1.json") == {"a.jpg": [sa, sa]}
    proj = {"_via_settings": {}, "_via_img_metadata": v2}
    (tmp_path / "p.json").write_text(json.dumps(proj))
    assert parse_via(tmp_path / "p.json")["a.jpg"] == [sa]


# ------------------------------------------------------------------------------- errors


def test_folder_errors(tmp_path):
    raises_naming(lambda: load_folder(tmp_path / "nope", progress=False), tmp_path / "nope")
    root = make_folder(tmp_path / "d")
    shutil.rmtree(root / "negative")
    raises_naming(lambda: load_folder(root, progress=False), "negative", root)
    (root / "negative").mkdir()
    (root / "negative" / "notes.txt").write_text("x")
    raises_naming(lambda: load_folder(root, progress=False), root / "negative", "no images")
    raises_naming(lambda: load_folder(root / "positive" / "p0.png", progress=False), "p0.png")
    # class names are matched case-insensitively as a fallback; extensions too
    save(root / "negative" / "N0.PNG", gray_u8(20, 30))
    d = load_folder(root, positive="POSITIVE", progress=False)
    assert d.names[-1] == "negative/N0.PNG"
    raises_naming(lambda: load_folder(root, size=8, resize="zoom", progress=False), "zoom")


def test_corrupt_and_truncated_images(tmp_path):
    root = make_folder(tmp_path)
    bad = root / "positive" / "bad.png"
    bad.write_bytes(b"not an image at all")
    raises_naming(lambda: load_folder(root, progress=False), bad)
    bad.unlink()
    src = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(src)
    trunc = root / "positive" / "trunc.jpg"
    trunc.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    raises_naming(lambda: load_folder(root, progress=False), trunc)
    raises_naming(lambda: load_image(trunc, 8), trunc)
    with pytest.warns(UserWarning, match="skipped 1"):
        d = load_folder(root, size=8, skip_bad=True, progress=False)
    assert d.skipped == ["positive/trunc.jpg"] and len(d) == 4 and "positive/trunc.jpg" not in d.names
    for f in (root / "positive").iterdir():
        if f.name != "trunc.jpg":
            f.unlink()
    with pytest.warns(UserWarning, match="skipped 1"):
        raises_naming(lambda: load_folder(root, skip_bad=True, progress=False), root / "positive")
    raises_naming(lambda: load_image(tmp_path / "missing.png", 8), "missing.png")


def test_mask_errors(tmp_path):
    root = make_folder(tmp_path)
    mk = save(root / "masks" / "p0.png", gray_u8(10, 10))
    msg = raises_naming(lambda: load_folder(root, progress=False), mk, root / "positive" / "p0.png")
    assert "10x10" in msg and "30x20" in msg
    mk.unlink()
    save(root / "masks" / "p0.png", gray_u8(20, 30))
    save(root / "masks" / "p0.jpg", gray_u8(20, 30))
    raises_naming(lambda: load_folder(root, progress=False), "p0.png", "p0.jpg")
    raises_naming(lambda: load_folder(root, masks=tmp_path / "nomasks", progress=False), tmp_path / "nomasks")


def test_via_errors(tmp_path):
    root = make_folder(tmp_path)
    (root / "annotations").mkdir()
    via = root / "annotations" / "via_regions.json"
    via.write_text('{"p0.png1": {"filename": "p0.png", "regions": [')
    raises_naming(lambda: load_folder(root, progress=False), via, "malformed")
    via.write_text(json.dumps({"k": {"filename": "p0.png", "regions": [{"shape_attributes": {"name": "point", "cx": 1, "cy": 1}}]}}))
    raises_naming(lambda: load_folder(root, progress=False), via, "point", "p0.png")
    via.write_text(json.dumps({"k": {"regions": []}}))
    raises_naming(lambda: parse_via(via), via, "filename")
    via.write_text(json.dumps([1, 2]))
    raises_naming(lambda: parse_via(via), via)
    raises_naming(lambda: parse_via(tmp_path / "none.json"), "none.json")
    bad = {"name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [1, 2]}
    raises_naming(lambda: rasterize_via_regions([bad], 5, 5), "polygon")
    raises_naming(lambda: rasterize_via_regions([{"name": "circle", "cx": float("nan"), "cy": 1, "r": 1}], 5, 5), "cx")
    raises_naming(lambda: rasterize_via_regions([{"name": "polyline", "all_points_x": [1], "all_points_y": [1]}], 5, 5), "polyline")
    # file names that match nothing: a warning, no masks
    via.write_text(json.dumps({"k": {"filename": "zzz.png", "regions": []}}))
    with pytest.warns(UserWarning, match="match"):
        d = load_folder(root, progress=False)
    assert d.masks is not None and not d.has_mask.any()


def test_medmnist_errors(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.array([[0], [1], [1]]))
    assert len(load_medmnist(p, "train")) == 3
    raises_naming(lambda: load_medmnist(p, "test"), p, "test_images", "test_labels")
    np.savez(p, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.array([[0], [1], [7]]))
    raises_naming(lambda: load_medmnist(p, "train"), p, "binary")
    np.savez(p, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.array([[0], [1]]))
    raises_naming(lambda: load_medmnist(p, "train"), p, "train_labels")
    q = tmp_path / "broken.npz"
    q.write_bytes(b"garbage")
    raises_naming(lambda: load_medmnist(q, "train"), q)
    raises_naming(lambda: load_medmnist(tmp_path / "x.npz", "train"), "x.npz")
    (tmp_path / "data.csv").write_text("a")
    raises_naming(lambda: load_dataset(tmp_path / "data.csv"), "data.csv")
    raises_naming(lambda: load_dataset(tmp_path / "gone"), "gone")
    with pytest.raises(TypeError):
        load_dataset(p, split="train", bogus=1)


def test_load_dataset_folder(tmp_path):
    root = make_folder(tmp_path)
    d = load_dataset(root, size=8, split="train", progress=False)  # split does not apply to folders
    assert d.images.shape == (4, 1, 8, 8)


# ------------------------------------------------------------------------------- splits & subset


def test_stratified_split():
    labels = np.array([1] * 70 + [0] * 30)
    rng = np.random.default_rng(1)
    rng.shuffle(labels)
    s = stratified_split(labels, seed=5)
    assert set(s) == {"train", "val", "test"}
    allidx = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(allidx.tolist()) == list(range(100))  # disjoint and covering
    for k, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        assert np.all(np.diff(s[k]) > 0) and s[k].dtype == np.int64
        for c, n in ((1, 70), (0, 30)):
            assert abs(int((labels[s[k]] == c).sum()) - frac * n) <= 1
    s2 = stratified_split(torch.from_numpy(labels), seed=5)
    assert all(np.array_equal(s[k], s2[k]) for k in s)
    s3 = stratified_split(labels, seed=6)
    assert not np.array_equal(s["train"], s3["train"])
    tiny = stratified_split([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], seed=0)
    for k in tiny:
        assert {0, 1} <= set(np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])[tiny[k]].tolist())
    two = stratified_split([1, 1, 0, 0, 0, 0], seed=0)
    assert sum(len(v) for v in two.values()) == 6
    raises_naming(lambda: stratified_split([0, 1], fractions=(0.5, 0.6, 0.1)), "fractions")
    raises_naming(lambda: stratified_split([]), "empty")


def test_save_load_split_and_subset(tmp_path):
    n = 12
    d = LabeledImages(
        images=torch.linspace(-1, 1, n)[:, None, None, None].expand(n, 1, 2, 2).clone(),
        labels=torch.tensor([1, 0] * 6),
        masks=None,
        has_mask=torch.zeros(n, dtype=torch.bool),
        names=[f"x/{i}.png" for i in range(n)],
    )
    s = stratified_split(d.labels, fractions=(0.5, 0.25, 0.25), seed=2)
    p = tmp_path / "split.json"
    save_split(s, p, names=d)
    back = load_split(p)
    assert all(np.array_equal(back[k], s[k]) for k in s)
    assert json.loads(p.read_text())["names"]["val"] == [d.names[i] for i in s["val"]]
    perm = list(reversed(d.names))
    remapped = load_split(p, names=perm)
    assert [perm[i] for i in remapped["test"]] == sorted([d.names[i] for i in s["test"]], key=perm.index)
    raises_naming(lambda: load_split(p, names=d.names[:-1] + ["other"]), p)
    (tmp_path / "bad.json").write_text("{")
    raises_naming(lambda: load_split(tmp_path / "bad.json"), "bad.json")
    raises_naming(lambda: load_split(tmp_path / "nosplit.json"), "nosplit.json")
    sub = d.subset(s["val"])
    assert len(sub) == len(s["val"]) and sub.names == [d.names[i] for i in s["val"]]
    assert torch.equal(sub.images, d.images[torch.from_numpy(s["val"])])
    assert d.subset(d.labels == 1).labels.tolist() == [1] * 6
    assert d.subset([3, 1]).names == ["x/3.png", "x/1.png"] and len(d.subset(slice(0, 4))) == 4


# ------------------------------------------------------------------------------- property tests

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
_json = st.recursive(_scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=4), ch, max_size=4), max_leaves=12)
_coord = st.one_of(st.integers(-20, 60), st.floats(-30, 60), _scalars)
_shape = st.fixed_dictionaries(
    {"name": st.sampled_from(["polygon", "ellipse", "circle", "rect", "point", "polyline"]) | _scalars},
    optional={
        "all_points_x": st.lists(_coord, max_size=6) | _json, "all_points_y": st.lists(_coord, max_size=6) | _json,
        "cx": _coord, "cy": _coord, "r": _coord, "rx": _coord, "ry": _coord, "theta": _coord,
        "x": _coord, "y": _coord, "width": _coord, "height": _coord,
    },
)
_region = st.one_of(st.fixed_dictionaries({"shape_attributes": _shape | _json}), _shape, _json)
_via_like = st.dictionaries(
    st.text(max_size=6),
    st.fixed_dictionaries({"filename": st.text(max_size=6) | _scalars},
                          optional={"regions": st.lists(_region, max_size=3) | st.dictionaries(st.text(max_size=2), _region, max_size=2) | _json}),
    max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=st.one_of(_via_like, _json, st.fixed_dictionaries({"_via_img_metadata": _via_like | _json})),
       raw=st.none() | st.binary(max_size=30), h=st.integers(-2, 30), w=st.integers(-2, 30))
def test_via_never_raises_anything_but_medxgan_error(tmp_path, obj, raw, h, w):
    p = tmp_path / "via.json"
    p.write_bytes(raw if raw is not None else json.dumps(obj).encode())
    try:
        parsed = parse_via(p)
    except MedxganError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        parsed = {"x": obj if isinstance(obj, list) else [obj]}
    for regions in parsed.values():
        try:
            m = rasterize_via_regions(regions, h, w)
        except MedxganError as e:
            assert "\n" not in str(e)
        else:
            assert m.dtype == bool and m.shape == (h, w)


@settings(max_examples=100, deadline=None)
@given(regions=st.lists(_region, max_size=4) | _json, h=st.integers(1, 25), w=st.integers(1, 25))
def test_rasterize_never_raises_anything_but_medxgan_error(regions, h, w):
    try:
        m = rasterize_via_regions(regions, h, w)
    except MedxganError as e:
        assert "\n" not in str(e)
    else:
        assert m.shape == (h, w) and m.dtype == bool


def test_load_folder_cached_decodes_once(tmp_path, monkeypatch):
    """A second load with the same files and settings is served from the tensor cache and equals
    the first; touching a file invalidates it."""
    import os

    from PIL import Image

    from medxgan import data as D

    root = tmp_path / "ds"
    for cls, n in (("positive", 3), ("negative", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((np.random.default_rng(i + 7 * n).random((12, 12)) * 255).astype("uint8")).save(root / cls / f"{cls}{i}.png")
    first = D.load_folder_cached(root, tmp_path / "cache", size=16, progress=False)
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1
    decoded = []
    real = D._read_image
    monkeypatch.setattr(D, "_read_image", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    second = D.load_folder_cached(root, tmp_path / "cache", size=16, progress=False)
    assert decoded == []
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.names == first.names and torch.equal(second.has_mask, first.has_mask)
    assert D.load_folder_cached(root, tmp_path / "cache", size=8, progress=False).images.shape[-1] == 8  # other settings
    assert len(decoded) == 5
    st = (root / "positive" / "positive0.png").stat()
    os.utime(root / "positive" / "positive0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    D.load_folder_cached(root, tmp_path / "cache", size=16, progress=False)
    assert len(decoded) == 10


def test_load_folder_cached_rebuilds_a_damaged_cache(tmp_path):
    """A truncated or foreign cache file is decoded again and replaced, not trusted or fatal."""
    from PIL import Image

    from medxgan import data as D

    root = tmp_path / "ds"
    for cls in ("positive", "negative"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((10, 10), 40 * i + (100 if cls == "positive" else 0), np.uint8)).save(root / cls / f"{i}.png")
    first = D.load_folder_cached(root, tmp_path / "cache", size=8, progress=False)
    (cache,) = (tmp_path / "cache").glob("images-*.pt")
    for junk in (cache.read_bytes()[:50], b"not a torch file", b""):
        cache.write_bytes(junk)
        again = D.load_folder_cached(root, tmp_path / "cache", size=8, progress=False)
        assert torch.equal(again.images, first.images)
        assert torch.load(cache, weights_only=True)["names"] == list(first.names)  # replaced, readable
