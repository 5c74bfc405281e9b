"""A tiny medXGAN training run for tests/test_distributed.py, started by torchrun (or plainly).

usage: python ddp_worker.py OUT STEPS [--resume]
Writes OUT/rank{r}.pt with this rank's G and D weights and the epoch shards it was given.
"""

import sys
from pathlib import Path

import torch

from medxgan import distributed as dist_
from medxgan.config import ClassifierConfig, GANConfig
from medxgan.models.classifier import build_classifier
from medxgan.phantoms import generate_phantoms
from medxgan.training import gan as tg

CFG = dict(z1_dim=8, z2_dim=4, ngf=4, ndf=4, batch_size=8, checkpoint_every=4, sample_every=1000, ema_start=1,
           lam_start=2, lam_warmup=2, g_norm="none", d_norm="none", d_mbstd_group=1, diff_augment=False, cls_augment=False, seed=3)


def main():
    out, steps, resume = Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv
    torch.set_num_threads(1)
    ctx, device = dist_.init("cpu")
    ph = generate_phantoms(40, size=16, seed=0)  # a tiny phantom set
    images = torch.from_numpy(ph.images).float().div(127.5).sub(1)[:, None]
    torch.manual_seed(1)
    clf = build_classifier(ClassifierConfig(width=4, depth=2), 16, 1)
    shards, states = [], []
    orig_shard, orig_init = dist_.epoch_shard, tg.init_state

    def spy_shard(n, epoch, seed, c):
        idx = orig_shard(n, epoch, seed, c)
        shards.append((epoch, idx))
        return idx

    def spy_init(*a, **k):
        states.append(orig_init(*a, **k))
        return states[-1]

    dist_.epoch_shard, tg.init_state = spy_shard, spy_init
    tg.train_gan(GANConfig(steps=steps, **CFG), images, clf, out_dir=out, resume=resume, progress=False, ctx=ctx)
    st = states[0]
    torch.save({"G": st.G.state_dict(), "D": st.D.state_dict(), "shards": shards, "world": ctx.world_size},
               out / f"rank{ctx.rank}.pt")
    dist_.shutdown()


if __name__ == "__main__":
    main()
