"""The TiUE training method (variational score distillation + KL, the fake score in the same step): build and step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from encoder_shrink.tiue.losses import fake_score_loss, kl_loss, regression_loss, vsd_loss
from encoder_shrink.tiue.sampler import TiUESampler
from encoder_shrink.tiue.schedule import DDIMCombine
from encoder_shrink.training.checkpoint import TrainingState
from encoder_shrink.training.run import Built, TrainingRun, run_method, step_seed
from encoder_shrink.training.sharding import prepare

# The name of the fake score's LoRA on the teacher UNet (peft adapter name).
FAKE_SCORE = "fake_score"
# The teacher's noise schedule has 1000 training timesteps (SD 1.5 / 2.1): the fake score learns on all of them.
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class TiUEParts:
    r"""
    What the loop trains and reads.

    Args:
        student: the student UNet (fp32, trainable, initialised from the teacher).
        fake_score: the teacher UNet with the `fake_score` LoRA; with its adapters disabled it is the frozen teacher.
        combine: the student's K-step DDIM combine.
        scheduler: the teacher's DDIM scheduler (its `alphas_cumprod`, `add_noise` and prediction type).
        encode: prompts to the text encoder's conditioning (frozen, no gradients).
        uncond: the empty prompt's conditioning, one row.
        latent_shape: `(channels, height, width)` of the student's latents.
        mixture: the prompt mixture (`.batch(step, size, stream=process)`).
        pairs: the teacher's ODE pairs for the regression term, `(prompts, noise, z_0)` (`None`: no regression).
    """

    student: torch.nn.Module
    fake_score: torch.nn.Module
    combine: DDIMCombine
    scheduler: object
    encode: Callable[[list[str]], torch.Tensor]
    uncond: torch.Tensor
    latent_shape: tuple[int, int, int]
    mixture: object = None
    pairs: tuple[list[str], torch.Tensor, torch.Tensor] | None = None


def _epsilon(prediction: torch.Tensor, noisy: torch.Tensor, alphas: torch.Tensor, prediction_type: str):
    """The noise a UNet output stands for: itself (`epsilon`), or `sqrt(a) v + sqrt(1 - a) x_t` (`v_prediction`)."""
    if prediction_type == "epsilon":
        return prediction
    a = alphas.reshape(-1, *[1] * (noisy.ndim - 1)).to(prediction.dtype)
    return a.sqrt() * prediction + (1 - a).sqrt() * noisy


def _guided(unet, noisy, timesteps, cond, uncond, scale: float) -> torch.Tensor:
    """`unet`'s CFG prediction at `scale`, the unconditional and conditional rows in one batch (as SD pipelines do)."""
    both = unet(torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]), torch.cat([uncond, cond])).sample
    u, c = both.chunk(2)
    return u + scale * (c - u)


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


@dataclass(kw_only=True)
class TiUEBuilt(Built):
    """The built run: the parts, the recipe, the prepared sampler and fake score, both optimizers and the EMA."""

    parts: TiUEParts
    recipe: object
    accelerator: object
    sampler: torch.nn.Module
    fake_model: torch.nn.Module
    lora: list[torch.nn.Parameter]
    teacher_dtype: torch.dtype
    student_optimizer: torch.optim.Optimizer
    fake_optimizer: torch.optim.Optimizer
    student_schedule: object
    fake_schedule: object
    ema: EMAModel | None
    alphas_cumprod: torch.Tensor


@contextmanager
def build(parts: TiUEParts, recipe, accelerator) -> Iterator[TiUEBuilt]:
    r"""
    Put the student and the fake score in training mode, make both AdamW optimizers and schedules (the student's
    whole UNet; the fake score's LoRA only) and the student's EMA; accelerate wraps the sampler (the student) and the
    fake score, which processes train together. On exit the user's UNet is as it came: no accelerate forward wrapper,
    its mode and its checkpointing flag.
    """
    student, fake_score = parts.student, parts.fake_score
    teacher_was_training = fake_score.training
    checkpointing_was_on = bool(getattr(fake_score, "gradient_checkpointing", False))
    student.train()
    fake_score.train()
    if recipe.gradient_checkpointing:
        student.enable_gradient_checkpointing()
        fake_score.enable_gradient_checkpointing()

    def adam(params, lr):
        return torch.optim.AdamW(params, lr=lr, betas=tuple(recipe.adam_betas), eps=recipe.adam_epsilon,
                                 weight_decay=recipe.weight_decay)

    student_optimizer = adam(student.parameters(), recipe.learning_rate)
    fake_optimizer = adam(_trainable(fake_score), recipe.lora_learning_rate)
    # (the fake score's schedule steps once per fake-score update: `fake_updates` per student step)
    student_schedule, fake_schedule = (
        get_scheduler(recipe.lr_scheduler, opt, num_warmup_steps=recipe.lr_warmup_steps * updates,
                      num_training_steps=recipe.max_steps * updates)
        for opt, updates in ((student_optimizer, 1), (fake_optimizer, recipe.fake_updates))
    )
    # One model per prepare (accelerate's FSDP2 prepares one model with its optimizer per call). Under FSDP2 the
    # student and the fake score (its frozen base and its LoRA) are sharded. The teacher passes (adapters off, no
    # gradients) call the same UNet.
    sampler, student_optimizer = prepare(accelerator, TiUESampler(student, parts.combine), student_optimizer)
    fake_model, fake_optimizer = prepare(accelerator, fake_score, fake_optimizer)
    lora = _trainable(fake_score)  # (after prepare: FSDP2 replaces the parameters with their shards)
    # The EMA follows the prepared parameters (under FSDP2 its shadow is sharded as they are).
    ema = EMAModel(student.parameters(), decay=recipe.ema_decay) if recipe.ema_decay is not None else None
    state = TrainingState({"student": student, "fake_score_lora": fake_score},
                          {"optimizer": student_optimizer, "fake_score_optimizer": fake_optimizer},
                          {"student": student_schedule, "fake_score": fake_schedule}, ema=ema,
                          scaler=accelerator.scaler, trainable_only=("fake_score_lora",), ema_of="student",
                          optimizer_of={"optimizer": "student", "fake_score_optimizer": "fake_score_lora"})
    try:
        yield TiUEBuilt(
            state=state, total=recipe.max_steps, desc="tiue distill", parts=parts, recipe=recipe,
            accelerator=accelerator, sampler=sampler, fake_model=fake_model, lora=lora,
            teacher_dtype=next(p for p in fake_score.parameters() if not p.requires_grad).dtype,  # the frozen base's
            student_optimizer=student_optimizer, fake_optimizer=fake_optimizer, student_schedule=student_schedule,
            fake_schedule=fake_schedule, ema=ema, alphas_cumprod=parts.scheduler.alphas_cumprod.to(accelerator.device),
        )
    finally:
        accelerator.unwrap_model(fake_model, keep_fp32_wrapper=False)
        accelerator.unwrap_model(sampler, keep_fp32_wrapper=False)
        fake_score.train(teacher_was_training)
        if recipe.gradient_checkpointing:
            student.disable_gradient_checkpointing()
            if not checkpointing_was_on:
                fake_score.disable_gradient_checkpointing()


def step(b: TiUEBuilt, run: TrainingRun, at: int) -> dict:
    r"""
    One step. It takes `recipe.batch_size` prompts and pure noise x_T, and:
    1. the student samples z_0 loop-free ([`TiUESampler`]: encoder once, K decoders in one batch, the combine);
    2. variational score distillation: z_0 is noised to z_t at t ~ U[min_timestep, max_timestep]; the teacher (the
       fake score's UNet with its adapters off) and the fake score predict its noise with CFG; their difference,
       weighted by sigma_t^2, is the gradient sent into z_0, plus lambda times the KL term on the K x B predictions;
       with `regression_weight`, plus DMD's regression of the student's z_0 from teacher ODE pairs' noise onto
       their z_0; one student step (clipped), then the EMA;
    3. the fake score (LoRA only) learns the student's current distribution: the detached z_0 noised at
       t ~ U[0, 1000), the empty prompt on a `uncond_probability` share of rows; one LoRA step (clipped). With
       `fake_updates` > 1 (DMD2's two time-scale rule), more LoRA steps follow the student's, each on a fresh z_0 of
       the updated student (no gradient), fresh timesteps, noise and dropped prompts.
    The VSD gradient's CFG scale is `recipe.target_guidance_scale`. Every draw comes from `(recipe.seed, step,
    process)`, on the CPU so it is the same on any device; the extra updates draw after all of TiUE's own.
    """
    parts, recipe, accelerator = b.parts, b.recipe, b.accelerator
    scheduler, device, prediction_type = parts.scheduler, accelerator.device, parts.scheduler.config.prediction_type
    generator = torch.Generator("cpu").manual_seed(step_seed(recipe.seed, at, accelerator.process_index))
    batch = recipe.batch_size
    prompts = parts.mixture.batch(at, batch, stream=accelerator.process_index)
    shape = (batch, *parts.latent_shape)
    noise = torch.randn(shape, generator=generator).to(device)
    vsd_t = torch.randint(recipe.min_timestep, recipe.max_timestep + 1, (batch,), generator=generator)
    vsd_noise = torch.randn(shape, generator=generator).to(device)
    fake_t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator)
    fake_noise = torch.randn(shape, generator=generator).to(device)
    dropped = (torch.rand(batch, generator=generator) < recipe.uncond_probability).to(device)
    vsd_t, fake_t = vsd_t.to(device), fake_t.to(device)
    with torch.no_grad():
        cond = parts.encode(prompts).to(device)
    uncond = parts.uncond.to(device=device, dtype=cond.dtype).expand_as(cond)

    # 1. the student samples z_0 loop-free, keeping the K x B predictions for the KL term
    with accelerator.autocast():
        sample, outputs = b.sampler(noise * scheduler.init_noise_sigma, cond, return_outputs=True)

    # 2. VSD: the teacher's and the fake score's guided noise predictions on the noised sample
    noisy = scheduler.add_noise(sample.detach(), vsd_noise, vsd_t)
    alphas = b.alphas_cumprod[vsd_t]
    base, dtype = accelerator.unwrap_model(b.fake_model), b.teacher_dtype
    with torch.no_grad(), accelerator.autocast():
        args = (noisy.to(dtype), vsd_t, cond.to(dtype), uncond.to(dtype))
        base.disable_adapters()
        teacher_eps = _guided(base, *args, recipe.target_guidance_scale)
        base.enable_adapters()
        fake_eps = _guided(base, *args, recipe.target_guidance_scale)
    teacher_eps = _epsilon(teacher_eps.float(), noisy.float(), alphas, prediction_type)
    fake_eps = _epsilon(fake_eps.float(), noisy.float(), alphas, prediction_type)
    loss_vsd = vsd_loss(sample, teacher_eps, fake_eps, 1 - alphas)
    # (For a v-prediction UNet the decoder's outputs are v, which is also unit-variance: the KL reads them.)
    loss_kl = kl_loss(outputs, recipe.kl_reduction)
    loss = loss_vsd + recipe.kl_weight * loss_kl
    losses = {}
    if recipe.regression_weight > 0:  # DMD's regression: the student maps a pair's noise to the teacher's z_0
        losses["regression"] = _regression(b, at)
        loss = loss + recipe.regression_weight * losses["regression"]
    run.guard(loss, "student loss")

    # 3. the fake score's loss on the student's current samples (LoRA only; the teacher's weights are frozen)
    loss_fake = _fake_loss(b, run, sample.detach(), fake_t, fake_noise, dropped, cond, uncond)

    # 4. the two updates, one model after the other (they share fp16's loss scaler). Gradient norms are checked
    # too, except under fp16, whose scaler skips steps with overflowing gradients on purpose.
    check_norms = accelerator.scaler is None
    accelerator.backward(loss)
    norm = accelerator.clip_grad_norm_(b.sampler.parameters(), recipe.max_grad_norm)
    if check_norms:
        run.guard(norm, "student gradient norm")
    with run.updating():  # from here to the step's end a checkpoint would hold half a step
        b.student_optimizer.step()
        b.student_schedule.step()
        b.student_optimizer.zero_grad(set_to_none=True)
        if b.ema is not None:
            b.ema.step(parts.student.parameters())
        fake_losses = [loss_fake.detach()]
        _update_fake_score(b, run, loss_fake, check_norms)
        for _ in range(recipe.fake_updates - 1):  # DMD2's two time-scale rule: on the updated student's samples
            noise = torch.randn(shape, generator=generator).to(device)
            fake_t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator).to(device)
            fake_noise = torch.randn(shape, generator=generator).to(device)
            dropped = (torch.rand(batch, generator=generator) < recipe.uncond_probability).to(device)
            with torch.no_grad(), accelerator.autocast():
                sample = b.sampler(noise * scheduler.init_noise_sigma, cond)
            loss_fake = _fake_loss(b, run, sample, fake_t, fake_noise, dropped, cond, uncond)
            fake_losses.append(loss_fake.detach())
            _update_fake_score(b, run, loss_fake, check_norms)
    return {"vsd": loss_vsd.detach(), "kl": loss_kl.detach(), "fake_score": torch.stack(fake_losses).mean(),
            **{name: value.detach() for name, value in losses.items()}, "lr": b.student_schedule.get_last_lr()[0]}


def _regression(b: TiUEBuilt, at: int) -> torch.Tensor:
    """The regression loss on this step's teacher ODE pairs: consecutive rows, by step and process, cycling."""
    prompts, noise, target = b.parts.pairs
    batch, accelerator = b.recipe.regression_batch_size, b.accelerator
    start = (at * accelerator.num_processes + accelerator.process_index) * batch
    rows = [(start + i) % len(prompts) for i in range(batch)]
    device = accelerator.device
    with torch.no_grad():
        cond = b.parts.encode([prompts[i] for i in rows]).to(device)
    with accelerator.autocast():
        sample = b.sampler(noise[rows].to(device) * b.parts.scheduler.init_noise_sigma, cond)
    return regression_loss(sample, target[rows].to(device))


def _fake_loss(b: TiUEBuilt, run: TrainingRun, sample, timesteps, noise, dropped, cond, uncond) -> torch.Tensor:
    """The fake score's denoising loss on (detached) student samples, the empty prompt on the `dropped` rows."""
    scheduler, prediction_type = b.parts.scheduler, b.parts.scheduler.config.prediction_type
    noisy = scheduler.add_noise(sample, noise, timesteps)
    conditioning = torch.where(dropped[:, None, None], uncond, cond)
    with b.accelerator.autocast():
        prediction = b.fake_model(noisy.to(b.teacher_dtype), timesteps, conditioning.to(b.teacher_dtype)).sample
    alphas = b.alphas_cumprod[timesteps]
    loss = fake_score_loss(_epsilon(prediction.float(), noisy.float(), alphas, prediction_type), noise.float(),
                           alphas)
    run.guard(loss, "fake-score loss")
    return loss


def _update_fake_score(b: TiUEBuilt, run: TrainingRun, loss: torch.Tensor, check_norms: bool) -> None:
    """One clipped step of the fake score's LoRA (and its schedule) on `loss`."""
    b.accelerator.backward(loss)
    norm = b.accelerator.clip_grad_norm_(b.lora, b.recipe.max_grad_norm)
    if check_norms:
        run.guard(norm, "fake-score gradient norm")
    b.fake_optimizer.step()
    b.fake_schedule.step()
    b.fake_optimizer.zero_grad(set_to_none=True)


def summarize(b: TiUEBuilt, summary: dict) -> dict:
    """Each loss's mean over the run's first and last tenth (one noisy step does not decide), and every step's."""
    history = summary.pop("history")

    def summary_of(values: list[float]) -> dict:
        tenth = max(1, len(values) // 10)
        return {"first": float(np.mean(values[:tenth])), "last": float(np.mean(values[-tenth:])),
                "per_step": [round(v, 6) for v in values]} if values else {}

    names = ("vsd", "kl", "fake_score", *(("regression",) if "regression" in history else ()))
    summary["losses"] = {name: summary_of(history.get(name, [])) for name in names}
    return summary


def tiue_loop(parts: TiUEParts, recipe, mixture=None, accelerator=None, output_dir: Path | None = None,
              resume: bool = False,
              callback: Callable[[int, dict], None] | None = None) -> tuple[dict, EMAModel | None]:
    r"""
    Train `parts.student` as a TiUE student of the frozen teacher (`run_method("tiue", ...)`); return a summary and
    the student's EMA.

    Every random draw is a function of `(recipe.seed, step, process)`, so two runs of one recipe give the same bits,
    and a run killed and resumed from a checkpoint (student, LoRA, both optimizers and schedules, EMA) ends as one
    that was not. A non-finite loss saves the last good state and raises [`DistillationDiverged`].
    """
    if mixture is not None:
        parts = dataclasses.replace(parts, mixture=mixture)
    summary, built = run_method("tiue", parts, recipe, accelerator, output_dir=output_dir, resume=resume,
                                callback=callback)
    return summary, built.ema
