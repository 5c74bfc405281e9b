"""What an attribution explains: small callables on the classifier's logits (pytorch-grad-cam's
``ClassifierOutputTarget`` idea).

Every target is fixed to the *positive* class — medXGAN explains why an image is called positive,
relative to its negative realization — and is never the arg-max class of the current input, so
along an interpolation path the explained quantity does not switch class half way.

Targets accept either logit layout explicitly:

* ``[B,2]`` ``[negative, positive]`` (what :class:`~medxgan.models.classifier.BinaryClassifier`
  returns for both head types): log-odds = ``b - a``;
* ``[B,1]`` or ``[B]`` one sigmoid logit ``s``: log-odds = ``s``.

Note for two-logit (softmax) heads: Captum's ``target=1`` on the raw ``[B,2]`` output is the
positive logit ``b`` alone, which is *not* the log-odds ``b - a``; for one-logit heads wrapped in
BinaryClassifier (columns ``[0, s]``) the two coincide.
"""

from __future__ import annotations

import abc

import torch
import torch.nn as nn

from medxgan.errors import MedxganError


def positive_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """[B,2] / [B,1] / [B] logits -> [B] log-odds of the positive class."""
    if logits.ndim == 1:
        return logits
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.ndim == 2 and logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    raise MedxganError(f"expected binary logits [B,1] or [B,2], got shape {tuple(logits.shape)}")


class Target(abc.ABC):
    """A scalar per example from binary logits: ``target(logits) -> [B]``."""

    name = "target"

    @abc.abstractmethod
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """[B,2] / [B,1] / [B] logits -> [B] score; implemented by each target."""

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class PositiveLogit(Target):
    """Log-odds of the positive class (the default: additive, unsaturated, sign = decision)."""

    name = "logit"

    def __call__(self, logits):
        return positive_log_odds(logits)


class PositiveProbability(Target):
    """P(positive) = sigmoid(log-odds) (= softmax(logits)[:, 1] for a two-logit head)."""

    name = "probability"

    def __call__(self, logits):
        return torch.sigmoid(positive_log_odds(logits))


TARGETS = {"logit": PositiveLogit, "probability": PositiveProbability}


def resolve_target(target: "str | Target | None") -> Target:
    """``None`` / ``"logit"`` -> PositiveLogit(), ``"probability"`` -> PositiveProbability(),
    a Target instance -> itself."""
    if target is None:
        return PositiveLogit()
    if isinstance(target, Target):
        return target
    if isinstance(target, str) and target in TARGETS:
        return TARGETS[target]()
    raise MedxganError(f"unknown explanation target {target!r} (use {', '.join(TARGETS)})")


class TargetScore(nn.Module):
    """``x [B,C,H,W] -> target(C(x)) [B]``: the scalar function f that attributions explain, as a
    module so Captum can hook layers of the wrapped classifier."""

    def __init__(self, classifier: nn.Module, target: "str | Target | None" = None):
        super().__init__()
        self.classifier = classifier
        self.target = resolve_target(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(self.classifier(x))
