"""Wall time to a realistic generator: our default GAN configuration against the paper's
architecture at the paper's hyperparameters, both trained by our loop within the same budget.

    python bench/training.py --data /work/shared/data/br35h --classifier CLASSIFIER_RUN --budget-s 3600 \
        [--paper-budget-s S] [--eval-every-s 300] [--device cpu] [--threads 2] [--repeats 1]

Configurations (``--ours-set`` / ``--paper-set`` add ``gan.KEY=VALUE`` overrides):

* ``ours``: ``GANConfig()`` defaults (what ``medxgan train`` uses);
* ``paper``: ``gan.arch=paper`` (the official Generator Linear(z -> 768) + ConvTranspose2d
  768 -> 384 -> 256 -> 192 -> C, and its Discriminator), Adam 2e-4 for G and D, betas (0.5, 0.999),
  λ = 2 from the first step and Eq. 4's plain classifier term (no margin, no classifier-term
  augmentation, no change prior), everything else as our loop does it (EMA, DiffAugment).

Each configuration trains in its own child process (so peak memory is its own) on the
classifier run's training split, for ``--budget-s`` seconds of training time (the paper architecture: ``--paper-budget-s``). Every
``--eval-every-s`` seconds of training the clock stops and the EMA generator is evaluated:
generated accuracy (paper Table 1 protocol, ``--n-z1`` anatomy codes x (1 negative + 3
positives)), realism by a classifier two-sample test (C2ST accuracy, 0.5 = indistinguishable) and
the Fréchet distance in a rotation-pretext feature space, both against the held-out real images
(val + test). Reported: step throughput (images/s), peak RSS, the best values, and the training
time until generated accuracy >= ``--target-accuracy`` **and** realism at least as good as the
paper architecture's best within the budget (C2ST <= its lowest and Fréchet <= its lowest).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as B  # noqa: E402

# Eq. 4 as published: the recipe's additions to the loss (classifier-term margin and augmentation,
# paired change prior) are switched off explicitly, since GANConfig's defaults now turn them on.
PAPER_OVERRIDES = ["gan.arch=paper", "gan.lr_g=2e-4", "gan.lr_d=2e-4", "gan.beta1=0.5", "gan.beta2=0.999",
                   "gan.lam=2", "gan.lam_start=0", "gan.lam_warmup=0",
                   "gan.cls_margin=0", "gan.cls_augment=false", "gan.change_l1=0"]


def load_data(data: str, classifier_run: str):
    """(train images, held-out real images [val + test], classifier, run config) with the
    classifier run's data settings and saved split."""
    import torch

    from medxgan import checkpoint as ckpt
    from medxgan.cli import _classifier_path, _read_json, load_splits, run_split_file
    from medxgan.config import DataConfig, from_dict

    cpath = _classifier_path(classifier_run)
    classifier, _ = ckpt.load_classifier(cpath)
    dcfg = from_dict(DataConfig, _read_json(cpath.parent / "config.json", "run config").get("data", {}))
    splits = load_splits(data, dcfg, split_file=run_split_file(cpath.parent, data, required=False),
                         progress=False)
    held_out = torch.cat([splits["val"].images, splits["test"].images])
    return splits["train"].images, held_out, classifier


def train_for_budget(args, name: str, overrides: list[str], seed: int) -> dict:
    """Train one configuration for ``args.budget_s`` seconds of training time (the paper
    architecture: ``args.paper_budget_s``), evaluating on the way."""
    import torch

    from medxgan import distributed as dist_
    from medxgan.config import RunConfig, apply_overrides
    from medxgan.device import place
    from medxgan.evaluate.fidelity import generated_accuracy
    from medxgan.evaluate.realism import (c2st_accuracy, extract_features, frechet_distance, sample_images,
                                          train_feature_network)
    from medxgan.training.gan import init_state, train_step

    device = B.setup(args)
    cfg = apply_overrides(RunConfig(), [*overrides, f"gan.seed={seed}"]).gan
    train, held_out, classifier = load_data(args.data, args.classifier)
    classifier = place(classifier, device).frozen()  # channels-last, as train_gan runs it
    _, channels, size, _ = train.shape
    feature_net = train_feature_network(train, epochs=args.feature_epochs, seed=0, device=device)
    reference_features = extract_features(feature_net, held_out)
    floor_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:len(held_out)]
    frechet_floor = frechet_distance(reference_features, extract_features(feature_net, train[floor_idx]))

    state = init_state(cfg, size, channels, device)
    steps_per_epoch = len(train) // cfg.batch_size

    def evaluate(seconds: float) -> dict:
        G = state.ema.model.eval()
        acc = generated_accuracy(G, classifier, n_z1=args.n_z1, seed=1234, device=device)
        fake = sample_images(G, len(held_out), seed=1)
        record = {"train_seconds": round(seconds, 2), "step": state.step, "generated_accuracy": acc["accuracy"],
                  "c2st_accuracy": c2st_accuracy(held_out, fake.cpu(), epochs=args.c2st_epochs, seed=0, device=device)["accuracy"],
                  "frechet_distance": frechet_distance(reference_features, extract_features(feature_net, fake))}
        print(f"[{name}] {seconds:.0f}s step {state.step}: gen acc {record['generated_accuracy']:.3f}, "
              f"C2ST {record['c2st_accuracy']:.3f}, Fréchet {record['frechet_distance']:.2f}", file=sys.stderr)
        return record

    budget = args.paper_budget_s if name == "paper" else args.budget_s
    checkpoints, train_seconds, next_eval, shard_epoch, shard = [], 0.0, args.eval_every_s, -1, None
    while train_seconds < budget:
        epoch, k = divmod(state.step, steps_per_epoch)
        if epoch != shard_epoch:
            shard_epoch, shard = epoch, torch.tensor(dist_.epoch_shard(len(train), epoch, cfg.seed, dist_.SINGLE))
        real = train[shard[k * cfg.batch_size:(k + 1) * cfg.batch_size]].to(device)
        B.sync(device)
        start = time.perf_counter()
        train_step(state, real, classifier, cfg)
        B.sync(device)
        train_seconds += time.perf_counter() - start
        if train_seconds >= next_eval or train_seconds >= budget:
            checkpoints.append(evaluate(train_seconds))
            next_eval += args.eval_every_s
    return {"name": name, "overrides": overrides, "seed": seed, "config": cfg.__dict__, "steps": state.step,
            "train_seconds": train_seconds, "images_per_second": state.step * cfg.batch_size / train_seconds,
            "seconds_per_step": train_seconds / state.step, "peak_rss_mb": B.peak_rss_mb(),
            "frechet_floor": frechet_floor, "checkpoints": checkpoints}


def time_to_target(run: dict, accuracy: float, c2st: float, frechet: float):
    """Training seconds of the first checkpoint meeting all three bounds (None if none does)."""
    for c in run["checkpoints"]:
        if c["generated_accuracy"] >= accuracy and c["c2st_accuracy"] <= c2st + 1e-9 and c["frechet_distance"] <= frechet + 1e-9:
            return c["train_seconds"]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--classifier", required=True, help="train-classifier run (its split and data settings are used)")
    ap.add_argument("--budget-s", type=float, required=True, help="training seconds per configuration")
    ap.add_argument("--paper-budget-s", type=float,
                    help="training seconds for the paper architecture (default --budget-s): a longer budget for the slower "
                         "configuration bounds the speed-up from further above when it does not reach the target")
    ap.add_argument("--eval-every-s", type=float, help="training seconds between evaluations (default budget / 10)")
    ap.add_argument("--n-z1", type=int, default=250, help="anatomy codes of the generated-accuracy check")
    ap.add_argument("--c2st-epochs", type=int, default=8)
    ap.add_argument("--feature-epochs", type=int, default=6, help="epochs of the Fréchet feature network")
    ap.add_argument("--target-accuracy", type=float, default=0.95)
    ap.add_argument("--ours-set", action="append", default=[], metavar="gan.KEY=VALUE")
    ap.add_argument("--paper-set", action="append", default=[], metavar="gan.KEY=VALUE")
    ap.add_argument("--child", nargs=3, metavar=("NAME", "SEED", "OUT"), help=argparse.SUPPRESS)
    B.add_common_args(ap, repeats=1)
    args = ap.parse_args()
    args.eval_every_s = args.eval_every_s or args.budget_s / 10
    args.paper_budget_s = args.paper_budget_s or args.budget_s
    configs = {"ours": args.ours_set, "paper": PAPER_OVERRIDES + args.paper_set}
    if args.child:
        from medxgan.errors import MedxganError

        name, seed, out = args.child
        try:
            B.write_json(out, train_for_budget(args, name, configs[name], int(seed)))
        except MedxganError as e:
            raise SystemExit(f"bench/training.py: {name}: {e}") from None
        return
    device = B.setup(args)
    runs = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        for seed in range(max(1, args.repeats)):
            for name in configs:
                out = Path(tmp) / f"{name}-{seed}.json"
                proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", name, str(seed), str(out)])
                if proc.returncode != 0:
                    raise SystemExit(f"training {name} (seed {seed}) failed")
                runs[name].append(json.loads(out.read_text()))
    # The realism bar: the paper architecture's best within the budget (per seed, then the median).
    summary = {}
    for seed in range(max(1, args.repeats)):
        paper = runs["paper"][seed]["checkpoints"]
        bar_c2st = min(c["c2st_accuracy"] for c in paper)
        bar_frechet = min(c["frechet_distance"] for c in paper)
        for name in configs:
            run = runs[name][seed]
            run["target"] = {"accuracy": args.target_accuracy, "c2st": bar_c2st, "frechet": bar_frechet}
            run["seconds_to_target"] = time_to_target(run, args.target_accuracy, bar_c2st, bar_frechet)
    for name in configs:
        rs = runs[name]
        summary[name] = {
            "images_per_second": B.median([r["images_per_second"] for r in rs]),
            "peak_rss_mb": B.median([r["peak_rss_mb"] for r in rs]),
            "best_generated_accuracy": B.median([max(c["generated_accuracy"] for c in r["checkpoints"]) for r in rs]),
            "best_c2st": B.median([min(c["c2st_accuracy"] for c in r["checkpoints"]) for r in rs]),
            "best_frechet": B.median([min(c["frechet_distance"] for c in r["checkpoints"]) for r in rs]),
            "frechet_floor": B.median([r["frechet_floor"] for r in rs]),
            "reached": f"{sum(r['seconds_to_target'] is not None for r in rs)}/{len(rs)}",
            "seconds_to_target": B.median([r["seconds_to_target"] for r in rs]),
        }
    ours, paper = summary["ours"]["seconds_to_target"], summary["paper"]["seconds_to_target"]
    speedup = paper / ours if ours and paper else None
    # The paper architecture not reaching the target within the budget bounds the speed-up from below.
    speedup_at_least = args.paper_budget_s / ours if ours and not paper else None
    rows = [[name, B.fmt(s["images_per_second"], ".1f"), B.fmt(s["peak_rss_mb"], ".0f"), B.fmt(s["best_generated_accuracy"]),
             B.fmt(s["best_c2st"]), f"{B.fmt(s['best_frechet'], '.2f')} (floor {B.fmt(s['frechet_floor'], '.2f')})",
             s["reached"], B.fmt(s["seconds_to_target"], ".0f", "not reached")] for name, s in summary.items()]
    print(B.markdown(["configuration", "images / s", "peak RSS (MiB)", "best gen. acc.", "best C2ST",
                      "best Fréchet", "reached target", "s to target"], rows))
    info = B.machine(device)
    print(f"\ntarget: generated accuracy >= {args.target_accuracy} and C2ST / Fréchet <= the paper architecture's best "
          f"within {args.paper_budget_s:.0f} s of training (ours: {args.budget_s:.0f} s); speed-up ours vs paper: "
          f"{B.fmt(speedup, '.1f', '') or (f'> {speedup_at_least:.1f} (the paper architecture did not reach it)' if speedup_at_least else 'n/a (ours did not reach the target)')}; "
          f"{info['cores']} cores, {info['threads']} threads, torch {info['torch']}, {device}; {args.repeats} seed(s)")
    B.write_json(args.json or "bench-training.json", {"benchmark": "training", "command": " ".join(sys.argv), "machine": info,
                                                      "summary": summary, "speedup": speedup, "speedup_at_least": speedup_at_least, "runs": runs,
                                                      "paper_overrides": PAPER_OVERRIDES, "settings": vars(args)})


if __name__ == "__main__":
    main()
