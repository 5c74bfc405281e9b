"""Single-process GAN training throughput: median seconds per step of `train_gan` over repeats.

    python bench/training_step.py --size 64 --batch-size 32 --steps 40 --repeats 3 [--device cpu]

Uses random images and a freshly initialised classifier (throughput does not depend on what the
weights are). Prints one JSON line. Used to check that a change (e.g. the torchrun support) does
not slow the single-process path: run it on both commits, on an otherwise idle machine.
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
    a = ap.parse_args()
    images = torch.rand(512, 1, a.size, a.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    clf = build_classifier(ClassifierConfig(width=a.classifier_width), a.size, 1)
    cfg = GANConfig(ngf=a.ngf, ndf=a.ngf, batch_size=a.batch_size, steps=a.steps, lam_start=0, lam_warmup=0)
    train_gan(GANConfig(ngf=a.ngf, ndf=a.ngf, batch_size=a.batch_size, steps=3), images, clf, device=a.device, progress=False)
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


if __name__ == "__main__":
    main()
