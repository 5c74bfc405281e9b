"""Streaming batch explanation: images loaded lazily batch by batch, and a resume manifest.

``medxgan explain`` over a folder of thousands of images must not hold them (or their
explanations) in memory, and must be able to continue where an interrupted run stopped:

* :class:`ImageFiles` / :class:`ImageTensors` give a job's images by index; files are decoded
  only when their batch is asked for (:meth:`ImageSource.batches`).
* :class:`ExplainManifest` (``OUT/manifest.json``) records a fingerprint of everything that
  changes an image's result (model weights, methods, inversion settings, ...) and the images
  already done. A run in a directory that holds one with the same fingerprint continues it
  (skipping finished images); one with a different fingerprint is refused. An image is done when its ``json/<safe>.json`` exists: the report writer writes it
  last and atomically, so a killed run never leaves a half-written image marked done.
"""

from __future__ import annotations

import abc

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from medxgan.errors import MedxganError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "medxgan-explain-manifest"


@dataclass
class Batch:
    """One batch of a job: ``indices`` [b] positions in the job, ``images`` [b,C,H,W] in [-1,1],
    ``masks`` [b,1,H,W] bool or None; ``skipped`` positions that could not be read."""

    indices: list[int]
    images: torch.Tensor
    masks: torch.Tensor | None
    skipped: list[int]


class ImageSource(abc.ABC):
    """A job's images by position; subclasses load ``images`` / ``masks`` for some positions."""

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def load(self, indices: Sequence[int]) -> Batch:
        """The images (and masks) at ``indices``, in that order."""

    def batches(self, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """Load ``indices`` ``batch_size`` at a time: only one batch is in memory at once."""
        if batch_size < 1:
            raise MedxganError(f"--batch-size must be positive, got {batch_size}")
        indices = list(indices)
        for start in range(0, len(indices), batch_size):
            yield self.load(indices[start:start + batch_size])


class ImageTensors(ImageSource):
    """Images already in memory (e.g. a data set's test split)."""

    def __init__(self, images: torch.Tensor, names: list[str], masks: torch.Tensor | None = None):
        self.images, self.names, self.masks = images, list(names), masks  # [N,C,H,W], [N,1,H,W]

    def load(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return Batch(list(indices), self.images[idx], None if self.masks is None else self.masks[idx], [])


class ImageFiles(ImageSource):
    """Image files decoded (and fitted to ``size``) only when their batch is loaded.

    Args:
        files: image paths, in job order; their ``str`` is the image's name.
        size, channels, resize, medical, allow_upscale: as :func:`medxgan.data.load_image`.
        mask_dir: optional folder of lesion masks named like the images.
        skip_bad: unreadable files are reported in ``Batch.skipped`` (and on stderr) instead of
            stopping the job.
    """

    def __init__(self, files: Sequence[Path], size: int, channels: int, resize: str, medical=None,
                 allow_upscale: bool = True, mask_dir: Path | None = None, skip_bad: bool = False):
        from medxgan import data as D

        self.files = [Path(f) for f in files]
        self.names = [str(f) for f in self.files]
        self.size, self.channels, self.resize = size, channels, resize
        self.medical = medical if medical is not None else D.MedicalOptions()
        self.allow_upscale, self.skip_bad = allow_upscale, skip_bad
        self.mask_index = D._mask_index(Path(mask_dir)) if mask_dir is not None else None

    def load(self, indices: Sequence[int]) -> Batch:
        from medxgan import data as D
        from medxgan.medical import strip_extension

        images, masks, kept, skipped = [], [], [], []
        for i in indices:
            try:
                image = D.load_image(self.files[i], self.size, self.channels, self.resize, medical=self.medical,
                                     allow_upscale=self.allow_upscale)  # [C,H,W] in [-1,1]
            except MedxganError:
                if not self.skip_bad:
                    raise
                print(f"medxgan: skipped unreadable image {self.files[i]}", file=sys.stderr)
                skipped.append(i)
                continue
            kept.append(i)
            images.append(image)
            if self.mask_index is not None:
                mask_file = self.mask_index.get(strip_extension(self.files[i]))
                masks.append(D.load_mask(mask_file, self.size, self.resize, medical=self.medical) if mask_file is not None
                             else torch.zeros(1, self.size, self.size, dtype=torch.bool))
        empty = torch.empty(0, self.channels, self.size, self.size)
        return Batch(kept, torch.stack(images) if images else empty,
                     torch.stack(masks) if self.mask_index is not None and masks else None, skipped)


def contiguous_runs(indices: Sequence[int]) -> list[list[int]]:
    """Split sorted positions into runs of consecutive ones: [0,1,3,4,5,9] -> [[0,1],[3,4,5],[9]]."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (model weights: a few MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def settings_fingerprint(settings: dict) -> str:
    """Short stable hash of a JSON-able settings dict (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class ExplainManifest:
    """``OUT/manifest.json`` of a (possibly partial) explanation run.

    ``{"format", "version", "fingerprint", "settings", "n_images", "done": [names]}``. ``done`` is
    refreshed after every batch; the per-image JSON files are the ground truth (see module doc).
    """

    def __init__(self, out: Path, settings: dict):
        self.path = Path(out) / MANIFEST_FILE
        self.settings = json.loads(json.dumps(settings, default=str))  # tuples -> lists, as read back
        self.fingerprint = settings_fingerprint(settings)
        self.done: list[str] = []
        self.resumed = False

    @classmethod
    def open(cls, out: Path, settings: dict, require_existing: bool = False) -> "ExplainManifest":
        """Start a run in ``out``, or continue the one there when it was made with the same settings
        (``resumed`` is then True and ``done`` lists its finished images).

        Raises MedxganError (one line) when the run in ``out`` used different settings, or when
        ``require_existing`` (``--resume``) is set and ``out`` holds no run.
        """
        manifest = cls(out, settings)
        manifest.resumed = False
        if not manifest.path.exists():
            if require_existing:
                raise MedxganError(f"{out}: no explanation run to resume here ({MANIFEST_FILE} missing)")
            return manifest
        try:
            old = json.loads(manifest.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise MedxganError(f"{manifest.path}: unreadable manifest; choose another --out") from None
        if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT:
            raise MedxganError(f"{manifest.path}: not a medxgan explain manifest; choose another --out")
        if old.get("fingerprint") != manifest.fingerprint:
            before = old.get("settings", {}) if isinstance(old.get("settings"), dict) else {}
            changed = sorted(k for k in set(manifest.settings) | set(before) if manifest.settings.get(k) != before.get(k))
            raise MedxganError(f"{out}: holds a run made with different settings ({', '.join(changed) or 'fingerprint'}); "
                               "use the same settings to resume it, or choose another --out")
        manifest.done = [str(n) for n in old.get("done", [])]
        manifest.resumed = True
        return manifest

    def write(self, done: Sequence[str], n_images: int) -> None:
        from medxgan.checkpoint import atomic_write

        self.done = list(done)
        record = {"format": MANIFEST_FORMAT, "version": 1, "fingerprint": self.fingerprint,
                  "settings": self.settings, "n_images": n_images, "done": self.done}

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1, default=str)
                f.write("\n")

        atomic_write(self.path, write)


__all__ = ["Batch", "ImageSource", "ImageTensors", "ImageFiles", "contiguous_runs", "ExplainManifest",
           "settings_fingerprint", "file_digest", "MANIFEST_FILE"]
