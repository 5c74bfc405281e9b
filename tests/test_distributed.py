"""Data-parallel training and explanation with torchrun on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medxgan import distributed as dist_

from conftest import run_cli

HERE = Path(__file__).resolve().parent
WORKER = HERE / "ddp_worker.py"


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def plain(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_epoch_shards_are_disjoint_and_cover_the_epoch():
    for n, world in ((40, 2), (41, 3), (7, 7)):
        for epoch in (0, 1):
            shards = [dist_.epoch_shard(n, epoch, 5, dist_.Context(world, r)) for r in range(world)]
            flat = [i for s in shards for i in s]
            assert len(set(flat)) == len(flat) == (n // world) * world
            assert all(len(s) == n // world for s in shards)
        assert dist_.epoch_shard(n, 0, 5, dist_.Context(world, 0)) != dist_.epoch_shard(n, 1, 5, dist_.Context(world, 0))
    blocks = [list(dist_.block(10, dist_.Context(3, r))) for r in range(3)]
    assert blocks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_ddp_training_matches_single_process_and_resumes_under_one(tmp_path):
    ddp, single, resumed, single14 = (tmp_path / n for n in ("ddp", "single", "resumed", "single14"))
    torchrun(WORKER, ddp, 10)
    r0, r1 = torch.load(ddp / "rank0.pt"), torch.load(ddp / "rank1.pt")
    # identical replicas after training
    for part in ("G", "D"):
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part])
    # each rank saw a disjoint shard of every epoch (40 images, 2 ranks, 4 per rank per step: 2 epochs)
    assert [e for e, _ in r0["shards"]] == [0, 1] == [e for e, _ in r1["shards"]]
    for (_, a), (_, b) in zip(r0["shards"], r1["shards"]):
        assert not set(a) & set(b) and len(a) == len(b) == 20
    # the same global batch in one process: same weights up to float summation order
    plain(WORKER, single, 10)
    s = torch.load(single / "rank0.pt")
    for part in ("G", "D"):
        for k in s[part]:
            torch.testing.assert_close(s[part][k], r0[part][k], rtol=1e-4, atol=1e-5)
    # the 2-process checkpoint resumes in 1 process and continues as a 1-process run would
    import shutil

    shutil.copytree(ddp, resumed)
    plain(WORKER, resumed, 14, "--resume")
    plain(WORKER, single14, 14)
    a, b = torch.load(resumed / "rank0.pt"), torch.load(single14 / "rank0.pt")
    for k in a["G"]:
        torch.testing.assert_close(a["G"][k], b["G"][k], rtol=1e-4, atol=1e-5)
    steps = [json.loads(l)["step"] for l in (resumed / "stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 14


def test_torchrun_cli_train_and_explain_match_single_process(tmp_path, demo_run):
    out, _ = demo_run
    sets = ["gan.steps=8", "gan.batch_size=8", "gan.ngf=4", "gan.ndf=4", "gan.z1_dim=8", "gan.z2_dim=4",
            "gan.checkpoint_every=4", "gan.sample_every=4"]
    common = ["--no-progress", "--device", "cpu"]
    torchrun("-m", "medxgan", "train-classifier", "--data", out / "phantoms", "--out", tmp_path / "clf",
             "--set", "classifier.epochs=1", "--set", "classifier.width=4", "--set", "classifier.depth=2",
             "--set", "classifier.batch_size=16", *common)
    assert (tmp_path / "clf" / "classifier.safetensors").exists()
    torchrun("-m", "medxgan", "train", "--data", out / "phantoms", "--classifier", tmp_path / "clf", "--out", tmp_path / "gan",
             "--eval-z1", "10", *[a for s in sets for a in ("--set", s)], *common)
    metrics = json.loads((tmp_path / "gan" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 8
    # explanation: 5 images over 2 ranks (3 + 2) -> the same per-image results as one process
    explain = ["explain", "--model", out / "medxgan", "--data", out / "phantoms", "--max-images", "5", "--steps", "20", "--restarts", "2",
               "--lig-steps", "4", "--methods", "difference,lig", "--batch-size", "2", *common]
    torchrun("-m", "medxgan", *explain, "--out", tmp_path / "ex2")
    rc, _, err = run_cli(*explain, "--out", tmp_path / "ex1")
    assert rc == 0, err
    s1 = json.loads((tmp_path / "ex1" / "summary.json").read_text())["images"]
    s2 = json.loads((tmp_path / "ex2" / "summary.json").read_text())["images"]
    assert [r["name"] for r in s1] == [r["name"] for r in s2] and len(s1) == 5
    for a, b in zip(s1, s2):
        for k in ("prob_reconstruction", "prob_negative", "ssim", "mse"):
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-5), (a["name"], k)
