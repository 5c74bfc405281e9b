"""The explanation issue's acceptance numbers, read from a finished `medxgan explain` run.

    python bench/explain_acceptance.py --explain OUT [OUT2 ...] [--phantoms DIR --phantom-seed 0] [--smooth SIGMA] [--json F]

Several runs of the same images made with consecutive ``--seed`` values are scored as their
ensemble: combined with ``medxgan.explain.combine_explanations``, exactly as ``medxgan explain
--ensemble K`` combines its members (member k of ``--seed S --ensemble K`` is the plain run with
``--seed S+k``), plus the members' agreement and the pointing game above and below its median.

From ``OUT/summary.json`` and ``OUT/raw/*.npz`` (written by ``medxgan explain``, any inversion
settings): mean reconstruction SSIM, the share of negative realizations with P(positive) < 0.1,
the share of monotone interpolations, and — for the images with a lesion mask — the pointing game
and AUPRC of every map in the run (``difference`` is |G(z1,z2) - G(z1,0)|; LIG, IG and Grad-CAM
are used signed, their largest positive evidence counting), with the metrics of ``medxgan
evaluate`` (``medxgan.evaluate.localisation``).

With ``--phantoms`` (the phantom dataset the images came from, written with seed
``--phantom-seed``), every phantom is also rendered without its acquisition noise
(``medxgan.phantoms.render_noise_free``), giving two more numbers per image: the SSIM of that
noise-free rendering against the stored image — the ceiling of any reconstruction that does not
reproduce the noise pixel by pixel — and the SSIM of the reconstruction against the noise-free
rendering (how well the anatomy and lesion were recovered).

It also renders each phantom's exact counterfactual (``medxgan.phantoms.lesion_counterfactual``:
the same subject noise-free with and without its lesion) and reports
* the pointing game and AUPRC of that counterfactual's |difference| — what a perfect negative
  realization would score: the masks mark the tumour only, while removing a lesion also removes
  its oedema halo and undoes its mass effect;
* for every map of the run, where its largest value lies: in the tumour (the pointing game),
  within 2 pixels of it, in the oedema halo, on anatomy the lesion's mass effect moved (pixels the
  exact counterfactual changes by more than 2 grey levels), or elsewhere (pixels the lesion did
  not change).

``--smooth SIGMA`` scores a run made with the raw maps as if it had been made with ``medxgan explain
--smooth SIGMA``: every map of the run (and, for comparison, the exact counterfactual's difference)
is blurred with ``medxgan.explain.smooth_maps`` before it is scored. A run already made with
``--smooth`` is scored as it is (its manifest says so; blurring it twice is refused).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as B  # noqa: E402

from medxgan.errors import MedxganError  # noqa: E402
from medxgan.evaluate.localisation import localisation_scores  # noqa: E402
from medxgan.inversion import image_quality  # noqa: E402

NEGATIVE_THRESHOLD = 0.1
MAX_PLACES = ("tumour", "within 2 px", "oedema", "mass effect", "elsewhere")


def load_run(explain_dir: Path):
    """(per-image summary records, {safe_name: npz dict}) of a finished explain run."""
    summary_path = explain_dir / "summary.json"
    if not summary_path.is_file():
        raise MedxganError(f"{explain_dir}: no summary.json (not a finished `medxgan explain` run)")
    records = json.loads(summary_path.read_text())["images"]
    raw = {}
    for r in records:
        path = explain_dir / "raw" / f"{r['safe_name']}.npz"
        if not path.is_file():
            raise MedxganError(f"{path}: missing (the run was written without raw maps or is incomplete)")
        with np.load(path) as d:
            raw[r["safe_name"]] = {k: d[k] for k in d.files}
    return records, raw


def run_smoothing(explain_dir: Path) -> float:
    """The sigma (pixels) a run's maps were blurred with (``explain --smooth``; 0 = raw maps)."""
    try:
        settings = json.loads((explain_dir / "manifest.json").read_text()).get("settings", {})
    except (OSError, ValueError):
        return 0.0
    return float(settings.get("smooth", 0.0) or 0.0)


def _explanation(record: dict, arrays: dict):
    """An :class:`~medxgan.explain.Explanation` rebuilt from an image's JSON and npz."""
    from medxgan.explain import Explanation

    t = lambda k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float32))  # noqa: E731
    maps = {k[4:]: t(k) for k in arrays if k.startswith("map_") and k != "map_accumulated"}
    return Explanation(image=t("image"), reconstruction=t("reconstruction"), negative=t("negative"), frames=t("frames"),
                       frame_probs=t("frame_probs"), alphas=t("alphas"), monotone=bool(record["monotone"]),
                       prob_image=record["prob_image"], prob_reconstruction=record["prob_reconstruction"],
                       prob_negative=record["prob_negative"], quality=dict(record["quality"]), maps=maps,
                       accumulated=t("map_accumulated"), z1=t("z1"), z2=t("z2"),
                       completeness=dict(record.get("completeness") or {}), name=record["name"],
                       mask=torch.from_numpy(arrays["mask"]) if "mask" in arrays else None)


def load_ensemble(explain_dirs: list[Path]):
    """(records, raw) like :func:`load_run`, for the ensemble of several runs of the same images."""
    from medxgan.explain import combine_explanations

    runs = [load_run(d) for d in explain_dirs]
    names = [r["name"] for r in runs[0][0]]
    for d, (recs, _) in zip(explain_dirs[1:], runs[1:]):
        if [r["name"] for r in recs] != names:
            raise MedxganError(f"{d}: explains other images than {explain_dirs[0]}; an ensemble needs the same ones")
    members = [[_explanation(json.loads((d / r["json"]).read_text()), raw[r["safe_name"]]) for r in recs]
               for d, (recs, raw) in zip(explain_dirs, runs)]
    records, raw = [], {}
    for r, e in zip(runs[0][0], combine_explanations(members)):
        records.append({**r, "ssim": e.quality["ssim"], "prob_negative": e.prob_negative, "monotone": e.monotone,
                        "agreement": e.agreement})
        raw[r["safe_name"]] = {"image": e.image.numpy(), "reconstruction": e.reconstruction.numpy(),
                               "map_accumulated": e.accumulated.numpy(),
                               **{f"map_{k}": v.numpy() for k, v in e.maps.items()},
                               **({"mask": e.mask.numpy()} if e.mask is not None else {})}
    return records, raw


def phantom_index(name: str) -> int:
    m = re.search(r"phantom_(\d+)\.png$", name)
    if not m:
        raise MedxganError(f"{name}: not a phantom file name (phantom_<index>.png)")
    return int(m.group(1))


def noise_free_scores(records, raw, cfs: dict, seed: int):
    """(ceiling SSIM [N], reconstruction-vs-clean SSIM [N]) for phantom images; ``cfs`` from
    :func:`counterfactuals` (its ``with_lesion`` is the noise-free phantom)."""
    ceiling, recovered = [], []
    for r in records:
        d = raw[r["safe_name"]]
        image = torch.from_numpy(d["image"])[None].float()
        recon = torch.from_numpy(d["reconstruction"])[None].float()
        clean = torch.from_numpy(cfs[r["safe_name"]].with_lesion.astype(np.float32))
        clean = (clean / 127.5 - 1)[None, None].expand_as(image)
        _, _, s_ceiling = image_quality(clean, image)
        if float(s_ceiling) < 0.3:
            raise MedxganError(f"{r['name']}: does not match phantom seed {seed} (SSIM {float(s_ceiling):.2f}); "
                               "give the seed the dataset was written with (--phantom-seed)")
        _, _, s_recovered = image_quality(recon, clean)
        ceiling.append(float(s_ceiling))
        recovered.append(float(s_recovered))
    return np.array(ceiling), np.array(recovered)


def counterfactuals(records, raw, seed: int) -> dict:
    """{safe_name: ``lesion_counterfactual``} of every phantom of the run, at the run's image size."""
    from medxgan.phantoms import lesion_counterfactual

    return {r["safe_name"]: lesion_counterfactual(phantom_index(r["name"]), size=raw[r["safe_name"]]["image"].shape[-1], seed=seed)
            for r in records}


def max_places(maps: torch.Tensor, cfs) -> np.ndarray:
    """[N] index into ``MAX_PLACES`` of where each [N,C,H,W] map's largest (channel-summed) value
    lies (ties: the first pixel in row-major order, as in the pointing game)."""
    from scipy import ndimage

    from medxgan.evaluate.mapstats import pixel_relevance

    places = []
    for a, cf in zip(pixel_relevance(maps), cfs):
        j = int(a.reshape(-1).argmax())
        near = ndimage.binary_dilation(cf.mask, iterations=2)
        moved = cf.difference() > 2.0 / 127.5
        order = (cf.mask, near, cf.oedema, moved)  # the first region holding the pixel names its place
        places.append(next((k for k, region in enumerate(order) if region.flat[j]), len(order)))
    return np.array(places)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--explain", required=True, nargs="+",
                    help="output directory of `medxgan explain`; several (same images, consecutive --seed): their ensemble")
    ap.add_argument("--phantoms", help="the phantom dataset the images came from (enables the noise-free numbers)")
    ap.add_argument("--phantom-seed", type=int, default=0)
    ap.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA",
                    help="blur the run's maps by a Gaussian of SIGMA pixels before scoring (as `explain --smooth`)")
    ap.add_argument("--json", help="where to write the numbers (default: bench-explain-acceptance.json)")
    args = ap.parse_args(argv)
    explain_dirs = [Path(d) for d in args.explain]
    explain_dir = explain_dirs[0]
    if not (args.smooth >= 0 and np.isfinite(args.smooth)):
        raise MedxganError(f"--smooth must be a non-negative number of pixels, got {args.smooth}")
    run_smooth = [run_smoothing(d) for d in explain_dirs]
    blurred = [d for d, v in zip(explain_dirs, run_smooth) if v]
    if args.smooth and blurred:
        raise MedxganError(f"{blurred[0]}: its maps are already blurred (explain --smooth); score it without --smooth")
    records, raw = load_run(explain_dir) if len(explain_dirs) == 1 else load_ensemble(explain_dirs)
    if not records:
        raise MedxganError(f"{explain_dir}: the run explained no image")
    sigma = args.smooth or run_smooth[0]
    if args.smooth:
        from medxgan.explain import smooth_maps

        for arrays in raw.values():
            for k in [k for k in arrays if k.startswith("map_")]:
                arrays[k] = smooth_maps(torch.from_numpy(np.asarray(arrays[k], dtype=np.float32)), args.smooth).numpy()

    ssim = np.array([r["ssim"] for r in records])
    p_neg = np.array([r["prob_negative"] for r in records])
    monotone = np.array([bool(r["monotone"]) for r in records])
    result = {"n": len(records), "smooth_sigma_px": sigma, "ssim_mean": float(ssim.mean()), "ssim_median": float(np.median(ssim)),
              "negative_below_0.1": float((p_neg < NEGATIVE_THRESHOLD).mean()),
              "monotone": float(monotone.mean())}
    rows = [["mean reconstruction SSIM", f"{ssim.mean():.3f} (median {np.median(ssim):.3f})", "≥ 0.90"],
            [f"negative realization P(positive) < {NEGATIVE_THRESHOLD}", f"{(p_neg < NEGATIVE_THRESHOLD).sum()} / {len(records)}", "≥ 95 %"],
            ["monotone interpolation", f"{monotone.sum()} / {len(records)}", "≥ 90 %"]]

    if args.phantoms:
        all_cfs = counterfactuals(records, raw, args.phantom_seed)
        ceiling, recovered = noise_free_scores(records, raw, all_cfs, args.phantom_seed)
        result.update({"ssim_ceiling_mean": float(ceiling.mean()), "ssim_ceiling_share_above_0.9": float((ceiling >= 0.9).mean()),
                       "ssim_to_noise_free_mean": float(recovered.mean())})
        rows += [["SSIM ceiling: noise-free phantom vs the stored image", f"{ceiling.mean():.3f} ({(ceiling >= 0.9).mean():.0%} of images ≥ 0.90)", "—"],
                 ["SSIM of the reconstruction vs the noise-free phantom", f"{recovered.mean():.3f}", "—"]]

    masked = [r for r in records if "mask" in raw[r["safe_name"]] and raw[r["safe_name"]]["mask"].any()]
    result["n_with_mask"] = len(masked)
    cfs = None
    if masked:
        masks = torch.from_numpy(np.stack([raw[r["safe_name"]]["mask"] for r in masked]))
        methods = sorted(k[4:] for k in raw[masked[0]["safe_name"]] if k.startswith("map_"))
        result["localisation"] = {}
        if args.phantoms:
            cfs = [all_cfs[r["safe_name"]] for r in masked]
            cf_masks = torch.from_numpy(np.stack([cf.mask for cf in cfs]))[:, None]
            if not torch.equal(cf_masks, masks.bool().reshape(cf_masks.shape)):
                raise MedxganError("the run's masks are not the phantoms' tumour masks (another --phantom-seed or size?)")
            exact = torch.from_numpy(np.stack([cf.difference() for cf in cfs]))[:, None]
            if sigma:  # the same blur as the run's maps, so the two are compared alike
                from medxgan.explain import smooth_maps

                exact = smooth_maps(exact.float(), sigma)
            scores = localisation_scores(exact, cf_masks)
            pg, auprc = float(np.mean(scores["pointing_game"])), float(np.mean(scores["auprc"]))
            result["exact_counterfactual"] = {"pointing_game": pg, "auprc": auprc,
                                              "max_places": _shares(max_places(exact, cfs))}
            rows.append(["pointing game / AUPRC, exact counterfactual (the phantom without its lesion), absolute difference",
                         f"{pg:.2f} / {auprc:.2f}", "— (what a perfect negative realization scores)"])
        for method in methods:
            maps = torch.from_numpy(np.stack([raw[r["safe_name"]][f"map_{method}"] for r in masked])).float()
            if method in ("difference", "accumulated"):
                maps = maps.abs()
            scores = localisation_scores(maps, masks)
            pg, auprc = float(np.mean(scores["pointing_game"])), float(np.mean(scores["auprc"]))
            result["localisation"][method] = {"pointing_game": pg, "auprc": auprc}
            if cfs is not None:
                result["localisation"][method]["max_places"] = _shares(max_places(maps, cfs))
            if method == "difference" and masked[0].get("agreement") is not None:
                # rounded so that members equal up to float noise (a correlation of 1 - 2e-16) tie at the median
                agreement = np.round(np.array([r["agreement"] for r in masked], dtype=float), 9)
                hits, cut = np.asarray(scores["pointing_game"], dtype=float), float(np.median(agreement))
                result["agreement"] = {"median": cut, "min": float(agreement.min()),
                                       "pointing_game_at_or_above_median": float(hits[agreement >= cut].mean()),
                                       "pointing_game_below_median": float(hits[agreement < cut].mean())
                                       if (agreement < cut).any() else None}
                rows.append([f"agreement of the {len(explain_dirs)} explanations (median, lowest)",
                             f"{cut:.3f}, {agreement.min():.3f}", "—"])
                rows.append(["pointing game, difference, agreement ≥ median / below",
                             f"{hits[agreement >= cut].mean():.2f} / "
                             + (f"{hits[agreement < cut].mean():.2f}" if (agreement < cut).any() else "—"), "—"])
            rows.append([f"pointing game / AUPRC, {method}", f"{pg:.2f} / {auprc:.2f}",
                         "pointing game ≥ 0.90" if method == "difference" else ("LIG > IG" if method in ("lig", "ig") else "—")])

    print(B.markdown(["measure", f"result ({len(records)} images, {len(masked)} with masks)", "target"], rows))
    if cfs is not None:
        table = [["exact counterfactual"] + [f"{result['exact_counterfactual']['max_places'][p]:.2f}" for p in MAX_PLACES]]
        table += [[m] + [f"{result['localisation'][m]['max_places'][p]:.2f}" for p in MAX_PLACES] for m in methods]
        print()
        print("Where each map's largest value lies (share of images):")
        print(B.markdown(["map", *MAX_PLACES], table))
    B.write_json(args.json or "bench-explain-acceptance.json",
                 {"command": " ".join(sys.argv), "explain": [str(d) for d in explain_dirs], "phantoms": args.phantoms, **result})
    return 0


def _shares(places: np.ndarray) -> dict[str, float]:
    return {p: float(np.mean(places == k)) for k, p in enumerate(MAX_PLACES)}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MedxganError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
