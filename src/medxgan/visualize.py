"""Figures: training sample grids (same z1, negative and positives side by side)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def to_display(x: torch.Tensor) -> np.ndarray:
    """[C,H,W] in [-1,1] -> [H,W] or [H,W,3] float in [0,1] for imshow."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


@torch.no_grad()
def sample_grid(generator, classifier, n_rows: int = 6, n_positive: int = 3, seed: int = 0, real: torch.Tensor | None = None):
    """Figure: one row per anatomy code z1 — [real?] G(z1, neg) | G(z1, z2_k) ... | |difference| —
    with the classifier's P(positive) above each generated image."""
    device = next(generator.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z1 = generator.sample_z1(n_rows, gen).to(device)
    y0 = torch.zeros(n_rows, dtype=torch.long)
    columns = [("G(z1, negative)", generator(z1, generator.sample_code(y0, gen).to(device)))]
    for k in range(n_positive):
        z2 = generator.sample_code(torch.ones(n_rows, dtype=torch.long), gen).to(device)
        columns.append((f"G(z1, z2 #{k + 1})", generator(z1, z2)))
    probs = [classifier.positive_prob(img).cpu() for _, img in columns]
    diff = (columns[1][1] - columns[0][1]).abs().mean(1, keepdim=True) * 2 - 1
    n_cols = len(columns) + 1 + (real is not None)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.75 * n_rows), squeeze=False)
    for r in range(n_rows):
        c0 = 0
        if real is not None:
            axes[r, 0].imshow(to_display(real[r % len(real)]), cmap="gray", vmin=0, vmax=1)
            axes[r, 0].set_title("real" if r == 0 else "", fontsize=7)
            c0 = 1
        for j, (name, imgs) in enumerate(columns):
            ax = axes[r, c0 + j]
            ax.imshow(to_display(imgs[r]), cmap="gray", vmin=0, vmax=1)
            ax.set_title((name + "\n" if r == 0 else "") + f"P(pos)={probs[j][r]:.2f}", fontsize=7)
        axes[r, -1].imshow(to_display(diff[r]), cmap="magma", vmin=0, vmax=1)
        axes[r, -1].set_title("|z2 #1 - negative|" if r == 0 else "", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    return fig


def save_figure(fig, path) -> None:
    from medxgan.checkpoint import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
