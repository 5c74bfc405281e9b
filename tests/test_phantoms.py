"""Tests for the synthetic brain-MRI phantom generator (medxgan.phantoms)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from medxgan import phantoms as P
from medxgan.errors import MedxganError
from medxgan.phantoms import PhantomSet, generate_phantoms, write_phantom_dataset


@pytest.fixture(scope="module")
def set64() -> PhantomSet:
    return generate_phantoms(60, 64, seed=5, shortcut=0.5)


def test_shapes_dtypes_labels_names(set64: PhantomSet) -> None:
    ps = set64
    assert ps.images.shape == (60, 64, 64) and ps.images.dtype == np.uint8
    assert ps.masks.shape == (60, 64, 64) and ps.masks.dtype == np.bool_
    assert ps.shortcut_masks.shape == (60, 64, 64) and ps.shortcut_masks.dtype == np.bool_
    assert ps.labels.dtype == np.int64
    np.testing.assert_array_equal(ps.labels, np.arange(60) % 2)  # positive iff index is odd
    assert ps.names[0] == "phantom_00000" and ps.names[13] == "phantom_00013" and len(ps.names) == 60
    # dark background, bright-ish head, full dynamic range used
    assert ps.images[:, :2, :2].mean() < 30
    assert ps.images.max() > 200


def test_deterministic_and_seed_dependent() -> None:
    a = generate_phantoms(6, 32, seed=3, shortcut=0.5)
    b = generate_phantoms(6, 32, seed=3, shortcut=0.5)
    c = generate_phantoms(6, 32, seed=4, shortcut=0.5)
    for field in ("images", "labels", "masks", "shortcut_masks"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.names == b.names
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.masks, c.masks)


def test_prefix_property() -> None:
    small = generate_phantoms(5, 32, seed=9, shortcut=0.6)
    big = generate_phantoms(14, 32, seed=9, shortcut=0.6)
    for field in ("images", "labels", "masks", "shortcut_masks"):
        np.testing.assert_array_equal(getattr(small, field), getattr(big, field)[:5])
    assert small.names == big.names[:5]


@pytest.mark.parametrize("size", [16, 28, 32, 64, 128])
def test_sizes(size: int) -> None:
    ps = generate_phantoms(2, size, seed=1)
    assert ps.images.shape == (2, size, size)
    assert ps.images[0].std() > 10
    assert not ps.masks[0].any() and ps.masks[1].any()


def test_same_subjects_across_sizes() -> None:
    lo = generate_phantoms(4, 32, seed=2).images.astype(float)
    hi = generate_phantoms(4, 128, seed=2).images.astype(float)
    hi_down = hi.reshape(4, 32, 4, 32, 4).mean(axis=(2, 4))
    for i in range(4):
        assert np.corrcoef(lo[i].ravel(), hi_down[i].ravel())[0, 1] > 0.8


def test_masks_exactly_for_positives_and_inside_brain(set64: PhantomSet) -> None:
    ps = set64
    has_mask = ps.masks.reshape(len(ps.labels), -1).any(axis=1)
    np.testing.assert_array_equal(has_mask, ps.labels == 1)
    areas = ps.masks.reshape(len(ps.labels), -1).sum(axis=1)[ps.labels == 1]
    # radius 4 %..15 % of the image width (with shape perturbation / elongation slack)
    assert areas.min() >= np.pi * (0.02 * 64) ** 2
    assert areas.max() <= np.pi * (0.15 * 1.6 * 64) ** 2
    for i in range(1, 40, 2):
        sub = P._render_subject(5, i, 64, regions=True)
        np.testing.assert_array_equal(sub.mask, ps.masks[i])
        assert sub.mask.any()
        assert not (sub.mask & ~sub.brain).any(), f"lesion {i} leaves the brain"
        assert not (sub.mask & sub.oedema).any()  # oedema is not part of the mask


def test_lesion_changes_intensity_and_nothing_far_away() -> None:
    """Counterfactual: the same subject rendered without its lesion differs inside the mask only
    near the lesion (lesion + oedema + mass effect); far away the images are identical, so
    negatives do not differ systematically from positives."""
    size = 64
    px = 2.0 / size
    x, y = P._grid(size)
    for i in range(1, 40, 2):
        with_l = P._render_subject(0, i, size)
        without = P._render_subject(0, i, size, lesion=False)
        assert without.label == 1 and not without.mask.any()
        diff = np.abs(with_l.image.astype(int) - without.image.astype(int))
        assert diff[with_l.mask].mean() > 25, f"lesion {i} hardly visible"
        rng = np.random.default_rng([0, i])
        p = P._sample_anatomy(rng)
        les = P._sample_lesion(np.random.default_rng([0, i, 1]), p, P._tissue_levels(p))
        far = np.hypot(x - les["cx"], y - les["cy"]) > 3.0 * les["radius"] + 1.5 * px
        assert diff[far].max() == 0, f"subject {i} changed far from its lesion"


def test_shortcut_only_on_positives_with_expected_rate() -> None:
    ps = generate_phantoms(200, 32, seed=7, shortcut=0.3)
    tagged = ps.shortcut_masks.reshape(200, -1).any(axis=1)
    assert not tagged[ps.labels == 0].any()
    assert abs(tagged.sum() - 0.3 * 100) <= 2
    # tag: small, bright, outside the head
    for i in np.flatnonzero(tagged)[:10]:
        m = ps.shortcut_masks[i]
        assert 4 <= m.sum() <= 16
        assert ps.images[i][m].min() > 150
        sub = P._render_subject(7, int(i), 32, shortcut=0.3, regions=True)
        assert not (m & sub.head).any()
        assert not (m & ps.masks[i]).any()
    none = generate_phantoms(20, 32, seed=7, shortcut=0.0)
    assert not none.shortcut_masks.any()
    full = generate_phantoms(20, 32, seed=7, shortcut=1.0)
    np.testing.assert_array_equal(full.shortcut_masks.reshape(20, -1).any(axis=1), full.labels == 1)


def test_shortcut_does_not_change_the_rest() -> None:
    a = generate_phantoms(10, 32, seed=1, shortcut=0.0)
    b = generate_phantoms(10, 32, seed=1, shortcut=1.0)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.images[~b.shortcut_masks], b.images[~b.shortcut_masks])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=1),
        dict(n=0),
        dict(n=2.5),
        dict(n=4, size=15),
        dict(n=4, shortcut=1.5),
        dict(n=4, shortcut=-0.1),
        dict(n=4, seed=-1),
    ],
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(MedxganError):
        generate_phantoms(**kwargs)


def test_write_dataset_layout(tmp_path) -> None:
    out = tmp_path / "ds"
    ret = write_phantom_dataset(out, n=10, size=32, seed=4, shortcut=0.5, progress=False)
    assert ret == out
    ps = generate_phantoms(10, 32, seed=4, shortcut=0.5)
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["file", "label", "has_shortcut"]
    assert len(rows) == 10
    for i, row in enumerate(rows):
        name = ps.names[i]
        label = int(row["label"])
        assert label == ps.labels[i]
        assert row["file"] == f"{'positive' if label else 'negative'}/{name}.png"
        img = np.array(Image.open(out / row["file"]))
        np.testing.assert_array_equal(img, ps.images[i])
        mask_file = out / "masks" / f"{name}.png"
        assert mask_file.exists() == bool(label)
        if label:
            m = np.array(Image.open(mask_file))
            assert set(np.unique(m)) <= {0, 255}
            np.testing.assert_array_equal(m > 0, ps.masks[i])
        tag_file = out / "shortcut_masks" / f"{name}.png"
        assert int(row["has_shortcut"]) == int(ps.shortcut_masks[i].any()) == int(tag_file.exists())
        if tag_file.exists():
            np.testing.assert_array_equal(np.array(Image.open(tag_file)) > 0, ps.shortcut_masks[i])
    assert len(list((out / "negative").iterdir())) == 5
    assert len(list((out / "positive").iterdir())) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp dir left behind


def test_write_dataset_no_shortcut_dir_and_existing_dirs(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_phantom_dataset(empty, n=4, size=16, progress=False)
    assert not (empty / "shortcut_masks").exists()
    assert (empty / "labels.csv").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(MedxganError):
        write_phantom_dataset(busy, n=4, size=16, progress=False)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]

    with pytest.raises(MedxganError):
        write_phantom_dataset(tmp_path / "bad", n=1, size=16, progress=False)


def test_noise_free_render_differs_only_by_the_noise(set64: PhantomSet) -> None:
    """The noise-free rendering is the stored phantom minus its acquisition noise: close in the
    mean, deterministic, and with less high-frequency energy; lesion and head are unchanged."""
    from medxgan.phantoms import render_noise_free

    for i in (0, 1, 7):
        clean = render_noise_free(i, size=64, seed=5, shortcut=0.5).astype(np.float64)
        noisy = set64.images[i].astype(np.float64)
        assert np.array_equal(clean, render_noise_free(i, size=64, seed=5, shortcut=0.5))
        tissue, air = clean > 64, clean == 0
        assert abs(clean[tissue].mean() - noisy[tissue].mean()) < 3.0  # in tissue the noise averages out
        assert noisy[air].mean() > 1.0  # Rician noise floor in the air, absent from the clean image
        assert 0 < np.abs(clean - noisy)[tissue].mean() < 12.0
        lap = lambda a: np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).mean()
        assert lap(clean) < lap(noisy)
    with pytest.raises(MedxganError):
        render_noise_free(-1)


def test_lesion_counterfactual_is_the_subject_with_and_without_its_lesion(set64: PhantomSet) -> None:
    """With the lesion it is the noise-free phantom (same mask as the data set); without, the
    lesion's pixels change and nothing far away does; a negative's counterfactual changes nothing."""
    from medxgan.phantoms import lesion_counterfactual, render_noise_free

    for i in (1, 3, 7):
        cf = lesion_counterfactual(i, size=64, seed=5, shortcut=0.5)
        assert np.array_equal(cf.with_lesion, render_noise_free(i, size=64, seed=5, shortcut=0.5))
        assert np.array_equal(cf.mask, set64.masks[i]) and cf.mask.any()
        assert not (cf.oedema & cf.mask).any()
        d = cf.difference()
        assert d.dtype == np.float32 and d.min() >= 0 and d.max() <= 2
        assert d[cf.mask].mean() > 25 / 127.5  # the tumour is removed
        assert (d > 0).mean() < 0.25  # ... and most of the head is untouched
    neg = lesion_counterfactual(0, size=64, seed=5, shortcut=0.5)
    assert np.array_equal(neg.with_lesion, neg.without_lesion) and not neg.mask.any() and not neg.oedema.any()
    with pytest.raises(MedxganError):
        lesion_counterfactual(-1)
