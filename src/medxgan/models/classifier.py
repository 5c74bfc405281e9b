"""Binary classifiers and the one place where sigmoid vs softmax heads are reconciled.

Every classifier medxgan touches is wrapped in :class:`BinaryClassifier`, whose ``forward``
always returns two columns ``[negative, positive]`` of logits, so ``softmax(out)[:, 1]`` is
P(positive) for both head types and Captum's ``target=1`` means "the positive class":

* one-logit (sigmoid) head ``s``: columns ``[0, s]`` — softmax([0, s])[1] = sigmoid(s);
* two-logit (softmax) head ``[a, b]``: returned unchanged.

``positive_logit`` is the log-odds of the positive class in both cases (``s`` or ``b - a``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medxgan.config import ClassifierConfig
from medxgan.errors import MedxganError


class BinaryClassifier(nn.Module):
    """Wraps any module mapping ``[B,C,H,W]`` in [-1,1] to ``[B,1]`` or ``[B,2]`` logits."""

    def __init__(self, net: nn.Module, n_logits: int):
        super().__init__()
        if n_logits not in (1, 2):
            raise MedxganError(f"a binary classifier needs 1 (sigmoid) or 2 (softmax) logits, got {n_logits}")
        self.net = net
        self.n_logits = n_logits

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[1] != self.n_logits:
            raise MedxganError(
                f"classifier returned shape {tuple(out.shape)}, expected [B, {self.n_logits}] logits"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,C,H,W] in [-1,1] -> [B,2] logits
        out = self.raw(x)
        if self.n_logits == 1:
            return torch.cat([torch.zeros_like(out), out], dim=1)
        return out

    def positive_logit(self, x: torch.Tensor) -> torch.Tensor:  # [B] log-odds of the positive class
        out = self.raw(x)
        return out[:, 0] if self.n_logits == 1 else out[:, 1] - out[:, 0]

    def positive_prob(self, x: torch.Tensor) -> torch.Tensor:  # [B] P(positive)
        return torch.sigmoid(self.positive_logit(x))

    def frozen(self) -> "BinaryClassifier":
        """Eval mode, no parameter gradients: how the classifier is used inside GAN training."""
        self.eval()
        self.requires_grad_(False)
        return self


def _conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGCompact(nn.Module):
    """VGG-style blocks of 3x3 conv-BN-ReLU then 2x2 max-pool, global average pool, linear head."""

    def __init__(self, channels, n_logits, width=32, depth=4, convs_per_block=1, dropout=0.2, size=64):
        super().__init__()
        if size // (2**depth) < 1:
            raise MedxganError(f"classifier.depth={depth} is too deep for {size}x{size} images")
        layers, cin = [], channels
        for i in range(depth):
            cout = min(width * 2**i, 512)
            for _ in range(convs_per_block):
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, n_logits))

    def forward(self, x):
        return self.head(self.features(x))


class PaperMRICNN(nn.Module):
    """The paper's "off-the-shelf" 64x64 brain-MRI CNN, as we reconstruct it (the paper gives no
    layer list): three conv(3x3)-ReLU-maxpool stages (32, 64, 128), dense 128, dropout, logits."""

    def __init__(self, channels, n_logits, size=64, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = size // 8
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * side * side, 128), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(128, n_logits)
        )

    def forward(self, x):
        return self.head(self.features(x))


VGG16_LAYOUT = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")


class VGG16(nn.Module):
    """VGG-16 (configuration D) with BatchNorm, built in-package. ``width`` is the first block's
    channels (64 in the original); the 4096-wide FC head is replaced by global pooling and a
    small MLP, which suits 64-128 px medical images and is what the paper's X-ray model needs."""

    def __init__(self, channels, n_logits, width=64, dropout=0.5, size=128):
        super().__init__()
        if size < 32:
            raise MedxganError(f"vgg16 needs images of at least 32x32, got {size}")
        layers, cin = [], channels
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn_relu(cin, width * item)
                cin = width * item
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cin // 2), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(cin // 2, n_logits),
        )

    def forward(self, x):
        return self.head(self.features(x))


def build_classifier(cfg: ClassifierConfig, size: int, channels: int) -> BinaryClassifier:
    if cfg.arch == "vgg_compact":
        net = VGGCompact(channels, cfg.n_logits, cfg.width, cfg.depth, cfg.convs_per_block, cfg.dropout, size)
    elif cfg.arch == "paper_mri_cnn":
        net = PaperMRICNN(channels, cfg.n_logits, size)
    else:
        net = VGG16(channels, cfg.n_logits, cfg.width, cfg.dropout, size)
    return BinaryClassifier(net, cfg.n_logits)


def last_conv_layer(model: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` in module order: Grad-CAM's default layer."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MedxganError("the classifier has no Conv2d layer: Grad-CAM needs one (choose --gradcam-layer)")
    return convs[-1]


def positive_class_loss(classifier: BinaryClassifier, images: torch.Tensor, labels: torch.Tensor,
                        margin: float = 0.0) -> torch.Tensor:
    """-log p_C(y | x) for binary labels y, through the positive-class log-odds (Eq. 4 third term).

    ``margin`` > 0: images whose log-odds for their class y already exceed ``margin`` contribute
    nothing (the mean stays over the whole batch). Plain -log p keeps pulling confidently
    classified images towards the classifier's most prototypical image of the class, which
    collapses the variety of anatomy; with a margin the gradient goes to the images the
    classifier does not yet recognise."""
    logits = classifier.positive_logit(images)
    losses = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    if margin > 0:
        signed = torch.where(labels.bool(), logits, -logits)  # log-odds of the class y
        losses = losses * (signed.detach() < margin).to(losses.dtype)
    return losses.mean()
