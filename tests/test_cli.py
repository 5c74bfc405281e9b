"""The CLI end to end (--quick) and its one-line errors for users' mistakes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medxgan.cli import main

from conftest import assert_one_line_error, run_cli  # noqa: F401  (demo_run is a conftest fixture)


def test_demo_quick_end_to_end(demo_run):
    out, stdout = demo_run
    for f in ["phantoms/labels.csv", "classifier/classifier.safetensors", "classifier/split.json", "classifier/metrics.json",
              "medxgan/generator.safetensors", "medxgan/classifier.safetensors", "medxgan/stats.jsonl", "medxgan/samples.png",
              "medxgan/metrics.json", "medxgan/config.json", "report/report.html", "report/summary.json"]:
        assert (out / f).is_file(), f
    metrics = json.loads((out / "medxgan/metrics.json").read_text())
    m = metrics["generated"]
    assert m["n"] == 400 and 0 <= m["accuracy"] <= 1
    assert 0 <= metrics["realism"]["c2st_accuracy"] <= 1
    split = json.loads((out / "classifier/split.json").read_text())
    parts = [set(split["names"][s]) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    summary = json.loads((out / "report/summary.json").read_text())
    assert len(summary["images"]) == 3
    # the explained images are held-out test positives
    assert all(r["name"] in split["names"]["test"] for r in summary["images"])
    assert "report.html" in stdout
    # a second run re-uses what is done
    rc, so, se = run_cli("demo", "--quick", "--out", out, "--no-progress")
    assert rc == 0 and "re-using" in so


def test_info_and_list_methods(demo_run):
    out, _ = demo_run
    rc, so, _ = run_cli("info", out / "medxgan/generator.safetensors")
    assert rc == 0 and json.loads(so)["kind"] == "generator"
    rc, so, se = run_cli("fidelity", "--model", out / "medxgan", "--data", out / "phantoms", "--n-z1", "20", "--repeats", "2",
                         "--no-progress", "--out", out / "fid.json")
    assert rc == 0, se
    fid = json.loads((out / "fid.json").read_text())
    assert fid["generated_accuracy"]["n"] == 2 and 0 <= fid["realism.c2st_accuracy"] <= 1
    rc, so, _ = run_cli("explain", "--list-methods")
    assert rc == 0 and {"difference", "lig", "gradcam", "ig", "ig_negative"} <= set(so.split())


def test_explain_files_and_resume_train(demo_run, tmp_path):
    out, _ = demo_run
    pos = sorted((out / "phantoms/positive").glob("*.png"))[:2]
    rc, so, se = run_cli("explain", *pos, "--model", out / "medxgan", "--out", tmp_path / "rep", "--steps", "20",
                         "--restarts", "1", "--lig-steps", "4", "--methods", "difference,lig,gradcam", "--no-progress")
    assert rc == 0, se
    assert len(json.loads((tmp_path / "rep/summary.json").read_text())["images"]) == 2


def _folder(tmp_path, pos=2, neg=2, size=20):
    from PIL import Image
    import numpy as np

    root = tmp_path / "data"
    for cls, n in (("positive", pos), ("negative", neg)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((np.random.default_rng(i).random((size, size)) * 255).astype("uint8")).save(root / cls / f"{cls}{i}.png")
    return root


def test_user_errors_are_one_line(tmp_path, demo_run):
    out, _ = demo_run
    rc, _, err = run_cli("train-classifier", "--data", tmp_path / "missing", "--out", tmp_path / "r")
    assert_one_line_error(rc, err, "not found")
    root = _folder(tmp_path, pos=3, neg=0)
    shutil.rmtree(root / "negative")
    rc, _, err = run_cli("train-classifier", "--data", root, "--out", tmp_path / "r")
    assert_one_line_error(rc, err, "negative")
    root = _folder(tmp_path / "c")
    (root / "positive" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc, _, err = run_cli("train-classifier", "--data", root, "--out", tmp_path / "r")
    assert_one_line_error(rc, err, "broken.png")
    # a file that is not a medxgan model
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "classifier.safetensors").write_bytes(b"not a model at all")
    rc, _, err = run_cli("train", "--data", out / "phantoms", "--classifier", junk, "--out", tmp_path / "g")
    assert_one_line_error(rc, err, "not a medxgan model file")
    # generator model run missing
    rc, _, err = run_cli("explain", "x.png", "--model", junk, "--out", tmp_path / "e")
    assert_one_line_error(rc, err, "generator.safetensors")
    # classifier size differs from the GAN's configured size
    rc, _, err = run_cli("train", "--data", out / "phantoms", "--classifier", out / "classifier", "--out", tmp_path / "g2",
                         "--size", "64")
    assert_one_line_error(rc, err, "expects")
    # a bad --set
    rc, _, err = run_cli("train", "--data", out / "phantoms", "--classifier", out / "classifier", "--out", tmp_path / "g3",
                         "--set", "gan.steps=many")
    assert_one_line_error(rc, err, "gan.steps")
    # a finished run is not overwritten
    rc, _, err = run_cli("train", "--data", out / "phantoms", "--classifier", out / "classifier", "--out", out / "medxgan")
    assert_one_line_error(rc, err, "--resume")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e2", tmp_path / "nothing.png")
    assert_one_line_error(rc, err, "nothing.png")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e3", "--methods", "lig,magic", out / "phantoms")
    assert_one_line_error(rc, err, "magic")
    # inversion terms beyond Eq. 5: not with the paper's protocol, never negative
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e4", "--paper-inversion",
                         "--change-weight", "1", out / "phantoms")
    assert_one_line_error(rc, err, "--paper-inversion")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e5", "--neg-weight", "-1", out / "phantoms")
    assert_one_line_error(rc, err, "neg_weight")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e6", "--anchor-weight", "-1", out / "phantoms")
    assert_one_line_error(rc, err, "anchor_weight")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e7", "--warmup-steps", "-1", out / "phantoms")
    assert_one_line_error(rc, err, "warmup_steps")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e8", "--paper-inversion",
                         "--warmup-steps", "10", out / "phantoms")
    assert_one_line_error(rc, err, "--paper-inversion")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e9", "--ensemble", "0", out / "phantoms")
    assert_one_line_error(rc, err, "--ensemble")
    rc, _, err = run_cli("explain", "--model", out / "medxgan", "--out", tmp_path / "e10", "--ensemble", "2", "--encoder",
                         out / "phantoms")
    assert_one_line_error(rc, err, "--ensemble", "--restarts 2")
    assert not any((tmp_path / e).exists() for e in ("e4", "e5", "e6", "e7", "e8", "e9", "e10"))


def test_cache_dir_decodes_a_folder_once(tmp_path, monkeypatch):
    """--cache-dir keeps the decoded folder as one tensor file that a second run re-uses (same
    split); $MEDXGAN_CACHE_DIR is the fallback and the flag wins over it."""
    monkeypatch.delenv("MEDXGAN_CACHE_DIR", raising=False)
    root = _folder(tmp_path, pos=4, neg=4, size=20)
    tiny = ["--size", "16", "--device", "cpu", "--no-progress", "--set", "classifier.epochs=1",
            "--set", "classifier.width=4", "--set", "classifier.depth=2"]
    cache = tmp_path / "cache"
    for run in ("r1", "r2"):
        rc, _, err = run_cli("train-classifier", "--data", root, "--out", tmp_path / run, "--cache-dir", cache, *tiny)
        assert rc == 0, err
    assert len(list(cache.iterdir())) == 1 and next(cache.iterdir()).name.startswith("images-")
    assert json.loads((tmp_path / "r2/split.json").read_text()) == json.loads((tmp_path / "r1/split.json").read_text())
    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("MEDXGAN_CACHE_DIR", str(env_cache))
    assert main(["train-classifier", "--data", str(root), "--out", str(tmp_path / "r3"), "--cache-dir", str(cache), *tiny]) == 0
    assert not env_cache.exists() and len(list(cache.iterdir())) == 1  # the flag wins, and its file was re-used
    assert main(["train-classifier", "--data", str(root), "--out", str(tmp_path / "r4"), *tiny]) == 0
    assert len(list(env_cache.glob("images-*.pt"))) == 1


def test_unwritable_out(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; /proc takes no new directories
        target = Path("/proc/medxgan-unwritable") / "x"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "x"
    rc, _, err = run_cli("phantoms", "--out", target, "--n", "4", "--size", "16")
    assert_one_line_error(rc, err, str(target.parent))
    root = _folder(tmp_path, size=20)
    rc, _, err = run_cli("train-classifier", "--data", root, "--out", target, "--size", "16")
    assert_one_line_error(rc, err, "not writable")


def test_newer_model_and_full_disk(tmp_path, demo_run, monkeypatch, capsys):
    from safetensors.torch import save_file

    out, _ = demo_run
    model = tmp_path / "newer"
    shutil.copytree(out / "medxgan", model)
    save_file({"w": torch.zeros(2)}, model / "generator.safetensors",
              metadata={"format": "medxgan", "format_version": "99", "kind": "generator"})
    rc, _, err = run_cli("explain", "--model", model, "--data", out / "phantoms", "--n", "1", "--out", tmp_path / "e")
    assert_one_line_error(rc, err, "newer medxgan")
    # not enough disk for a checkpoint: one line, and the run directory holds no model file
    import medxgan.checkpoint as ckpt

    class Usage:
        free = 1024

    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: Usage())
    rc = main(["train", "--data", str(out / "phantoms"), "--classifier", str(out / "classifier"), "--out", str(tmp_path / "g"),
               "--no-progress", "--set", "gan.steps=2", "--set", "gan.ngf=4", "--set", "gan.ndf=4", "--set", "gan.batch_size=8",
               "--set", "gan.checkpoint_every=1"])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, "not enough disk space")
    assert not (tmp_path / "g" / "generator.safetensors").exists()


def test_bring_your_own_classifier(tmp_path, demo_run):
    """--classifier-factory with a weights file: packaged without training, loadable with no other input."""
    out, _ = demo_run
    mod = tmp_path / "byo_models.py"
    mod.write_text(
        "import torch.nn as nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
    )
    import importlib
    sys.path.insert(0, str(tmp_path))
    net = importlib.import_module("byo_models").tiny()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "medxgan", "train-classifier", "--data", str(out / "phantoms"), "--out",
                           str(tmp_path / "byo"), "--size", "32", "--classifier-factory", "byo_models:tiny", "--weights",
                           str(tmp_path / "w.safetensors"), "--no-progress"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    from medxgan.checkpoint import load_classifier

    clf, meta = load_classifier(tmp_path / "byo" / "classifier.safetensors")
    assert meta["kind"] == "classifier_factory" and clf.n_logits == 2
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.allclose(clf.positive_prob(x), torch.softmax(net.eval()(x), 1)[:, 1], atol=1e-6)


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path, demo_run):
    """A run killed with SIGKILL at an arbitrary moment resumes from its last atomic checkpoint
    to exactly the weights of an uninterrupted run with the same seed."""
    import signal
    import time

    from safetensors.torch import load_file

    out, _ = demo_run
    sets = ["gan.steps=300", "gan.checkpoint_every=10", "gan.sample_every=1000", "gan.ngf=8", "gan.ndf=8",
            "gan.batch_size=8", "gan.lam_start=5", "gan.lam_warmup=5", "gan.ema_start=3"]
    base = [sys.executable, "-m", "medxgan", "train", "--data", str(out / "phantoms"), "--classifier", str(out / "classifier"),
            "--no-progress", "--device", "cpu", "--eval-z1", "10"] + [a for s in sets for a in ("--set", s)]
    rc, _, err = run_cli(*base[3:], "--out", tmp_path / "full")
    assert rc == 0, err
    killed = tmp_path / "killed"
    proc = subprocess.Popen(base + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "train_state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere after the first checkpoint, possibly in the middle of writing another
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()  # nothing looks finished
    rc, _, err = run_cli(*base[3:], "--out", killed, "--resume")
    assert rc == 0, err
    a, b = load_file(tmp_path / "full" / "generator.safetensors"), load_file(killed / "generator.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (killed / "stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 300


def test_more_bad_inputs_are_one_line(tmp_path):
    """Images smaller than the model size with --no-upscale, NaN pixels, an empty class folder,
    a bad --window: each a one-line error naming the problem, and no run left behind."""
    import numpy as np
    from PIL import Image

    root = _folder(tmp_path, size=20)
    rc, _, err = run_cli("train-classifier", "--data", root, "--out", tmp_path / "r1", "--size", "32", "--no-upscale")
    assert_one_line_error(rc, err, "smaller than the model size 32")
    assert not (tmp_path / "r1" / "classifier.safetensors").exists()
    nan = np.full((20, 20), 0.5, np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, mode="F").save(root / "positive" / "nan.tif")
    rc, _, err = run_cli("train-classifier", "--data", root, "--out", tmp_path / "r2", "--size", "16")
    assert_one_line_error(rc, err, "nan.tif", "NaN")
    empty = tmp_path / "empty"
    (empty / "positive").mkdir(parents=True)
    (empty / "negative").mkdir()
    rc, _, err = run_cli("train-classifier", "--data", empty, "--out", tmp_path / "r3")
    assert_one_line_error(rc, err, "no images")
    rc, _, err = run_cli("train-classifier", "--data", root, "--out", tmp_path / "r4", "--window", "40,0")
    assert_one_line_error(rc, err, "window")


def test_train_encoder_and_explain_with_it(tmp_path, demo_run):
    out, _ = demo_run
    model = tmp_path / "model"
    shutil.copytree(out / "medxgan", model)
    rc, _, err = run_cli("explain", "--model", model, "--data", out / "phantoms", "--n", "1", "--out", tmp_path / "e0", "--encoder")
    assert_one_line_error(rc, err, "train-encoder")
    rc, _, err = run_cli("evaluate", "--model", model, "--data", out / "phantoms", "--out", tmp_path / "v0", "--encoder", "--quick")
    assert_one_line_error(rc, err, "train-encoder")
    assert not (tmp_path / "v0").exists()  # refused before anything is written
    rc, so, err = run_cli("train-encoder", "--model", model, "--data", out / "phantoms", "--steps", "20", "--no-progress")
    assert rc == 0, err
    assert (model / "encoder.safetensors").exists() and "SSIM" in so
    rc, so, err = run_cli("explain", "--model", model, "--data", out / "phantoms", "--n", "2", "--out", tmp_path / "e1", "--encoder",
                          "--steps", "20", "--lig-steps", "4", "--methods", "difference,lig", "--no-progress")
    assert rc == 0, err
    info = json.loads((tmp_path / "e1" / "summary.json").read_text())["model_info"]
    assert info["inversion"].startswith("encoder start")
    # a pixel warm-up before the Eq. 5 steps: both phases run (no early stop within 30 steps) and
    # the report says so
    rc, so, err = run_cli("explain", "--model", model, "--data", out / "phantoms", "--n", "2", "--out", tmp_path / "e2", "--encoder",
                          "--steps", "10", "--warmup-steps", "20", "--lig-steps", "4", "--methods", "difference", "--no-progress")
    assert rc == 0, err
    summary = json.loads((tmp_path / "e2" / "summary.json").read_text())
    assert summary["model_info"]["inversion"] == "encoder start + 20 pixel warm-up steps + 10 steps x 1 start(s)"
    per_image = [json.loads((tmp_path / "e2" / r["json"]).read_text()) for r in summary["images"]]
    assert [r["quality"]["steps_run"] for r in per_image] == [30, 30]
    # evaluate --encoder: the model's inversions start from E(x); convergence perturbs that start.
    rc, so, err = run_cli("evaluate", "--model", model, "--data", out / "phantoms", "--out", tmp_path / "v1", "--encoder",
                          "--quick", "--n-images", "2", "--repeats", "2", "--experiments", "convergence,counterfactual",
                          "--methods", "difference,lig", "--no-progress", "--device", "cpu")
    assert rc == 0, err
    data = json.loads((tmp_path / "v1" / "metrics.json").read_text())
    assert data["meta"]["encoder"] is True and data["meta"]["inversion"]["restarts"] == 1
    assert data["metrics"]["convergence.start"].startswith("encoder")
    assert data["metrics"]["convergence.cosine"]["n"] == 2 and "counterfactual_drop.lig" in data["metrics"]
    assert data["metrics"]["convergence.cosine"]["mean"] < 1.0  # perturbed starts (σ 0.5) do not land exactly together
    # --convergence-sigma 0: the deterministic encoder start, so every repeat finds the same latent.
    rc, so, err = run_cli("evaluate", "--model", model, "--data", out / "phantoms", "--out", tmp_path / "v2", "--encoder",
                          "--quick", "--n-images", "2", "--repeats", "2", "--experiments", "convergence", "--convergence-sigma", "0",
                          "--no-progress", "--device", "cpu")
    assert rc == 0, err
    data = json.loads((tmp_path / "v2" / "metrics.json").read_text())
    assert data["metrics"]["convergence.start"] == "encoder + 0 N(0, I)" and data["meta"]["convergence_sigma"] == 0
    assert data["metrics"]["convergence.cosine"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert data["metrics"]["convergence.ssim"]["mean"] == pytest.approx(1.0, abs=1e-6)
    # --anchor-weight pulls every perturbed start back toward E(x): the repeats agree more than in v1.
    rc, so, err = run_cli("evaluate", "--model", model, "--data", out / "phantoms", "--out", tmp_path / "v4", "--encoder",
                          "--quick", "--n-images", "2", "--repeats", "2", "--experiments", "convergence", "--anchor-weight", "10",
                          "--no-progress", "--device", "cpu")
    assert rc == 0, err
    anchored = json.loads((tmp_path / "v4" / "metrics.json").read_text())
    assert anchored["meta"]["inversion"]["anchor_weight"] == 10
    v1 = json.loads((tmp_path / "v1" / "metrics.json").read_text())["metrics"]["convergence.cosine"]["mean"]
    assert anchored["metrics"]["convergence.cosine"]["mean"] > v1 + 0.05, (anchored["metrics"]["convergence.cosine"], v1)
    rc, _, err = run_cli("evaluate", "--model", model, "--data", out / "phantoms", "--out", tmp_path / "v3", "--encoder",
                         "--convergence-sigma", "-1")
    assert_one_line_error(rc, err, "--convergence-sigma")
    rc, _, err = run_cli("evaluate", "--model", model, "--data", out / "phantoms", "--out", tmp_path / "v3",
                         "--convergence-sigma", "0.1")
    assert_one_line_error(rc, err, "--convergence-sigma", "--encoder")
    assert not (tmp_path / "v3").exists()
    rc, _, err = run_cli("train-encoder", "--model", model, "--data", out / "phantoms", "--set", "gan.lr_g=1")
    assert_one_line_error(rc, err, "encoder.")


def _tiny_train_args(out, run, steps):
    sets = [f"gan.steps={steps}", "gan.checkpoint_every=10", "gan.sample_every=100000", "gan.ngf=8", "gan.ndf=8",
            "gan.batch_size=8", "gan.lam_start=5", "gan.lam_warmup=5", "gan.ema_start=3"]
    return ["train", "--data", str(out / "phantoms"), "--classifier", str(out / "classifier"), "--out", str(run),
            "--no-progress", "--device", "cpu", "--eval-z1", "10"] + [a for s in sets for a in ("--set", s)]


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, demo_run):
    """SIGINT (Ctrl-C) mid-training: exit code 130, one line, a checkpoint to resume from, and
    nothing that looks like a finished run."""
    import signal
    import time

    out, _ = demo_run
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "medxgan", *_tiny_train_args(out, run, 100000)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "train_state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("medxgan: error: interrupted at step") and "--resume" in lines[-1], err
    assert "Traceback" not in err
    assert (run / "generator.safetensors").exists() and not (run / "metrics.json").exists()
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["step"] > 0


def test_malicious_train_state_is_refused_on_resume(tmp_path, demo_run):
    """A pickle disguised as the training state of a run is never unpickled by --resume."""
    out, _ = demo_run
    run = tmp_path / "run"
    rc, _, err = run_cli(*_tiny_train_args(out, run, 10))
    assert rc == 0, err
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"step": Evil()}, run / "train_state.pt")
    (run / "metrics.json").unlink()
    rc, _, err = run_cli(*_tiny_train_args(out, run, 20), "--resume")
    assert_one_line_error(rc, err, "cannot resume")
    assert not marker.exists()


def test_explain_with_mask_takes_outlined_images_only(tmp_path, demo_run):
    """--with-mask keeps the test positives that have a lesion mask; with no mask source it is a
    one-line error."""
    out, _ = demo_run
    common = ["--model", out / "medxgan", "--n", "2", "--steps", "10", "--restarts", "1", "--lig-steps", "4",
              "--methods", "difference", "--no-progress", "--device", "cpu", "--with-mask"]
    rc, _, err = run_cli("explain", "--data", out / "phantoms", "--out", tmp_path / "rep", *common)
    assert rc == 0, err
    rows = json.loads((tmp_path / "rep/summary.json").read_text())["images"]
    assert len(rows) == 2
    from PIL import Image

    with Image.open(tmp_path / "rep/overview.png") as fig:  # one row per image, original + maps side by side
        assert fig.size[0] > fig.size[1] > 100
    bare = tmp_path / "bare"
    shutil.copytree(out / "phantoms", bare, ignore=shutil.ignore_patterns("masks"))
    rc, _, err = run_cli("explain", "--data", bare, "--out", tmp_path / "rep2", *common)
    assert_one_line_error(rc, err, "--with-mask")


def test_held_out_commands_refuse_a_run_without_its_split(tmp_path, demo_run):
    """explain --data, fidelity and evaluate choose held-out images by the run's split.json; without
    it they stop with one line instead of drawing a fresh split that could hold training images."""
    out, _ = demo_run
    run = tmp_path / "run"
    shutil.copytree(out / "medxgan", run, ignore=shutil.ignore_patterns("split.json"))
    for argv in (["explain", "--model", run, "--data", out / "phantoms", "--out", tmp_path / "e"],
                 ["fidelity", "--model", run, "--data", out / "phantoms"],
                 ["evaluate", "--model", run, "--data", out / "phantoms", "--out", tmp_path / "v", "--gan-steps", "0"]):
        rc, _, err = run_cli(*argv, "--no-progress")
        assert_one_line_error(rc, err, "split.json" if argv[0] != "evaluate" else "--gan-steps")
    rc, _, err = run_cli("evaluate", "--model", run, "--data", out / "phantoms", "--out", tmp_path / "v", "--no-progress")
    assert_one_line_error(rc, err, "split.json")


def test_an_error_met_on_one_torchrun_rank_is_said(tmp_path, monkeypatch, capsys):
    # under torchrun an error only rank 1 meets (e.g. one of its images) must reach the user
    monkeypatch.setenv("RANK", "1")
    rc = main(["explain", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "x.png"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("medxgan: error (rank 1):") and "missing" in err and len(err.splitlines()) == 1


def test_paper_inversion_keeps_the_seed(tmp_path, demo_run, monkeypatch, capsys):
    """--paper-inversion swaps in the paper's optimiser settings but still draws its start from --seed."""
    import medxgan.explain as explain_pkg
    from medxgan.errors import MedxganError

    out, _ = demo_run
    seen = []

    def capture(*args, inversion=None, **kw):
        seen.append(inversion)
        raise MedxganError("captured")

    monkeypatch.setattr(explain_pkg, "explain_images", capture)
    pos = sorted((out / "phantoms/positive").glob("*.png"))[:1]
    for seed in (0, 3):
        rc = main(["explain", *map(str, pos), "--model", str(out / "medxgan"), "--out", str(tmp_path / f"p{seed}"),
                   "--paper-inversion", "--seed", str(seed), "--methods", "difference", "--no-progress", "--device", "cpu"])
        assert rc != 0 and "captured" in capsys.readouterr().err
    assert [(c.steps, c.restarts, c.seed) for c in seen] == [(10_000, 1, 0), (10_000, 1, 3)]


def test_explain_ensemble_end_to_end(demo_run, tmp_path):
    """--ensemble 2: agreement per image in the JSON, the summary and the report; the run's settings
    include it, so a run without it cannot resume into the same folder."""
    out, _ = demo_run
    pos = sorted((out / "phantoms/positive").glob("*.png"))[:2]
    args = [*pos, "--model", out / "medxgan", "--out", tmp_path / "ens", "--steps", "10", "--restarts", "1",
            "--lig-steps", "2", "--methods", "difference,lig", "--no-progress", "--device", "cpu"]
    rc, so, se = run_cli("explain", *args, "--ensemble", "2")
    assert rc == 0, se
    assert "agreement of the 2 explanations" in so
    rows = json.loads((tmp_path / "ens/summary.json").read_text())["images"]
    assert len(rows) == 2 and all(r["members"] == 2 and -1 <= r["agreement"] <= 1 for r in rows)
    assert ">Agreement</th>" in (tmp_path / "ens/report.html").read_text()
    rc, _, err = run_cli("explain", *args)
    assert_one_line_error(rc, err, "ensemble")


def test_explain_smooth_end_to_end(demo_run, tmp_path):
    """--smooth 1.5: the saved maps are the blurred raw maps, the JSON, manifest and report say so,
    and a run with raw maps cannot resume into the same folder; a bad sigma is a one-line error."""
    import numpy as np

    from medxgan.explain import smooth_maps

    out, _ = demo_run
    args = ["--data", out / "phantoms", "--n", "2", "--model", out / "medxgan", "--steps", "10", "--restarts", "1",
            "--lig-steps", "2", "--methods", "difference,lig", "--no-progress", "--device", "cpu"]
    assert run_cli("explain", *args, "--out", tmp_path / "raw")[0] == 0
    rc, _, se = run_cli("explain", *args, "--out", tmp_path / "blur", "--smooth", "1.5")
    assert rc == 0, se
    name = json.loads((tmp_path / "blur/summary.json").read_text())["images"][0]["safe_name"]
    with np.load(tmp_path / "raw/raw" / f"{name}.npz") as r, np.load(tmp_path / "blur/raw" / f"{name}.npz") as b:
        for k in ("map_difference", "map_lig", "map_accumulated"):
            assert np.allclose(b[k], smooth_maps(torch.from_numpy(r[k]), 1.5).numpy(), atol=1e-6)
        assert np.array_equal(b["negative"], r["negative"])
    assert json.loads((tmp_path / "blur/json" / f"{name}.json").read_text())["smoothing_sigma_px"] == 1.5
    assert json.loads((tmp_path / "blur/manifest.json").read_text())["settings"]["smooth"] == 1.5
    assert "smooth" not in json.loads((tmp_path / "raw/manifest.json").read_text())["settings"]
    assert "blurred, \u03c3 = 1.5 px" in (tmp_path / "blur/report.html").read_text()
    rc, _, err = run_cli("explain", *args, "--out", tmp_path / "blur")
    assert_one_line_error(rc, err, "smooth")
    for bad in ("-1", "nan"):
        rc, _, err = run_cli("explain", *args, "--out", tmp_path / "bad", "--smooth", bad)
        assert_one_line_error(rc, err, "--smooth")
    assert not (tmp_path / "bad").exists()
    # the benchmark scores a raw run with --smooth exactly as the run made with --smooth
    bench = Path(__file__).resolve().parents[1] / "bench" / "explain_acceptance.py"
    scored = {}
    for tag, extra in (("raw", ["--smooth", "1.5"]), ("blur", [])):
        proc = subprocess.run([sys.executable, str(bench), "--explain", str(tmp_path / tag), "--phantoms",
                               str(out / "phantoms"), "--json", str(tmp_path / f"{tag}.json"), *extra],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        scored[tag] = json.loads((tmp_path / f"{tag}.json").read_text())
    assert scored["raw"]["smooth_sigma_px"] == scored["blur"]["smooth_sigma_px"] == 1.5
    assert scored["raw"]["n_with_mask"] == 2
    for m in ("difference", "lig", "accumulated"):
        for key in ("pointing_game", "auprc"):
            assert scored["raw"]["localisation"][m][key] == pytest.approx(scored["blur"]["localisation"][m][key], abs=1e-6)
    proc = subprocess.run([sys.executable, str(bench), "--explain", str(tmp_path / "blur"), "--smooth", "1",
                           "--json", str(tmp_path / "twice.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "already blurred" in proc.stderr and "Traceback" not in proc.stderr
