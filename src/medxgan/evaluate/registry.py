"""Evaluation experiments, registered by name so that ``medxgan evaluate --experiments`` can list
and select them (the pattern of stylegan2-ada's ``metric_main.register_metric``).

An experiment is a function ``run(ctx: EvalContext) -> ExperimentResult``. It reads held-out data,
models and options from the context, computes numbers with their spread, and returns tables and
figures; it never touches paths (``medxgan.evaluate.report`` writes ``metrics.json``,
``RESULTS.md`` and the PNGs). Work that several experiments need — above all the one inversion
of the test positives and every method's attribution maps — is computed once and cached on the
context (:meth:`EvalContext.explanations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from medxgan.errors import MedxganError

EXPERIMENTS: dict[str, "Experiment"] = {}


@dataclass(frozen=True)
class Experiment:
    name: str
    fn: Callable[["EvalContext"], "ExperimentResult"]
    title: str  # heading in RESULTS.md, e.g. "Generator fidelity and realism (paper Table 1)"
    order: int  # position in RESULTS.md and in the default run


def register_experiment(name: str, title: str, order: int) -> Callable:
    """Decorator: make ``fn(ctx) -> ExperimentResult`` available as experiment ``name``."""

    def wrap(fn):
        if name in EXPERIMENTS:
            raise MedxganError(f"experiment {name!r} is already registered")
        EXPERIMENTS[name] = Experiment(name, fn, title, order)
        return fn

    return wrap


def list_experiments() -> list[str]:
    _load_builtin()
    return [e.name for e in sorted(EXPERIMENTS.values(), key=lambda e: (e.order, e.name))]


def get_experiment(name: str) -> Experiment:
    _load_builtin()
    if name not in EXPERIMENTS:
        raise MedxganError(f"unknown experiment {name!r} (known: {', '.join(list_experiments())})")
    return EXPERIMENTS[name]


def _load_builtin() -> None:
    """Import the modules that register the built-in experiments (once)."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


# Modules whose import registers experiments (one line per module, added with the module).
_BUILTIN_MODULES: list[str] = [
    "medxgan.evaluate.fidelity",
    "medxgan.evaluate.perturbation",
    "medxgan.evaluate.sparsity",
    "medxgan.evaluate.localisation",
    "medxgan.evaluate.convergence",
    "medxgan.evaluate.sanity",
    "medxgan.evaluate.robustness",
    "medxgan.evaluate.ablation",
    "medxgan.evaluate.shortcut",
]


@dataclass
class Table:
    """A table for RESULTS.md: ``rows`` are lists of cells (numbers are formatted by the writer)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""  # a sentence under the table: protocol, epsilon, what 0.5 means, ...


@dataclass
class ExperimentResult:
    """What one experiment found. ``metrics`` is JSON-serialisable (numbers, lists, dicts; a
    quantity with spread as ``{"mean":, "std":, "ci95": [lo, hi], "n":}``); ``figures`` maps a
    file stem to a matplotlib Figure; ``notes`` are sentences for RESULTS.md."""

    metrics: dict
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class EvalContext:
    """Inputs shared by every experiment. Images are [N,C,H,W] in [-1,1] on the CPU; models are
    frozen and on ``device``.

    Attributes:
        G, C: the medXGAN generator (EMA) and its frozen classifier (a BinaryClassifier).
        test_images, test_labels, test_masks, test_names: the held-out test split (never training
            data); masks [N,1,H,W] bool or None.
        test_marker_masks: [N,1,H,W] bool pixels of a spurious marker per test image (phantoms
            written with ``--shortcut``; see ``medxgan.evaluate.shortcut.load_marker_masks``) or None.
        reference_images: held-out real images for realism (val + test).
        train_images, train_labels: the training split — only for experiments that must train a
            fresh model (data randomisation, class-code ablation, realism feature network).
        run_config: the model run's config.json as a dict (data / classifier / gan sections).
        n_images: at most this many test positives go through the explanation experiments.
        n_images_costly: at most this many of them (the first ones) go through the experiments
            that invert them again or train fresh models (convergence, sanity, noise_robustness,
            code_ablation), so that the whole evaluation fits its hour on 2 CPU cores.
        methods: explanation methods compared (registered explainer names, incl. "random").
        seed: every random draw of the evaluation derives from it.
        quick: tiny budgets (tests, smoke runs): experiments shrink repeats, steps and training.
        inversion: the InversionConfig used to invert the test positives with ``G``.
        encoder: optional encoder x -> (z1, z2) of ``G`` (``medxgan train-encoder``): every
            inversion with ``G`` then starts from E(x) (hybrid inversion); None = random starts.
        fresh_inversion: the InversionConfig for generators the evaluation trains itself (data
            randomisation, class-code ablation): they have no encoder, so they always start at
            random. None = ``inversion``.
        repeats: R, repetitions where the protocol repeats (Table 1, convergence restarts).
        convergence_sigma: with an encoder, convergence repeat r starts at E(x) + σ·ε_r with this σ
            (``medxgan.evaluate.convergence``); 0 gives E(x) itself, identical for every repeat.
        gan_steps: training budget of experiments that train fresh generators (ablation,
            data randomisation); None = the run's own ``gan.steps``.
        progress: show tqdm bars.
        tuning: optional :class:`medxgan.tuning.TuningConfig`: the shared explanations (and the
            data-randomisation maps of ``sanity``) then come from a copy of G tuned on each image
            after the shared inversion (``explain --tune-steps``). Experiments that measure G or the
            inversion themselves (fidelity, convergence, noise_robustness, code_ablation, the
            classifier cascade of ``sanity``) do not tune. None = no tuning.
    """

    G: torch.nn.Module
    C: torch.nn.Module
    test_images: torch.Tensor
    test_labels: torch.Tensor
    reference_images: torch.Tensor
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_masks: torch.Tensor | None = None
    test_names: list[str] | None = None
    test_marker_masks: torch.Tensor | None = None  # [N,1,H,W] bool spurious-marker pixels (phantoms --shortcut)
    run_config: dict = field(default_factory=dict)
    n_images: int = 100
    n_images_costly: int = 25
    methods: tuple[str, ...] = ("difference", "lig", "gradcam", "ig", "ig_negative", "random")
    seed: int = 0
    quick: bool = False
    inversion: Any = None  # medxgan.inversion.InversionConfig; None = its defaults
    encoder: Any = None  # medxgan.encoder.Encoder of G, or None (random starts)
    fresh_inversion: Any = None  # InversionConfig for freshly trained generators; None = inversion
    repeats: int = 3
    convergence_sigma: float = 0.5  # hybrid convergence: std of the perturbation around E(x) (0 = the deterministic start)
    gan_steps: int | None = None  # GAN steps for experiments that train generators (None: the run's gan.steps)
    device: str | torch.device = "cpu"
    progress: bool = False
    tuning: Any = None  # medxgan.tuning.TuningConfig or None
    _cache: dict = field(default_factory=dict, repr=False)

    def positives(self, costly: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
        """(images, masks or None, names) of the first ``n_images`` test positives (``costly``:
        of the first ``min(n_images, n_images_costly)``, a prefix of the same list)."""
        limit = min(self.n_images, self.n_images_costly) if costly else self.n_images
        idx = torch.nonzero(self.test_labels == 1).flatten()[:limit]
        if len(idx) == 0:
            raise MedxganError("the test split holds no positive image to explain")
        masks = self.test_masks[idx] if self.test_masks is not None else None
        names = [self.test_names[i] for i in idx.tolist()] if self.test_names is not None else [f"test_{i}" for i in idx.tolist()]
        return self.test_images[idx], masks, names

    def inversion_start(self, images: torch.Tensor):
        """(z1, z2) = E(images) when the evaluation has an encoder (hybrid inversion), else None
        (random starts). ``images`` [B,C,H,W] in [-1,1]."""
        if self.encoder is None:
            return None
        from medxgan.encoder import encode

        return encode(self.encoder, images)

    def explanations(self):
        """Every method's map for the test positives, from one shared inversion (cached).

        Returns a list of :class:`medxgan.explain.Explanation` (maps keyed by method name)."""
        if "explanations" not in self._cache:
            from medxgan.explain import explain_images
            from medxgan.inversion import InversionConfig

            images, masks, names = self.positives()
            inversion = self.inversion if self.inversion is not None else InversionConfig(seed=self.seed)
            out = []
            for start in range(0, len(images), 16):  # bounded memory: 16 images at a time
                chunk = images[start:start + 16]
                out += explain_images(self.G, self.C, chunk, methods=self.methods, inversion=inversion,
                                      init=self.inversion_start(chunk),
                                      names=names[start:start + 16],
                                      masks=masks[start:start + 16] if masks is not None else None,
                                      first_index=start, progress=self.progress, tuning=self.tuning)
            self._cache["explanations"] = out
        return self._cache["explanations"]

    def maps(self, method: str) -> torch.Tensor:
        """[N,C,H,W] attribution maps of ``method`` for the test positives (cached explanations)."""
        return torch.stack([e.maps[method] for e in self.explanations()])


def mean_std_ci(values, n_boot: int = 1000, seed: int = 0) -> dict:
    """{mean, std, ci95: [lo, hi], n} of a 1-D sample; the CI is a percentile bootstrap of the mean."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    x = x[torch.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    mean = float(x.mean())
    std = float(x.std()) if n > 1 else 0.0
    if n > 1:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, n, (n_boot, n), generator=g)
        boot = x[idx].mean(dim=1)
        lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    else:
        lo = hi = mean
    return {"mean": mean, "std": std, "ci95": [lo, hi], "n": n}


__all__ = ["EXPERIMENTS", "EvalContext", "Experiment", "ExperimentResult", "Table", "get_experiment",
           "list_experiments", "mean_std_ci", "register_experiment"]
