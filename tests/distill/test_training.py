"""Training done right: pretrained init, fp32 master weights, clipping, gradient checkpointing, NaN stop, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from encoder_shrink.recipes import RecipeError

from encoder_shrink import EncoderShrinker, ShrunkT5EncoderModel, load_recipe, tiny
from encoder_shrink.distill import DistillationDiverged, latest_checkpoint


@pytest.fixture
def flux(tiny_pipeline_dirs):
    return tiny.load_tiny_pipeline("flux-dev", tiny_pipeline_dirs["flux-dev"])


def _change_norm(student, before):
    """L2 norm of how far all weights moved."""
    return sum((p - before[n]).pow(2).sum().item() for n, p in student.named_parameters()) ** 0.5


def test_student_starts_from_the_recipes_pretrained_t5(flux, tmp_path):
    t5 = tiny.tiny_t5_encoder(d_model=16, num_layers=1, seed=9)
    t5.save_pretrained(tmp_path / "t5")
    recipe = dataclasses.replace(load_recipe("tiny"), student_t5=str(tmp_path / "t5"), student_config=None)
    student = EncoderShrinker(flux).build_student(recipe)
    torch.testing.assert_close(student.shared.weight, t5.shared.weight)
    torch.testing.assert_close(student.encoder.block[0].layer[0].SelfAttention.q.weight,
                               t5.encoder.block[0].layer[0].SelfAttention.q.weight)
    assert student.config.pipeline_family == "flux-dev" and student.config.max_sequence_length == 512
    assert student.config.use_attention_mask is False and student.config.teacher_dim == 32


def test_a_given_student_records_the_distillation(flux):
    student = tiny.tiny_student(teacher_dim=32)
    assert student.config.pipeline_family is None
    EncoderShrinker(flux, teacher_id="tiny-flux").distill(recipe="tiny", student=student, max_steps=4,
                                                          max_sequence_length=128, eval_prompts=["a cat"])
    config = student.config
    assert (config.pipeline_family, config.component, config.teacher_name_or_path) == (
        "flux-dev",
        "text_encoder_2",
        "tiny-flux",
    )
    assert config.max_sequence_length == 128 and config.use_attention_mask is False


def test_fp32_master_weights_with_a_bfloat16_pipeline(tiny_pipeline_dirs):
    pipe = tiny.tiny_pipeline_class("flux-dev").from_pretrained(
        tiny_pipeline_dirs["flux-dev"], dtype=torch.bfloat16
    )
    shrinker = EncoderShrinker(pipe)
    student = shrinker.distill(recipe="tiny", max_steps=8, eval_prompts=["a cat"])
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert shrinker.summary["loss_last"] < shrinker.summary["loss_first"] or shrinker.summary["loss_last"] > 0


def test_gradients_are_clipped_on_the_student(flux):
    # With adam_epsilon=1 AdamW's update is ~lr * gradient, so clipping the gradient norm bounds how far weights move.
    shrinker = EncoderShrinker(flux)
    changes = {}
    for max_norm in (1e-6, 1e3):
        student = shrinker.build_student("tiny")
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        shrinker.distill(recipe="tiny", student=student, max_steps=4, max_grad_norm=max_norm, adam_epsilon=1.0,
                         learning_rate=1.0, eval_prompts=["a cat"])
        changes[max_norm] = _change_norm(student, before)
    # AdamW's bias-corrected step is m / (sqrt(v) + eps) with ||m|| <= the clipped norm: at most lr * 1e-6 per step
    assert changes[1e-6] <= 4 * 1.0 * 1e-6 * 1.01
    assert changes[1e3] > 100 * changes[1e-6]


def test_gradient_checkpointing_of_the_frozen_denoiser_takes_effect(flux):
    shrinker = EncoderShrinker(flux)
    block = flux.transformer.transformer_blocks[0]
    calls = {"n": 0}
    # a pre-hook: checkpointing's recomputation stops early once it has what backward needs, so post-hooks may not run
    block.register_forward_pre_hook(lambda *args: calls.__setitem__("n", calls["n"] + 1))
    counts, weights, during = {}, {}, []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        calls["n"] = 0
        student = shrinker.distill(recipe="tiny", max_steps=4, gradient_checkpointing=checkpointing,
                                   eval_prompts=["a cat"],
                                   callback=lambda step, loss: during.append(flux.transformer.gradient_checkpointing))
        counts[checkpointing] = calls["n"]
        weights[checkpointing] = student.state_dict()
    # every student prediction (one per optimizer step) is recomputed once in the backward pass
    assert counts[True] - counts[False] == 4
    assert during == [False] * 4 + [True] * 4
    assert not flux.transformer.gradient_checkpointing  # the pipeline is left as it was
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights[True][name], tensor, atol=1e-6, rtol=1e-5)


def test_non_finite_loss_stops_with_a_checkpoint(flux, tmp_path):
    shrinker = EncoderShrinker(flux)
    with pytest.raises(DistillationDiverged, match=r"loss became (nan|inf) at step \d+; last good state saved to"):
        shrinker.distill(recipe="tiny", output_dir=tmp_path, max_steps=40, learning_rate=1e30, max_grad_norm=1e30,
                         adam_epsilon=1e-30, eval_prompts=["a cat"])
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None
    ShrunkT5EncoderModel.from_pretrained(checkpoint / "student")


def test_clear_errors_before_training(flux, tmp_path):
    shrinker = EncoderShrinker(flux)
    with pytest.raises(RecipeError, match="unknown recipe field 'max_step' in overrides. Did you mean 'max_steps'?"):
        shrinker.distill(recipe="tiny", max_step=3)
    with pytest.raises(
        RecipeError, match="recipe 'sd3-t5base' is made for sd3 pipelines but this is a flux-dev pipeline"
    ):
        shrinker.distill(recipe="sd3-t5base")
    with pytest.raises(ValueError, match="source 'compbench' needs the T2I-CompBench folder"):
        shrinker.distill(recipe="flux-t5small", student=shrinker.build_student("tiny"), max_steps=1)
    with pytest.raises(ValueError, match="resume=True needs the output_dir"):
        shrinker.distill(recipe="tiny", resume=True)
    with pytest.raises(ValueError, match="Student returns 48-dim embeddings"):
        shrinker.distill(recipe="tiny", student=tiny.tiny_student(teacher_dim=48))


def test_unsupported_pipeline_lists_families():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    from encoder_shrink import registered_families

    with pytest.raises(
        ValueError, match="supported families: " + ", ".join(registered_families()).replace(".", r"\.")
    ):
        EncoderShrinker(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


@pytest.mark.slow
def test_cfg_pipelines_train_on_the_negative_prompt(tiny_pipeline_dirs):
    pipe = tiny.load_tiny_pipeline("sd3", tiny_pipeline_dirs["sd3"])
    shrinker = EncoderShrinker(pipe)
    # 2 training prompts, 1 held out, and the empty negative prompt are the texts the teacher encodes
    shrinker.distill(recipe="tiny", prompts=["a red circle", "a blue square", "held out"], max_steps=40)
    assert shrinker.summary["teacher_texts_encoded"] == 4
    with pytest.raises(RecipeError, match="sd3 applies classifier-free guidance only above 1"):
        shrinker.distill(recipe="tiny", guidance_scales=[1.0])


def test_the_same_recipe_builds_the_same_student_whatever_the_global_rng(flux):
    shrinker = EncoderShrinker(flux)
    torch.manual_seed(1)
    first = shrinker.build_student("tiny")
    torch.randn(1000)  # the caller's RNG moves on
    second = shrinker.build_student("tiny")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    other_seed = dataclasses.replace(load_recipe("tiny"), seed=1)
    third = shrinker.build_student(other_seed)
    assert not torch.equal(third.final_projection[0].weight, first.final_projection[0].weight)
    state = torch.random.get_rng_state()
    shrinker.build_student("tiny")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left untouched


@pytest.mark.slow
def test_stages_can_set_their_own_loss_and_learning_rate(flux):
    # Stage "align" (embedding loss, the recipe's rate) then stage "follow" (vision loss, a rate of ~0): the denoiser
    # runs only in "follow" (teacher + student pass per step), and the weights move only in "align".
    k = load_recipe("tiny").num_inference_steps
    stages = [{"name": "align", "steps": 2 * k, "loss": "embedding", "sources": [{"kind": "commontext"}]},
              {"name": "follow", "steps": 2 * k, "learning_rate": 1e-30, "sources": [{"kind": "commontext"}]}]
    recipe = dataclasses.replace(load_recipe("tiny"), stages=stages)
    assert recipe.losses == ["embedding", "vision"] and recipe.loss_at(2 * k) == "vision"
    assert recipe.with_overrides(loss="embedding").losses == ["embedding"]
    calls, per_step, weights = [0], [], []
    hook = flux.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    shrinker = EncoderShrinker(flux)
    student = shrinker.build_student(recipe)

    def record(step, loss):
        per_step.append(calls[0])
        weights.append(student.shared.weight.detach().clone())

    try:
        shrinker.distill(recipe=recipe, student=student, eval_prompts=["a cat"], callback=record)
        # How far the embeddings move from after each step to the end; denoiser calls made by each step after the
        # first.
        moved = [(student.shared.weight.detach() - w).norm().item() for w in weights]
        calls_per_step = [b - a for a, b in zip(per_step, per_step[1:])]
        assert calls_per_step == [0] * (2 * k - 1) + [2] * (2 * k)
        assert moved[0] > 1e-3 and moved[2 * k - 1] < 1e-12
        per_step.clear()
        shrinker.distill(recipe=recipe, eval_prompts=["a cat"], loss="embedding", callback=record)
        assert per_step[-1] == per_step[0]  # the naive baseline of the whole recipe never runs the denoiser
    finally:
        hook.remove()
