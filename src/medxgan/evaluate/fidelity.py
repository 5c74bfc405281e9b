"""Generator fidelity, paper Table 1: does the classifier recognise the class G was asked for?"""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score


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
