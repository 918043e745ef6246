"""The step-following distillation method (and the naive embedding-MSE baseline): its build and step, top to bottom."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler

from encoder_shrink.data import PromptMixture
from encoder_shrink.distill.cache import TeacherEmbeddingCache
from encoder_shrink.distill.losses import LossInputs, get_loss
from encoder_shrink.pipelines import PipelineAdapter
from encoder_shrink.training.checkpoint import TrainingState
from encoder_shrink.training.run import Built, TrainingRun, run_method, step_seed
from encoder_shrink.training.sharding import prepare


def _stage_scaled(schedule, recipe):
    """
    A learning-rate lambda times the stage's `learning_rate / recipe.learning_rate`; the stage is the one of the
    step's trajectory, as for the loss. (A plain function, so the scheduler's JSON state stays free of it.)
    """
    def scaled(step: int) -> float:
        start = step - step % recipe.num_inference_steps
        return schedule(step) * recipe.learning_rate_at(start) / recipe.learning_rate

    return scaled


@dataclass
class DistillParts:
    r"""
    What text-encoder distillation trains and reads.

    Args:
        adapter: the pipeline's adapter (a family's, or the traced one): its denoisers, sampling and prompt code.
        student: the student encoder (trainable).
        mixture_for_stage: the prompt mixture of stage `i`.
        cache: the teacher's embeddings (each prompt encoded once).
    """

    adapter: PipelineAdapter
    student: torch.nn.Module
    mixture_for_stage: Callable[[int], PromptMixture]
    cache: TeacherEmbeddingCache


@dataclass(kw_only=True)
class DistillBuilt(Built):
    """The built run: the parts, the recipe, the prepared student and its optimizer and schedule."""

    parts: DistillParts
    recipe: object
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    length: int
    rng_devices: list[int]
    current: dict = field(default_factory=dict)


@contextmanager
def build(parts: DistillParts, recipe, accelerator: Accelerator) -> Iterator[DistillBuilt]:
    r"""
    Freeze the denoisers (gradients still flow *through* them), put the student in training mode (the paper trains
    with the projector's and T5's dropout on), and make its AdamW and schedule; only the student is wrapped by
    accelerate (DDP across processes). On exit the denoisers' gradient checkpointing is as the user had it.
    """
    denoisers = parts.adapter.denoisers
    checkpointing_was_on = [bool(getattr(d, "gradient_checkpointing", False)) for d in denoisers]
    for denoiser in denoisers:
        denoiser.requires_grad_(False).eval()
        if recipe.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
    parts.student.train()
    optimizer = torch.optim.AdamW(
        parts.student.parameters(), lr=recipe.learning_rate, betas=tuple(recipe.adam_betas),
        eps=recipe.adam_epsilon, weight_decay=recipe.weight_decay,
    )
    lr_scheduler = get_scheduler(recipe.lr_scheduler, optimizer, num_warmup_steps=recipe.lr_warmup_steps,
                                 num_training_steps=recipe.total_steps)
    if any(s.learning_rate is not None for s in recipe.stages):
        # The schedule's shape over the whole run, times the stage's peak rate relative to the recipe's.
        # (The optimizer keeps `initial_lr` from the first scheduler, so the new one starts from the same base.)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [_stage_scaled(f, recipe) for f in lr_scheduler.lr_lambdas])
    model, optimizer = prepare(accelerator, parts.student, optimizer)  # (DDP, or FSDP2 under an FSDP2 launch)
    state = TrainingState({"student": accelerator.unwrap_model(model)}, {"optimizer": optimizer},
                          {"student": lr_scheduler}, scaler=accelerator.scaler)
    try:
        yield DistillBuilt(
            state=state, total=recipe.total_steps, desc=f"distill ({' then '.join(recipe.losses)})",
            record={"loss": recipe.loss}, parts=parts, recipe=recipe, accelerator=accelerator, model=model,
            optimizer=optimizer, lr_scheduler=lr_scheduler,
            length=recipe.max_sequence_length or parts.adapter.max_sequence_length,
            # The RNG streams a step's dropout may draw from: the CPU's, and the current GPU's when there is one.
            rng_devices=[torch.cuda.current_device()] if torch.cuda.is_available() else [],
        )
    finally:
        for denoiser, was_on in zip(denoisers, checkpointing_was_on, strict=True):
            if recipe.gradient_checkpointing and not was_on:
                denoiser.disable_gradient_checkpointing()  # leave the user's pipeline as it was for inference


def _trajectory_of(b: DistillBuilt, step: int) -> dict:
    """
    The trajectory `step` belongs to: `num_inference_steps` consecutive optimizer steps on one batch of prompts. Built
    at its first step, or, when a run resumes in its middle, rebuilt by replaying the teacher's steps (the latents
    follow the teacher only). Its prompts, latents and guidance are functions of `(seed, trajectory, process)`.
    """
    recipe, adapter, current = b.recipe, b.parts.adapter, b.current
    per_trajectory = recipe.num_inference_steps
    index, offset = divmod(step, per_trajectory)
    if current.get("index") == index:
        return current
    rank = b.accelerator.process_index
    stage_index, stage = recipe.stage_at(index * per_trajectory)
    prompts = b.parts.mixture_for_stage(stage_index).batch(index, recipe.batch_size, stream=rank)
    rng = np.random.default_rng([recipe.seed, index, rank])
    guidance = float(rng.choice(recipe.guidance_scales)) if adapter.guidance else None
    generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))
    texts = adapter.encoder_texts(prompts, recipe.negative_prompt)
    rows = b.parts.cache.rows(texts)  # the teacher encodes each prompt once, never per step
    input_ids, mask = adapter.tokenize(texts, b.length)
    loss_fn = get_loss(recipe.loss_at(index * per_trajectory))
    trajectory = None
    if loss_fn.uses_denoiser:
        trajectory = adapter.start_trajectory(len(prompts), stage.resolution or recipe.resolution, per_trajectory,
                                              generator, num_frames=stage.num_frames or recipe.num_frames,
                                              texts=texts)
        for i in range(offset):
            with torch.no_grad(), b.accelerator.autocast():
                t = trajectory.timesteps[i]
                replay = LossInputs(adapter, rows["t5"], rows, mask, trajectory, t, guidance)
                adapter.step(trajectory, replay.teacher_prediction(), t)
    current.clear()
    current.update(index=index, stage=stage, rows=rows, input_ids=input_ids, mask=mask, loss_fn=loss_fn,
                   trajectory=trajectory, guidance=guidance)
    return current


def step(b: DistillBuilt, run: TrainingRun, at: int) -> dict:
    r"""
    One optimizer step: the denoiser runs on the trajectory's latents with the teacher's and the student's
    embeddings, the loss (the MSE between its two predictions for `"vision"`, between the embeddings for
    `"embedding"`) goes into the student only, and the latents advance along the teacher's prediction. The student's
    dropout is seeded from `(seed, step, process)` inside `torch.random.fork_rng`, so the caller's RNG is untouched.
    """
    c, adapter, accelerator = _trajectory_of(b, at), b.parts.adapter, b.accelerator
    trajectory = c["trajectory"]
    t = trajectory.timesteps[at % b.recipe.num_inference_steps] if trajectory is not None else None
    with torch.random.fork_rng(devices=b.rng_devices):
        torch.manual_seed(step_seed(b.recipe.seed, at, accelerator.process_index))
        with accelerator.autocast():
            student_t5 = b.model(c["input_ids"], attention_mask=adapter.encoder_mask(c["mask"]))[0]
            inputs = LossInputs(adapter, student_t5, c["rows"], c["mask"], trajectory, t, c["guidance"])
            loss = c["loss_fn"](inputs)
        run.guard(loss, "loss")
        accelerator.backward(loss)
    with run.updating():
        accelerator.clip_grad_norm_(b.model.parameters(), b.recipe.max_grad_norm)
        b.optimizer.step()
        b.lr_scheduler.step()
        b.optimizer.zero_grad(set_to_none=True)
    if trajectory is not None:
        adapter.step(trajectory, inputs.teacher_prediction(), t)
    return {"loss": loss.detach(), "lr": b.lr_scheduler.get_last_lr()[0], "stage": c["stage"].name}


def summarize(b: DistillBuilt, summary: dict) -> dict:
    """The run's losses: first, last trajectory's mean, and one mean per trajectory (small for 320k-step runs)."""
    per_trajectory = b.recipe.num_inference_steps
    losses = summary.pop("history").get("loss", [])
    return {
        **summary,
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-per_trajectory:])) if losses else None,
        "loss_per_trajectory": [round(float(np.mean(losses[i:i + per_trajectory])), 6)
                                for i in range(0, len(losses), per_trajectory)],
        "teacher_texts_encoded": b.parts.cache.encoded,
    }


def distill_loop(
    adapter: PipelineAdapter,
    student: torch.nn.Module,
    recipe,
    mixture_for_stage: Callable[[int], PromptMixture],
    cache: TeacherEmbeddingCache,
    accelerator: Accelerator,
    output_dir: Path | None = None,
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> dict:
    r"""
    Train `student` to make the frozen denoiser of `adapter`'s pipeline predict what it predicts with the teacher
    (`run_method("distill", ...)`); return the summary dict.

    Each trajectory takes `recipe.batch_size` prompts and pure-noise latents; at each of its
    `recipe.num_inference_steps` scheduler steps one optimizer step is made ([`step`]). Two runs of the same recipe
    give the same bits, and a run that is interrupted (even killed) and resumed from a checkpoint ends with the same
    weights as one that is not ([`TrainingRun`] owns checkpoints, resume, the divergence check and interrupts).
    """
    summary, _ = run_method("distill", DistillParts(adapter, student, mixture_for_stage, cache), recipe, accelerator,
                            output_dir=output_dir, resume=resume,
                            callback=(lambda at, figures: callback(at, figures["loss"])) if callback else None)
    return summary
