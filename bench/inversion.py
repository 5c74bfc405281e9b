"""Inversion speed at equal quality: the paper's protocol against ours, in the same run.

    python bench/inversion.py --model RUN --data /work/shared/data/br35h --n 10 [--device cpu] [--threads 2] [--repeats 1]

On the first ``--n`` held-out test positives of the run's split, each image is inverted (Eq. 5) by

* ``paper``: ``InversionConfig.paper()`` — N(0, I) start, Adam lr 0.01, betas (0.5, 0.999),
  10,000 steps (``--paper-steps`` shortens it for a quick check only);
* ``random``: our default (``medxgan explain``): 4 random starts x 600 steps, cosine lr, early stop;
* ``hybrid``: our encoder start + 200 steps (only when the run holds ``encoder.safetensors``);
  ``--hybrid-warmup-steps`` puts a pixels-only warm-up before them (``InversionConfig.warmup_steps``).

Reported per method (medians over images; wall times medians over ``--repeats``): wall time per
image, final SSIM / PSNR, |ΔP_C|, and the time to reach the paper protocol's final SSIM of the same
image, read off an SSIM-versus-time trajectory (each image's best latents so far, every
``--trace-every`` steps; the time spent measuring the trajectory is subtracted). The speed-up is
the paper's wall time over the method's time to reach the paper's SSIM ("not reached" when it
never does). A trajectory point is an intermediate answer: during a hybrid's pixel warm-up its
|ΔP_C| is not yet matched, so the stricter column "final SSIM ≥ paper's" counts the images whose
finished answer is at least as good, and "wall-time ratio" is the paper's time over the method's
whole time. Images are inverted one at a time by default, as the paper does; ``--batch-size``
inverts several together (per-image time = batch time / batch size), for every method alike unless
``--ours-batch-size`` gives our methods their own batch (``medxgan explain`` inverts a whole batch of
images at once; the paper's scripts invert one image at a time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as B  # noqa: E402

from medxgan import checkpoint as ckpt  # noqa: E402
from medxgan.device import place  # noqa: E402
from medxgan.encoder import ENCODER_FILE, encode  # noqa: E402
from medxgan.inversion import InversionConfig, image_quality, invert  # noqa: E402


def run_method(G, C, images, cfg, E, first_index, device, trace_every):
    """Invert ``images`` [b,C,H,W]; returns (result, wall seconds without tracing, trajectory).

    trajectory: list of (seconds, steps, ssim [b]) of each image's best latents so far."""
    trajectory, traced = [], {"seconds": 0.0}
    x = images.to(device)

    def trace(steps, z1, z2):
        t = time.perf_counter()
        with torch.no_grad():
            recon = G(z1, z2)
        _, _, ssim = image_quality(recon, x)
        B.sync(device)
        trajectory.append((t - start - traced["seconds"], steps, ssim.cpu()))
        traced["seconds"] += time.perf_counter() - t

    B.sync(device)
    start = time.perf_counter()
    init = encode(E, x) if E is not None else None
    result = invert(G, C, x, cfg, init=init, first_index=first_index, trace=trace, trace_every=trace_every)
    B.sync(device)
    seconds = time.perf_counter() - start - traced["seconds"]
    trajectory.append((seconds, int(result.steps_run.max()), result.ssim.cpu()))  # the result itself
    return result, seconds, trajectory


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="medXGAN run directory")
    ap.add_argument("--data", required=True, help="the data the run was trained on (its saved test split is used)")
    ap.add_argument("--n", type=int, default=10, help="test positives to invert")
    ap.add_argument("--batch-size", type=int, default=1, help="images inverted together by the paper protocol (and by ours, "
                    "unless --ours-batch-size); 1 = one at a time, as the paper does")
    ap.add_argument("--ours-batch-size", type=int, default=None,
                    help="images inverted together by our methods (default: --batch-size); `medxgan explain` inverts "
                         "its --batch-size images (default 16) together")
    ap.add_argument("--paper-steps", type=int, default=10_000, help="paper protocol steps (10,000; lower only for a quick check)")
    ap.add_argument("--random-steps", type=int, default=600)
    ap.add_argument("--random-restarts", type=int, default=4)
    ap.add_argument("--hybrid-steps", type=int, default=200)
    ap.add_argument("--hybrid-lr", type=float, default=InversionConfig().lr, help="Adam lr of the refinement from the encoder start")
    ap.add_argument("--hybrid-schedule", default=InversionConfig().schedule, choices=("cosine", "constant"))
    ap.add_argument("--hybrid-warmup-steps", type=int, default=0,
                    help="pixels-only warm-up steps before the hybrid's Eq. 5 steps (InversionConfig.warmup_steps)")
    ap.add_argument("--hybrid-warmup-lr", type=float, default=InversionConfig().warmup_lr)
    ap.add_argument("--ours-neg-weight", type=float, default=InversionConfig().neg_weight,
                    help="negative-realization weight of our methods (default: explain's; 0 = Eq. 5 alone, the paper protocol's objective)")
    ap.add_argument("--methods", default="paper,random,hybrid",
                    help="comma-separated subset of paper,random,hybrid (without paper: no speed-ups, e.g. to scan --hybrid-steps)")
    ap.add_argument("--trace-every", type=int, default=100, help="SSIM trajectory resolution of the paper protocol (steps)")
    ap.add_argument("--ours-trace-every", type=int, default=10, help="trajectory resolution of our methods (steps)")
    B.add_common_args(ap, repeats=1)
    args = ap.parse_args()
    device = B.setup(args)
    G, C, gmeta = ckpt.load_medxgan(args.model)
    G, C = place(G, device), place(C, device)  # as `medxgan explain` runs them
    E = None
    if (Path(args.model) / ENCODER_FILE).exists():
        E, _ = ckpt.load_encoder(Path(args.model) / ENCODER_FILE, G.cpu(), gmeta)
        E, G = place(E, device), place(G, device)
    images, names = B.test_positives(args.model, args.data, args.n)
    paper = InversionConfig.paper()
    if args.paper_steps != paper.steps:
        paper = InversionConfig(**{**paper.__dict__, "steps": args.paper_steps})
    if args.batch_size < 1 or (args.ours_batch_size is not None and args.ours_batch_size < 1):
        raise SystemExit("--batch-size and --ours-batch-size must be positive")
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not wanted or set(wanted) - {"paper", "random", "hybrid"}:
        raise SystemExit(f"--methods: choose from paper, random, hybrid (got {args.methods!r})")
    if "hybrid" in wanted and E is None:
        raise SystemExit(f"--methods hybrid: {args.model} holds no {ENCODER_FILE} (medxgan train-encoder)")
    methods = {"paper": (paper, None, args.trace_every),
               "random": (InversionConfig(steps=args.random_steps, restarts=args.random_restarts, neg_weight=args.ours_neg_weight),
                          None, args.ours_trace_every)}
    if E is not None:
        methods["hybrid"] = (InversionConfig(steps=args.hybrid_steps, restarts=1, lr=args.hybrid_lr, neg_weight=args.ours_neg_weight,
                                             schedule=args.hybrid_schedule, warmup_steps=args.hybrid_warmup_steps,
                                             warmup_lr=args.hybrid_warmup_lr),
                             E, args.ours_trace_every)
    methods = {m: methods[m] for m in ("paper", "random", "hybrid") if m in wanted and m in methods}

    per_image = {m: [] for m in methods}  # method -> list of per-image dicts
    ours_batch = args.ours_batch_size or args.batch_size
    for method, (cfg, enc, every) in methods.items():
        bs = args.batch_size if method == "paper" else ours_batch
        for start in range(0, len(images), bs):
            batch = images[start:start + bs]
            b = len(batch)
            runs = [run_method(G, C, batch, cfg, enc, start, device, every) for _ in range(max(1, args.repeats))]
            result, _, trajectory = runs[0]  # results are deterministic: the first run's numbers
            seconds = B.median([r[1] for r in runs]) / b
            for j in range(b):
                per_image[method].append({
                    "name": names[start + j], "seconds": seconds, "ssim": float(result.ssim[j]),
                    "psnr": float(result.psnr[j]), "delta_prob": float(result.delta_prob[j]),
                    "steps_run": int(result.steps_run[j]),
                    "trajectory": [(t / b, k, float(s[j])) for t, k, s in trajectory],
                })
            print(f"{method} [{start + b}/{len(images)}] {seconds:.2f}s / image, SSIM "
                  f"{sum(r['ssim'] for r in per_image[method][-b:]) / b:.3f}", file=sys.stderr)

    # time to reach the paper's final SSIM, image by image
    for i, p in enumerate(per_image.get("paper", [])):
        target = p["ssim"]
        for method in methods:
            rec = per_image[method][i]
            reach = next((t for t, _, s in rec["trajectory"] if s >= target - 1e-9), None)
            rec["seconds_to_paper_ssim"] = reach
            rec["speedup_to_paper_ssim"] = p["seconds"] / reach if reach else None

    summary = {}
    for method, recs in per_image.items():
        reached = [r for r in recs if r.get("seconds_to_paper_ssim") is not None]
        summary[method] = {
            "seconds_per_image": B.median([r["seconds"] for r in recs]),
            "ssim": B.median([r["ssim"] for r in recs]), "ssim_mean": sum(r["ssim"] for r in recs) / len(recs),
            "psnr": B.median([r["psnr"] for r in recs]),
            "delta_prob": B.median([r["delta_prob"] for r in recs]),
            "reached_paper_ssim": f"{len(reached)}/{len(recs)}" if "paper" in per_image else "—",
            "seconds_to_paper_ssim": B.median([r["seconds_to_paper_ssim"] for r in reached]),
            "speedup_vs_paper": B.median([r["speedup_to_paper_ssim"] for r in reached]),
            "wall_time_ratio": (B.median([per_image["paper"][i]["seconds"] / r["seconds"] for i, r in enumerate(recs)])
                                if "paper" in per_image else None),
            # stricter: the method's *final* answer (after all its steps, every term of its objective
            # matched) at or above the paper's final SSIM, image by image
            "final_at_paper_ssim": (f"{sum(r['ssim'] >= per_image['paper'][i]['ssim'] - 1e-9 for i, r in enumerate(recs))}/{len(recs)}"
                                    if "paper" in per_image else "—"),
        }
    objective = "" if args.ours_neg_weight == InversionConfig().neg_weight else f", neg weight {args.ours_neg_weight:g}"
    labels = {"paper": f"paper protocol ({paper.steps} steps, 1 random start)",
              "random": f"ours: {args.random_restarts} random starts x {args.random_steps} steps{objective}",
              "hybrid": (f"ours: encoder start + "
                         + (f"{args.hybrid_warmup_steps} pixel steps (lr {args.hybrid_warmup_lr:g}) + " if args.hybrid_warmup_steps else "")
                         + f"{args.hybrid_steps} steps (lr {args.hybrid_lr:g}{'' if args.hybrid_schedule == 'cosine' else ', constant'}{objective})")}
    rows = [[labels[m], B.fmt(s["seconds_per_image"], ".2f"), f"{B.fmt(s['ssim'])} / {B.fmt(s['ssim_mean'])}", B.fmt(s["psnr"], ".2f"),
             B.fmt(s["delta_prob"], ".4f"), s["reached_paper_ssim"], B.fmt(s["seconds_to_paper_ssim"], ".2f"),
             (B.fmt(s["speedup_vs_paper"], ".1f", "not reached") + ("×" if s["speedup_vs_paper"] else "")) if "paper" in summary else "—",
             s["final_at_paper_ssim"], B.fmt(s["wall_time_ratio"], ".1f") + ("×" if s["wall_time_ratio"] else "")]
            for m, s in summary.items()]
    print(B.markdown(["method", "s / image", "SSIM median / mean", "PSNR (dB)", "\\|ΔP_C\\|", "reached paper SSIM",
                      "s to paper SSIM", "speed-up to paper SSIM", "final SSIM ≥ paper's", "wall-time ratio"], rows))
    info = B.machine(device)
    print(f"\n{len(images)} test positives of {args.model} ({gmeta['channels']}x{gmeta['size']}x{gmeta['size']}), "
          f"batch {args.batch_size} (paper) / {args.ours_batch_size or args.batch_size} (ours), medians over images; {args.repeats} repeat(s); "
          f"{info['cores']} cores, {info['threads']} threads, torch {info['torch']}, {device}")
    B.write_json(args.json or "bench-inversion.json", {
        "benchmark": "inversion", "command": " ".join(sys.argv), "machine": info, "summary": summary,
        "per_image": per_image, "settings": {k: v for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
