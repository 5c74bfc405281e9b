"""Single-process GAN training throughput: median seconds per step of `train_gan` over repeats.

    python bench/training_step.py --size 64 --batch-size 32 --steps 40 --repeats 3 [--device cpu]
    python bench/training_step.py --batch-size 24 --steps 30 --profile    # where a step's time goes

Uses random images and a freshly initialised classifier (throughput does not depend on what the
weights are). Prints one JSON line. Used to check that a change (e.g. the torchrun support) does
not slow the single-process path: run it on both commits, on an otherwise idle machine.

``--profile`` runs ``--steps`` steps under torch.profiler instead and prints the share of a step
spent in each phase of ``train_step`` (its ``record_function`` labels ``gan/...``; backward work
that autograd runs inside a later phase is counted there) and the operators with the most self
CPU time.
"""

import argparse
import json
import os
import statistics
import time

import torch

from medxgan.config import ClassifierConfig, GANConfig
from medxgan.models.classifier import build_classifier
from medxgan.training.gan import train_gan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--classifier-width", type=int, default=24)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler breakdown instead of timing")
    ap.add_argument("--recipe", action="store_true", help="the default recipe's step (batch pairs, classifier "
                    "augmentation, margin, change prior) instead of the plain step; lambda on from step 0 either way")
    a = ap.parse_args()
    images = torch.rand(512, 1, a.size, a.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    clf = build_classifier(ClassifierConfig(width=a.classifier_width), a.size, 1)
    plain = {} if a.recipe else {"cls_augment": False, "cls_margin": 0.0, "change_l1": 0.0, "d_mbstd_group": 1}
    cfg = GANConfig(ngf=a.ngf, ndf=a.ngf, batch_size=a.batch_size, steps=a.steps, lam_start=0, lam_warmup=0, ema_start=0, **plain)
    train_gan(GANConfig(ngf=a.ngf, ndf=a.ngf, batch_size=a.batch_size, steps=3), images, clf, device=a.device, progress=False)
    if a.profile:
        profile(cfg, images, clf, a)
        return
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        train_gan(cfg, images, clf, device=a.device, progress=False)
        times.append((time.perf_counter() - t) / a.steps)
    med = statistics.median(times)
    print(json.dumps({"seconds_per_step": round(med, 4), "images_per_second": round(a.batch_size / med, 1),
                      "all": [round(t, 4) for t in times], "size": a.size, "batch_size": a.batch_size, "ngf": a.ngf,
                      "device": a.device, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                      "torch": torch.__version__}))


def profile(cfg, images, clf, a):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
    with torch_profile(activities=activities) as prof:
        t = time.perf_counter()
        train_gan(cfg, images, clf, device=a.device, progress=False)
        wall = time.perf_counter() - t
    events = prof.key_averages()
    phases = sorted((e for e in events if e.key.startswith("gan/")), key=lambda e: -e.cpu_time_total)
    total = sum(e.cpu_time_total for e in phases)
    print(f"{a.steps} steps, {wall / a.steps * 1000:.0f} ms / step under the profiler "
          f"(batch {cfg.batch_size}, {a.size} px, ngf {cfg.ngf}, classifier width {a.classifier_width}, "
          f"{torch.get_num_threads()} threads, {'recipe' if a.recipe else 'plain'} step)\n")
    print("| phase of train_step | ms / step | share |\n|---|---|---|")
    for e in phases:
        print(f"| {e.key} | {e.cpu_time_total / 1000 / a.steps:.1f} | {e.cpu_time_total / total:.0%} |")
    print("\nOperators by self CPU time:\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
