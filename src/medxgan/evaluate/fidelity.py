"""Generator fidelity, paper Table 1: does the classifier recognise the class G was asked for?
And, because a generator can please the classifier with unrealistic images, how real do its
images look (:mod:`medxgan.evaluate.realism`)?"""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score

from medxgan.evaluate.registry import EvalContext, ExperimentResult, Table, mean_std_ci, register_experiment


@torch.no_grad()
def generated_accuracy(generator, classifier, n_z1: int = 1000, n_positive: int = 3, seed: int = 0,
                       batch_size: int = 250, device=None) -> dict:
    """Table 1 protocol: ``n_z1`` anatomy codes, each rendered once negative (z2 = 0) and
    ``n_positive`` times positive (z2 ~ N(0, I)); the classifier must predict the conditioned class.

    Returns {accuracy, auc, accuracy_negative, accuracy_positive, n}.
    """
    device = device or next(generator.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    probs, labels = [], []
    for start in range(0, n_z1, batch_size):
        b = min(batch_size, n_z1 - start)
        z1 = generator.sample_z1(b, gen)
        for k in range(1 + n_positive):
            y = torch.full((b,), 1 if k else 0, dtype=torch.long)
            z2 = generator.sample_code(y, gen)
            x = generator(z1.to(device), z2.to(device))
            probs.append(classifier.positive_prob(x).float().cpu())
            labels.append(y)
    p, y = torch.cat(probs), torch.cat(labels)
    pred = (p >= 0.5).long()
    return {
        "accuracy": float((pred == y).float().mean()),
        "auc": float(roc_auc_score(y.numpy(), p.numpy())),
        "accuracy_negative": float((pred[y == 0] == 0).float().mean()),
        "accuracy_positive": float((pred[y == 1] == 1).float().mean()),
        "n": int(len(y)),
    }


@torch.no_grad()
def real_accuracy(classifier, images: torch.Tensor, labels: torch.Tensor, n_boot: int = 1000, seed: int = 0,
                  batch_size: int = 256) -> dict:
    """The classifier on real held-out images (the "Real" rows of Table 1).

    Args:
        images: [N,C,H,W] in [-1,1]; labels [N] (1 positive).
        n_boot, seed: percentile bootstrap over images for the spread.

    Returns:
        {"accuracy": {mean, std, ci95, n}, "auc": {...}}: ``mean`` is the value on all images,
        ``std`` and ``ci95`` the bootstrap standard error and 95 % interval, ``n`` the image count.
    """
    import numpy as np

    from medxgan.training.classifier import predict_proba

    probs = predict_proba(classifier, images, batch_size=batch_size).numpy()
    y = labels.numpy()
    correct = ((probs >= 0.5).astype(np.int64) == y).astype(np.float64)
    rng = np.random.default_rng(seed)
    boot_idx = rng.integers(0, len(y), (n_boot, len(y)))
    boot_acc = correct[boot_idx].mean(1)
    boot_auc = np.array([roc_auc_score(y[i], probs[i]) for i in boot_idx if 0 < y[i].sum() < len(i)])
    both_classes = 0 < y.sum() < len(y)

    def summary(value, boot):
        if len(boot) == 0:
            return {"mean": value, "std": float("nan"), "ci95": [float("nan"), float("nan")], "n": int(len(y))}
        return {"mean": value, "std": float(boot.std(ddof=1)), "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
                "n": int(len(y))}

    return {"accuracy": summary(float(correct.mean()), boot_acc),
            "auc": summary(float(roc_auc_score(y, probs)) if both_classes else float("nan"), boot_auc)}


@register_experiment("fidelity", title="Generator fidelity and realism (paper Table 1)", order=10)
def fidelity_experiment(ctx: EvalContext) -> ExperimentResult:
    """Paper Table 1: classifier accuracy/AUC on generated images (``n_z1`` anatomy codes x
    (1 negative + 3 positives), repeated ``ctx.repeats`` times with seeds ``seed + r``) beside
    the same classifier on the real held-out test images; plus realism (C2ST accuracy and the
    Fréchet distance in a self-trained feature space, with its real-vs-real floor)."""
    from medxgan.evaluate.realism import (c2st_accuracy, extract_features, frechet_distance, sample_images,
                                          train_feature_network)

    n_z1 = 50 if ctx.quick else 1000
    repeats = max(1, ctx.repeats)
    device = torch.device(ctx.device)
    runs = [generated_accuracy(ctx.G, ctx.C, n_z1=n_z1, seed=ctx.seed + r, device=device) for r in range(repeats)]
    gen_acc = mean_std_ci([r["accuracy"] for r in runs], seed=ctx.seed)
    gen_auc = mean_std_ci([r["auc"] for r in runs], seed=ctx.seed)
    gen_acc_neg = mean_std_ci([r["accuracy_negative"] for r in runs], seed=ctx.seed)
    gen_acc_pos = mean_std_ci([r["accuracy_positive"] for r in runs], seed=ctx.seed)
    real = real_accuracy(ctx.C, ctx.test_images, ctx.test_labels, seed=ctx.seed)

    # Realism: the held-out real images (val + test) against as many generated ones, R draws.
    reference = ctx.reference_images
    n_ref = len(reference)
    c2st_epochs, feature_epochs = (2, 2) if ctx.quick else (8, 6)
    c2st, frechet = [], []
    feature_net = train_feature_network(ctx.train_images, epochs=feature_epochs, seed=ctx.seed, device=device)
    reference_features = extract_features(feature_net, reference)
    for r in range(repeats):
        fake = sample_images(ctx.G, n_ref, seed=ctx.seed + 1000 + r)  # [n_ref,C,H,W] in [-1,1], half positive
        c2st.append(c2st_accuracy(reference, fake, epochs=c2st_epochs, seed=ctx.seed + r, device=device)["accuracy"])
        frechet.append(frechet_distance(reference_features, extract_features(feature_net, fake)))
    # The floor: real training images vs real held-out images, same sample size, R draws.
    floor = []
    gen = torch.Generator().manual_seed(ctx.seed)
    for _ in range(repeats):
        idx = torch.randperm(len(ctx.train_images), generator=gen)[:n_ref]
        floor.append(frechet_distance(reference_features, extract_features(feature_net, ctx.train_images[idx])))
    c2st_summary = mean_std_ci(c2st, seed=ctx.seed)
    frechet_summary = mean_std_ci(frechet, seed=ctx.seed)
    floor_summary = mean_std_ci(floor, seed=ctx.seed)

    metrics = {
        "generated_accuracy": gen_acc, "generated_auc": gen_auc,
        "generated_accuracy_negative": gen_acc_neg, "generated_accuracy_positive": gen_acc_pos,
        "real_accuracy": real["accuracy"], "real_auc": real["auc"],
        "realism.c2st_accuracy": c2st_summary,
        "realism.frechet_distance": frechet_summary,
        "realism.frechet_distance_real_floor": floor_summary,
        "fidelity.protocol": {"n_z1": n_z1, "positives_per_z1": 3, "repeats": repeats, "seeds": [ctx.seed + r for r in range(repeats)],
                              "n_generated_per_repeat": runs[0]["n"], "n_real_test": int(len(ctx.test_labels)),
                              "n_realism_reference": n_ref},
    }
    table = Table(
        title="Classifier on generated vs real images",
        columns=["data", "accuracy", "AUC", "n"],
        rows=[["generated", gen_acc, gen_auc, f"{repeats} x {runs[0]['n']}"],
              ["real (held-out test)", real["accuracy"], real["auc"], int(len(ctx.test_labels))],
              ["paper MRI generated / real", "0.992 ± 0.002 / 0.852 ± 0.013", "0.995 ± 0.001 / 0.975 ± 0.005", ""]],
        note=(f"Generated: {n_z1} z1 x (1 negative z2 = 0 + 3 positives z2 ~ N(0, I)), mean ± std over {repeats} seed(s) {ctx.seed}..{ctx.seed + repeats - 1}. "
              "Real: value on the test split, ± bootstrap standard error [95 % CI]."),
    )
    realism = Table(
        title="Realism of generated images",
        columns=["measure", "generated vs held-out real", "real train vs held-out real (floor)", "ideal"],
        rows=[["C2ST accuracy", c2st_summary, "", "0.5"],
              ["Fréchet distance (rotation-pretext features)", frechet_summary, floor_summary, "= floor"]],
        note=(f"{n_ref} held-out real images (val + test) vs as many generated ones (half positive), {repeats} draw(s). "
              "C2ST: a fresh CNN trained on half of each set, accuracy on the other half. Fréchet distance in the "
              "penultimate features of a CNN trained here on the real training split to predict image rotation."),
    )
    notes = []
    feature_dim = reference_features.shape[1]
    if n_ref <= feature_dim:
        notes.append(f"Only {n_ref} held-out real images for {feature_dim} feature dimensions: the covariances are "
                     "singular (regularised), so the Fréchet distances are rough; compare them with the floor only.")
    if len(ctx.train_images) < n_ref:
        notes.append(f"The floor uses all {len(ctx.train_images)} training images (fewer than the {n_ref} held-out ones).")
    if gen_acc["mean"] > 0.9 and c2st_summary["mean"] > 0.9:
        notes.append("High generated accuracy with a C2ST near 1: the generator pleases the classifier with images a "
                     "small CNN tells apart from real ones; read the explanation results with that in mind.")
    return ExperimentResult(metrics=metrics, tables=[table, realism], notes=notes)
