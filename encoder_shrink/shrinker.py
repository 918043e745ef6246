"""EncoderShrinker(pipe): the public entry that distils a pipeline's T5 encoder into a student."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from encoder_shrink.compat import check_compatible
from encoder_shrink.data import build_mixture
from encoder_shrink.distill.cache import TeacherEmbeddingCache
from encoder_shrink.distill.loop import distill_loop
from encoder_shrink.errors import IncompatibleModelError, InvalidArgumentError
from encoder_shrink.fidelity import denoiser_fidelity
from encoder_shrink.model_card import write_model_card
from encoder_shrink.pipelines import adapter_for
from encoder_shrink.recipes import Recipe, RecipeError, load_recipe, resolve_student_t5
from encoder_shrink.run_folder import check_run_folder, claim_for_run
from encoder_shrink.student import ShrunkT5EncoderModel
from encoder_shrink.training.setup import finish_run, make_accelerator, split_held_out, start_tracking
from encoder_shrink.training.sharding import held_fraction, is_sharded, shard_frozen, strategy, unsharded_copy

logger = logging.getLogger(__name__)

STUDENT = "student"  # the folder of the final student in a run's output_dir


class EncoderShrinker:
    r"""
    Distil the text encoder of a pipeline of any registered family (`encoder_shrink.registered_families()`: FLUX
    dev/schnell, SD3/3.5, PixArt-alpha/sigma, ...) into a small student with the vision-based step-following loss.

    Example:

    ```python
    >>> from diffusers import FluxPipeline
    >>> from encoder_shrink import EncoderShrinker
    >>> pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> student = EncoderShrinker(pipe).distill(recipe="flux-t5base", prompts={"compbench": "T2I-CompBench",
    ...     "laion": "laion_6.5.parquet"}, output_dir="out")  # doctest: +SKIP
    ```
    """

    def __init__(self, pipe: Any, teacher_id: str | None = None, slot: str | None = None, trace: bool = False,
                 call_kwargs: dict[str, Any] | None = None):
        r"""
        Args:
            pipe: a diffusers pipeline with its teacher encoder loaded.
            teacher_id: how the summary and the student's config name the teacher (default: the pipeline's path).
            slot: the text encoder to shrink (`"text_encoder_2"`, ...); default: the family's, or for a traced
                pipeline the largest transformers model among its text encoders.
            trace: serve the pipeline by tracing its `__call__` even where a family file describes it (the family
                file is the reviewed fast path; a pipeline without one is always traced).
            call_kwargs: extra arguments of every `__call__` a traced pipeline makes (a tiny pipeline's size).
        """
        from encoder_shrink.pipelines.traced import TracedAdapter

        self.pipe = pipe
        self.adapter = (TracedAdapter(pipe, slot=slot, call_kwargs=call_kwargs) if trace
                        else adapter_for(pipe, slot=slot, call_kwargs=call_kwargs))
        self.adapter.check_distillable()
        if self.adapter.teacher is None:
            raise IncompatibleModelError(
                f"{type(pipe).__name__}.{self.adapter.encoder_slot} is None; load the pipeline with its teacher "
                "encoder."
            )
        self.teacher_id = teacher_id or str(getattr(pipe, "name_or_path", None) or type(pipe).__name__)

    def _record(self, recipe: Recipe) -> dict:
        """What a student distilled with `recipe` on this pipeline replaces, for its config."""
        record = self.adapter.record(recipe.max_sequence_length or self.adapter.max_sequence_length)
        return {**record, **self.adapter.student_fields(), "teacher_name_or_path": self.teacher_id}

    def build_student(self, recipe: str | Recipe) -> ShrunkT5EncoderModel:
        """
        The recipe's initial student, of the class the family's slot takes: its pretrained T5 (or T5 config) with a
        projector to the pipeline's width.
        """
        recipe = load_recipe(recipe)
        record = self._record(recipe)
        width = self.adapter.conditioning_width
        student_class = self.adapter.student_class()
        # The projector (and a T5 built from a config) start from random weights: seed them with the recipe's seed so
        # the same recipe gives the same student, whatever the caller's RNG did before.
        if recipe.embedding_rank is not None:
            record["embedding_rank"] = recipe.embedding_rank
        with torch.random.fork_rng():
            torch.manual_seed(recipe.seed)
            if recipe.student_t5 is not None:
                student = student_class.from_t5(resolve_student_t5(recipe.student_t5), teacher_dim=width, **record)
            else:
                vocab = self.adapter.teacher.config.get_text_config().vocab_size
                fields = {"vocab_size": vocab, **recipe.student_config}
                student = student_class.from_t5(student_class.base_config_class(**fields), teacher_dim=width,
                                                **record)
            self.adapter.initialise_student(student)
        return student

    def distill(
        self,
        recipe: str | os.PathLike | Recipe = "flux-t5base",
        prompts=None,
        student: ShrunkT5EncoderModel | None = None,
        output_dir: str | os.PathLike | None = None,
        resume: bool = False,
        loss: str | None = None,
        eval_prompts: list[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        offload_teacher: bool = False,
        release_teacher: bool = False,
        callback=None,
        overwrite: bool = False,
        **overrides,
    ) -> ShrunkT5EncoderModel:
        r"""
        Distil the pipeline's T5 into a student and return it.

        Args:
            recipe: a bundled recipe name (`encoder-shrink recipes` lists them), a YAML path or a [`Recipe`].
            prompts: `None` (the recipe's sources; generated CommonText needs no files), a list of prompts or one
                prompt file (they replace the sources), or a mapping from source kind to a path or list, e.g.
                `{"compbench": "T2I-CompBench/", "laion": "captions.parquet"}`.
            student: start from this student instead of the recipe's (it must fit the pipeline).
            output_dir: where checkpoints, `student/` (weights + model card) and `training_summary.json` go.
            resume: continue from the newest checkpoint in `output_dir`.
            loss: `None` (the recipe's losses, stage by stage), or a registered loss in every stage: `"vision"`
                (step-following, the paper's) or `"embedding"` (naive MSE baseline, for ablations).
            eval_prompts: held-out prompts for the fidelity measured before and after (default: generated
                CommonText validation prompts, or the last prompts of a given list, which are then not trained on).
            cache_dir: persist the teacher's embeddings there (safetensors shards) for reuse across runs.
            offload_teacher: leave the teacher encoder where it is (e.g. on the CPU after
                `TeacherEmbeddingCache.precompute`)
                instead of moving it to the training device with the rest of the pipeline.
            release_teacher: encode every prompt the run can draw (every stage's sources, their negatives and the
                held-out prompts) once, into the cache, then remove the teacher from the pipeline and free its memory
                before training: what an LLM teacher of tens of GB calls for. The pipeline's slot is `None` afterwards.
            callback: called as `callback(step, loss)` after every optimizer step.
            overwrite: delete an earlier run in `output_dir` and start over (without it, or `resume`, an
                `output_dir` holding a run is refused; a run another live process is writing to always is).
            overrides: recipe fields, e.g. `max_steps=1000, batch_size=8, learning_rate=5e-5, resolution=1024`.
        """
        recipe = load_recipe(recipe)
        recipe = recipe.with_overrides(**overrides, **({"loss": loss} if loss is not None else {}))
        self._check_recipe(recipe)
        if resume and output_dir is None:
            raise InvalidArgumentError("resume=True needs the output_dir of the run to continue.")
        record = self.run_record(recipe)
        if output_dir is not None:  # before anything is built: a folder holding another run is refused now
            check_run_folder(output_dir, record, resume=resume, overwrite=overwrite, outputs=(STUDENT,))
        length = recipe.max_sequence_length or self.adapter.max_sequence_length
        if student is None:
            student = self.build_student(recipe)
        check_compatible(self.pipe, student, adapter=self.adapter)
        for key, value in self._record(recipe).items():  # a given student now records this distillation
            setattr(student.config, key, value)
        train_prompts, held_out = split_held_out(prompts, eval_prompts, recipe.eval_prompt_count, recipe.seed)

        mixtures: dict[int, Any] = {}

        def mixture_for_stage(index: int):
            if index not in mixtures:
                mixtures[index] = build_mixture(recipe.stages[index], train_prompts, seed=recipe.seed + index)
            return mixtures[index]

        for index in range(len(recipe.stages)):  # read every source now: a missing file fails before training
            mixture_for_stage(index)

        project = Path(output_dir) if output_dir is not None else None
        accelerator = make_accelerator(recipe.mixed_precision, project)
        # The folder is locked and its record written from here; a failure before the first checkpoint leaves it as
        # it was found.
        with claim_for_run(accelerator, project, record, resume=resume, overwrite=overwrite, outputs=(STUDENT,)):
            start_tracking(accelerator, "encoder-shrink", recipe.to_dict())
            # Under FSDP2 the frozen denoiser(s), and a resident teacher, are sharded instead (placed by FSDP).
            sharded = is_sharded(accelerator)
            frozen = [*self.adapter.denoisers, *([self.adapter.teacher] if sharded and not offload_teacher else [])]
            for name, module in self.pipe.components.items():
                if isinstance(module, torch.nn.Module) and name != self.adapter.encoder_slot and not (
                        sharded and any(module is f for f in frozen)):
                    module.to(accelerator.device)
            if not offload_teacher and not sharded:
                self.adapter.teacher.to(accelerator.device)
            shard_frozen(accelerator, frozen)
            names = {id(module): name for name, module in self.pipe.components.items()}
            held = {names.get(id(m), type(m).__name__): round(held_fraction(m), 4) for m in frozen} if sharded else {}
            student.to(accelerator.device)
            # Under several processes each writes its own shards and index into a shared cache folder.
            writer = f"r{accelerator.process_index}" if accelerator.num_processes > 1 else None
            cache = TeacherEmbeddingCache(self.adapter, length, directory=cache_dir, teacher_id=self.teacher_id,
                                          writer=writer)
            if sharded:  # the sharded teacher encodes every process's texts in the same calls
                cache.lockstep = gather_object
            teacher_parameters = sum(p.numel() for p in self.adapter.teacher.parameters())
            if release_teacher:
                prompts_to_encode = [p for mixture in mixtures.values() for source in mixture.sources.values()
                                     for p in source]
                cache.precompute(self.adapter.encoder_texts(list(dict.fromkeys(prompts_to_encode + list(held_out))),
                                                            recipe.negative_prompt), batch_size=recipe.batch_size)
                self._release_teacher()
            fidelity_kwargs = dict(
                max_sequence_length=length,
                num_inference_steps=recipe.num_inference_steps,
                resolution=recipe.resolution,
                guidance_scale=recipe.guidance_scales[len(recipe.guidance_scales) // 2],
                negative_prompt=recipe.negative_prompt,
                batch_size=recipe.batch_size,
                seed=recipe.seed + 10_000,
                teacher_rows=cache.rows,
                num_frames=recipe.num_frames,
            )
            before = denoiser_fidelity(self.adapter, student, held_out, **fidelity_kwargs)
            summary = distill_loop(self.adapter, student, recipe, mixture_for_stage, cache, accelerator,
                                   output_dir=project, resume=resume, callback=callback)
            student = accelerator.unwrap_model(student).eval()
            after = denoiser_fidelity(self.adapter, student, held_out, **fidelity_kwargs)
            if sharded:
                held["student"] = round(held_fraction(student), 4)
            student = unsharded_copy(student).eval()  # (FSDP2: the full student, gathered; as it is otherwise)
            cache.flush()
            summary.update(
                recipe=recipe.to_dict(),
                pipeline=type(self.pipe).__name__,
                family=self.adapter.name,
                slot=self.adapter.encoder_slot,
                student_class=self.adapter.student_class().__name__,
                teacher=self.teacher_id,
                device=str(accelerator.device),
                distributed=strategy(accelerator),
                sharded_fraction=held,
                fidelity_before=before,
                fidelity_after=after,
                student_parameters=sum(p.numel() for p in student.parameters()),
                teacher_parameters=teacher_parameters,
            )
            finish_run(accelerator, project, STUDENT, student.save_pretrained, write_model_card, summary)
            logger.info("Held-out denoiser relative MSE: %.4g -> %.4g", before["relative_mse"], after["relative_mse"])
            self.summary = summary
            return student

    def run_record(self, recipe: Recipe) -> dict:
        """What a run in an output folder is (`run.json`): a resumed run must be the same, field for field."""
        return {"method": "distill", "pipeline": type(self.pipe).__name__, "family": self.adapter.name,
                "recipe": recipe.to_dict()}

    def _release_teacher(self) -> None:
        """Take the teacher out of the pipeline and free its memory (every row it is needed for is cached)."""
        import gc

        self.adapter.release_teacher()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("Released the teacher encoder (%s); training reads its cached embeddings.",
                    self.adapter.encoder_slot)

    def _check_recipe(self, recipe: Recipe) -> None:
        adapter = self.adapter
        if recipe.family is not None and recipe.family != adapter.name:
            raise RecipeError(
                f"recipe {recipe.name!r} is made for {recipe.family} pipelines but this is a {adapter.name} pipeline; "
                "choose a recipe for it (encoder-shrink recipes)."
            )
        if recipe.use_attention_mask is not None and recipe.use_attention_mask != adapter.uses_attention_mask:
            raise RecipeError(
                f"recipe {recipe.name!r} sets use_attention_mask={recipe.use_attention_mask} but {adapter.name} "
                f"pipelines call their T5 {'with' if adapter.uses_attention_mask else 'without'} a mask."
            )
        if recipe.embedding_rank is not None and adapter.student_kind != "llm":
            raise RecipeError(
                f"recipe {recipe.name!r} sets embedding_rank, which only students of LLM teachers have; "
                f"{adapter.name} students keep their T5's table: drop embedding_rank."
            )
        if adapter.guidance == "cfg" and any(g <= 1 for g in recipe.guidance_scales):
            raise RecipeError(
                f"{adapter.name} applies classifier-free guidance only above 1; recipe {recipe.name!r} has "
                f"guidance_scales={recipe.guidance_scales}."
            )
