"""medXGAN training, Eq. 4:

    min_G max_D  E[log D(x)] + E[log(1 - D(G(z1, y)))]  -  lambda * E[log p_C(y | G(z1, y))]

with the frozen classifier C in the loop. Stabilisers (recorded in the run's config): the
non-saturating GAN loss, a BatchNorm (or spectral-norm) D with a minibatch-standard-deviation
feature against mode collapse, a DiffAugment-style translation seen by D on both real and fake
images, an EMA copy of G (what we save and explain with) and a linear warm-up of lambda so that D
shapes anatomy before the classifier term can pull G towards classifier-pleasing noise.

Where the default recipe departs from Eq. 4 as published (README, "The GAN recipe"): the
classifier sees G's images under its own training augmentation (``gan.cls_augment``); an image
whose class log-odds pass ``gan.cls_margin`` stops pulling on G; and with ``gan.change_l1 > 0``
G's batch is made of (negative, positive) pairs sharing z1 whose pixel change
|G(z1, z2) - G(z1, 0)| is penalised, a prior that the pathology code changes as little anatomy as
it can. ``gan.cls_augment=false gan.cls_margin=0 gan.change_l1=0`` trains Eq. 4 as published.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import record_function
from tqdm.auto import tqdm

from medxgan import checkpoint as ckpt
from medxgan import distributed as dist_
from medxgan.augment import classifier_augment, random_translate
from medxgan.config import GANConfig
from medxgan.device import place
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
    step: int = 0


def init_state(cfg: GANConfig, size: int, channels: int, device="cpu") -> GANState:
    torch.manual_seed(cfg.seed)
    # channels-last weights make the convolutions' activations channels-last too, which oneDNN
    # (CPU) and cuDNN run faster for these narrow layers (bench/training_step.py --profile: G's
    # forward + backward, which dominate the step, about 30 % faster on 2 CPU cores). The
    # checkpoints are written contiguous, so nothing outside training sees the layout.
    G = place(build_generator(cfg, size, channels), device)
    D = place(build_discriminator(cfg, size, channels), device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    return GANState(G, D, EMA(G, cfg.ema), opt_g, opt_d)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The random stream of one training step: a pure function of (seed, step, stream), so a run
    resumed at any step, under any number of processes, draws what an uninterrupted run draws."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7919 + stream)


def step_noise(G: Generator, cfg: GANConfig, step: int, ctx: dist_.Context = dist_.SINGLE):
    """(y, z1, z2) of this rank's part of the global batch of ``step``: the global batch is drawn
    identically on every rank and each rank takes its contiguous slice."""
    gen = step_generator(cfg.seed, step)
    B = cfg.batch_size
    if cfg.change_l1 > 0:
        # Pairs (negative, positive) sharing one z1, interleaved so that every rank's contiguous
        # slice holds whole pairs: the change z2 makes to the same anatomy is then measurable.
        y = torch.arange(B) % 2
        z1 = G.sample_z1(B // 2, gen).repeat_interleave(2, dim=0)
    else:
        y = (torch.rand(B, generator=gen) < 0.5).long()
        z1 = G.sample_z1(B, gen)
    z2 = G.sample_code(y, gen)
    b = dist_.per_rank_batch(B, ctx)
    if cfg.change_l1 > 0 and b % 2:
        raise MedxganError(f"gan.change_l1 pairs images: the per-process batch ({b}) must be even")
    sl = slice(ctx.rank * b, (ctx.rank + 1) * b)
    return y[sl], z1[sl], z2[sl]


@torch.no_grad()
def real_classes(classifier: BinaryClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The class a conditional D (``gan.d_conditional``) is told for real ``images``: the frozen
    classifier's decision, P(positive) > 0.5, as [N] long on the images' device."""
    device = next(classifier.parameters()).device
    out = [(classifier.positive_logit(images[i:i + batch_size].to(device)) > 0).long() for i in range(0, len(images), batch_size)]
    return torch.cat(out).to(images.device)


def lambda_at(cfg: GANConfig, step: int) -> float:
    """Classifier-term weight: 0 for ``lam_start`` steps, then a linear ramp to ``lam``."""
    step = step - cfg.lam_start
    if step < 0:
        return 0.0
    if cfg.lam_warmup <= 0:
        return cfg.lam
    return cfg.lam * min(1.0, step / cfg.lam_warmup)


def train_step(state: GANState, real: torch.Tensor, classifier: BinaryClassifier, cfg: GANConfig,
               ctx: dist_.Context = dist_.SINGLE, G_run=None, D_run=None, real_y: torch.Tensor | None = None) -> dict:
    """One D step and one G step. ``real`` [b,C,H,W] in [-1,1] on the training device: this
    rank's share of the global batch. ``G_run``/``D_run``: the DDP-wrapped modules when distributed.
    ``real_y``: with ``cfg.d_conditional``, the classes of ``real`` (:func:`real_classes`); computed
    from the classifier when not given."""
    G, D = state.G, state.D
    G_run = G if G_run is None else G_run
    D_run = D if D_run is None else D_run
    device = real.device
    aug_gen = step_generator(cfg.seed, state.step, stream=1 + ctx.rank)
    shift = (lambda x: random_translate(x, 0.125, aug_gen)) if cfg.diff_augment else (lambda x: x)

    def aug(x):
        # What D sees of real and fake images alike: a random translation, then optional instance
        # noise (meant to mask the acquisition noise of real scans; on phantoms it did not help,
        # docs/RESULTS.md run G2, so it is off by default).
        x = shift(x)
        if cfg.instance_noise > 0:
            x = x + cfg.instance_noise * torch.randn(x.shape, generator=aug_gen).to(x.device, x.dtype)
        return x

    y, z1, z2 = step_noise(G, cfg, state.step, ctx)
    y, z1, z2 = y.to(device), z1.to(device), z2.to(device)
    # Optional bf16 autocast on CUDA: forward passes in bf16, losses and optimiser state in fp32.
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(cfg.bf16 and device.type == "cuda"))

    # One G forward serves both steps: D sees it detached, G's step backpropagates through it.
    # (record_function labels name the phases in a torch.profiler trace: bench/training_step.py --profile)
    with amp, record_function("gan/G_forward"):
        fake = G_run(z1, z2)

    # --- D: real vs fake (non-saturating logistic loss) ----------------------------------
    with record_function("gan/D_step"):
        real_in = aug(real)
        if cfg.r1_gamma > 0:
            real_in = real_in.detach().requires_grad_(True)
        y_real = None
        if cfg.d_conditional:
            y_real = real_y.to(device) if real_y is not None else real_classes(classifier, real)
        with amp:
            d_real, d_fake = D_run(real_in, y_real), D_run(aug(fake.detach()), y if cfg.d_conditional else None)
        d_real, d_fake = d_real.float(), d_fake.float()
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
    # D's weights need no gradient here (and, under DDP, must not trigger its all-reduce): the
    # plain module is used with its parameters frozen for this step.
    D.requires_grad_(False)
    try:
        with amp, record_function("gan/G_adversarial_forward"):
            d_gen = D(aug(fake), y if cfg.d_conditional else None)
        loss_adv = F.softplus(-d_gen.float()).mean()
    finally:
        D.requires_grad_(True)
    # The classifier sees G's images under the light augmentation it was trained with (flip,
    # shift, intensity jitter), so G cannot please C with patterns tied to exact pixel positions
    # (a max-pool CNN's input gradient is pixel-aligned); only features that survive C's own
    # augmentation count. (The dot grid seen in early samples was not caused by this term: it
    # appeared before lambda was on.)
    cls_in = classifier_augment(fake, step_generator(cfg.seed, state.step, stream=1000 + ctx.rank)) if cfg.cls_augment else fake
    with amp, record_function("gan/classifier_forward"):
        loss_cls = positive_class_loss(classifier, cls_in, y, margin=cfg.cls_margin).float()
    lam = lambda_at(cfg, state.step)
    loss_g = loss_adv + lam * loss_cls
    loss_change = torch.zeros((), device=device)
    loss_modes = torch.zeros((), device=device)
    loss_place = torch.zeros((), device=device)
    if cfg.change_l1 > 0:
        # The pathology code should change the anatomy as little as it can: an L1 prior on the
        # pixel change between the paired negative and positive renderings of each z1. It is
        # weighted like the classifier term, so anatomy is learnt first.
        neg, pos = fake[0::2].float(), fake[1::2].float()
        loss_change = (pos - neg).abs().mean()
        loss_g = loss_g + (lam / max(cfg.lam, 1e-12)) * cfg.change_l1 * loss_change
        if cfg.mode_seeking > 0 and len(neg) > 1:
            # Mode seeking (Mao et al. 2019) on the anatomy: neighbouring pairs' negatives must
            # differ in proportion to their anatomy codes. From step 0: collapse starts early.
            z1n = z1[0::2].float()
            ratio = (neg - neg.roll(1, 0)).abs().mean() / (z1n - z1n.roll(1, 0)).abs().mean()
            loss_modes = 1.0 / (ratio + 1e-5)
            loss_g = loss_g + cfg.mode_seeking * loss_modes
        if cfg.change_diversity > 0 and len(neg) > 1:
            # Neighbouring pairs' change maps should not sit at the same place (scale-free).
            change = F.normalize((pos - neg).abs().flatten(1), dim=1, eps=1e-8)
            loss_place = (change * change.roll(1, 0)).sum(1).mean()
            loss_g = loss_g + (lam / max(cfg.lam, 1e-12)) * cfg.change_diversity * loss_place
    with record_function("gan/G_backward_and_update"):
        state.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        state.opt_g.step()

    state.step += 1
    decay = 0.0 if state.step <= cfg.ema_start else cfg.ema
    with record_function("gan/EMA"):
        state.ema.update(G, decay)
    return {
        "loss_d": loss_d.item(), "loss_g_adv": loss_adv.item(), "loss_cls": loss_cls.item(), "lambda": lam,
        "change_l1": loss_change.item(), "mode_seeking": loss_modes.item(), "change_overlap": loss_place.item(),
        "d_real": torch.sigmoid(d_real).mean().item(), "d_fake": torch.sigmoid(d_fake).mean().item(), "r1": r1.item(),
    }


def state_dict(state: GANState) -> dict:
    return {
        "G": ckpt.clean_state_dict(state.G), "D": ckpt.clean_state_dict(state.D),
        "G_ema": ckpt.clean_state_dict(state.ema.model),
        "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(),
        "torch_rng": torch.get_rng_state(), "step": state.step,
    }


def load_state_dict(state: GANState, sd: dict) -> None:
    state.G.load_state_dict(sd["G"])
    state.D.load_state_dict(sd["D"])
    state.ema.model.load_state_dict(sd["G_ema"])
    state.opt_g.load_state_dict(sd["opt_g"])
    state.opt_d.load_state_dict(sd["opt_d"])
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
              device="cpu", progress: bool = True, on_sample=None,
              ctx: dist_.Context = dist_.SINGLE) -> tuple[Generator, list[dict]]:
    """Train medXGAN on real ``images`` [N,C,H,W] in [-1,1] (both classes) with the frozen ``classifier``.

    Images are visited epoch by epoch in a shuffled order seeded by (cfg.seed, epoch); under
    torchrun (``ctx`` from :func:`medxgan.distributed.init`) each process takes a disjoint shard
    of every epoch and ``cfg.batch_size`` is the global batch. With ``out_dir``: ``stats.jsonl``,
    checkpoints every ``cfg.checkpoint_every`` steps (and at the end, and on Ctrl-C),
    ``on_sample(G_ema, step)`` every ``cfg.sample_every`` steps — all written by rank 0 only.
    Returns (EMA generator in eval mode, stats records).
    """
    if len(images) < 2:
        raise MedxganError("need at least two training images to train the GAN")
    _, channels, size, _ = images.shape
    b = dist_.per_rank_batch(cfg.batch_size, ctx)
    steps_per_epoch = (len(images) // ctx.world_size) // b
    if steps_per_epoch < 1:
        raise MedxganError(f"{len(images)} training images are fewer than one batch (gan.batch_size={cfg.batch_size}); "
                           "lower gan.batch_size")
    classifier = place(classifier, device).frozen()  # channels-last, see init_state
    state = init_state(cfg, size, channels, device)
    # The classifier is frozen, so a conditional D's labels for the real images are fixed: once.
    classes = real_classes(classifier, images) if cfg.d_conditional else None
    out = Path(out_dir) if out_dir is not None else None
    main = ctx.is_main
    stats: list[dict] = []
    if out is not None:
        if main:
            out.mkdir(parents=True, exist_ok=True)
        dist_.barrier(ctx)
        stats_path = out / "stats.jsonl"
        if resume:
            load_checkpoint(state, out)
            if stats_path.exists():
                stats = [json.loads(l) for l in stats_path.read_text().splitlines() if l.strip()]
                stats = [s for s in stats if s["step"] <= state.step]
        elif (out / ckpt.TRAIN_STATE_FILE).exists():
            raise MedxganError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")
        dist_.barrier(ctx)
        if main:
            stats_path.write_text("".join(json.dumps(s) + "\n" for s in stats))
    G_run = dist_.wrap(state.G, ctx, str(device))
    D_run = dist_.wrap(state.D, ctx, str(device))
    if ctx.distributed:  # on CUDA the wrapped modules hold SyncBatchNorm layers (same parameters)
        state.G, state.D = G_run.module, D_run.module

    interrupted = {"flag": False}

    def _on_sigint(signum, frame):
        interrupted["flag"] = True

    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not in the main thread
        pass
    log_every = max(1, min(50, cfg.steps // 20))
    bar = tqdm(total=cfg.steps, initial=state.step, desc="medXGAN", disable=not (progress and main), unit="step")
    shard_epoch, shard = -1, []
    try:
        while state.step < cfg.steps:
            if dist_.any_across(interrupted["flag"], ctx):
                interrupted["flag"] = True
                break
            epoch, k = divmod(state.step, steps_per_epoch)
            if epoch != shard_epoch:
                shard_epoch, shard = epoch, torch.tensor(dist_.epoch_shard(len(images), epoch, cfg.seed, ctx))
            idx = shard[k * b:(k + 1) * b]
            losses = train_step(state, images[idx].to(device), classifier, cfg, ctx, G_run, D_run,
                                real_y=classes[idx] if classes is not None else None)
            if not all(torch.isfinite(torch.tensor(v)) for v in losses.values()):
                raise MedxganError(f"GAN training diverged at step {state.step} (NaN loss); lower gan.lr_g/lr_d or gan.lam")
            bar.update(1)
            at_checkpoint = out is not None and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps)
            if state.step % log_every == 0 or state.step == cfg.steps:
                losses = dist_.mean_across(losses, ctx)
                record = {"step": state.step, **{k: round(v, 5) for k, v in losses.items()}}
                bar.set_postfix(d=record["loss_d"], g=record["loss_g_adv"], cls=record["loss_cls"])
                if at_checkpoint and main:
                    state.ema.model.eval()
                    record["generated_accuracy"] = generated_accuracy(state.ema.model, classifier, n_z1=100, seed=1234, device=device)["accuracy"]
                stats.append(record)
                if out is not None and main:
                    with open(stats_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
            if main and out is not None and on_sample is not None and (state.step % cfg.sample_every == 0 or state.step == cfg.steps):
                on_sample(state.ema.model.eval(), state.step)
            if at_checkpoint:
                dist_.sync_buffers(ctx, state.G, state.D, state.ema.model)
                if main:
                    save_checkpoint(state, out, cfg, size, channels)
                dist_.barrier(ctx)
        if interrupted["flag"]:
            if out is not None and main:
                save_checkpoint(state, out, cfg, size, channels)
            dist_.barrier(ctx)
            raise MedxganError(f"interrupted at step {state.step}" + (f"; checkpoint saved, continue with --resume" if out else ""))
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    return state.ema.model.eval(), stats
