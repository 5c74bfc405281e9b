"""Command-line interface: a thin layer over the library; the only module (with the report
writer and data loaders) that touches paths. Every user mistake ends as one line on stderr and a
non-zero exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from medxgan.errors import MedxganError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# --- shared helpers ------------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    from medxgan.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=float)
            f.write("\n")

    atomic_write(path, write)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedxganError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MedxganError(f"{path}: {what} is not valid JSON") from None


def _prepare_out(out: Path, resume: bool = False, marker: str | None = None) -> Path:
    """Refuse to overwrite a finished run unless resuming; create the directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedxganError(f"{out}: exists and is not a directory")
    if marker and (out / marker).exists() and not resume:
        raise MedxganError(f"{out}: already holds a finished run ({marker}); choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise MedxganError(f"{out}: output directory is not writable ({e.strerror})") from None
    return out


def _run_config(args, base=None):
    from medxgan.config import RunConfig, apply_overrides, load_config_file

    cfg = base or RunConfig()
    if getattr(args, "config", None):
        cfg = RunConfig.from_dict({**cfg.to_dict(), **_merge(cfg.to_dict(), load_config_file(args.config))})
    data_over = {k: getattr(args, k) for k in ("size", "channels", "resize", "positive", "negative", "layout")
                 if getattr(args, k, None) is not None}
    if getattr(args, "window", None):
        from medxgan.config import _coerce

        data_over["dicom_window"] = _coerce(args.window, tuple[float, ...], "--window")
    for flag, key in (("axis", "nifti_axis"), ("slice", "nifti_slice"), ("frame", "dicom_frame"), ("allow_upscale", "allow_upscale")):
        if getattr(args, flag, None) is not None:
            data_over[key] = getattr(args, flag)
    if data_over:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_over))
    return apply_overrides(cfg, getattr(args, "set", None) or [])


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_splits(data: str, dcfg, out: Path | None = None, split_file: Path | None = None, progress=True,
                cache_dir: str | Path | None = None, **kw) -> dict:
    """{train, val, test} LabeledImages for a folder (seeded stratified split, saved as
    ``out/split.json``, or re-used from ``split_file``) or a MedMNIST .npz (its own splits).

    ``cache_dir`` (else ``$MEDXGAN_CACHE_DIR``; neither: no cache) keeps a class-folder data set
    decoded there (:func:`medxgan.data.load_folder_cached`); .npz files and the volumes layout are
    always read directly."""
    from medxgan import data as D

    cache_dir = cache_dir or os.environ.get("MEDXGAN_CACHE_DIR") or None  # the flag wins; "" counts as unset

    path = Path(data)
    if not path.exists():
        raise MedxganError(f"{path}: data not found")
    if path.is_file() and path.suffix == ".npz":
        # MedMNIST files carry their own train/val/test splits.
        splits = {s: D.load_medmnist(path, s, size=dcfg.size, channels=dcfg.channels, resize=dcfg.resize)
                  for s in ("train", "val", "test")}
        if out is not None:
            _write_json(out / "split.json", {"format": "medxgan-split", "source": "npz", "names": {s: splits[s].names for s in splits}})
        return splits
    if dcfg.layout == "volumes":
        if kw.get("masks") or kw.get("via"):
            raise MedxganError("the volumes layout takes its masks from <data>/masks; --masks/--via do not apply")
        full = D.load_nifti_volumes(path, size=dcfg.size, channels=dcfg.channels, resize=dcfg.resize,
                                    axis=dcfg.nifti_axis, progress=progress)
    else:
        folder_kw = dict(size=dcfg.size, channels=dcfg.channels, positive=dcfg.positive, negative=dcfg.negative,
                         resize=dcfg.resize, progress=progress, medical=dcfg.medical(), allow_upscale=dcfg.allow_upscale, **kw)
        full = D.load_folder_cached(path, cache_dir, **folder_kw) if cache_dir else D.load_folder(path, **folder_kw)
    if split_file is not None:
        idx = D.load_split(split_file, names=full)
    elif dcfg.layout == "volumes":
        idx = D.group_split(full.names, full.labels.numpy(), dcfg.split_fractions, dcfg.split_seed)
    else:
        idx = D.stratified_split(full.labels.numpy(), dcfg.split_fractions, dcfg.split_seed)
    splits = {s: full.subset(idx[s]) for s in ("train", "val", "test")}
    for s, part in splits.items():
        if len(part) == 0:
            raise MedxganError(f"{path}: the {s} split is empty; add images")
    if out is not None:
        D.save_split(idx, out / "split.json", names=full)
    return splits


def run_split_file(run_dir, data: str, required: bool) -> Path | None:
    """The split a run was trained on (``run_dir/split.json``) for folder data; None for a
    MedMNIST .npz (its splits are fixed). ``required``: held-out evaluation must never draw a
    fresh split (its "test" images could be the run's training images), so a missing file is an
    error instead of a silent new split."""
    if str(data).endswith(".npz"):
        return None
    path = Path(run_dir) / "split.json"
    if path.is_file():
        return path
    if required:
        raise MedxganError(f"{run_dir}: no split.json; held-out images can only be chosen with the run's own split")
    return None


def _classifier_path(spec: str) -> Path:
    from medxgan.checkpoint import CLASSIFIER_FILE

    p = Path(spec)
    if p.is_dir():
        p = p / CLASSIFIER_FILE
        if not p.is_file():
            raise MedxganError(f"{spec}: no {CLASSIFIER_FILE} here — is this a `medxgan train-classifier` run directory?")
    elif not p.exists():
        raise MedxganError(f"{spec}: classifier run directory or file not found")
    return p


# --- commands ------------------------------------------------------------------------------

def cmd_phantoms(args) -> int:
    from medxgan.phantoms import write_phantom_dataset

    t = time.time()
    out = write_phantom_dataset(args.out, n=args.n, size=args.size, seed=args.seed, shortcut=args.shortcut, progress=not args.no_progress)
    print(f"wrote {args.n} phantoms ({args.size}x{args.size}) to {out} in {time.time() - t:.1f}s")
    return 0


def cmd_train_classifier(args) -> int:
    import torch

    from medxgan import distributed as dist_
    from medxgan.checkpoint import CLASSIFIER_FILE, call_factory, load_foreign_weights, save_classifier
    from medxgan.models.classifier import BinaryClassifier
    from medxgan.training.classifier import binary_metrics, predict_proba, train_classifier

    ctx, device = dist_.init(args.device)
    main = ctx.is_main
    cfg = _run_config(args)
    if (Path(args.out) / CLASSIFIER_FILE).exists():
        raise MedxganError(f"{args.out}: already holds a finished run ({CLASSIFIER_FILE}); choose another --out")
    dist_.per_rank_batch(cfg.classifier.batch_size, ctx)
    out = _prepare_out(args.out, marker=CLASSIFIER_FILE) if main else Path(args.out)
    dist_.barrier(ctx)
    splits = load_splits(args.data, cfg.data, out if main else None, progress=not args.no_progress and main,
                         cache_dir=args.cache_dir, **_mask_kwargs(args))
    if main:
        _write_json(out / "config.json", cfg.to_dict())
    brought = None
    if args.classifier_factory:
        net = call_factory(args.classifier_factory)
        with torch.no_grad():
            probe = net.eval()(splits["train"].images[:2])
        n_logits = probe.shape[-1] if probe.ndim == 2 else 1
        brought = BinaryClassifier(net, n_logits)
        if args.weights:
            load_foreign_weights(net, args.weights)
    elif args.weights:
        raise MedxganError("--weights needs --classifier-factory (the module the weights belong to)")
    if brought is not None and args.weights:
        model, history = brought.eval().to(device), []  # brought trained: evaluate and package only
    else:
        model, history = train_classifier(cfg.classifier, splits["train"].images, splits["train"].labels,
                                          splits["val"].images, splits["val"].labels, device=device,
                                          progress=not args.no_progress, classifier=brought, ctx=ctx)
    dist_.finish(ctx)
    if not main:
        return 0
    metrics = {s: binary_metrics(predict_proba(model, splits[s].images, device=device), splits[s].labels) for s in ("val", "test")}
    save_classifier(out / CLASSIFIER_FILE, model.cpu(), None if brought is not None else cfg.classifier, cfg.data.size,
                    cfg.data.channels, factory=args.classifier_factory, extra={"data": dataclasses.asdict(cfg.data)})
    _write_json(out / "metrics.json", {"classifier": metrics, "history": history})
    print(f"classifier: val accuracy {metrics['val']['accuracy']:.4f} AUC {metrics['val']['auc']:.4f} | "
          f"test accuracy {metrics['test']['accuracy']:.4f} AUC {metrics['test']['auc']:.4f}")
    print(f"saved {out / CLASSIFIER_FILE}")
    return 0


def _mask_kwargs(args) -> dict:
    kw = {}
    if getattr(args, "masks", None):
        kw["masks"] = args.masks
    if getattr(args, "via", None):
        kw["via"] = args.via
    if getattr(args, "skip_bad", False):
        kw["skip_bad"] = True
    return kw


def cmd_train(args) -> int:
    import torch

    from medxgan import checkpoint as ckpt
    from medxgan import distributed as dist_
    from medxgan.config import ClassifierConfig, DataConfig, RunConfig, from_dict
    from medxgan.evaluate.fidelity import generated_accuracy
    from medxgan.evaluate.realism import c2st_accuracy, sample_images
    from medxgan.training.gan import train_gan
    from medxgan.visualize import sample_grid, save_figure

    ctx, device = dist_.init(args.device)
    main = ctx.is_main
    progress = not args.no_progress and main
    cpath = _classifier_path(args.classifier)
    classifier, cmeta = ckpt.load_classifier(cpath)
    out = Path(args.out)
    if args.resume:
        saved = _read_json(out / "config.json", "run config (nothing to resume?)")
        cfg = _run_config(args, RunConfig.from_dict(saved))
    else:
        # The run's config.json records the classifier actually used (from its file), not the defaults.
        base = RunConfig(data=from_dict(DataConfig, cmeta["data"]) if "data" in cmeta else DataConfig(),
                         classifier=from_dict(ClassifierConfig, cmeta["classifier"]) if "classifier" in cmeta else ClassifierConfig())
        cfg = _run_config(args, base)
    if (cfg.data.size, cfg.data.channels) != (cmeta["size"], cmeta["channels"]):
        raise MedxganError(
            f"{cpath}: classifier expects {cmeta['channels']}x{cmeta['size']}x{cmeta['size']} images, "
            f"the GAN is configured for {cfg.data.channels}x{cfg.data.size}x{cfg.data.size}"
        )
    if not args.resume and (out / ckpt.TRAIN_STATE_FILE).exists():
        raise MedxganError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")
    dist_.per_rank_batch(cfg.gan.batch_size, ctx)
    if main:
        out = _prepare_out(out, resume=args.resume, marker=None)
    dist_.barrier(ctx)
    split_file = run_split_file(cpath.parent, args.data, required=False)
    splits = load_splits(args.data, cfg.data, out if main else None, split_file=split_file, progress=progress,
                         cache_dir=args.cache_dir, **_mask_kwargs(args))
    if main:
        _write_json(out / "config.json", cfg.to_dict())
        if not args.resume or not (out / ckpt.CLASSIFIER_FILE).exists():
            shutil.copyfile(cpath, out / ckpt.CLASSIFIER_FILE)  # the model run is self-contained
    real = splits["train"].images
    samples = out / "samples"
    if main:
        samples.mkdir(exist_ok=True)

    def on_sample(G, step):
        save_figure(sample_grid(G, classifier.to(device), real=real[:6]), samples / f"step_{step:06d}.png")

    G, stats = train_gan(cfg.gan, real, classifier, out_dir=out, resume=args.resume, device=device,
                         progress=progress, on_sample=on_sample, ctx=ctx)
    dist_.finish(ctx)
    if not main:
        return 0
    fid = generated_accuracy(G, classifier.to(device), n_z1=args.eval_z1, seed=0, device=device)
    # Realism beside accuracy: a fresh CNN tries to tell held-out real images from generated ones.
    held_out = torch.cat([splits["val"].images, splits["test"].images])
    c2st = c2st_accuracy(held_out, sample_images(G, len(held_out), seed=1), seed=0)
    _write_json(out / "metrics.json", {"generated": fid, "realism": {"c2st_accuracy": c2st["accuracy"], "c2st_n_test": c2st["n_test"]},
                                       "steps": cfg.gan.steps, "world_size": ctx.world_size})
    shutil.copyfile(samples / f"step_{cfg.gan.steps:06d}.png", out / "samples.png")
    print(f"medXGAN: generated accuracy {fid['accuracy']:.4f} (AUC {fid['auc']:.4f}, {fid['n']} images, Table 1 protocol); "
          f"realism: C2ST accuracy {c2st['accuracy']:.3f} (0.5 = indistinguishable from held-out real images)")
    print(f"saved {out / ckpt.GENERATOR_FILE}; sample grid {out / 'samples.png'} — look at it: accuracy alone does not show realism")
    return 0


def cmd_train_encoder(args) -> int:
    from medxgan import checkpoint as ckpt
    from medxgan.config import DataConfig, from_dict
    from medxgan.device import place, resolve_device
    from medxgan.encoder import ENCODER_FILE, EncoderConfig, encode, train_encoder
    from medxgan.inversion import image_quality

    run = Path(args.model)
    G, C, gmeta = ckpt.load_medxgan(run)
    saved = _read_json(run / "config.json", "run config")
    enc_dict = saved.get("encoder", {}) if isinstance(saved.get("encoder"), dict) else {}
    ecfg = from_dict(EncoderConfig, enc_dict)
    for item in args.set or []:
        if not item.startswith("encoder."):
            raise MedxganError(f"--set {item}: train-encoder only takes encoder.* settings (encoder.lr, encoder.nef, ...)")
        key, _, value = item[len("encoder."):].partition("=")
        ecfg = from_dict(EncoderConfig, {**dataclasses.asdict(ecfg), key: value})
    if args.steps is not None:
        ecfg = dataclasses.replace(ecfg, steps=args.steps)
    dcfg = from_dict(DataConfig, saved.get("data", {}))
    split_file = run_split_file(run, args.data, required=False)
    splits = load_splits(args.data, dcfg, None, split_file=split_file, progress=not args.no_progress, cache_dir=args.cache_dir,
                         **_mask_kwargs(args))
    device = resolve_device(args.device)
    real = splits["train"].images
    if real.shape[1:] != (gmeta["channels"], gmeta["size"], gmeta["size"]):
        raise MedxganError(f"{args.data}: images are {tuple(real.shape[1:])}, the model expects "
                           f"{(gmeta['channels'], gmeta['size'], gmeta['size'])}")
    t = time.time()
    E, history = train_encoder(ecfg, G, real, device=device, progress=not args.no_progress)
    G = G.to(device)
    held = splits["val"].images[:256]
    z1, z2 = encode(E, held)
    _, psnr, ssim = image_quality(G(z1, z2).detach(), held.to(device))
    ckpt.save_encoder(run / ENCODER_FILE, E.cpu(), ecfg, G.cpu(), gmeta,
                      extra={"val_ssim": float(ssim.mean()), "val_psnr": float(psnr.mean()), "history": history[-1:]})
    print(f"encoder: {ecfg.steps} steps in {time.time() - t:.0f}s; G(E(x)) on {len(held)} validation images: "
          f"SSIM {float(ssim.mean()):.3f}, PSNR {float(psnr.mean()):.1f} dB (before any refinement)")
    print(f"saved {run / ENCODER_FILE}; use it with `medxgan explain --encoder`")
    return 0


def _collect_images(inputs: list[str]) -> list[Path]:
    from medxgan.data import _is_image

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if _is_image(q) and "masks" not in q.parts)
            if not found:
                raise MedxganError(f"{p}: no images in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise MedxganError(f"{p}: no such image or folder")
    return files


def _explain_inputs(args, dcfg, progress):
    """The job's images as a :class:`medxgan.streaming.ImageSource`: --data's split (decoded with
    the data set, as for training) or files, decoded lazily one batch at a time."""
    import torch

    from medxgan.streaming import ImageFiles, ImageTensors

    if args.data:
        splits = load_splits(args.data, dcfg, split_file=run_split_file(args.model, args.data, required=True),
                             progress=progress, cache_dir=args.cache_dir, **_mask_kwargs(args))
        part = splits[args.split]
        idx = torch.nonzero(part.labels == 1).flatten() if not args.all_classes else torch.arange(len(part))
        if args.with_mask:
            idx = idx[part.has_mask[idx]]
            if len(idx) == 0:
                raise MedxganError(f"{args.data}: no image of the {args.split} split has a lesion mask or outline (--with-mask)")
        if args.n is not None:
            idx = idx[: args.n]
        if len(idx) == 0:
            raise MedxganError(f"{args.data}: no positive images in the {args.split} split to explain")
        sub = part.subset(idx.numpy())
        return ImageTensors(sub.images, sub.names, sub.masks)
    if not args.inputs:
        raise MedxganError("give images or folders to explain, or --data DIR to explain its held-out test positives")
    files = _collect_images(args.inputs)
    if args.n is not None:
        files = files[: args.n]
    if args.masks and not Path(args.masks).is_dir():
        raise MedxganError(f"{args.masks}: mask folder not found")
    return ImageFiles(files, dcfg.size, dcfg.channels, dcfg.resize, medical=dcfg.medical(),
                      allow_upscale=dcfg.allow_upscale, mask_dir=Path(args.masks) if args.masks else None,
                      skip_bad=args.skip_bad)


def _explain_settings(args, dcfg, inversion, methods, use_encoder: bool, tuning=None) -> dict:
    """Everything that changes an image's explanation: the resume fingerprint's input."""
    import dataclasses as dc

    from medxgan.checkpoint import CLASSIFIER_FILE, GENERATOR_FILE
    from medxgan.encoder import ENCODER_FILE
    from medxgan.streaming import file_digest
    from medxgan.tuning import tuning_settings

    model = Path(args.model)
    weights = [GENERATOR_FILE, CLASSIFIER_FILE] + ([ENCODER_FILE] if use_encoder else [])
    inv = dc.asdict(inversion)
    if not inversion.warmup_steps:  # runs made before the warm-up existed keep their fingerprint
        inv.pop("warmup_steps"), inv.pop("warmup_lr")
    settings = {"weights": {w: file_digest(model / w) for w in weights if (model / w).is_file()},
                "methods": methods, "target": args.target, "inversion": inv, "encoder": use_encoder,
                "frames": args.frames, "lig_steps": args.lig_steps, "data": dc.asdict(dcfg), "report_details": args.report_details,
                "source": {"data": bool(args.data), "split": args.split, "all_classes": args.all_classes,
                           "with_mask": args.with_mask}}
    if tuning is not None:  # runs without tuning keep the fingerprint they had before it existed
        settings["tuning"] = tuning_settings(tuning)
    if args.ensemble > 1:  # likewise runs without an ensemble
        settings["ensemble"] = args.ensemble
    if args.smooth:  # and runs with the raw maps
        settings["smooth"] = args.smooth
    return settings


def cmd_explain(args) -> int:
    """Explain a job of images in batches: per-image files are written as each batch finishes, only
    small summary rows are kept, and ``--resume`` skips images an earlier run finished."""
    import torch
    from tqdm.auto import tqdm

    from medxgan import checkpoint as ckpt
    from medxgan import distributed as dist_
    from medxgan.config import DataConfig, from_dict
    from medxgan.device import place
    from medxgan.explain import explain_images, list_explainers
    from medxgan.inversion import InversionConfig
    from medxgan.report import read_image_row, safe_names, write_image_outputs, write_overview_figure, write_report
    from medxgan.streaming import ExplainManifest, contiguous_runs

    if args.list_methods:
        print("\n".join(list_explainers()))
        return 0
    if not args.model or not args.out:
        raise MedxganError("explain needs --model RUN and --out DIR")
    if args.batch_size < 1 or args.report_details < 0:
        raise MedxganError("--batch-size must be positive and --report-details non-negative")
    if args.ensemble < 1:
        raise MedxganError(f"--ensemble must be at least 1, got {args.ensemble}")
    if not (args.smooth >= 0 and math.isfinite(args.smooth)):
        raise MedxganError(f"--smooth must be a non-negative number of pixels (0 = the raw maps), got {args.smooth}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in list_explainers()]
    if unknown:
        raise MedxganError(f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(list_explainers())}")
    tuning = _tuning_config(args)  # option errors come before any model or data is loaded
    if tuning is not None and args.paper_inversion:
        raise MedxganError("--tune-steps and --paper-inversion exclude each other (the paper inverts the latents alone)")
    ctx, device = dist_.init(args.device)
    main = ctx.is_main
    G, C, gmeta = ckpt.load_medxgan(args.model)
    config = _read_json(Path(args.model) / "config.json", "run config")
    dcfg = from_dict(DataConfig, config.get("data", {}))
    progress = not args.no_progress and main
    source = _explain_inputs(args, dcfg, progress)
    expected = (gmeta["channels"], gmeta["size"], gmeta["size"])
    G, C = place(G, device), place(C, device)
    from medxgan.encoder import ENCODER_FILE, encode

    E = None
    if args.encoder and args.paper_inversion:
        raise MedxganError("--encoder and --paper-inversion exclude each other (the paper starts from random latents)")
    if args.ensemble > 1 and args.encoder and (args.restarts or 1) < 2:
        raise MedxganError("--ensemble with --encoder needs --restarts 2 or more: from the encoder's single start "
                           "every member would find the same explanation")
    if args.encoder and not (Path(args.model) / ENCODER_FILE).exists():
        raise MedxganError(f"{args.model}: no {ENCODER_FILE}; train one with `medxgan train-encoder --model {args.model} --data DIR`")
    if args.encoder:
        E, _ = ckpt.load_encoder(Path(args.model) / ENCODER_FILE, G.cpu(), gmeta)
        E, G = place(E, device), place(G, device)
    # With an encoder the inversion starts near the answer (hybrid): fewer steps and one start suffice.
    steps = args.steps if args.steps is not None else (200 if E is not None else 600)
    restarts = args.restarts if args.restarts is not None else (1 if E is not None else 4)
    if args.paper_inversion and any(getattr(args, k) is not None for k in ("neg_weight", "change_weight", "anchor_weight",
                                                                            "warmup_steps", "warmup_lr")):
        raise MedxganError("--neg-weight / --change-weight / --anchor-weight / --warmup-* and --paper-inversion exclude each other "
                           "(the paper inverts with Eq. 5 alone)")
    inversion = (dataclasses.replace(InversionConfig.paper(), seed=args.seed) if args.paper_inversion
                 else InversionConfig(steps=steps, restarts=restarts, seed=args.seed, **_inversion_terms(args)))

    names = source.names
    safes = safe_names(names)
    out = _prepare_out(Path(args.out)) if main else Path(args.out)
    settings = _explain_settings(args, dcfg, inversion, methods, E is not None, tuning)
    manifest = ExplainManifest.open(out, settings, require_existing=args.resume)  # every rank checks: same one-line error
    dist_.barrier(ctx)  # every rank has read the old manifest before rank 0 rewrites it
    # An image is done when its JSON (written last, atomically) is there and names it.
    done = {i for i, (n, s) in enumerate(zip(names, safes))
            if manifest.resumed and (r := read_image_row(out, s)) is not None and r["name"] == n}
    if main and manifest.resumed:
        print(f"resuming the run in {out}: {len(done)} of {len(names)} images already done")
    if main:
        (out / "report.html").unlink(missing_ok=True)  # a run in progress must not look finished
        manifest.write(sorted({*manifest.done, *(names[i] for i in done)}), len(names))

    # Under torchrun each process explains one contiguous block; random starts are keyed by the
    # image's position in the whole job, so an image's result depends neither on the split
    # between processes nor on the batches left to do after a resume.
    mine = dist_.block(len(names), ctx)
    todo = [i for i in mine if i not in done]
    skipped: list[int] = []
    explained_now = 0
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="explain", unit="img", disable=not progress)
    for batch in source.batches(todo, args.batch_size):
        skipped += batch.skipped
        if len(batch.indices) and tuple(batch.images.shape[1:]) != expected:
            raise MedxganError(f"images are {tuple(batch.images.shape[1:])}, the model expects {expected}")
        if not torch.isfinite(batch.images).all():
            raise MedxganError("input images contain NaN or Inf")
        offset = 0
        for run in contiguous_runs(batch.indices):  # skipped files break a batch into runs
            sl = slice(offset, offset + len(run))
            offset += len(run)
            init = encode(E, batch.images[sl]) if E is not None else None
            explanations = explain_images(G, C, batch.images[sl], methods=methods, inversion=inversion, n_frames=args.frames,
                                          lig_steps=args.lig_steps, target=args.target, names=[names[i] for i in run],
                                          masks=batch.masks[sl] if batch.masks is not None else None,
                                          first_index=run[0], init=init, tuning=tuning, ensemble=args.ensemble,
                                          smooth=args.smooth)
            for i, explanation in zip(run, explanations):
                write_image_outputs(explanation, out, safes[i], position=i + 1 if i < args.report_details else None)
                done.add(i)
                explained_now += 1
        if main:
            manifest.write([names[i] for i in sorted(done)], len(names))
        bar.update(len(batch.indices) + len(batch.skipped))
    bar.close()
    counts = dist_.gather_to_main((len(skipped), explained_now), ctx)
    dist_.barrier(ctx)  # every rank's files are written before rank 0 reads them back
    if not main:
        return 0
    rows = [r for n, s in zip(names, safes) if (r := read_image_row(out, s)) is not None and r["name"] == n]
    n_skipped, n_explained = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if not rows:
        raise MedxganError("no readable image to explain")
    manifest.write([r["name"] for r in rows], len(names))
    info = {"model": str(args.model), "classifier": gmeta.get("classifier_arch", "see classifier.safetensors"),
            "gan code": gmeta["gan"]["code"], "image size": f"{gmeta['channels']}x{gmeta['size']}x{gmeta['size']}",
            "inversion": "paper protocol (Adam, 10,000 steps)" if args.paper_inversion else
            f"{'encoder start + ' if E is not None else ''}"
            + (f"{inversion.warmup_steps} pixel warm-up steps + " if inversion.warmup_steps else "")
            + f"{inversion.steps} steps x {inversion.restarts} start(s)"
            + (f" + {tuning.steps} generator-tuning steps per image" if tuning is not None else "")
            + (f"; maps: mean of {args.ensemble} such explanations (seeds {args.seed} to {args.seed + args.ensemble - 1})"
               if args.ensemble > 1 else ""),
            "target": args.target}
    if args.smooth:
        info["maps"] = f"blurred by a Gaussian of \u03c3 = {args.smooth:g} px (--smooth; totals kept)"
    # detailed panels were written for the images at job positions < --report-details: a prefix of the rows
    first_names = set(names[:args.report_details])
    report = write_report(out, rows, title=args.title, model_info=info, detailed=sum(r["name"] in first_names for r in rows))
    write_overview_figure(out, rows)
    ssim = sum(r["ssim"] or 0.0 for r in rows) / len(rows)
    mono = sum(bool(r["monotone"]) for r in rows)
    neg = sum(r["prob_negative"] is not None and r["prob_negative"] < 0.1 for r in rows)
    print(f"explained {len(rows)} images" + (f" ({len(rows) - n_explained} done by the earlier run)" if manifest.resumed else "")
          + f": mean reconstruction SSIM {ssim:.3f}, negative realization P<0.1 for {neg}/{len(rows)}, monotone interpolation {mono}/{len(rows)}"
          + (f"; skipped {n_skipped} unreadable" if n_skipped else ""))
    if args.ensemble > 1:
        agree = sorted(r["agreement"] for r in rows if r.get("agreement") is not None)
        if agree:
            import statistics

            print(f"agreement of the {args.ensemble} explanations per image (correlation of their difference maps): "
                  f"median {statistics.median(agree):.3f}, lowest {agree[0]:.3f}")
    print(f"report: {report}")
    return 0


def cmd_fidelity(args) -> int:
    import torch

    from medxgan import checkpoint as ckpt
    from medxgan.config import DataConfig, from_dict
    from medxgan.device import place, resolve_device
    from medxgan.evaluate.fidelity import generated_accuracy
    from medxgan.evaluate.realism import c2st_accuracy, sample_images

    G, C, gmeta = ckpt.load_medxgan(args.model)
    config = _read_json(Path(args.model) / "config.json", "run config")
    dcfg = from_dict(DataConfig, config.get("data", {}))
    device = resolve_device(args.device)
    G, C = place(G, device), place(C, device)
    splits = load_splits(args.data, dcfg, split_file=run_split_file(args.model, args.data, required=True),
                         progress=not args.no_progress, cache_dir=args.cache_dir)
    runs = [generated_accuracy(G, C, n_z1=args.n_z1, seed=s, device=device) for s in range(args.repeats)]
    acc = torch.tensor([r["accuracy"] for r in runs])
    auc = torch.tensor([r["auc"] for r in runs])
    held_out = torch.cat([splits["val"].images, splits["test"].images])
    c2st = c2st_accuracy(held_out, sample_images(G.cpu(), len(held_out), seed=1), seed=0)
    result = {"generated_accuracy": {"mean": float(acc.mean()), "std": float(acc.std()) if len(acc) > 1 else 0.0, "n": len(acc)},
              "generated_auc": {"mean": float(auc.mean()), "std": float(auc.std()) if len(auc) > 1 else 0.0, "n": len(auc)},
              "realism.c2st_accuracy": c2st["accuracy"], "c2st_n_test": c2st["n_test"],
              "protocol": f"{args.n_z1} z1 x (1 negative + 3 positive), {args.repeats} seeds"}
    print(json.dumps(result, indent=2))
    if args.out:
        _write_json(Path(args.out), result)
    return 0


def _evaluate_command(args) -> str:
    """The command line that reproduces this evaluation, rebuilt from the parsed options."""
    import shlex

    words = ["medxgan", "evaluate"]
    for key, value in vars(args).items():
        if key in ("func", "command", "list_experiments") or value is None or value is False or (key == "tune_steps" and not value):
            continue
        words += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words)


def cmd_evaluate(args) -> int:
    import platform

    import torch

    from medxgan import checkpoint as ckpt
    from medxgan.config import DataConfig, from_dict
    from medxgan.device import place, resolve_device
    from medxgan.evaluate.convergence import HYBRID_START_SIGMA
    from medxgan.evaluate.registry import EvalContext, get_experiment, list_experiments
    from medxgan.evaluate.report import write_evaluation
    from medxgan.evaluate.shortcut import load_marker_masks
    from medxgan.explain import list_explainers
    from medxgan.inversion import InversionConfig

    if args.list_experiments:
        for name in list_experiments():
            print(f"{name}\t{get_experiment(name).title}")
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--data", args.data), ("--out", args.out)) if not value]
    if missing:
        raise MedxganError(f"evaluate needs {', '.join(missing)}")
    names = [n.strip() for n in args.experiments.split(",") if n.strip()] if args.experiments else list_experiments()
    if not names:
        raise MedxganError("--experiments: give at least one experiment name")
    experiments = [get_experiment(n) for n in dict.fromkeys(names)]  # unknown name -> error listing the known ones
    methods = tuple(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    unknown = [m for m in methods if m not in list_explainers()]
    if unknown or not methods:
        raise MedxganError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(list_explainers())}")
    for flag, value in (("--n-images", args.n_images), ("--n-images-costly", args.n_images_costly), ("--repeats", args.repeats), ("--inversion-steps", args.inversion_steps),
                        ("--restarts", args.restarts), ("--gan-steps", args.gan_steps)):
        if value is not None and value < 1:
            raise MedxganError(f"{flag} must be at least 1, got {value}")
    if args.convergence_sigma is not None and not args.encoder:
        raise MedxganError("--convergence-sigma perturbs the encoder's start: it needs --encoder (random starts have no such setting)")
    if args.convergence_sigma is not None and not (math.isfinite(args.convergence_sigma) and args.convergence_sigma >= 0):
        raise MedxganError(f"--convergence-sigma must be a finite number >= 0, got {args.convergence_sigma}")
    convergence_sigma = HYBRID_START_SIGMA if args.convergence_sigma is None else args.convergence_sigma
    tuning = _tuning_config(args)  # option errors come before any model or data is loaded

    G, C, gmeta = ckpt.load_medxgan(args.model)
    config = _read_json(Path(args.model) / "config.json", "run config")
    dcfg = from_dict(DataConfig, config.get("data", {}))
    device = resolve_device(args.device)
    progress = not args.no_progress
    uses_npz = args.data.endswith(".npz")
    splits = load_splits(args.data, dcfg, split_file=run_split_file(args.model, args.data, required=True), progress=progress, cache_dir=args.cache_dir,
                         **_mask_kwargs(args))
    test = splits["test"]
    expected = (gmeta["channels"], gmeta["size"], gmeta["size"])
    if tuple(test.images.shape[1:]) != expected:
        raise MedxganError(f"test images are {tuple(test.images.shape[1:])}, the model expects {expected}")
    if not bool((test.labels == 1).any()):
        raise MedxganError("the test split holds no positive image to explain")
    E = None
    if args.encoder:
        from medxgan.encoder import ENCODER_FILE

        if not (Path(args.model) / ENCODER_FILE).exists():
            raise MedxganError(f"{args.model}: no {ENCODER_FILE}; train one with `medxgan train-encoder --model {args.model} --data DIR`")
        E, _ = ckpt.load_encoder(Path(args.model) / ENCODER_FILE, G, gmeta)
    # An earlier evaluation's metrics and figures are never mixed with (or replaced by) this one's.
    out = _prepare_out(Path(args.out), marker="metrics.json")

    quick = args.quick
    n_images = args.n_images if args.n_images is not None else (4 if quick else 50)
    n_images_costly = args.n_images_costly if args.n_images_costly is not None else 25
    repeats = args.repeats if args.repeats is not None else (1 if quick else 3)
    # Random starts: 400 steps x 2 starts (600 x 4 fitted the phantoms no better: SSIM 0.57 vs
    # 0.56, docs/RESULTS.md, at three times the cost). From an encoder: 200 steps, one start.
    random_steps, random_restarts = (40, 1) if quick else (400, 2)
    steps = args.inversion_steps if args.inversion_steps is not None else (
        random_steps if E is None else (40 if quick else 200))
    restarts = args.restarts if args.restarts is not None else (random_restarts if E is None else 1)
    inversion = InversionConfig(steps=steps, restarts=restarts, seed=args.seed, **_inversion_terms(args))
    # Generators trained by the evaluation itself have no encoder: random starts, at the random-start
    # budget unless --inversion-steps / --restarts were given for a random-start evaluation.
    # (The anchor term pulls toward the encoder's guess; those random starts have none, so it is off.)
    fresh_inversion = inversion if E is None else dataclasses.replace(inversion, steps=random_steps, restarts=random_restarts,
                                                                      anchor_weight=0.0)
    torch.manual_seed(args.seed)
    G, C = place(G, device).eval().requires_grad_(False), place(C, device).frozen()
    E = place(E, device) if E is not None else None
    # Phantoms written with --shortcut carry masks of the spurious marker (shortcut experiment).
    marker_masks = load_marker_masks(args.data, list(test.names), dcfg.size, dcfg.resize) if not uses_npz else None
    ctx = EvalContext(
        G=G, C=C, test_images=test.images, test_labels=test.labels, test_masks=test.masks, test_names=list(test.names),
        reference_images=torch.cat([splits["val"].images, test.images]),
        train_images=splits["train"].images, train_labels=splits["train"].labels,
        run_config=config, n_images=n_images, n_images_costly=n_images_costly, methods=methods, seed=args.seed, quick=quick, inversion=inversion,
        repeats=repeats, gan_steps=args.gan_steps, device=device, progress=progress, test_marker_masks=marker_masks,
        encoder=E, fresh_inversion=fresh_inversion, convergence_sigma=convergence_sigma, tuning=tuning,
    )
    meta = {
        "command": _evaluate_command(args),
        "model": str(args.model), "data": str(args.data), "experiments": [e.name for e in experiments],
        "methods": list(methods), "seed": args.seed, "n_images": n_images, "n_images_costly": n_images_costly,
        "n_test": len(test), "n_test_positive": int((test.labels == 1).sum()),
        "n_test_with_mask": int(test.has_mask.sum()) if test.masks is not None else 0,
        "repeats": repeats, "quick": quick, "gan_steps": args.gan_steps,
        "inversion": dataclasses.asdict(inversion), "encoder": E is not None, "convergence_sigma": convergence_sigma if E is not None else None,
        "fresh_model_inversion": dataclasses.asdict(fresh_inversion), "device": str(device),
        "tuning": dataclasses.asdict(tuning) if tuning is not None else None,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "timings": {},
    }
    results = {}
    t_start = time.time()
    for experiment in experiments:
        print(f"[evaluate] {experiment.name}: {experiment.title}", flush=True)
        t0 = time.time()
        results[experiment.name] = experiment.fn(ctx)
        meta["timings"][experiment.name] = round(time.time() - t0, 2)
        meta["timings"]["total"] = round(time.time() - t_start, 2)
        # Written after every experiment, so an interrupted evaluation keeps what it finished.
        report = write_evaluation(out, results, meta)
    print(f"[evaluate] done in {time.time() - t_start:.0f}s: {out / 'metrics.json'}, {report}")
    return 0


def cmd_info(args) -> int:
    from medxgan.checkpoint import read_metadata

    meta = read_metadata(args.model)
    print(json.dumps(meta, indent=2))
    return 0


NEG_WEIGHT_HELP = ("inversion: weight of the term beyond Eq. 5 asking the negative realization G(z1, 0) to be classified "
                   "negative, so pathology cannot hide in z1 (default 1; 0 = Eq. 5 as published; README, 'Inversion')")


CHANGE_WEIGHT_HELP = ("inversion: weight of an optional prior on the explanation, mean |G(z1, z2) - G(z1, 0)|: the "
                      "smallest change that makes the image positive (default 0 = off; README, 'Inversion')")


ANCHOR_WEIGHT_HELP = ("inversion: weight of a pull of the latents toward a reference, mean (z - ref)^2: the encoder's "
                      "guess E(x) with --encoder, else 0 (a Gaussian prior). It picks one point of Eq. 5's flat minimum, "
                      "so that nearby starts agree (default 0 = off; README, 'Inversion')")


WARMUP_STEPS_HELP = ("inversion: pixels-only warm-up steps (MSE alone: G without the classifier, about half the cost "
                     "of an Eq. 5 step) before the Eq. 5 steps; every start warms up and the best of each image goes "
                     "on alone (default 0 = none; README, 'Inversion')")
WARMUP_LR_HELP = "inversion: Adam learning rate of the warm-up (cosine decay; default 0.1)"
TUNE_STEPS_HELP = ("after the inversion, fine-tune a copy of the generator on each image for N steps (pivotal tuning) so that "
                   "it reproduces the image while its negative realization is negative and differs from the image in a small, "
                   "smooth region; the latent maps then come from the tuned copy (medxgan.tuning; docs/RESULTS.md). "
                   "0 = off (default); 1500 is the measured setting")


def _add_tuning_args(p) -> None:
    """``--tune-*`` (explain and evaluate): per-image generator tuning, read by :func:`_tuning_config`."""
    p.add_argument("--tune-steps", type=int, default=0, metavar="N", help=TUNE_STEPS_HELP)
    p.add_argument("--tune-lr", type=float, metavar="LR", help="generator tuning: Adam learning rate on the weights (default 1e-4)")
    p.add_argument("--tune-proximity-weight", type=float, metavar="W",
                   help="generator tuning: weight of mean |x - G'(z1,0)|, the negative realization stays the image "
                        "up to a sparse change (default 0.2)")
    p.add_argument("--tune-proximity-delta", type=float, metavar="D",
                   help="generator tuning: measure that change with the log penalty D*log(1 + |x - G'(z1,0)|/D) instead of "
                        "L1, so one deep change costs less than two shallow ones (default 0 = L1; docs/RESULTS.md, session 20)")
    p.add_argument("--tune-proximity-sigma", type=float, metavar="PX",
                   help="generator tuning, with --tune-proximity-delta: apply the log penalty to |x - G'(z1,0)| averaged over a "
                        "Gaussian window of PX pixels, so it is a region's depth of change that gets cheaper, not a pixel's "
                        "(default 0 = per pixel; docs/RESULTS.md, session 22)")
    p.add_argument("--tune-neg-target", type=float, metavar="P",
                   help="generator tuning: stop pushing the negative realization's P(positive) down once it is below P "
                        "(a hinge on -log(1 - P_C); default 0 = push toward 0 without end)")
    p.add_argument("--tune-smooth-weight", type=float, metavar="W",
                   help="generator tuning: weight of the total variation of G'(z1,z2) - G'(z1,0), a change in connected regions "
                        "rather than speckle (default 0.3; 0 = off)")
    p.add_argument("--tune-change-weight", type=float, metavar="W",
                   help="generator tuning: weight of mean |G'(z1,z2) - G'(z1,0)| (default 0; session 10's recipe was 0.2 "
                        "with the two weights above at 0)")
    p.add_argument("--tune-neg-views", type=int, metavar="K",
                   help="generator tuning: the negative realization must be negative under K of the classifier's training "
                        "augmentations as well (flip, shift, intensity; drawn from --seed), not only as drawn (default 0 = off; "
                        "each view costs one more classifier pass per step)")


def _tuning_config(args):
    """TuningConfig from ``--tune-*`` (None when ``--tune-steps`` is 0)."""
    from medxgan.tuning import TuningConfig

    if args.tune_steps < 0:
        raise MedxganError(f"--tune-steps must be non-negative, got {args.tune_steps}")
    if not args.tune_steps:
        if any(v is not None for v in (args.tune_lr, args.tune_proximity_weight, args.tune_proximity_delta,
                                       args.tune_proximity_sigma, args.tune_neg_target,
                                       args.tune_smooth_weight, args.tune_change_weight, args.tune_neg_views)):
            raise MedxganError("--tune-lr / --tune-proximity-weight / --tune-proximity-delta / --tune-proximity-sigma / "
                               "--tune-neg-target / --tune-smooth-weight / --tune-change-weight / --tune-neg-views "
                               "need --tune-steps N")
        return None
    given = {"lr": args.tune_lr, "proximity_weight": args.tune_proximity_weight, "proximity_delta": args.tune_proximity_delta,
             "proximity_sigma": args.tune_proximity_sigma, "neg_target": args.tune_neg_target,
             "smooth_weight": args.tune_smooth_weight,
             "change_weight": args.tune_change_weight, "neg_views": args.tune_neg_views}
    return TuningConfig(steps=args.tune_steps, seed=getattr(args, "seed", 0) or 0,
                        **{k: v for k, v in given.items() if v is not None})


def _inversion_terms(args) -> dict:
    """``--neg-weight`` / ``--change-weight`` / ``--anchor-weight`` / ``--warmup-steps`` /
    ``--warmup-lr`` as InversionConfig keywords (absent: the config's defaults)."""
    given = {"neg_weight": args.neg_weight, "change_weight": args.change_weight, "anchor_weight": args.anchor_weight,
             "warmup_steps": args.warmup_steps, "warmup_lr": args.warmup_lr}
    return {k: v for k, v in given.items() if v is not None}


DEMO_PRESETS = {
    # name: (phantoms n, size, classifier overrides, gan overrides)
    # 64 px, sized to the 15-minute budget on 2 cores (docs/RESULTS.md); the GAN runs the default
    # recipe (GANConfig) for 4000 steps with a 32-dimensional pathology code: with 16 dimensions
    # the positives the classifier rejected were the short-z2 draws (|z2| 3.2 vs 4.0 for the
    # accepted ones), and 32 dimensions concentrate |z2| (generated accuracy 0.954 -> 0.975 / 0.980
    # on two seeds).
    "full": (4000, 64, ["classifier.epochs=16", "classifier.width=24", "classifier.lr=3e-3"],
             ["gan.steps=4000", "gan.z2_dim=32", "gan.checkpoint_every=500", "gan.sample_every=500"]),
    "quick": (240, 32, ["classifier.epochs=4", "classifier.width=8", "classifier.depth=3", "classifier.batch_size=32"],
              ["gan.steps=60", "gan.ngf=8", "gan.ndf=8", "gan.z1_dim=16", "gan.z2_dim=4", "gan.batch_size=16",
               "gan.lam_start=20", "gan.lam_warmup=20", "gan.ema_start=10", "gan.checkpoint_every=30", "gan.sample_every=30"]),
}


def cmd_demo(args) -> int:
    preset = "quick" if args.quick else "full"
    n, size, c_over, g_over = DEMO_PRESETS[preset]
    out = _prepare_out(args.out)
    t0 = time.time()
    common = ["--device", args.device] + (["--no-progress"] if args.no_progress else [])
    steps = [
        ("phantoms", ["phantoms", "--out", str(out / "phantoms"), "--n", str(n), "--size", str(size), "--seed", str(args.seed)]
         + (["--no-progress"] if args.no_progress else [])),
        ("classifier", ["train-classifier", "--data", str(out / "phantoms"), "--out", str(out / "classifier"), "--size", str(size)] + common
         + [a for s in c_over for a in ("--set", s)]),
        ("medXGAN", ["train", "--data", str(out / "phantoms"), "--classifier", str(out / "classifier"), "--out", str(out / "medxgan")]
         + common + [a for s in g_over for a in ("--set", s)] + (["--eval-z1", "100"] if args.quick else [])),
        ("explain", ["explain", "--model", str(out / "medxgan"), "--data", str(out / "phantoms"), "--n", "3" if args.quick else "8",
                     "--out", str(out / "report"), "--title", "medXGAN demo: phantom test positives"]
         + (["--steps", "60", "--restarts", "2", "--lig-steps", "8", "--tune-steps", "10"] if args.quick
            else ["--steps", "300", "--restarts", "2", "--tune-steps", "1000"]) + common[:2]
         + (["--no-progress"] if args.no_progress else [])),
    ]
    for name, argv in steps:
        if name == "phantoms" and (out / "phantoms" / "labels.csv").exists():
            print("[demo] phantoms already there, re-using them")
            continue
        if name == "classifier" and (out / "classifier" / "classifier.safetensors").exists():
            print("[demo] classifier already trained, re-using it")
            continue
        if name == "medXGAN" and (out / "medxgan" / "metrics.json").exists():
            print("[demo] medXGAN already trained, re-using it")
            continue
        if name == "medXGAN" and (out / "medxgan" / "train_state.pt").exists():
            argv = argv + ["--resume"]
        print(f"[demo] {name} ({time.time() - t0:.0f}s)")
        rc = main(argv)
        if rc:
            return rc
    print(f"[demo] done in {time.time() - t0:.0f}s")
    print(f"[demo] results in {out}: classifier/metrics.json, medxgan/metrics.json, medxgan/samples.png, report/report.html")
    return 0


# --- parser --------------------------------------------------------------------------------

CACHE_DIR_HELP = ("keep class-folder images decoded in DIR (one tensor file per data set and settings, rebuilt when a file "
                  "changes; put it outside the data folder). Default: $MEDXGAN_CACHE_DIR, else no cache")


def _add_common(p, data=True):
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    p.add_argument("--config", help="JSON run config (sections data, classifier, gan)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value, e.g. gan.lr_g=1e-4")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if data:
        p.add_argument("--size", type=int, help="image size the models work at (default 64)")
        p.add_argument("--channels", type=int, choices=(1, 3), help="1 = gray (default), 3 = RGB")
        p.add_argument("--resize", choices=("pad", "crop", "stretch"), help="how images are fitted to the size (default pad)")
        p.add_argument("--positive", help="sub-folder of the positive class (default 'positive')")
        p.add_argument("--negative", help="sub-folder of the negative class (default 'negative')")
        p.add_argument("--masks", help="folder of lesion masks named like the images")
        p.add_argument("--via", help="VGG Image Annotator JSON with lesion outlines")
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (and count them) instead of stopping")
        p.add_argument("--layout", choices=("classes", "volumes"),
                       help="classes: class sub-folders (default); volumes: images/ and masks/ NIfTI volumes, every slice")
        p.add_argument("--window", metavar="CENTRE,WIDTH", help="DICOM window overriding the files' own (e.g. 40,400 for CT brain)")
        p.add_argument("--frame", type=int, help="frame of multi-frame DICOMs (default 0)")
        p.add_argument("--axis", type=int, choices=(0, 1, 2), help="NIfTI slicing axis after RAS+ reorientation (default 2, axial)")
        p.add_argument("--no-upscale", dest="allow_upscale", action="store_false", default=None,
                       help="refuse images smaller than --size instead of enlarging them")
        p.add_argument("--slice", type=int, help="NIfTI slice taken from volumes in class folders (default: the middle)")
        p.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medxgan", description="Explain medical image classifiers with a generative latent space (medXGAN).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantoms", help="write the embedded synthetic brain-MRI dataset with lesion masks")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shortcut", type=float, default=0.0, help="fraction of positives that carry a spurious border marker")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("train-classifier", help="train (or bring) the binary classifier to explain")
    p.add_argument("--data", required=True, help="folder with one sub-folder per class, or a MedMNIST .npz")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--classifier-factory", help="bring your own: package.module:function returning an nn.Module")
    p.add_argument("--weights", help="weights for the factory's module (.safetensors or a state-dict .pt); skips training")
    _add_common(p)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("train", help="train the medXGAN generator with the frozen classifier in the loop (Eq. 4)")
    p.add_argument("--data", required=True)
    p.add_argument("--classifier", required=True, help="train-classifier run directory (or its classifier.safetensors)")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--eval-z1", type=int, default=1000, help="anatomy codes for the final generated-accuracy check (paper: 1000)")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-encoder", help="train an encoder x -> (z1, z2) for fast (hybrid) inversion; saved in the model run")
    p.add_argument("--model", required=True, help="medXGAN run directory (from `medxgan train`)")
    p.add_argument("--data", required=True, help="the data the GAN was trained on (its training split is used)")
    p.add_argument("--steps", type=int, help="training steps (default 1500)")
    _add_common(p)
    p.set_defaults(func=cmd_train_encoder)

    p = sub.add_parser("demo", help="phantoms -> classifier -> medXGAN on the embedded data")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests): under 2 minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("explain", help="explain positive images: inversion, negative realization, interpolation, maps, report")
    p.add_argument("inputs", nargs="*", help="images or folders of images")
    p.add_argument("--model", help="medXGAN run directory (from `medxgan train`)")
    p.add_argument("--out", help="report directory")
    p.add_argument("--data", help="instead of files: a dataset whose held-out split to explain (positives)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--all-classes", action="store_true", help="with --data: explain negatives too")
    p.add_argument("--with-mask", action="store_true", help="with --data: only images that have a lesion mask or outline")
    p.add_argument("--n", "--max-images", dest="n", type=int, help="explain at most N images (under torchrun spell it --max-images: torchrun mistakes --n for its own options)")
    p.add_argument("--methods", default="difference,lig,gradcam,ig,ig_negative", help="comma-separated; see --list-methods")
    p.add_argument("--list-methods", action="store_true", help="list the registered explainers and exit")
    p.add_argument("--target", default="logit", choices=("logit", "probability"), help="score explained: positive log-odds or P(positive)")
    p.add_argument("--steps", type=int, help="inversion step cap per image (default 200 with an encoder, else 600)")
    p.add_argument("--restarts", type=int, help="starts per image, best kept (default 1 with an encoder, else 4 random)")
    p.add_argument("--encoder", action="store_true",
                   help="start the inversion from the run's encoder (train-encoder): much faster, see docs/RESULTS.md for its current quality")
    p.add_argument("--paper-inversion", action="store_true", help="the paper's protocol: Adam lr 0.01, 10,000 steps, one random start")
    p.add_argument("--neg-weight", type=float, metavar="W", help=NEG_WEIGHT_HELP)
    p.add_argument("--change-weight", type=float, metavar="W", help=CHANGE_WEIGHT_HELP)
    p.add_argument("--anchor-weight", type=float, metavar="W", help=ANCHOR_WEIGHT_HELP)
    p.add_argument("--warmup-steps", type=int, metavar="N", help=WARMUP_STEPS_HELP)
    p.add_argument("--warmup-lr", type=float, metavar="LR", help=WARMUP_LR_HELP)
    _add_tuning_args(p)
    p.add_argument("--frames", type=int, default=11, help="frames of the latent interpolation")
    p.add_argument("--lig-steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16, help="images loaded and explained at once (bounds memory)")
    p.add_argument("--resume", action="store_true",
                   help="insist on continuing the run in --out (an error if there is none). Without it a run in --out "
                        "made with the same settings is continued anyway (finished images skipped); other settings are refused")
    p.add_argument("--report-details", type=int, default=100, metavar="N",
                   help="detailed panels in report.html for the first N images; all are in its summary table (default 100)")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="explain every image K times from independent random starts (inversion seeds --seed ... "
                        "--seed + K-1, each with its own tuned generator) and show the mean of their maps, with "
                        "their agreement (K times the cost; default 1; README, 'Ensembles')")
    p.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA",
                   help="blur every map with a Gaussian of SIGMA pixels before it is shown, saved and scored: its "
                        "largest value then marks where the change concentrates, not a one-pixel peak (maps keep "
                        "their totals; default 0 = the raw maps; docs/RESULTS.md, session 21)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default="medXGAN report")
    p.add_argument("--masks", help="folder of lesion masks named like the images")
    p.add_argument("--via", help="VGG Image Annotator JSON (with --data)")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP + " (with --data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("fidelity", help="generated accuracy (paper Table 1) with a realism figure (C2ST) beside it")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the data the model was trained on (its held-out split is the real reference)")
    p.add_argument("--n-z1", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the result to this JSON file")
    p.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fidelity)

    p = sub.add_parser("evaluate", help="reproduce the paper's tables and more on held-out test images: metrics.json, RESULTS.md, plots")
    p.add_argument("--model", help="medXGAN run directory (from `medxgan train`); its split.json picks the test images")
    p.add_argument("--data", help="the data the model was trained on")
    p.add_argument("--out", help="evaluation directory to write")
    p.add_argument("--experiments", help="comma-separated experiment names (default: all; see --list-experiments)")
    p.add_argument("--list-experiments", action="store_true", help="list the registered experiments and exit")
    p.add_argument("--methods", default="difference,lig,gradcam,ig,ig_negative,random", help="explanation methods compared")
    p.add_argument("--n-images", type=int, help="explain at most N test positives (default 50; --quick: 4)")
    p.add_argument("--n-images-costly", type=int,
                   help="at most N of them (the first) for the experiments that invert again or train fresh models: "
                        "convergence, sanity, noise_robustness, code_ablation (default 25)")
    p.add_argument("--repeats", type=int, help="repetitions where the protocol repeats (default 3; --quick: 1)")
    p.add_argument("--inversion-steps", type=int,
                   help="inversion step cap per image (default 400 from random starts, 200 with --encoder; --quick: 40)")
    p.add_argument("--restarts", type=int, help="inversion starts per image (default 2 random ones, 1 with --encoder; --quick: 1)")
    p.add_argument("--encoder", action="store_true",
                   help="start every inversion with the model's generator from its encoder (train-encoder; hybrid inversion). "
                        "Generators the evaluation trains itself still start at random")
    p.add_argument("--convergence-sigma", type=float, metavar="S",
                   help="with --encoder, convergence repeats start at E(x) + S*N(0, I) (default 0.5; 0 = the deterministic "
                        "encoder start, identical across repeats)")
    p.add_argument("--neg-weight", type=float, metavar="W", help=NEG_WEIGHT_HELP)
    p.add_argument("--change-weight", type=float, metavar="W", help=CHANGE_WEIGHT_HELP)
    p.add_argument("--anchor-weight", type=float, metavar="W", help=ANCHOR_WEIGHT_HELP)
    p.add_argument("--warmup-steps", type=int, metavar="N", help=WARMUP_STEPS_HELP)
    p.add_argument("--warmup-lr", type=float, metavar="LR", help=WARMUP_LR_HELP)
    p.add_argument("--gan-steps", type=int, help="steps of experiments that train fresh generators (default: the run's gan.steps, at most 800)")
    _add_tuning_args(p)
    p.add_argument("--seed", type=int, default=0, help="every random draw of the evaluation derives from it")
    p.add_argument("--quick", action="store_true", help="tiny budgets for smoke tests (about 2 minutes)")
    p.add_argument("--masks", help="folder of lesion masks named like the images")
    p.add_argument("--via", help="VGG Image Annotator JSON with lesion outlines")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="print the metadata of a medxgan model file")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MedxganError as e:
        # Under torchrun an error that only one rank meets must not go unsaid: other ranks name themselves.
        print(f"medxgan: error{f' (rank {_rank()})' if _rank() > 0 else ''}: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED if str(e).startswith("interrupted") else EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medxgan: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "medxgan.distributed" in sys.modules:  # only commands that support torchrun import it
            sys.modules["medxgan.distributed"].shutdown()


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
