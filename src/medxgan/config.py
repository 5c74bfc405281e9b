"""Frozen per-stage configs, nested in one run config, with typed ``--set a.b=v`` overrides.

A run directory stores ``config.json`` (``RunConfig.to_dict()``); model files carry the parts
needed to rebuild their module in their safetensors metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

from medxgan.errors import MedxganError


@dataclass(frozen=True)
class DataConfig:
    size: int = 64  # images are resized to size x size
    channels: int = 1  # 1 = gray, 3 = RGB
    resize: str = "pad"  # pad (aspect-preserving, black border) | crop | stretch
    positive: str = "positive"  # sub-folder holding the positive class
    negative: str = "negative"
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train / val / test
    layout: str = "classes"  # classes: <positive>/ and <negative>/ folders | volumes: images/ + masks/ NIfTI volumes
    dicom_frame: int = 0  # frame of a multi-frame DICOM
    dicom_window: tuple[float, ...] = ()  # (centre, width) overriding the files' VOI; () = the file's own
    nifti_axis: int = 2  # 0 sagittal, 1 coronal, 2 axial (after reorientation to RAS+)
    nifti_slice: int = -1  # slice of each NIfTI volume in class folders; -1 = the middle one
    allow_upscale: bool = True  # false: refuse images smaller than size instead of enlarging them

    def __post_init__(self):
        if self.size < 16 or self.size > 512:
            raise MedxganError(f"data.size must be between 16 and 512, got {self.size}")
        if self.channels not in (1, 3):
            raise MedxganError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.resize not in ("pad", "crop", "stretch"):
            raise MedxganError(f"data.resize must be pad, crop or stretch, got {self.resize!r}")
        if self.layout not in ("classes", "volumes"):
            raise MedxganError(f"data.layout must be classes or volumes, got {self.layout!r}")
        if len(self.dicom_window) not in (0, 2) or (self.dicom_window and self.dicom_window[1] < 1):
            raise MedxganError(f"data.dicom_window must be centre,width with width >= 1, got {self.dicom_window}")
        if self.nifti_axis not in (0, 1, 2):
            raise MedxganError(f"data.nifti_axis must be 0, 1 or 2, got {self.nifti_axis}")
        if self.dicom_frame < 0 or self.nifti_slice < -1:
            raise MedxganError("data.dicom_frame must be >= 0 and data.nifti_slice >= -1 (-1 = middle)")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise MedxganError(f"data.split_fractions must be three positive numbers summing to 1, got {fr}")

    def medical(self):
        """The :class:`medxgan.data.MedicalOptions` these settings describe."""
        from medxgan.data import MedicalOptions

        return MedicalOptions(dicom_frame=self.dicom_frame, dicom_window=tuple(self.dicom_window) or None,
                              nifti_axis=self.nifti_axis, nifti_slice=None if self.nifti_slice < 0 else self.nifti_slice)


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = "vgg_compact"  # vgg_compact | paper_mri_cnn | vgg16
    width: int = 32  # channels of the first block (vgg16: a multiplier base, 64 = the original)
    depth: int = 4  # number of conv blocks (vgg_compact only)
    convs_per_block: int = 1  # vgg_compact only
    n_logits: int = 1  # 1 = sigmoid head, 2 = softmax head
    dropout: float = 0.2
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True  # light: flips, small shifts, intensity jitter
    # Adversarial training (Madry et al., ICLR 2018): train on L-inf PGD perturbations of radius
    # adv_eps (in [-1,1] pixel units; 0 = off) found with adv_steps steps (Captum's PGD). A robust
    # classifier cannot be pleased by imperceptible changes, so G and the explanations have to
    # change the image itself (docs/RESULTS.md).
    adv_eps: float = 0.0
    adv_steps: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.arch not in ("vgg_compact", "paper_mri_cnn", "vgg16"):
            raise MedxganError(f"classifier.arch must be vgg_compact, paper_mri_cnn or vgg16, got {self.arch!r}")
        if self.n_logits not in (1, 2):
            raise MedxganError(f"classifier.n_logits must be 1 (sigmoid) or 2 (softmax), got {self.n_logits}")
        if self.width < 1 or self.depth < 1 or self.epochs < 1 or self.batch_size < 1:
            raise MedxganError("classifier.width, depth, epochs and batch_size must be positive")
        if not (0 <= self.adv_eps < 2 and math.isfinite(self.adv_eps)) or self.adv_steps < 1:
            raise MedxganError(f"classifier.adv_eps must be in [0, 2) and adv_steps positive, got {self.adv_eps}, {self.adv_steps}")


@dataclass(frozen=True)
class GANConfig:
    # Fields added after models were first saved, with the value that rebuilds an older model (or
    # resumes an older run) exactly as it was trained; :func:`from_dict` fills them in when a
    # stored config lacks them. Configs assembled from the defaults never go through this.
    LEGACY_DEFAULTS: typing.ClassVar[dict] = {"d_mbstd_group": 1, "cls_augment": False, "cls_margin": 0.0,
                                               "change_l1": 0.0, "instance_noise": 0.0,
                                               "pathology": "joint", "mode_seeking": 0.0,
                                               "change_diversity": 0.0}

    arch: str = "medxgan"  # medxgan (ours: upsample+conv G, spectral-norm D) | paper (official DCGAN layout)
    code: str = "continuous"  # continuous (medXGAN: z2 = 0 / N(0,I)) | discrete (one-hot class code)
    # How G reads the pathology code: joint (the paper: G(cat(z1, z2)) through one network) |
    # overlay (z1 alone draws the anatomy, z2 adds a change to it that vanishes at z2 = 0; medxgan arch,
    # continuous code; models/gan.py OverlayGeneratorBody)
    pathology: str = "joint"
    z1_dim: int = 128  # anatomy code
    z2_dim: int = 16  # pathology code (continuous code only)
    ngf: int = 16
    ndf: int = 16
    steps: int = 2000
    batch_size: int = 24
    lr_g: float = 5e-4  # G learns faster than D: with a BatchNorm D this got anatomy in hundreds of steps
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lam: float = 3.0  # weight of the classifier term -log p_C(y | G(z1, y)) (Eq. 4 has 1)
    lam_start: int = 300  # steps of pure GAN training (lambda = 0): anatomy first
    lam_warmup: int = 200  # then lambda ramps up linearly to `lam` over this many steps
    ema: float = 0.99  # EMA decay of G's weights (0 disables); a short horizon follows the classifier term
    ema_start: int = 300  # steps before EMA starts tracking
    r1_gamma: float = 0.0  # R1 penalty on real images (0 disables)
    cls_augment: bool = True  # the classifier term sees G's images flipped/shifted/jittered as in C's training (no pixel-aligned tricks)
    cls_margin: float = 3.0  # > 0: the classifier term stops pushing an image once its class log-odds pass this margin; 0 = Eq. 4's plain -log p
    change_l1: float = 2.0  # weight of mean |G(z1, z2) - G(z1, neg)| (G's batch becomes negative/positive pairs); 0 = Eq. 4 as published
    # Against mode collapse, both on G's (negative, positive) pairs (need change_l1 > 0):
    # mode_seeking: weight of 1 / (mean |G(z1a, 0) - G(z1b, 0)| / mean |z1a - z1b|) over neighbouring
    # pairs (Mao et al. 2019), so different anatomy codes draw different anatomy; 0 = off.
    # change_diversity: weight of the mean cosine similarity between neighbouring pairs' change maps
    # |G(z1, z2) - G(z1, 0)|, so different pathology codes put the change at different places (it is
    # scale-free: it does not ask for larger changes); 0 = off.
    mode_seeking: float = 0.0
    change_diversity: float = 0.0
    instance_noise: float = 0.0  # std of Gaussian noise added to D's real and fake inputs (in [-1,1] units); 0 = off
    diff_augment: bool = True  # random translation of real and fake before D (small data)
    d_norm: str = "batch"  # normalisation in D: batch (DCGAN; fastest to anatomy here) | spectral | none
    g_norm: str = "batch"  # normalisation in G (medxgan arch): batch | none
    g_upsample: str = "nearest"  # 2x upsampling in G (medxgan arch): nearest | bilinear (smooth, but D then wins on texture)
    d_mbstd_group: int = 4  # minibatch-stddev feature in D over groups of this size (anti mode collapse); 1 = off
    # Projection discriminator (Miyato & Koyama 2018): D also sees the class — y for G's images, the
    # frozen classifier's decision for real ones — so G's positives must match the real positives,
    # not only please C. Eq. 4's D is unconditional (False).
    d_conditional: bool = False
    bf16: bool = False  # bf16 autocast for the forward passes on CUDA (ignored on other devices)
    checkpoint_every: int = 500
    sample_every: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.arch not in ("medxgan", "paper"):
            raise MedxganError(f"gan.arch must be medxgan or paper, got {self.arch!r}")
        if self.g_norm not in ("batch", "none"):
            raise MedxganError(f"gan.g_norm must be batch or none, got {self.g_norm!r}")
        if self.g_upsample not in ("bilinear", "nearest"):
            raise MedxganError(f"gan.g_upsample must be bilinear or nearest, got {self.g_upsample!r}")
        if self.d_norm not in ("spectral", "batch", "none"):
            raise MedxganError(f"gan.d_norm must be spectral, batch or none, got {self.d_norm!r}")
        if self.code not in ("continuous", "discrete"):
            raise MedxganError(f"gan.code must be continuous or discrete, got {self.code!r}")
        if self.pathology not in ("joint", "overlay"):
            raise MedxganError(f"gan.pathology must be joint or overlay, got {self.pathology!r}")
        if self.pathology == "overlay" and (self.arch != "medxgan" or self.code != "continuous"):
            raise MedxganError("gan.pathology=overlay needs gan.arch=medxgan and gan.code=continuous")
        if min(self.z1_dim, self.z2_dim, self.ngf, self.ndf, self.steps, self.batch_size) < 1:
            raise MedxganError("gan dims, widths, steps and batch_size must be positive")
        if self.instance_noise < 0:
            raise MedxganError(f"gan.instance_noise must be >= 0, got {self.instance_noise}")
        if self.cls_margin < 0:
            raise MedxganError(f"gan.cls_margin must be >= 0 (0 = off), got {self.cls_margin}")
        if self.change_l1 < 0:
            raise MedxganError(f"gan.change_l1 must be >= 0, got {self.change_l1}")
        if self.mode_seeking < 0 or self.change_diversity < 0:
            raise MedxganError("gan.mode_seeking and gan.change_diversity must be >= 0")
        if (self.mode_seeking > 0 or self.change_diversity > 0) and self.change_l1 <= 0:
            raise MedxganError("gan.mode_seeking and gan.change_diversity compare G's (negative, positive) pairs: "
                               "they need gan.change_l1 > 0")
        if self.change_l1 > 0 and self.batch_size % 2:
            raise MedxganError(f"gan.change_l1 pairs images: gan.batch_size must be even, got {self.batch_size}")
        if self.d_conditional and self.arch == "paper":
            raise MedxganError("gan.d_conditional needs gan.arch=medxgan (the paper's D is unconditional)")
        if self.d_mbstd_group < 1:
            raise MedxganError(f"gan.d_mbstd_group must be >= 1 (1 = off), got {self.d_mbstd_group}")
        if not 0 <= self.ema < 1:
            raise MedxganError(f"gan.ema must be in [0, 1), got {self.ema}")

    @property
    def code_dim(self) -> int:
        return self.z2_dim if self.code == "continuous" else 2


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    gan: GANConfig = field(default_factory=GANConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return from_dict(cls, d)


def from_dict(cls, d: dict):
    """Build dataclass ``cls`` from a (possibly partial) dict, converting lists to tuples."""
    if not isinstance(d, dict):
        raise MedxganError(f"config for {cls.__name__} must be an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: v for k, v in getattr(cls, "LEGACY_DEFAULTS", {}).items() if k not in d}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in names:
            raise MedxganError(f"unknown config key {cls.__name__}.{key!r}")  # repr: a key may hold any character
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value)
        else:
            kwargs[key] = _coerce(value, hint, f"{cls.__name__}.{key}")
    return cls(**kwargs)


def _coerce(value, hint, name):
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if hint is float and isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf"):
                raise ValueError(value)
            return hint(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.strip("()[] ").split(",") if v.strip()]
            args = typing.get_args(hint)
            return tuple(_coerce(v, args[0], name) for v in value)
    except (TypeError, ValueError):
        raise MedxganError(f"config {name}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def apply_overrides(config, overrides: list[str]):
    """Apply ``section.key=value`` strings to a frozen (nested) dataclass, returning a new one."""
    for item in overrides or []:
        if "=" not in item:
            raise MedxganError(f"--set expects section.key=value, got {item!r}")
        path, value = item.split("=", 1)
        config = _replace_path(config, path.strip().split("."), value.strip(), path)
    return config


def _replace_path(obj, keys, value, full):
    if not dataclasses.is_dataclass(obj) or not keys or not keys[0]:
        raise MedxganError(f"--set: unknown config key {full!r}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    key = keys[0]
    if key not in names:
        raise MedxganError(f"--set: unknown config key {full!r} (known here: {', '.join(sorted(names))})")
    current = getattr(obj, key)
    if len(keys) > 1:
        new = _replace_path(current, keys[1:], value, full)
    else:
        if dataclasses.is_dataclass(current):
            raise MedxganError(f"--set: {full!r} is a section, give one of its keys")
        new = _coerce(value, typing.get_type_hints(type(obj))[key], full)
    return dataclasses.replace(obj, **{key: new})


def load_config_file(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise MedxganError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MedxganError(f"{path}: not a valid JSON config ({e})") from None
    return d
