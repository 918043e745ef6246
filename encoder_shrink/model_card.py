"""The model card (README.md with metadata) written beside a distilled student."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from encoder_shrink.distill.losses import get_loss
from encoder_shrink.files import atomic_write_text
from encoder_shrink.pipelines import get_adapter


def write_model_card(folder: str | Path, summary: dict) -> Path:
    r"""
    Write `README.md` into the student's folder: metadata (teacher, pipeline, recipe, steps, fidelity) as the card's
    YAML header, and a short description with the figures of `summary` (as `EncoderShrinker.distill` produces it).

    Example:

    ```python
    >>> write_model_card("out/student", shrinker.summary)  # doctest: +SKIP
    ```
    """
    recipe = summary["recipe"]
    losses = list(dict.fromkeys(s.get("loss") or recipe["loss"] for s in recipe["stages"]))
    # A traced pipeline has no family file: the summary names its slot and student class.
    family = get_adapter(summary["family"]) if "slot" not in summary else None
    student_class = summary.get("student_class") or family.student_class().__name__
    slot = summary.get("slot") or family.encoder_slot
    before, after = summary["fidelity_before"], summary["fidelity_after"]
    data = ModelCardData(
        library_name="encoder-shrink",
        tags=["text-encoder", "t5", "distillation", "encoder-shrink", summary["family"]],
        component=slot,
        # A hub id or path; a T5 bundled with the package (package:...) is no model the hub knows.
        base_model=None
        if str(recipe.get("student_t5") or "package:").startswith("package:")
        else recipe["student_t5"],
        teacher=summary["teacher"],
        pipeline=summary["pipeline"],
        pipeline_family=summary["family"],
        recipe=f"{recipe['name']}@v{recipe['version']}",
        loss=" then ".join(losses),
        training_steps=summary["steps"],
        denoiser_relative_mse=round(after["relative_mse"], 6),
        denoiser_relative_mse_initial=round(before["relative_mse"], 6),
    )
    measured = (f"{after['prompts']} held-out prompts, {after['num_inference_steps']} steps, "
                f"{after['resolution']} px, guidance {after['guidance_scale']}")
    text = f"""---
{data.to_yaml()}
---

# Student text encoder for {summary["pipeline"]} ({summary["family"]})

A small T5 encoder with a projector to the teacher's width, distilled from `{summary["teacher"]}` with
encoder-shrink's {" then ".join(get_loss(loss).description for loss in losses)} loss.

| | value |
|---|---|
| recipe | `{recipe["name"]}` v{recipe["version"]} |
| optimizer steps | {summary["steps"]} |
| student / teacher parameters | {summary["student_parameters"]:,} / {summary["teacher_parameters"]:,} |
| held-out denoiser relative MSE | {before["relative_mse"]:.4g} before, **{after["relative_mse"]:.4g}** after |
| measured on | {measured} |

```python
from diffusers import {summary["pipeline"]}
from encoder_shrink import {student_class}
student = {student_class}.from_pretrained("<this folder or repo>")
pipe = {summary["pipeline"]}.from_pretrained("{summary["teacher"]}", {slot}=student)
```
"""
    path = Path(folder) / "README.md"
    atomic_write_text(path, text)
    ModelCard.load(path)  # parses the header back: a card other tools can read
    return path


def write_tiue_model_card(folder: str | Path, summary: dict) -> Path:
    r"""
    Write `README.md` into a TiUE pipeline's folder: metadata (teacher, recipe, schedule, steps, distance to the
    teacher) as the card's YAML header and the figures of `summary` (as `TiUEDistiller.distill` produces it).

    Example:

    ```python
    >>> write_tiue_model_card("out/tiue/pipeline", distiller.summary)  # doctest: +SKIP
    ```
    """
    recipe = summary["recipe"]
    before, after = summary["distance_before"], summary["distance_after"]
    data = ModelCardData(
        library_name="encoder-shrink",
        pipeline_tag="text-to-image",
        tags=["tiue", "distillation", "one-step", "encoder-shrink", "stable-diffusion"],
        teacher=summary["teacher"],
        pipeline="TiUEPipeline",
        recipe=f"{recipe['name']}@v{recipe['version']}",
        timesteps=summary["timesteps"],
        training_steps=summary["steps"],
        ema=summary["ema"],
        energy_distance=round(after["energy_distance"], 6),
        energy_distance_initial=round(before["energy_distance"], 6),
    )
    measured = (f"{after['prompts']} held-out prompts x {after['images_per_prompt']} seeds, teacher DDIM "
                f"{after['teacher_steps']} steps with CFG {after['guidance_scale']}, {after['resolution']} px")
    rows = ""
    if "image_energy_distance" in after:  # (summaries written before images were measured lack it)
        rows += (f"| energy distance to the teacher's images | {before['image_energy_distance']:.4g} before, "
                 f"**{after['image_energy_distance']:.4g}** |\n")
    if after.get("metric"):
        rows += (f"| {after['metric']} ({after['metric_figure']}) of the images | teacher "
                 f"{after['teacher_score']:.4g}, student before {before['student_score']:.4g}, **after "
                 f"{after['student_score']:.4g}** |\n")
    remedies = []
    if recipe.get("fake_updates", 1) > 1:
        remedies.append(f"{recipe['fake_updates']} fake-score updates per student step (DMD2's two time-scale rule)")
    if recipe.get("distill_guidance_scale") is not None:
        remedies.append(f"the VSD target at guidance {recipe['distill_guidance_scale']}")
    if recipe.get("regression_weight"):
        remedies.append(f"DMD's regression on {recipe['regression_pairs']} teacher ODE pairs (weight "
                        f"{recipe['regression_weight']})")
    remedies_line = f" With {'; '.join(remedies)}." if remedies else ""
    text = f"""---
{data.to_yaml()}
---

# TiUE student of `{summary["teacher"]}`

A loop-free UNet ("One-Way Ticket", arXiv 2505.21960): its encoder runs once and its decoder for the
{len(summary["timesteps"])} DDIM timesteps {summary["timesteps"]} in one batch, combined in closed form; no
classifier-free guidance. Distilled with variational score distillation (LoRA fake score) and the KL term
(lambda {recipe["kl_weight"]}, {recipe["kl_reduction"]} over maps).{remedies_line}

| | value |
|---|---|
| recipe | `{recipe["name"]}` v{recipe["version"]} |
| optimizer steps | {summary["steps"]} |
| UNet parameters | {summary["unet_parameters"]:,} |
| weights | {"EMA of the student (decay " + str(recipe["ema_decay"]) + ")" if summary["ema"] else "the student"} |
| energy distance to the teacher's z_0 | {before["energy_distance"]:.4g} before, **{after["energy_distance"]:.4g}** |
{rows}| measured on | {measured} |

```python
from encoder_shrink.tiue import TiUEPipeline
pipe = TiUEPipeline.from_pretrained("<this folder or repo>")
image = pipe("a red circle above a blue square").images[0]
```
"""
    path = Path(folder) / "README.md"
    atomic_write_text(path, text)
    ModelCard.load(path)
    return path
