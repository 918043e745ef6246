"""The step-following distillation loop (and the naive embedding-MSE baseline), readable top to bottom."""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from encoder_shrink.training.run import TrainingRun, step_seed

logger = logging.getLogger(__name__)


def _stage_scaled(schedule, recipe):
    """
    A learning-rate lambda times the stage's `learning_rate / recipe.learning_rate`; the stage is the one of the
    step's trajectory, as for the loss. (A plain function, so the scheduler's JSON state stays free of it.)
    """
    def scaled(step: int) -> float:
        start = step - step % recipe.num_inference_steps
        return schedule(step) * recipe.learning_rate_at(start) / recipe.learning_rate

    return scaled


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
    Train `student` to make the frozen denoiser of `adapter`'s pipeline predict what it predicts with the teacher.

    Each trajectory takes `recipe.batch_size` prompts and pure-noise latents; at each of the
    `recipe.num_inference_steps` scheduler steps the denoiser runs on the same latents with teacher and with student
    embeddings, the MSE between its two predictions is back-propagated into the student only (one optimizer step per
    scheduler step, as the paper), and the latents advance along the teacher's prediction. In stages whose loss is
    `"embedding"` (`recipe.loss_at`) the loss is the MSE between the embeddings themselves (the naive baseline), same
    steps and prompts; a stage's own `learning_rate` scales the schedule while it runs.

    Every random draw is a function of `(recipe.seed, step or trajectory, process)`: latents, guidance and prompts per
    trajectory, the student's dropout per optimizer step (seeded inside `torch.random.fork_rng`, so the caller's RNG
    is left as it was). Two runs of the same recipe give the same bits, and a run that is interrupted (even killed)
    and resumed from a checkpoint ends with the same weights as one that is not ([`TrainingRun`] owns checkpoints,
    resume, the divergence check and interrupts). Returns a summary dict.
    """
    length = recipe.max_sequence_length or adapter.max_sequence_length
    steps_per_trajectory = recipe.num_inference_steps
    rank = accelerator.process_index

    # The denoisers are frozen: no gradients for their weights, eval mode, but gradients flow *through* them.
    denoisers = adapter.denoisers
    checkpointing_was_on = [bool(getattr(d, "gradient_checkpointing", False)) for d in denoisers]
    for denoiser in denoisers:
        denoiser.requires_grad_(False).eval()
        if recipe.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
    student.train()  # the paper trains with the projector's (and T5's) dropout on

    optimizer = torch.optim.AdamW(
        student.parameters(), lr=recipe.learning_rate, betas=tuple(recipe.adam_betas), eps=recipe.adam_epsilon,
        weight_decay=recipe.weight_decay,
    )
    lr_scheduler = get_scheduler(recipe.lr_scheduler, optimizer, num_warmup_steps=recipe.lr_warmup_steps,
                                 num_training_steps=recipe.total_steps)
    if any(s.learning_rate is not None for s in recipe.stages):
        # The schedule's shape over the whole run, times the stage's peak rate relative to the recipe's.
        # (The optimizer keeps `initial_lr` from the first scheduler, so the new one starts from the same base.)
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [_stage_scaled(f, recipe) for f in lr_scheduler.lr_lambdas])
    # Only the student is wrapped (DDP across processes); the frozen denoiser and encoders are not prepared.
    model, optimizer = accelerator.prepare(student, optimizer)
    state = TrainingState({"student": accelerator.unwrap_model(model)}, {"optimizer": optimizer},
                          {"student": lr_scheduler}, scaler=accelerator.scaler)
    run = TrainingRun(state, accelerator, total=recipe.total_steps, output_dir=output_dir,
                      record={"recipe": recipe.name, "loss": recipe.loss, "method": "distill"},
                      checkpoint_every=recipe.checkpoint_every, desc=f"distill ({' then '.join(recipe.losses)})",
                      callback=(lambda step, figures: callback(step, figures["loss"])) if callback else None)
    # The RNG streams a step's dropout may draw from: the CPU's, and the current GPU's when there is one.
    rng_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    current: dict = {}

    def trajectory_of(step: int) -> dict:
        """The trajectory `step` belongs to: `steps_per_trajectory` consecutive optimizer steps on one batch of
        prompts. Built at its first step, or, when a run resumes in its middle, rebuilt by replaying the teacher's
        steps (the latents follow the teacher only)."""
        index, offset = divmod(step, steps_per_trajectory)
        if current.get("index") == index:
            return current
        stage_index, stage = recipe.stage_at(index * steps_per_trajectory)
        prompts = mixture_for_stage(stage_index).batch(index, recipe.batch_size, stream=rank)
        rng = np.random.default_rng([recipe.seed, index, rank])
        guidance = float(rng.choice(recipe.guidance_scales)) if adapter.guidance else None
        generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))
        texts = adapter.encoder_texts(prompts, recipe.negative_prompt)
        rows = cache.rows(texts)  # the teacher encodes each prompt once, never per step
        input_ids, mask = adapter.tokenize(texts, length)
        loss_fn = get_loss(recipe.loss_at(index * steps_per_trajectory))
        trajectory = None
        if loss_fn.uses_denoiser:
            trajectory = adapter.start_trajectory(len(prompts), stage.resolution or recipe.resolution,
                                                  steps_per_trajectory, generator,
                                                  num_frames=stage.num_frames or recipe.num_frames, texts=texts)
            for i in range(offset):
                with torch.no_grad(), accelerator.autocast():
                    t = trajectory.timesteps[i]
                    replay = LossInputs(adapter, rows["t5"], rows, mask, trajectory, t, guidance)
                    adapter.step(trajectory, replay.teacher_prediction(), t)
        current.clear()
        current.update(index=index, stage=stage, rows=rows, input_ids=input_ids, mask=mask, loss_fn=loss_fn,
                       trajectory=trajectory, guidance=guidance)
        return current

    def step(at: int) -> dict:
        c = trajectory_of(at)
        trajectory = c["trajectory"]
        t = trajectory.timesteps[at % steps_per_trajectory] if trajectory is not None else None
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(step_seed(recipe.seed, at, rank))  # this step's dropout, whatever ran before
            with accelerator.autocast():
                student_t5 = model(c["input_ids"], attention_mask=adapter.encoder_mask(c["mask"]))[0]
                inputs = LossInputs(adapter, student_t5, c["rows"], c["mask"], trajectory, t, c["guidance"])
                loss = c["loss_fn"](inputs)
            run.guard(loss, "loss")
            accelerator.backward(loss)
        with run.updating():
            accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if trajectory is not None:
            adapter.step(trajectory, inputs.teacher_prediction(), t)
        return {"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0], "stage": c["stage"].name}

    try:
        summary = run.train(step, resume=resume and output_dir is not None)
    finally:
        for denoiser, was_on in zip(denoisers, checkpointing_was_on, strict=True):
            if recipe.gradient_checkpointing and not was_on:
                denoiser.disable_gradient_checkpointing()  # leave the user's pipeline as it was for inference
    losses = summary.pop("history").get("loss", [])
    return {
        **summary,
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-steps_per_trajectory:])) if losses else None,
        # One value per trajectory (mean of its steps) keeps the summary small for 320k-step runs.
        "loss_per_trajectory": [round(float(np.mean(losses[i:i + steps_per_trajectory])), 6)
                                for i in range(0, len(losses), steps_per_trajectory)],
        "teacher_texts_encoded": cache.encoded,
    }
