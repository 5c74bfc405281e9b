"""Classifier training (stage 1 of medXGAN: C is trained, then frozen)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from medxgan import distributed as dist_
from medxgan.augment import classifier_augment
from medxgan.config import ClassifierConfig
from medxgan.device import place
from medxgan.errors import MedxganError
from medxgan.models.classifier import BinaryClassifier, build_classifier


@torch.no_grad()
def predict_proba(classifier: BinaryClassifier, images: torch.Tensor, batch_size: int = 256, device=None) -> torch.Tensor:
    """P(positive) [N] for images [N,C,H,W] in [-1,1], in eval mode, batched."""
    device = device or next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    out = [classifier.positive_prob(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    classifier.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def binary_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy at 0.5 and ROC AUC (scikit-learn); AUC is NaN when only one class is present."""
    probs, labels = probs.numpy(), labels.numpy()
    acc = float(((probs >= 0.5).astype(int) == labels).mean()) if len(labels) else float("nan")
    auc = float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")
    return {"accuracy": acc, "auc": auc, "n": int(len(labels))}


def adversarial_examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """L-inf PGD (Madry et al., ICLR 2018, through Captum's ``PGD``) on the binary cross-entropy of
    the positive-class logit: the images within ``eps`` of ``x`` (and inside [-1,1]) that the model
    finds most wrong, from ``steps`` signed-gradient steps of 2.5 * eps / steps, no random start
    (deterministic). The model is in eval mode while it is attacked, so BatchNorm's running
    statistics and dropout are left as they were; its parameters get no gradient."""
    from captum.robust import PGD

    def loss(out, target):
        return F.binary_cross_entropy_with_logits(out[:, 1] - out[:, 0], target.float(), reduction="none")

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # Captum's steps set requires_grad on their own detached copies, and say so
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            adv = PGD(model, loss_func=loss, lower_bound=-1.0, upper_bound=1.0).perturb(
                x.detach(), radius=eps, step_size=2.5 * eps / steps, step_num=steps, target=y, norm="Linf")
    finally:
        model.train(was_training)
    return adv.detach()


def train_classifier(cfg: ClassifierConfig, train_images, train_labels, val_images=None, val_labels=None,
                     device="cpu", progress: bool = True, classifier: BinaryClassifier | None = None,
                     ctx: dist_.Context = dist_.SINGLE):
    """Train a binary classifier with Adam + cosine schedule, keeping the weights of the epoch with
    the best validation AUC (then accuracy). Returns (classifier in eval mode, history list).

    Args:
        train_images: [N,C,H,W] in [-1,1]; train_labels: [N] in {0,1}.
        classifier: bring your own (already wrapped); default builds ``cfg.arch``.
        ctx: under torchrun, each process trains on a disjoint shard of every epoch
            (DistributedSampler seeded by (seed, epoch)); ``cfg.batch_size`` is the global batch and
            DDP averages gradients. Every rank evaluates the (identical) model on the whole
            validation set, so all ranks keep the same best epoch without communication.
    """
    labels = train_labels.long()
    if len(torch.unique(labels)) < 2:
        raise MedxganError("the training split holds only one class: a binary classifier needs both")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed * 1009 + ctx.rank)  # augmentation: a stream per rank
    _, c, h, _ = train_images.shape
    model = classifier if classifier is not None else build_classifier(cfg, h, c)
    model = place(model, device).train().requires_grad_(True)  # channels-last: ~1.6x faster on CPU
    run = dist_.wrap(model, ctx, str(device))
    if ctx.distributed:
        model = run.module
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    b = dist_.per_rank_batch(cfg.batch_size, ctx)
    steps_per_epoch = max(1, (len(labels) // ctx.world_size) // b)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    # Balance classes by weighting the loss (PneumoniaMNIST is 1:3).
    pos_frac = labels.float().mean().item()
    weights = torch.tensor([0.5 / (1 - pos_frac), 0.5 / pos_frac])
    history, best, best_key = [], None, None
    bar = tqdm(range(cfg.epochs), desc="classifier", disable=not (progress and ctx.is_main), unit="epoch")
    for epoch in bar:
        model.train()
        shard = torch.tensor(dist_.epoch_shard(len(labels), epoch, cfg.seed, ctx))
        total, seen = 0.0, 0
        for i in range(steps_per_epoch):
            idx = shard[i * b : (i + 1) * b]
            if len(idx) == 0:
                break
            x, y = train_images[idx], labels[idx]
            if cfg.augment:
                x = classifier_augment(x, gen)
            x, y = x.to(device), y.to(device)
            if cfg.adv_eps > 0:
                x = adversarial_examples(model, x, y, cfg.adv_eps, cfg.adv_steps)
            out = run(x)  # [B, 2] logits through DDP's forward, so that gradients are averaged
            logit = out[:, 1] - out[:, 0]
            loss = (F.binary_cross_entropy_with_logits(logit, y.float(), reduction="none") * weights.to(device)[y]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        train_loss = dist_.mean_across({"loss": total / max(seen, 1)}, ctx)["loss"]
        dist_.sync_buffers(ctx, model)
        record = {"epoch": epoch + 1, "train_loss": train_loss}
        if val_images is not None and len(val_images):
            m = binary_metrics(predict_proba(model, val_images, device=device), val_labels.long())
            record.update(val_accuracy=m["accuracy"], val_auc=m["auc"])
            key = (np.nan_to_num(m["auc"]), m["accuracy"])
            if best_key is None or key > best_key:
                best_key, best = key, copy.deepcopy(model.state_dict())
        history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
    if best is not None:
        model.load_state_dict(best)
    return model.eval(), history
