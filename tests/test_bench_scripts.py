"""The acceptance script of the explanation issue on the quick demo's report (tiny, CPU)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_explain_acceptance_on_the_quick_demo(demo_run, tmp_path):
    run, _ = demo_run
    out = tmp_path / "acc.json"
    proc = subprocess.run([sys.executable, str(BENCH / "explain_acceptance.py"), "--explain", str(run / "report"),
                           "--phantoms", str(run / "phantoms"), "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    summary = json.loads((run / "report" / "summary.json").read_text())["images"]
    assert got["n"] == len(summary) > 0
    assert abs(got["ssim_mean"] - np.mean([r["ssim"] for r in summary])) < 1e-9
    assert got["negative_below_0.1"] == np.mean([r["prob_negative"] < 0.1 for r in summary])
    # the noise-free phantom is far closer to the image than any quick-demo reconstruction
    assert 0.5 < got["ssim_ceiling_mean"] < 1.0 and got["ssim_ceiling_mean"] > got["ssim_mean"]
    assert set(got["localisation"]) >= {"difference", "lig"}
    for scores in got["localisation"].values():
        assert 0 <= scores["pointing_game"] <= 1 and 0 <= scores["auprc"] <= 1
    # where each maximum lies: the places partition the images, and "tumour" is the pointing game
    exact = got["exact_counterfactual"]
    for scores in [exact, *got["localisation"].values()]:
        assert abs(sum(scores["max_places"].values()) - 1) < 1e-9
        assert abs(scores["max_places"]["tumour"] - scores["pointing_game"]) < 1e-9
    # the exact counterfactual changes nothing the lesion did not change
    assert exact["max_places"]["elsewhere"] == 0 and exact["auprc"] > 0.3
    # the wrong phantom seed is named, not silently scored
    proc = subprocess.run([sys.executable, str(BENCH / "explain_acceptance.py"), "--explain", str(run / "report"),
                           "--phantoms", str(run / "phantoms"), "--phantom-seed", "7", "--json", str(tmp_path / "x.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "phantom seed 7" in proc.stderr and "Traceback" not in proc.stderr

    # a run twice is an ensemble of two identical members: agreement 1, the same scores
    proc = subprocess.run([sys.executable, str(BENCH / "explain_acceptance.py"), "--explain", str(run / "report"),
                           str(run / "report"), "--json", str(tmp_path / "twice.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    twice = json.loads((tmp_path / "twice.json").read_text())
    assert twice["agreement"]["median"] == pytest.approx(1.0) and twice["agreement"]["pointing_game_below_median"] is None
    assert twice["ssim_mean"] == pytest.approx(got["ssim_mean"])
    for m, scores in twice["localisation"].items():
        assert scores["pointing_game"] == got["localisation"][m]["pointing_game"]
        assert scores["auprc"] == pytest.approx(got["localisation"][m]["auprc"], abs=1e-9)
    # members must explain the same images
    other = tmp_path / "other"
    shutil.copytree(run / "report", other)
    summary_file = other / "summary.json"
    data = json.loads(summary_file.read_text())
    data["images"] = data["images"][:-1]
    summary_file.write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, str(BENCH / "explain_acceptance.py"), "--explain", str(run / "report"),
                           str(other), "--json", str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "same ones" in proc.stderr and "Traceback" not in proc.stderr


def test_inversion_benchmark_batches_ours_apart_from_the_paper_protocol(demo_run, tmp_path):
    """bench/inversion.py on the quick demo: every method sees the same test positives in the same
    order, the paper protocol one at a time and ours in one batch, and the speed-up is the paper's
    time over the time to its SSIM."""
    run, _ = demo_run
    out = tmp_path / "inv.json"
    proc = subprocess.run([sys.executable, str(BENCH / "inversion.py"), "--model", str(run / "medxgan"),
                           "--data", str(run / "phantoms"), "--n", "3", "--paper-steps", "30", "--trace-every", "10",
                           "--random-steps", "20", "--random-restarts", "2", "--methods", "paper,random",
                           "--batch-size", "1", "--ours-batch-size", "3", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    paper, ours = got["per_image"]["paper"], got["per_image"]["random"]
    assert [r["name"] for r in paper] == [r["name"] for r in ours] and len(paper) == 3
    # ours ran as one batch of 3: one wall time shared by its images; the paper protocol's differ
    assert len({r["seconds"] for r in ours}) == 1
    assert len({r["seconds"] for r in paper}) == 3
    assert all(r["steps_run"] == 30 for r in paper)  # fixed step count, no early stopping
    for p, r in zip(paper, ours):
        assert p["seconds_to_paper_ssim"] is not None  # the protocol reaches its own final SSIM
        if r["seconds_to_paper_ssim"] is not None:
            assert abs(r["speedup_to_paper_ssim"] - p["seconds"] / r["seconds_to_paper_ssim"]) < 1e-9
    assert got["summary"]["paper"]["final_at_paper_ssim"] == "3/3"
    assert "paper) / 3 (ours)" in proc.stdout


def test_tuning_sweep_on_the_quick_demo(demo_run, tmp_path):
    """bench/tuning_sweep.py retunes from the latents an explain run stored. With a vanishing learning
    rate the tuned copy is the run's generator, so the SSIM is that of the run's latent-only
    inversion (the demo's report is tuned, and keeps that SSIM as ssim_latent); a real learning
    rate fits the image more closely."""
    run, _ = demo_run
    got = {}
    for lr in ("1e-12", "1e-3"):
        out = tmp_path / f"sweep{lr}.json"
        proc = subprocess.run([sys.executable, str(BENCH / "tuning_sweep.py"), "--model", str(run / "medxgan"),
                               "--explain", str(run / "report"), "--n", "1", "--steps", "30", "--lr", lr, "--lig-steps", "2",
                               "--threads", "1", "--json", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        got[lr] = json.loads(out.read_text())
    row = got["1e-12"]["per_image"][0]
    quality = json.loads((run / "report" / "json" / f"{row['name']}.json").read_text())["quality"]
    assert abs(row["ssim"] - quality["ssim_latent"]) < 1e-3
    assert got["1e-3"]["ssim_mean"] > got["1e-12"]["ssim_mean"]
    assert got["1e-3"]["config"]["steps"] == 30 and got["1e-3"]["n"] == 1
    assert 0 <= got["1e-3"]["difference_pointing_game"] <= 1  # the quick demo's phantoms have masks
    # a folder that is not an explain run: one line, exit 2
    proc = subprocess.run([sys.executable, str(BENCH / "tuning_sweep.py"), "--model", str(run / "medxgan"),
                           "--explain", str(tmp_path), "--json", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "raw/*.npz" in proc.stderr and "Traceback" not in proc.stderr
    # --names picks images by stem: the last image alone, and its per-image hit is the pointing game of one image
    stems = sorted(p.name.split(".")[0] for p in (run / "report" / "raw").glob("*.npz"))
    out = tmp_path / "named.json"
    proc = subprocess.run([sys.executable, str(BENCH / "tuning_sweep.py"), "--model", str(run / "medxgan"),
                           "--explain", str(run / "report"), "--names", stems[-1], "--steps", "5", "--lig-steps", "2",
                           "--threads", "1", "--smooth", "2", "--save-maps", str(tmp_path / "maps"), "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    named = json.loads(out.read_text())
    assert [r["name"].split(".")[0] for r in named["per_image"]] == [stems[-1]]
    assert float(named["per_image"][0]["difference_hit"]) == named["difference_pointing_game"]
    # the saved maps are the ones scored: rescored here, raw and blurred, they give the recorded numbers
    import numpy as np
    import torch
    from medxgan.evaluate.localisation import localisation_scores
    from medxgan.explain import smooth_maps

    with np.load(tmp_path / "maps" / f"{stems[-1]}.npz") as d:
        diff = torch.from_numpy(np.abs(d["reconstruction"] - d["negative"]))[None]
        mask = torch.from_numpy(d["mask"])[None].bool()
        assert d["image"].shape == d["lig"].shape == d["negative"].shape
    for key, maps in (("difference", diff), ("difference_smooth2", smooth_maps(diff, 2.0))):
        s = localisation_scores(maps, mask)
        assert float(np.mean(s["pointing_game"])) == named[f"{key}_pointing_game"]
        assert abs(float(np.mean(s["auprc"])) - named[f"{key}_auprc"]) < 1e-6
    proc = subprocess.run([sys.executable, str(BENCH / "tuning_sweep.py"), "--model", str(run / "medxgan"),
                           "--explain", str(run / "report"), "--names", "no_such_image", "--json", str(tmp_path / "y.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no_such_image" in proc.stderr and "Traceback" not in proc.stderr
