"""Per-image generator tuning (``medxgan.tuning``) with other settings, on the latents of a finished
``medxgan explain`` run, so that settings can be compared without redoing the inversion.

    python bench/tuning_sweep.py --model RUN --explain OUT [--first 0 --n 10] [--steps 1500]
        [--lr 1e-4 --proximity-weight 0.2 --proximity-delta 0 --proximity-sigma 0 --neg-target 0 --smooth-weight 0.3 --change-weight 0 --neg-views 0] [--lig-steps 16]
        [--names A,B,...] [--smooth SIGMA ...] [--threads 1] [--json F]

For each image of ``OUT`` (in name order, ``--first`` on, ``--n`` of them; or the images that
``--names`` lists, by file stem without extensions, e.g. ``positive_phantom_00017``) it reads the image and
the inversion's latents (z1, z2) from ``OUT/raw/*.npz`` — an explain run with or without tuning
stores the inversion's latents, which tuning keeps fixed — tunes a copy of the run's generator
with the given ``TuningConfig``, and reports what ``bench/explain_acceptance.py`` reports for a
full run: reconstruction SSIM, negative realization P(positive) < 0.1, and, where the image has a
mask, the pointing game and AUPRC of |difference| and of LIG (Eq. 7, Gauss-Legendre nodes). It
does not redo Grad-CAM or IG (they do not depend on the generator): read those from the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as B  # noqa: E402

from medxgan.errors import MedxganError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the medXGAN run the explain run used")
    ap.add_argument("--explain", required=True, help="a finished `medxgan explain` output folder (its raw/*.npz)")
    ap.add_argument("--first", type=int, default=0, help="skip this many images (name order)")
    ap.add_argument("--n", type=int, default=10, help="images to tune")
    ap.add_argument("--names", help="comma-separated image stems to tune instead of --first/--n "
                    "(e.g. the misses of bench/explain_acceptance.py)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--proximity-weight", type=float, default=None)
    ap.add_argument("--proximity-delta", type=float, default=None, help="0 = L1 proximity; D > 0: the log penalty")
    ap.add_argument("--proximity-sigma", type=float, default=None, help="0 = per-pixel log penalty; PX > 0: on |change| "
                    "averaged over a Gaussian window of PX pixels")
    ap.add_argument("--neg-target", type=float, default=None, help="0 = push P(negative realization) toward 0; "
                    "p > 0: stop at p")
    ap.add_argument("--smooth", type=float, action="append", default=[], metavar="SIGMA",
                    help="also score the maps blurred by medxgan.explain.smooth_maps with this sigma (repeatable)")
    ap.add_argument("--smooth-weight", type=float, default=None)
    ap.add_argument("--change-weight", type=float, default=None)
    ap.add_argument("--neg-views", type=int, default=None)
    ap.add_argument("--lig-steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--save-maps", metavar="DIR", help="also write each image's x, reconstruction, negative realization "
                    "and LIG map (and mask) to DIR/<name>.npz, to look at the misses")
    ap.add_argument("--json", help="where to write the numbers (default: bench-tuning-sweep.json)")
    args = ap.parse_args(argv)

    from medxgan.checkpoint import load_medxgan
    from medxgan.evaluate.localisation import localisation_scores
    from medxgan.explain import smooth_maps
    from medxgan.explain.latent import latent_integrated_gradients, path_endpoints
    from medxgan.inversion import image_quality
    from medxgan.tuning import TuningConfig, tune_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    given = {"steps": args.steps, "lr": args.lr, "proximity_weight": args.proximity_weight,
             "proximity_delta": args.proximity_delta, "proximity_sigma": args.proximity_sigma,
             "neg_target": args.neg_target, "smooth_weight": args.smooth_weight, "change_weight": args.change_weight, "neg_views": args.neg_views}
    cfg = TuningConfig(**{k: v for k, v in given.items() if v is not None})
    if args.first < 0 or args.n < 1 or args.lig_steps < 1:
        raise MedxganError("--first must be >= 0, --n and --lig-steps >= 1")
    files = sorted((Path(args.explain) / "raw").glob("*.npz"))
    if args.names:
        by_stem = {f.name.split(".")[0]: f for f in files}
        wanted = [n.strip().split(".")[0] for n in args.names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in by_stem]
        if unknown:
            raise MedxganError(f"{args.explain}: no raw/*.npz for {', '.join(unknown[:5])}")
        files = [by_stem[n] for n in wanted]
    else:
        files = files[args.first:args.first + args.n]
    if not files:
        raise MedxganError(f"{args.explain}: no raw/*.npz in that range (not a finished `medxgan explain` run?)")
    G, C, gmeta = load_medxgan(args.model)
    G.eval()
    C.eval()
    rows, diffs, ligs, masks = [], [], [], []
    t0 = time.perf_counter()
    for path in files:
        with np.load(path) as d:
            if not {"image", "z1", "z2"} <= set(d.files):
                raise MedxganError(f"{path}: no image / z1 / z2 (not written by `medxgan explain`)")
            x = torch.from_numpy(d["image"])[None].float()
            z1, z2 = torch.from_numpy(d["z1"])[None].float(), torch.from_numpy(d["z2"])[None].float()
            mask = torch.from_numpy(d["mask"]).bool() if "mask" in d.files else None
        if tuple(x.shape[1:]) != (gmeta["channels"], gmeta["size"], gmeta["size"]):
            raise MedxganError(f"{path}: image {tuple(x.shape[1:])} does not fit the model "
                               f"({gmeta['channels']}x{gmeta['size']}x{gmeta['size']})")
        t = time.perf_counter()
        tuned = tune_generator(G, C, x, z1, z2, cfg)
        seconds = time.perf_counter() - t
        with torch.no_grad():
            negative, recon = path_endpoints(tuned, z1, z2)
            p_neg = float(C.positive_prob(negative))
        ssim = float(image_quality(recon, x)[2])
        rows.append({"name": path.stem, "ssim": ssim, "prob_negative": p_neg, "seconds": seconds,
                     "masked": mask is not None})
        if mask is not None:
            diffs.append((recon - negative).abs()[0])
            ligs.append(latent_integrated_gradients(tuned, C, z1, z2, n_steps=args.lig_steps)[0])
            masks.append(mask)
        if args.save_maps:
            Path(args.save_maps).mkdir(parents=True, exist_ok=True)
            extra = {"mask": mask.numpy(), "lig": ligs[-1].numpy()} if mask is not None else {}
            np.savez_compressed(Path(args.save_maps) / f"{path.stem.split('.')[0]}.npz", image=x[0].numpy(),
                                reconstruction=recon[0].numpy(), negative=negative[0].numpy(), **extra)
        print(f"{path.stem}: SSIM {ssim:.3f}, P(negative realization) {p_neg:.3f}, {seconds:.1f} s", flush=True)
    record = {"machine": B.machine("cpu"), "config": dataclasses.asdict(cfg),
              "explain": str(args.explain), "first": args.first, "n": len(rows), "seconds": time.perf_counter() - t0,
              "ssim_mean": float(np.mean([r["ssim"] for r in rows])),
              "negative_below_0.1": float(np.mean([r["prob_negative"] < 0.1 for r in rows])),
              "per_image": rows}
    table = [["mean SSIM", f"{record['ssim_mean']:.3f}"], ["P(negative) < 0.1", f"{record['negative_below_0.1']:.2f}"]]
    if masks:
        m = torch.stack(masks)
        masked = [r for r in rows if r["masked"]]
        raw = {"difference": torch.stack(diffs), "lig": torch.stack(ligs)}
        scored = list(raw.items()) + [(f"{name}_smooth{sigma:g}", smooth_maps(maps, sigma))
                                      for sigma in args.smooth for name, maps in raw.items()]
        for name, maps in scored:
            s = localisation_scores(maps, m)
            for r, hit in zip(masked, s["pointing_game"]):
                r[f"{name}_hit"] = bool(hit)
            record[f"{name}_pointing_game"] = float(np.mean(s["pointing_game"]))
            record[f"{name}_auprc"] = float(np.mean(s["auprc"]))
            table.append([f"pointing game / AUPRC, {name}",
                          f"{record[f'{name}_pointing_game']:.2f} / {record[f'{name}_auprc']:.2f}"])
    print()
    print(B.markdown(["measure", f"{len(rows)} images, {cfg.steps} steps"], table))
    B.write_json(args.json or "bench-tuning-sweep.json", record)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MedxganError as e:
        print(f"tuning_sweep: error: {e}", file=sys.stderr)
        sys.exit(2)
