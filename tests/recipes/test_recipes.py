"""Recipes: bundled YAML validated into dataclasses, the paper's curriculum, and clear errors."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from encoder_shrink.recipes import Recipe, RecipeError, available_recipes

from encoder_shrink import load_recipe, registered_families

BUNDLED = {"flux-t5small", "flux-t5base", "flux-t5large", "flux-t5xl", "flux-schnell-t5base", "sd3-t5base",
           "pixart-t5base", "tiny", "toy", "chroma-t5base", "hidream-t5base", "cogview3plus-t5base", "bria-t5base",
           "sd3.5-large-t5base", "sd3.5-medium-t5base", "wan-umt5base", "skyreels-v2-umt5base", "auraflow-pilet5base",
           "ltx-t5base", "cogvideox-t5base", "mochi-t5base", "allegro-t5base", "latte-t5base", "flux2-t5base",
           "qwenimage-t5base", "z-image-t5base", "sana-t5base", "lumina2-t5base"}
# The pretrained encoder a family's recipe starts its student from: the teacher's tokenizer must be the student's.
STUDENT_T5 = {"t5-base": "google/flan-t5-base", "umt5-base": "google/umt5-base",
              "pile-t5-base": "EleutherAI/pile-t5-base"}


def test_bundled_recipes_load():
    assert set(available_recipes()) == BUNDLED
    for name in BUNDLED:
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe) and recipe.name == name and recipe.version >= 1


@pytest.mark.parametrize("name, t5", [("flux-t5small", "small"), ("flux-t5base", "base"), ("flux-t5large", "large"),
                                      ("flux-t5xl", "xl")])
def test_flux_recipes_follow_the_paper(name, t5):
    recipe = load_recipe(name)
    assert recipe.family == "flux-dev" and recipe.student_t5.endswith(f"t5-{t5}")
    assert recipe.guidance_scales == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert recipe.num_inference_steps == 20 and recipe.lr_scheduler == "linear" and recipe.batch_size == 32
    assert [(s.name, s.steps, s.resolution) for s in recipe.stages] == [
        ("compbench", 50_000, None), ("commontext", 70_000, 1024), ("mix", 200_000, None)]
    assert recipe.resolution == 512 and recipe.max_sequence_length == 512 and recipe.use_attention_mask is False
    assert [s.kind for s in recipe.stages[2].sources] == ["laion", "compbench", "commontext"]


def test_other_families():
    assert load_recipe("flux-schnell-t5base").max_sequence_length == 256
    sd3 = load_recipe("sd3-t5base")
    assert sd3.family == "sd3" and min(sd3.guidance_scales) > 1
    pixart = load_recipe("pixart-t5base")
    assert pixart.guidance_scales[0] == 5.0 and pixart.guidance_scales[-1] == 10.0
    assert {s.kind for s in pixart.stages[0].sources} == {"laion", "compbench"} and pixart.use_attention_mask


def test_stage_lookup_and_overrides():
    recipe = load_recipe("flux-t5base")
    assert recipe.stage_at(0)[1].name == "compbench"
    assert recipe.stage_at(50_000)[1].name == "commontext"
    assert recipe.stage_at(10**9)[1].name == "mix"
    short = recipe.with_overrides(max_steps=10, batch_size=4)
    assert short.total_steps == 10 and short.batch_size == 4 and recipe.batch_size == 32


def test_unknown_name_suggests_nearest():
    with pytest.raises(RecipeError, match="unknown recipe 'flux-t5-base'. Did you mean 'flux-t5base'?"):
        load_recipe("flux-t5-base")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_sise": 4}, "unknown key 'batch_sise'. Did you mean 'batch_size'?"),
        ({"batch_size": 0}, "batch_size must be positive, got 0"),
        ({"loss": "vison"}, "loss 'vison' is not one of embedding, vision. Did you mean 'vision'?"),
        ({"guidance_scales": []}, "guidance_scales must be positive values"),
        (
            {"stages": [{"name": "s", "steps": 5, "sources": [{"kind": "laoin"}]}]},
            "source kind 'laoin' is not one of .* Did you mean 'laion'?",
        ),
        ({"stages": [{"name": "s", "steps": -1, "sources": [{"kind": "laion"}]}]}, "steps must be positive, got -1"),
        (
            {"stages": [{"name": "s", "steps": 5, "sources": [{"kind": "laion", "weight": 0}]}]},
            "weight must be > 0, got 0",
        ),
        (
            {"stages": [{"name": "s", "steps": 5, "loss": "embeding", "sources": [{"kind": "laion"}]}]},
            "stage 's': loss 'embeding' is not one of embedding, vision. Did you mean 'embedding'?",
        ),
        (
            {"stages": [{"name": "s", "steps": 5, "learning_rate": 0, "sources": [{"kind": "laion"}]}]},
            "stage 's': learning_rate must be positive, got 0",
        ),
    ],
)
def test_bad_recipe_files(tmp_path, change, message):
    data = yaml.safe_load(available_recipes()["tiny"].read_text())
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(tmp_path / "broken.yaml")


def test_cli_lists_one_line_per_recipe():
    out = subprocess.run(["encoder-shrink", "recipes"], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    from encoder_shrink.tiue import available_tiue_recipes

    assert len(lines) == len(BUNDLED) + len(available_tiue_recipes())
    assert any(line.startswith("sd21-tiue ") and "tiue" in line and "66000 steps" in line for line in lines)
    assert any(
        line.startswith("flux-t5base ") and "google/flan-t5-base" in line and "320000 steps" in line for line in lines
    )


def test_toy_recipe_matches_the_toy_teacher():
    from encoder_shrink.toy.teacher import MAX_SEQUENCE_LENGTH, NUM_INFERENCE_STEPS, STUDENT_T5

    recipe = load_recipe("toy")
    assert recipe.family == "flux-schnell" and recipe.max_sequence_length == MAX_SEQUENCE_LENGTH
    assert recipe.num_inference_steps == NUM_INFERENCE_STEPS and recipe.resolution == 32
    # Aligned on embeddings, then trained with the vision loss; every stage is whole trajectories.
    assert recipe.losses == ["embedding", "vision"] and recipe.stages[1].learning_rate < recipe.learning_rate
    assert all(s.steps % recipe.num_inference_steps == 0 for s in recipe.stages)
    # Students start from the toy world's pretrained t5-small, bundled inside the package.
    from encoder_shrink.recipes import resolve_student_t5
    from transformers import T5Config

    assert recipe.student_t5 == "package:toy/t5_small"
    config = T5Config.from_pretrained(resolve_student_t5(recipe.student_t5))
    assert {k: getattr(config, k) for k in STUDENT_T5} == STUDENT_T5


def test_package_paths_resolve_inside_the_installed_package_and_fail_early():
    from encoder_shrink.recipes import resolve_student_t5

    assert resolve_student_t5("google/t5-v1_1-base") == "google/t5-v1_1-base"
    with pytest.raises(RecipeError, match="'package:toy/nowhere'"):
        load_recipe("toy").with_overrides(student_t5="package:toy/nowhere")
    with pytest.raises(RecipeError, match="no T5 folder"):
        resolve_student_t5("package:toy/nowhere")


@pytest.mark.parametrize("family", registered_families())
def test_every_family_has_a_recipe_at_its_deployment_length_and_mask(family, caplog, tiny_pipeline_dirs):
    import logging

    import torch

    from encoder_shrink import tiny
    from encoder_shrink.pipelines import get_adapter

    adapter = get_adapter(family)
    recipes = [load_recipe(n) for n in available_recipes() if n not in ("tiny", "toy")]
    mine = [r for r in recipes if r.family == family]
    if not mine:  # PixArt-alpha and sigma share one recipe that takes each pipeline's own length
        mine = [r for r in recipes if r.family is None and family.split("-")[0] in r.name]
    assert mine, f"no bundled recipe for {family}"
    for recipe in mine:
        assert recipe.max_sequence_length in (None, adapter.max_sequence_length), recipe.name
        assert recipe.use_attention_mask == adapter.uses_attention_mask, recipe.name
        if adapter.student_kind == "llm":  # T5 blocks under the teacher's own vocabulary
            assert recipe.student_t5 == STUDENT_T5["t5-base"] and recipe.embedding_rank, recipe.name
        else:
            assert recipe.student_t5 == STUDENT_T5[adapter.synthetic.student] or recipe.name.startswith("flux-t5")
        assert recipe.num_frames is None or adapter.default_num_frames is not None, recipe.name
    # the student records the call it was distilled for, and warns when a pipeline calls it otherwise
    record = adapter.record(mine[0].max_sequence_length or adapter.max_sequence_length)
    assert record["pipeline_family"] == family and record["component"] == adapter.encoder_slot
    assert record["use_attention_mask"] == adapter.uses_attention_mask
    pipe_adapter = adapter(tiny.load_tiny_pipeline(family, tiny_pipeline_dirs[family]))
    student = tiny.tiny_student(teacher_dim=pipe_adapter.conditioning_width,
                                   student_class=adapter.student_class(), **record, **pipe_adapter.student_fields())
    length = record["max_sequence_length"]
    with caplog.at_level(logging.WARNING, logger="encoder_shrink"):
        student(torch.ones(1, length or 7, dtype=torch.long), attention_mask=None)
        assert ("distilled with an attention mask" in caplog.text) == bool(record["use_attention_mask"])
        student(torch.ones(1, 9, dtype=torch.long))
    # unpadded prompts (Bria) come at any length: no length record, no warning
    assert ("distilled at" in caplog.text) == (length is not None and length != 9)
