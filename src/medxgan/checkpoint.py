"""Self-describing model files: safetensors weights + config + format version in the metadata.

Nothing a user hands us is unpickled: models are safetensors only; the resumable training state
(optimisers, step, RNG) is a separate ``torch.save`` file that we only ever read with
``weights_only=True``. Every write goes to a temporary sibling first and is renamed into place,
so a crash leaves the previous file intact.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from medxgan.config import ClassifierConfig, GANConfig, from_dict
from medxgan.errors import MedxganError

FORMAT = "medxgan"
FORMAT_VERSION = 1
CLASSIFIER_FILE = "classifier.safetensors"
GENERATOR_FILE = "generator.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"
TRAIN_STATE_FILE = "train_state.pt"


def clean_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with DDP ``module.`` / torch.compile ``_orig_mod.`` prefixes removed, contiguous."""
    out = {}
    for key, value in module.state_dict().items():
        for prefix in ("module.", "_orig_mod."):
            key = key.replace(prefix, "")
        out[key] = value.detach().cpu().contiguous()
    return out


def atomic_write(path: Path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename tmp over ``path`` (same directory, so atomic)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MedxganError(f"{path.parent}: cannot write here ({e.strerror})") from None
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        raise MedxganError(f"{path}: write failed ({e.strerror or e}); the previous file is unchanged") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(path, module: nn.Module, kind: str, meta: dict) -> None:
    """Write ``module``'s weights with metadata {format, format_version, kind, **meta (JSON-encoded)}."""
    tensors = clean_state_dict(module)
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + (1 << 20)
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise MedxganError(f"{path}: not enough disk space for the checkpoint ({needed >> 20} MiB needed, {free >> 20} MiB free)")
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path) -> dict:
    """Decoded metadata of a medxgan model file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise MedxganError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, Exception) as e:  # noqa: BLE001 - any parse failure is a bad file
        raise MedxganError(f"{path}: not a medxgan model file (not safetensors: {str(e).splitlines()[0][:80]})") from None
    if raw.get("format") != FORMAT:
        raise MedxganError(f"{path}: not a medxgan model file (no medxgan metadata)")
    try:
        version = int(raw.get("format_version", "0"))
    except ValueError:
        raise MedxganError(f"{path}: corrupt medxgan metadata (format_version)") from None
    if version > FORMAT_VERSION:
        raise MedxganError(
            f"{path}: written by a newer medxgan (format {version}, this version reads up to {FORMAT_VERSION}); upgrade medxgan"
        )
    meta = {"format": FORMAT, "format_version": version, "kind": raw.get("kind")}
    for key, value in raw.items():
        if key not in meta:
            try:
                meta[key] = json.loads(value)
            except json.JSONDecodeError:
                raise MedxganError(f"{path}: corrupt medxgan metadata ({key})") from None
    return meta


def load_weights_into(path, module: nn.Module) -> None:
    """Load tensors into ``module`` after checking names, shapes and dtypes against it."""
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise MedxganError(f"{path}: cannot read weights ({str(e).splitlines()[0][:80]})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MedxganError(f"{path}: weights do not match the model described in its config ({detail})")
    for key, ref in expected.items():
        t = tensors[key]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise MedxganError(
                f"{path}: tensor {key} is {tuple(t.shape)} {t.dtype}, the config says {tuple(ref.shape)} {ref.dtype}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise MedxganError(f"{path}: tensor {key} holds NaN or Inf")
    module.load_state_dict(tensors, strict=True)


# --- classifiers ---------------------------------------------------------------------------

def save_classifier(path, classifier, cfg: ClassifierConfig | None, size: int, channels: int,
                    factory: str | None = None, extra: dict | None = None) -> None:
    """Built-in classifiers store their config; brought ones store ``factory`` (``pkg.mod:fn``)."""
    meta = {"size": size, "channels": channels, "n_logits": classifier.n_logits, **(extra or {})}
    if factory:
        meta["factory"] = factory
        save_model(path, classifier.net, "classifier_factory", meta)
    else:
        meta["classifier"] = _asdict(cfg)
        save_model(path, classifier, "classifier", meta)


def call_factory(spec: str) -> nn.Module:
    """Import ``package.module:function`` and call it with no arguments."""
    if ":" not in spec:
        raise MedxganError(f"--classifier-factory {spec!r}: expected package.module:function")
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise MedxganError(f"--classifier-factory {spec!r}: cannot import ({e})") from None
    net = fn()
    if not isinstance(net, nn.Module):
        raise MedxganError(f"--classifier-factory {spec!r} returned {type(net).__name__}, not an nn.Module")
    return net


def load_classifier(path):
    """Rebuild a :class:`BinaryClassifier` from a model file. Returns (classifier, metadata)."""
    from medxgan.models.classifier import BinaryClassifier, build_classifier

    meta = read_metadata(path)
    if meta["kind"] == "classifier":
        cfg = from_dict(ClassifierConfig, meta["classifier"])
        model = build_classifier(cfg, meta["size"], meta["channels"])
        load_weights_into(path, model)
    elif meta["kind"] == "classifier_factory":
        net = call_factory(meta["factory"])
        load_weights_into(path, net)
        model = BinaryClassifier(net, meta["n_logits"])
    else:
        raise MedxganError(f"{path}: is a medxgan {meta['kind']} file, not a classifier")
    return model.eval(), meta


def load_foreign_weights(net: nn.Module, weights_path) -> None:
    """Weights for a brought classifier: .safetensors, or a torch state dict read weights_only."""
    p = Path(weights_path)
    if not p.is_file():
        raise MedxganError(f"{p}: weights file not found")
    if p.suffix == ".safetensors":
        load_weights_into(p, net)
        return
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - includes the UnpicklingError of a malicious file
        raise MedxganError(f"{p}: refused: not a plain tensor state dict ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedxganError(f"{p}: refused: expected a state dict of tensors")
    state = {k.replace("module.", "").replace("_orig_mod.", ""): v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MedxganError(f"{p}: weights do not fit the factory's model ({str(e).splitlines()[0][:100]})") from None


# --- generators ----------------------------------------------------------------------------

def save_generator(path, generator, cfg: GANConfig, size: int, channels: int, extra: dict | None = None) -> None:
    meta = {"gan": _asdict(cfg), "size": size, "channels": channels, **(extra or {})}
    save_model(path, generator, "generator", meta)


def load_generator(path):
    from medxgan.models.gan import build_generator

    meta = read_metadata(path)
    if meta["kind"] != "generator":
        raise MedxganError(f"{path}: is a medxgan {meta['kind']} file, not a generator")
    cfg = from_dict(GANConfig, meta["gan"])
    g = build_generator(cfg, meta["size"], meta["channels"])
    load_weights_into(path, g)
    return g.eval(), meta


def fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's tensors (names, shapes, bytes): which exact weights a file belongs to."""
    import hashlib

    h = hashlib.sha256()
    for k, t in sorted(clean_state_dict(module).items()):
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_encoder(path, encoder, cfg, generator, generator_meta: dict, extra: dict | None = None) -> None:
    """An encoder for ``generator`` (recorded by its size, channels, GAN config and weight fingerprint)."""
    meta = {"encoder": _asdict(cfg), "z1_dim": encoder.z1_dim, "code_dim": encoder.code_dim,
            "size": generator_meta["size"], "channels": generator_meta["channels"], "gan": generator_meta["gan"],
            "generator_fingerprint": fingerprint(generator), **(extra or {})}
    save_model(path, encoder, "encoder", meta)


def load_encoder(path, generator=None, generator_meta: dict | None = None):
    """(encoder in eval mode, metadata). With ``generator`` (and its metadata), refuses an encoder
    that was trained for other generator weights."""
    from medxgan.encoder import Encoder, EncoderConfig

    meta = read_metadata(path)
    if meta["kind"] != "encoder":
        raise MedxganError(f"{path}: is a medxgan {meta['kind']} file, not an encoder")
    if generator_meta is not None and (meta["size"], meta["channels"], meta["gan"]) != (
            generator_meta["size"], generator_meta["channels"], generator_meta["gan"]):
        raise MedxganError(f"{path}: this encoder was trained for a different generator (size, channels or GAN config differ)")
    if generator is not None and meta.get("generator_fingerprint") != fingerprint(generator):
        raise MedxganError(f"{path}: this encoder was trained for other generator weights (the generator was retrained?); "
                           "run `medxgan train-encoder` again")
    cfg = from_dict(EncoderConfig, meta["encoder"])
    e = Encoder(meta["z1_dim"], meta["code_dim"], meta["size"], meta["channels"], cfg.nef)
    load_weights_into(path, e)
    return e.eval().requires_grad_(False), meta


def load_medxgan(run_dir):
    """Load (generator, classifier, generator metadata) from a trained medXGAN run directory,
    checking that both were built for the same image size and channels."""
    run = Path(run_dir)
    if not run.is_dir():
        raise MedxganError(f"{run}: model run directory not found")
    gpath, cpath = run / GENERATOR_FILE, run / CLASSIFIER_FILE
    if not gpath.is_file():
        raise MedxganError(f"{run}: no {GENERATOR_FILE} here — is this a `medxgan train` run directory?")
    g, gmeta = load_generator(gpath)
    c, cmeta = load_classifier(cpath)
    if (gmeta["size"], gmeta["channels"]) != (cmeta["size"], cmeta["channels"]):
        raise MedxganError(
            f"{run}: generator makes {gmeta['channels']}x{gmeta['size']}x{gmeta['size']} images but the classifier expects "
            f"{cmeta['channels']}x{cmeta['size']}x{cmeta['size']}"
        )
    return g, c, gmeta


def _asdict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)
