"""Streaming batch explanation: lazy batches, the resume manifest, and resume == uninterrupted run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_cli
from medxgan import data as D
from medxgan.errors import MedxganError
from medxgan.streaming import ExplainManifest, ImageFiles, ImageTensors, contiguous_runs


def _pngs(tmp_path, n, size=16):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        Image.fromarray((np.random.default_rng(i).random((size, size)) * 255).astype("uint8")).save(folder / f"img{i}.png")
    return sorted(folder.glob("*.png"))


def test_image_files_are_decoded_one_batch_at_a_time(tmp_path, monkeypatch):
    files = _pngs(tmp_path, 5)
    decoded = []
    real = D.load_image
    monkeypatch.setattr(D, "load_image", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    source = ImageFiles(files, size=16, channels=1, resize="pad")
    batches = source.batches(range(5), batch_size=2)
    assert decoded == []  # nothing read before a batch is asked for
    first = next(batches)
    assert first.indices == [0, 1] and first.images.shape == (2, 1, 16, 16) and len(decoded) == 2
    rest = list(batches)
    assert [b.indices for b in rest] == [[2, 3], [4]] and len(decoded) == 5
    torch.testing.assert_close(first.images[1], real(files[1], 16, 1, "pad"))


def test_image_files_skip_bad_and_runs(tmp_path):
    files = _pngs(tmp_path, 3)
    files[1].write_bytes(b"not a png")
    with pytest.raises(MedxganError):
        ImageFiles(files, 16, 1, "pad").load([0, 1, 2])
    batch = ImageFiles(files, 16, 1, "pad", skip_bad=True).load([0, 1, 2])
    assert batch.indices == [0, 2] and batch.skipped == [1] and batch.images.shape[0] == 2
    assert contiguous_runs(batch.indices) == [[0], [2]]
    assert contiguous_runs([0, 1, 3, 4, 5, 9]) == [[0, 1], [3, 4, 5], [9]] and contiguous_runs([]) == []
    tensors = ImageTensors(torch.arange(4.0).view(4, 1, 1, 1), ["a", "b", "c", "d"])
    assert [b.images.flatten().tolist() for b in tensors.batches([1, 2, 3], 2)] == [[1.0, 2.0], [3.0]]


def test_manifest_resumes_same_settings_and_refuses_others(tmp_path):
    settings = {"methods": ["lig"], "inversion": {"steps": 10, "betas": (0.5, 0.999)}}
    fresh = ExplainManifest.open(tmp_path, settings)
    assert not fresh.resumed and fresh.done == []
    with pytest.raises(MedxganError, match="no explanation run to resume"):
        ExplainManifest.open(tmp_path, settings, require_existing=True)
    fresh.write(["a.png", "b.png"], n_images=5)
    again = ExplainManifest.open(tmp_path, settings, require_existing=True)
    assert again.resumed and again.done == ["a.png", "b.png"]
    with pytest.raises(MedxganError, match=r"different settings \(inversion\)"):
        ExplainManifest.open(tmp_path, {**settings, "inversion": {"steps": 11, "betas": (0.5, 0.999)}})


def _per_image_json(out):
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "json").glob("*.json"))}


def test_resumed_run_equals_uninterrupted_run(demo_run, tmp_path):
    out, _ = demo_run
    files = sorted((out / "phantoms/positive").glob("*.png"))[:4]
    common = ["--model", out / "medxgan", "--steps", "10", "--restarts", "2", "--lig-steps", "4", "--frames", "3",
              "--methods", "difference,lig", "--batch-size", "2", "--report-details", "1", "--no-progress", "--device", "cpu"]
    rc, _, err = run_cli("explain", *files, *common, "--out", tmp_path / "whole")
    assert rc == 0, err
    # "interrupted" after 2 images: a first run over the first 2, then the whole job resumed
    rc, _, err = run_cli("explain", *files, *common, "--out", tmp_path / "parts", "--max-images", "2")
    assert rc == 0, err
    assert json.loads((tmp_path / "parts/manifest.json").read_text())["done"] == [str(f) for f in files[:2]]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "parts/json").glob("*.json")}
    rc, so, err = run_cli("explain", *files, *common, "--out", tmp_path / "parts", "--resume")
    assert rc == 0, err
    assert "2 of 4 images already done" in so and "explained 4 images (2 done by the earlier run)" in so
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished images must not be redone"
    whole, parts = _per_image_json(tmp_path / "whole"), _per_image_json(tmp_path / "parts")
    assert whole.keys() == parts.keys() and len(whole) == 4
    for name in whole:
        a, b = whole[name], parts[name]
        assert a.keys() == b.keys()
        for k in ("prob_image", "prob_reconstruction", "prob_negative", "ssim", "mse", "monotone"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (name, k)
    summary = json.loads((tmp_path / "parts/summary.json").read_text())
    assert [r["name"] for r in summary["images"]] == [str(f) for f in files] and summary["detailed_panels"] == 1
    html = (tmp_path / "parts/report.html").read_text()
    assert html.count('class="summary-row"') == 4 and html.count('class="card image-section"') == 1
    assert "Detailed panels are shown for the first 1 of 4 images" in html
    # the same directory with other settings is refused, in one line
    rc, _, err = run_cli("explain", *files, *common[:-2], "--steps", "11", "--out", tmp_path / "parts")
    assert_one_line_error(rc, err, "different settings", "inversion")
