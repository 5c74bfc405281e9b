"""medXGAN training, Eq. 4:

    min_G max_D  E[log D(x)] + E[log(1 - D(G(z1, y)))]  -  lambda * E[log p_C(y | G(z1, y))]

with the frozen classifier C in the loop. Stabilisers (recorded in the run's config): the
non-saturating GAN loss, spectral norm in D, a DiffAugment-style translation seen by D on both
real and fake images, an EMA copy of G (what we save and explain with) and a linear warm-up of
lambda so that D shapes anatomy before the classifier term can pull G towards
classifier-pleasing noise.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medxgan import checkpoint as ckpt
from medxgan.augment import random_translate
from medxgan.config import GANConfig
from medxgan.errors import MedxganError
from medxgan.evaluate.fidelity import generated_accuracy
from medxgan.models.classifier import BinaryClassifier, positive_class_loss
from medxgan.models.gan import EMA, Discriminator, Generator, build_discriminator, build_generator


@dataclass
class GANState:
    G: Generator
    D: Discriminator
    ema: EMA
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    gen: torch.Generator  # all sampling (batches, z, augmentation) draws from this, so resume is exact
    step: int = 0


def init_state(cfg: GANConfig, size: int, channels: int, device="cpu") -> GANState:
    torch.manual_seed(cfg.seed)
    G = build_generator(cfg, size, channels).to(device)
    D = build_discriminator(cfg, size, channels).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    return GANState(G, D, EMA(G, cfg.ema), opt_g, opt_d, torch.Generator().manual_seed(cfg.seed + 1))


def lambda_at(cfg: GANConfig, step: int) -> float:
    """Classifier-term weight: 0 for ``lam_start`` steps, then a linear ramp to ``lam``."""
    step = step - cfg.lam_start
    if step < 0:
        return 0.0
    if cfg.lam_warmup <= 0:
        return cfg.lam
    return cfg.lam * min(1.0, step / cfg.lam_warmup)


def train_step(state: GANState, real: torch.Tensor, classifier: BinaryClassifier, cfg: GANConfig) -> dict:
    """One D step and one G step. ``real`` [B,C,H,W] in [-1,1] on the training device."""
    G, D, gen = state.G, state.D, state.gen
    device = real.device
    b = real.shape[0]
    aug = (lambda x: random_translate(x, 0.125, gen)) if cfg.diff_augment else (lambda x: x)

    y = (torch.rand(b, generator=gen) < 0.5).long()
    z1 = G.sample_z1(b, gen).to(device)
    z2 = G.sample_code(y, gen).to(device)
    y = y.to(device)

    # One G forward serves both steps: D sees it detached, G's step backpropagates through it.
    fake = G(z1, z2)

    # --- D: real vs fake (non-saturating logistic loss) ----------------------------------
    real_in = aug(real)
    if cfg.r1_gamma > 0:
        real_in = real_in.detach().requires_grad_(True)
    d_real, d_fake = D(real_in), D(aug(fake.detach()))
    loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    r1 = torch.zeros((), device=device)
    if cfg.r1_gamma > 0:
        (grad,) = torch.autograd.grad(d_real.sum(), real_in, create_graph=True)
        r1 = grad.pow(2).flatten(1).sum(1).mean()
        loss_d = loss_d + 0.5 * cfg.r1_gamma * r1
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_d.step()

    # --- G: fool D + be recognised by the frozen C as class y (Eq. 4) ---------------------
    loss_adv = F.softplus(-D(aug(fake))).mean()
    loss_cls = positive_class_loss(classifier, fake, y)
    lam = lambda_at(cfg, state.step)
    loss_g = loss_adv + lam * loss_cls
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()

    state.step += 1
    decay = 0.0 if state.step <= cfg.ema_start else cfg.ema
    state.ema.update(G, decay)
    return {
        "loss_d": loss_d.item(), "loss_g_adv": loss_adv.item(), "loss_cls": loss_cls.item(), "lambda": lam,
        "d_real": torch.sigmoid(d_real).mean().item(), "d_fake": torch.sigmoid(d_fake).mean().item(), "r1": r1.item(),
    }


def state_dict(state: GANState) -> dict:
    return {
        "G": ckpt.clean_state_dict(state.G), "D": ckpt.clean_state_dict(state.D),
        "G_ema": ckpt.clean_state_dict(state.ema.model),
        "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(),
        "gen": state.gen.get_state(), "torch_rng": torch.get_rng_state(), "step": state.step,
    }


def load_state_dict(state: GANState, sd: dict) -> None:
    state.G.load_state_dict(sd["G"])
    state.D.load_state_dict(sd["D"])
    state.ema.model.load_state_dict(sd["G_ema"])
    state.opt_g.load_state_dict(sd["opt_g"])
    state.opt_d.load_state_dict(sd["opt_d"])
    state.gen.set_state(sd["gen"])
    torch.set_rng_state(sd["torch_rng"])
    state.step = int(sd["step"])


def save_checkpoint(state: GANState, out: Path, cfg: GANConfig, size: int, channels: int) -> None:
    """The training state first, then the user-facing EMA generator; both atomic."""
    sd = state_dict(state)
    ckpt.atomic_write(out / ckpt.TRAIN_STATE_FILE, lambda tmp: torch.save(sd, tmp))
    ckpt.save_generator(out / ckpt.GENERATOR_FILE, state.ema.model, cfg, size, channels, extra={"step": state.step})


def load_checkpoint(state: GANState, out: Path) -> None:
    path = out / ckpt.TRAIN_STATE_FILE
    if not path.is_file():
        raise MedxganError(f"{out}: nothing to resume (no {ckpt.TRAIN_STATE_FILE})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        load_state_dict(state, sd)
    except Exception as e:  # noqa: BLE001 - unpickling refusal or mismatched shapes
        raise MedxganError(f"{path}: cannot resume from this training state ({str(e).splitlines()[0][:100]})") from None


def train_gan(cfg: GANConfig, images: torch.Tensor, classifier: BinaryClassifier, out_dir=None, resume: bool = False,
              device="cpu", progress: bool = True, on_sample=None) -> tuple[Generator, list[dict]]:
    """Train medXGAN on real ``images`` [N,C,H,W] in [-1,1] (both classes) with the frozen ``classifier``.

    With ``out_dir``: ``stats.jsonl``, checkpoints every ``cfg.checkpoint_every`` steps (and at the
    end, and on Ctrl-C), ``on_sample(G_ema, step)`` every ``cfg.sample_every`` steps.
    Returns (EMA generator in eval mode, stats records).
    """
    if len(images) < 2:
        raise MedxganError("need at least two training images to train the GAN")
    _, channels, size, _ = images.shape
    classifier = classifier.to(device).frozen()
    state = init_state(cfg, size, channels, device)
    out = Path(out_dir) if out_dir is not None else None
    stats: list[dict] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stats_path = out / "stats.jsonl"
        if resume:
            load_checkpoint(state, out)
            if stats_path.exists():
                stats = [json.loads(l) for l in stats_path.read_text().splitlines() if l.strip()]
                stats = [s for s in stats if s["step"] <= state.step]
        elif (out / ckpt.TRAIN_STATE_FILE).exists():
            raise MedxganError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")
        stats_path.write_text("".join(json.dumps(s) + "\n" for s in stats))

    interrupted = {"flag": False}

    def _on_sigint(signum, frame):
        interrupted["flag"] = True

    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not in the main thread
        pass
    log_every = max(1, min(50, cfg.steps // 20))
    bar = tqdm(total=cfg.steps, initial=state.step, desc="medXGAN", disable=not progress, unit="step")
    try:
        while state.step < cfg.steps and not interrupted["flag"]:
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=state.gen)
            losses = train_step(state, images[idx].to(device), classifier, cfg)
            if not all(torch.isfinite(torch.tensor(v)) for v in losses.values()):
                raise MedxganError(f"GAN training diverged at step {state.step} (NaN loss); lower gan.lr_g/lr_d or gan.lam")
            bar.update(1)
            if state.step % log_every == 0 or state.step == cfg.steps:
                record = {"step": state.step, **{k: round(v, 5) for k, v in losses.items()}}
                bar.set_postfix(d=record["loss_d"], g=record["loss_g_adv"], cls=record["loss_cls"])
                if out is not None and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
                    state.ema.model.eval()
                    record["generated_accuracy"] = generated_accuracy(state.ema.model, classifier, n_z1=100, seed=1234, device=device)["accuracy"]
                stats.append(record)
                if out is not None:
                    with open(stats_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
            if out is not None and on_sample is not None and (state.step % cfg.sample_every == 0 or state.step == cfg.steps):
                on_sample(state.ema.model.eval(), state.step)
            if out is not None and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
                save_checkpoint(state, out, cfg, size, channels)
        if interrupted["flag"]:
            if out is not None:
                save_checkpoint(state, out, cfg, size, channels)
            raise MedxganError(f"interrupted at step {state.step}" + (f"; checkpoint saved, continue with --resume" if out else ""))
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    return state.ema.model.eval(), stats
