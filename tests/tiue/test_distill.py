"""TiUEDistiller: VSD with a LoRA fake score and the KL term, on a tiny SD pipeline built in code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from encoder_shrink.recipes import RecipeError, load_recipe
from peft import LoraConfig
from safetensors.torch import load_file

from encoder_shrink import tiny
from encoder_shrink.cli import main
from encoder_shrink.distill import DistillationDiverged, latest_checkpoint
from encoder_shrink.errors import IncompatibleModelError
from encoder_shrink.tiue import TiUEDistiller, TiUEPipeline, TiUESampler, load_tiue_recipe
from encoder_shrink.tiue.distiller import sd_ddim_scheduler
from encoder_shrink.tiue.loop import FAKE_SCORE, _guided
from encoder_shrink.tiue.losses import fake_score_loss, kl_loss, vsd_loss
from encoder_shrink.tiue.schedule import DDIMCombine
from encoder_shrink.training.checkpoint import read_optimizer_state

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow star", "a cat", "a sign that says hi"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return tiny.save_tiny_pipeline(tiny.STABLE_DIFFUSION, tmp_path_factory.mktemp("sd") / "sd")


def _pipe(sd_dir):
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_bundled_recipes_and_bad_values():
    sd21 = load_tiue_recipe("sd21-tiue")
    assert (sd21.num_steps, sd21.learning_rate, sd21.lora_learning_rate, sd21.lora_rank, sd21.guidance_scale,
            sd21.kl_weight, sd21.ema_decay, sd21.min_timestep, sd21.max_timestep) == (
        4, 1e-6, 1e-3, 64, 4.5, 0.1, 0.9999, 20, 980)
    assert load_tiue_recipe("sd15-tiue").lora_target_modules == ["to_q", "to_v"]
    with pytest.raises(RecipeError, match="kl_reduction 'avg'"):
        load_tiue_recipe("tiny-tiue").with_overrides(kl_reduction="avg").__post_init__()
    with pytest.raises(RecipeError, match="max_timestep"):
        load_tiue_recipe("tiny-tiue").with_overrides(max_timestep=1000).__post_init__()
    with pytest.raises(RecipeError, match="lora_rnk.*lora_rank"):
        load_tiue_recipe("tiny-tiue").with_overrides(lora_rnk=4)
    with pytest.raises(RecipeError, match="unknown TiUE recipe 'sd21-tieu'.*sd21-tiue"):
        load_tiue_recipe("sd21-tieu")
    with pytest.raises(RecipeError, match="is a TiUE recipe"):
        load_recipe("sd21-tiue")  # the text-encoder loader points to the TiUE entry
    toy = load_tiue_recipe("toy-tiue")
    assert (toy.num_steps, toy.timestep_spacing, toy.resolution) == (4, "leading", 32)
    with pytest.raises(RecipeError, match="timestep_spacing 'trailng' is not one of leading, trailing.*trailing"):
        toy.with_overrides(timestep_spacing="trailng")
    with pytest.raises(RecipeError, match="num_steps 1 with timestep_spacing 'leading'.*timestep_spacing: trailing"):
        toy.with_overrides(num_steps=1)
    assert toy.with_overrides(num_steps=1, timestep_spacing="trailing").num_steps == 1


def test_losses():
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    eps = torch.randn(2, 4, 8, 8)
    # equal teacher and fake scores send no gradient; a non-finite difference is zeroed, not propagated
    vsd_loss(z, eps, eps, torch.tensor([0.5, 0.9])).backward()
    assert torch.count_nonzero(z.grad) == 0
    z.grad = None
    broken = eps.clone()
    broken[0, 0, 0, 0] = float("nan")
    loss = vsd_loss(z, broken, torch.zeros_like(eps), torch.tensor([0.5, 0.9]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad[0, 0, 0, 0] == 0
    # the gradient into z_0 is w(t) (teacher - fake), per row (mean reduction divides by the element count)
    torch.testing.assert_close(z.grad[1] * z.numel(), 0.9 * eps[1])
    # KL: zero for unit-Gaussian maps, positive for shifted or scaled ones; "sum" is K x B times "mean"
    maps = torch.randn(8, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    assert kl_loss(maps) < 1e-3 < kl_loss(maps * 2) and kl_loss(maps + 1) > 0.4
    torch.testing.assert_close(kl_loss(maps * 2, "sum"), 8 * kl_loss(maps * 2))
    # the fake score's loss weights rows by sqrt(alphabar): a row at alphabar 0 does not count
    assert fake_score_loss(torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), torch.tensor([0.0, 0.0])) == 0


def test_student_gradients_reach_the_encoder_and_every_decoder_pass_and_not_the_teacher(sd_dir):
    pipe = _pipe(sd_dir)
    teacher = pipe.unet.requires_grad_(False)
    teacher.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]), adapter_name="fake")
    for name, parameter in teacher.named_parameters():
        if "lora_B" in name:  # a fake score that has learned something (B starts at zero)
            parameter.data.normal_(0, 0.1)
    student = UNet2DConditionModel.from_pretrained(sd_dir / "unet")
    scheduler = sd_ddim_scheduler(pipe.scheduler)
    scheduler.set_timesteps(4)
    sampler = TiUESampler(student, DDIMCombine.from_scheduler(scheduler))
    tiue = TiUEPipeline.from_sd_pipeline(pipe)
    cond, uncond = tiue.encode_prompt(PROMPTS[:2], "cpu"), tiue.encode_prompt(["", ""], "cpu")
    sample, outputs = sampler(torch.randn(2, 4, 8, 8), cond, return_outputs=True)
    outputs.retain_grad()
    t = torch.tensor([300, 700])
    noisy = scheduler.add_noise(sample.detach(), torch.randn_like(sample), t)
    with torch.no_grad():
        teacher.disable_adapters()
        teacher_eps = _guided(teacher, noisy, t, cond, uncond, 4.5)
        teacher.enable_adapters()
        fake_eps = _guided(teacher, noisy, t, cond, uncond, 4.5)
    loss = vsd_loss(sample, teacher_eps, fake_eps, 1 - scheduler.alphas_cumprod[t]) + 0.1 * kl_loss(outputs)
    assert torch.isfinite(loss)
    loss.backward()
    for i, chunk in enumerate(outputs.grad.chunk(4)):  # step-major: each decoder pass's rows get a gradient
        assert chunk.abs().sum() > 0, f"decoder pass {i}"
    encoder = [student.conv_in, *student.down_blocks, student.mid_block]
    for module in encoder:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), module
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.slow
def test_distill_writes_a_pipeline_leaves_the_teacher_as_it_was_and_the_fake_score_learns(trained_sd_dir, tmp_path):
    sd_dir = trained_sd_dir  # a teacher with a distribution: the LoRA has something to learn about the student
    pipe = _pipe(sd_dir)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    distiller = TiUEDistiller(pipe)
    steps = []
    tiue = distiller.distill(recipe="tiny-tiue", prompts=PROMPTS, output_dir=tmp_path, max_steps=12,
                             checkpoint_every=10, callback=lambda step, losses: steps.append((step, losses)))
    summary = distiller.summary
    # losses finite at every step, one callback per step
    assert [s for s, _ in steps] == list(range(1, 13))
    assert all(torch.isfinite(torch.tensor(list(losses.values()))).all() for _, losses in steps)
    # the teacher: unchanged, no adapter left behind, no gradients
    assert not getattr(pipe.unet, "peft_config", None)
    for name, parameter in pipe.unet.named_parameters():
        assert torch.equal(parameter, before[name]) and parameter.grad is None, name
    # the student moved, and the saved pipeline samples what the returned one does
    assert any(not torch.equal(p, before[n]) for n, p in tiue.unet.named_parameters())
    saved = TiUEPipeline.from_pretrained(tmp_path / "pipeline")
    saved.set_progress_bar_config(disable=True)
    assert saved.timesteps == (751, 501, 251, 1) == tuple(summary["timesteps"])
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(saved("a cat", generator=generator(), output_type="latent").images,
                               tiue("a cat", generator=generator(), output_type="latent").images)
    card = (tmp_path / "pipeline" / "README.md").read_text()
    assert "tiny-tiue@v1" in card and "energy distance to the teacher's images" in card
    on_disk = json.loads((tmp_path / "training_summary.json").read_text())
    assert on_disk["steps"] == 12 and on_disk["distance_after"]["prompts"] >= 1
    assert sorted(on_disk["losses"]) == ["fake_score", "kl", "vsd"]
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))  # tensorboard (a dev dependency) got the losses

    # The fake score learns the student's distribution: on the step-10 student's own samples, the teacher plus the
    # checkpoint's LoRA denoises better than the teacher alone (the LoRA started at zero, i.e. as the teacher).
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "step-00000010"
    student = UNet2DConditionModel.from_pretrained(checkpoint / "student")
    fake = UNet2DConditionModel.from_pretrained(sd_dir / "unet")
    recipe = load_tiue_recipe("tiny-tiue")
    fake.add_adapter(LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, target_modules=["to_q", "to_v"]),
                     adapter_name=FAKE_SCORE)
    lora = load_file(checkpoint / "fake_score_lora.safetensors")
    assert lora and not fake.load_state_dict(lora, strict=False).unexpected_keys
    scheduler = sd_ddim_scheduler(pipe.scheduler)
    scheduler.set_timesteps(4)
    cond = tiue.encode_prompt(PROMPTS * 4, "cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        samples = TiUESampler(student, DDIMCombine.from_scheduler(scheduler))(torch.randn(24, 4, 8, 8, generator=g),
                                                                               cond)
        t = torch.randint(0, 1000, (24,), generator=g)
        noise = torch.randn(samples.shape, generator=g)
        noisy = scheduler.add_noise(samples, noise, t)
        alphas = scheduler.alphas_cumprod[t]
        fake.disable_adapters()
        teacher_loss = fake_score_loss(fake(noisy, t, cond).sample, noise, alphas)
        fake.enable_adapters()
        lora_loss = fake_score_loss(fake(noisy, t, cond).sample, noise, alphas)
    # Measured: 0.1332 against 0.1367 (-2.6 %) after 10 steps; without training the LoRA (B = 0) the two are equal.
    assert lora_loss < 0.99 * teacher_loss, (float(lora_loss), float(teacher_loss))


# Each TiUE run of these option tests: 4 steps, the distance before and after on 1 prompt x 2 images x 2 steps.
QUICK = dict(prompts=PROMPTS, max_steps=4, eval_prompt_count=1, eval_images_per_prompt=2, eval_steps=2)


def _interrupt_at(step):
    def callback(at, losses):
        if at == step:
            raise KeyboardInterrupt

    return callback


def test_fake_updates_step_the_lora_that_often_per_student_step_and_resume_bit_identical(sd_dir, tmp_path):
    # DMD2's two time-scale rule: 3 LoRA steps per student step; a run interrupted after step 2 and resumed ends
    # with the bits of the uninterrupted one.
    full = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", output_dir=tmp_path / "full", fake_updates=3,
                                                **QUICK)
    with pytest.raises(KeyboardInterrupt):
        TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", output_dir=tmp_path / "cut", fake_updates=3,
                                             callback=_interrupt_at(2), **QUICK)
    checkpoint = latest_checkpoint(tmp_path / "cut")
    assert checkpoint.name == "step-00000002"
    student_steps = {int(s["step"]) for s in read_optimizer_state(checkpoint, "optimizer")["state"].values()}
    lora_steps = {int(s["step"]) for s in read_optimizer_state(checkpoint, "fake_score_optimizer")["state"].values()}
    assert (student_steps, lora_steps) == ({2}, {6})
    resumed = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", output_dir=tmp_path / "cut", fake_updates=3,
                                                   resume=True, **QUICK)
    for (name, a), b in zip(full.unet.state_dict().items(), resumed.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # one update per step (the default) is another run: the extra updates changed what the student learned from
    single = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", **QUICK)
    assert any(not torch.equal(a, b) for a, b in zip(full.unet.parameters(), single.unet.parameters(), strict=True))


def test_distill_guidance_sets_the_vsd_target_and_not_the_teachers_sampling(sd_dir):
    def run(**overrides):
        distiller = TiUEDistiller(_pipe(sd_dir))
        tiue = distiller.distill(recipe="tiny-tiue", **{**QUICK, "max_steps": 2, **overrides})
        return [p.detach().clone() for p in tiue.unet.parameters()], distiller.summary

    default, summary = run()
    same, _ = run(distill_guidance_scale=4.5)  # tiny-tiue's guidance_scale: the same target, the same bits
    low, low_summary = run(distill_guidance_scale=1.0)
    assert all(torch.equal(a, b) for a, b in zip(default, same, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(default, low, strict=True))
    # the summary's measure is measurement only: a larger held-out sample trains the same bits (the shipped toy
    # students' summaries moved from 8 x 4 to 64 x 8 images without retraining)
    measured, measured_summary = run(eval_images_per_prompt=3, eval_steps=3)
    assert all(torch.equal(a, b) for a, b in zip(default, measured, strict=True))
    after = measured_summary["distance_after"]
    assert (after["images_per_prompt"], after["teacher_steps"]) == (3, 3)
    # the teacher still samples the distance at the recipe's guidance_scale
    assert low_summary["distance_after"]["guidance_scale"] == summary["distance_after"]["guidance_scale"] == 4.5
    with pytest.raises(RecipeError, match="distill_guidance_scale must be positive or null"):
        load_tiue_recipe("tiny-tiue").with_overrides(distill_guidance_scale=0).__post_init__()
    with pytest.raises(RecipeError, match="fake_updates must be a whole number, got 2.5"):
        load_tiue_recipe("tiny-tiue").with_overrides(fake_updates=2.5).__post_init__()


def test_the_regression_term_pulls_the_student_onto_the_teachers_ode_pairs_and_resumes_bit_identical(sd_dir, tmp_path):
    from encoder_shrink.data import build_mixture
    from encoder_shrink.tiue.losses import regression_loss

    # DMD's regression: 8 teacher ODE pairs (DDIM 2 steps), 4 regressed per step, weighted heavily for a 4-step run
    options = dict(regression_weight=50.0, regression_pairs=8, regression_batch_size=4, regression_steps=2, **QUICK)
    distiller = TiUEDistiller(_pipe(sd_dir))
    full = distiller.distill(recipe="tiny-tiue", output_dir=tmp_path / "full", **options)
    assert len(distiller.summary["losses"]["regression"]["per_step"]) == 4
    with pytest.raises(KeyboardInterrupt):
        TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", output_dir=tmp_path / "cut",
                                             callback=_interrupt_at(2), **options)
    resumed = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", output_dir=tmp_path / "cut", resume=True,
                                                   **options)
    for (name, a), b in zip(full.unet.state_dict().items(), resumed.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "cut" / "regression_pairs.safetensors").is_file()  # the resumed run read the pairs it made
    without = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", **QUICK)

    # the pairs, made again from the recipe: the regressed student lands nearer the teacher's z_0 than one without
    pipe = _pipe(sd_dir)
    recipe = load_tiue_recipe("tiny-tiue").with_overrides(**{k: v for k, v in options.items() if k != "prompts"})
    teacher = TiUEDistiller(pipe).teacher_sampler()
    prompts, noise, target = TiUEDistiller(pipe).teacher_pairs(
        teacher, build_mixture(recipe.stage, PROMPTS[:-1], seed=recipe.seed), recipe, "cpu")  # (the last: held out)
    assert len(prompts) == 8 and noise.shape == target.shape == (8, 4, 8, 8)
    kept = TiUEDistiller(pipe).teacher_pairs(None, None, recipe, "cpu", folder=tmp_path / "full")
    assert torch.equal(kept[1], noise) and torch.equal(kept[2], target)  # the run's kept pairs are these

    def distance(tiue):
        with torch.no_grad():
            sample = tiue(prompts, height=16, width=16, latents=noise, output_type="latent").images
        return float(regression_loss(sample, target))

    assert distance(full) < 0.9 * distance(without), (distance(full), distance(without))
    with pytest.raises(RecipeError, match="regression_weight must be >= 0, got -1"):
        recipe.with_overrides(regression_weight=-1).__post_init__()


def test_the_fake_scores_rank_and_targets_and_the_kl_reduction_change_what_they_claim(sd_dir, tmp_path):
    # a stronger fake score: rank 8 on four attention projections (tiny-tiue's: rank 4 on to_q and to_v by default)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    with pytest.raises(KeyboardInterrupt):
        TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", output_dir=tmp_path / "rank", lora_rank=8,
                                             lora_alpha=8, lora_target_modules=targets, callback=_interrupt_at(1),
                                             **QUICK)
    lora = load_file(latest_checkpoint(tmp_path / "rank") / "fake_score_lora.safetensors")
    down = {name: t for name, t in lora.items() if "lora_A" in name}
    assert down and all(t.shape[0] == 8 for t in down.values())
    assert {next(m for m in targets if f".{m}.lora_A" in name) for name in down} == set(targets)
    # the KL term summed over the K x B maps is the mean times their count, and trains another student
    maps = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    assert torch.allclose(kl_loss(maps, "sum"), 16 * kl_loss(maps, "mean"))
    mean = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", **{**QUICK, "max_steps": 2})
    summed = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", kl_reduction="sum", **{**QUICK, "max_steps": 2})
    assert any(not torch.equal(a, b) for a, b in zip(mean.unet.parameters(), summed.unet.parameters(), strict=True))
    # and its weight: without the KL term (lambda 0) the student learns something else than at tiny-tiue's 0.1
    unweighted = TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", kl_weight=0.0, **{**QUICK, "max_steps": 2})
    assert any(not torch.equal(a, b) for a, b in zip(mean.unet.parameters(), unweighted.unet.parameters(),
                                                     strict=True))


def test_a_non_finite_loss_saves_the_last_good_state_and_stops(sd_dir, tmp_path):
    pipe = _pipe(sd_dir)
    with torch.no_grad():
        pipe.unet.conv_out.bias[0] = float("inf")  # a broken teacher: its (and the fake score's) predictions are Inf
    with pytest.raises(DistillationDiverged, match="loss became .* at step 0; last good state saved to"):
        TiUEDistiller(pipe).distill(recipe="tiny-tiue", prompts=PROMPTS, output_dir=tmp_path, max_steps=3,
                                    eval_prompt_count=1, eval_images_per_prompt=2, eval_steps=2)
    assert latest_checkpoint(tmp_path).name == "step-00000000"
    assert not getattr(pipe.unet, "peft_config", None)  # the adapter is removed on failure too


def test_refuses_what_it_cannot_distil(sd_dir):
    flux = tiny.load_tiny_pipeline("flux-dev", sd_dir.parent / "flux")
    with pytest.raises(IncompatibleModelError, match="has no .*unet"):
        TiUEDistiller(flux)
    pipe = _pipe(sd_dir)
    with pytest.raises(Exception, match="resolution 15 is not a multiple"):
        TiUEDistiller(pipe).distill(recipe="tiny-tiue", resolution=15)


def _cli(pipeline: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "encoder_shrink.cli", "tiue", "distill", "--pipeline", str(pipeline), "--recipe",
            "tiny-tiue", "--output", str(output), "--max-steps", "8", "--checkpoint-every", "3", *extra]


def _env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


def _unet(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_cli_kill_9_then_resume_ends_bit_identical_and_generates(sd_dir, tmp_path, capsys):
    # The uninterrupted run and the generation run in this process (the CLI's own entry); the killed run and its
    # resume are processes of their own.
    # With two of the remedies on (flags of the CLI): two fake-score updates per step, DMD's regression term.
    remedies = ("--fake-updates", "2", "--regression-weight", "0.5")
    full = tmp_path / "full"
    assert main(_cli(sd_dir, full, *remedies)[3:]) == 0
    out = capsys.readouterr().out
    assert "TiUE pipeline written to" in out and "(images " in out
    card = (full / "pipeline" / "README.md").read_text()
    assert "2 fake-score updates per student step" in card and "DMD's regression on 16 teacher ODE pairs" in card

    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli(sd_dir, killed, *remedies), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(killed) is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.kill()
    assert latest_checkpoint(killed) is not None and not (killed / "pipeline").exists()
    resumed = subprocess.run(_cli(sd_dir, killed, *remedies, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, second = _unet(full), _unet(killed)
    assert first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)
    summary = json.loads((killed / "training_summary.json").read_text())
    assert summary["steps"] == 8 and 0 < summary["steps_this_run"] < 8
    assert (summary["recipe"]["fake_updates"], summary["recipe"]["regression_weight"]) == (2, 0.5)
    assert "regression" in summary["losses"]

    images = tmp_path / "images"
    assert main(["tiue", "generate", "--pipeline", str(full / "pipeline"), "--prompt", "a red circle", "a cat",
                 "--num-images", "2", "--output", str(images)]) == 0
    assert sorted(p.name for p in images.iterdir()) == ["000.png", "001.png", "002.png", "003.png"]
    assert main(["tiue", "generate", "--pipeline", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_short_run_brings_the_students_samples_closer_to_the_teachers(trained_sd_dir):
    """
    The distance: the energy distance between the student's z_0 and the teacher's (DDIM, 25 steps, CFG 4.5) on 8
    held-out prompts x 8 seeds, the same noise for both (`encoder_shrink.tiue.sample_distance`). The student starts
    from a fresh random UNet, so it starts far; the teacher is trained on a known distribution.
    """
    pipe = _pipe(trained_sd_dir)
    start = tiny.tiny_sd_components(seed=1)["unet"]
    distiller = TiUEDistiller(pipe)
    distiller.distill(recipe="tiny-tiue", student=start, max_steps=60, learning_rate=1e-3, eval_prompt_count=8,
                      eval_images_per_prompt=8)
    before, after = distiller.summary["distance_before"], distiller.summary["distance_after"]
    assert before["images_per_prompt"] * before["prompts"] == 64
    assert after["energy_distance"] < 0.85 * before["energy_distance"], (before, after)
    # the scale of its samples moved toward the teacher's
    assert abs(after["student_std"] - after["teacher_std"]) < abs(before["student_std"] - before["teacher_std"])


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_train_one_student(sd_dir, tmp_path):
    from tests.tiue import two_process_run

    output = tmp_path / "two"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", two_process_run.__file__,
               str(sd_dir), str(output)]
    run = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = (json.loads((output / f"checksum-{rank}.json").read_text()) for rank in (0, 1))
    assert first == second and first["processes"] == 2  # DDP: one student across the processes
    assert json.loads((latest_checkpoint(output) / "state.json").read_text())["processes"] == 2
    # a checkpoint of two processes does not resume in one (each trained on its own prompts)
    with pytest.raises(Exception, match="written by a run of 2 processes"):
        TiUEDistiller(_pipe(sd_dir)).distill(recipe="tiny-tiue", output_dir=output, resume=True, max_steps=4,
                                             checkpoint_every=2, eval_prompt_count=1, eval_images_per_prompt=2,
                                             eval_steps=2)


class _Crash(Exception):
    pass


@pytest.mark.accelerator
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision and its loss scaler need CUDA")
def test_fp16_on_cuda_trains_resumes_bit_identical_and_leaves_the_teacher_unwrapped(sd_dir, tmp_path):
    """The recipe's fp16 path: autocast, the GradScaler (its state checkpointed), an fp16 teacher beside fp32 LoRA."""
    kwargs = dict(recipe="tiny-tiue", prompts=PROMPTS, max_steps=6, checkpoint_every=3, mixed_precision="fp16",
                  eval_prompt_count=1, eval_images_per_prompt=2, eval_steps=2)

    def pipe():
        loaded = StableDiffusionPipeline.from_pretrained(sd_dir, dtype=torch.float16).to("cuda")
        loaded.set_progress_bar_config(disable=True)
        return loaded

    teacher = pipe()
    losses = []
    full = TiUEDistiller(teacher).distill(output_dir=tmp_path / "full",
                                          callback=lambda step, values: losses.append(values), **kwargs)
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
    # accelerate's autocast wrapper (it returns fp32) is gone from the user's fp16 UNet
    unet = teacher.unet
    sample = torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        assert unet(sample, torch.tensor([500], device="cuda"), context).sample.dtype == torch.float16
    assert (latest_checkpoint(tmp_path / "full") / "grad_scaler.json").is_file()

    def crash(step, _):
        if step == 4:
            raise _Crash

    with pytest.raises(_Crash):
        TiUEDistiller(pipe()).distill(output_dir=tmp_path / "split", callback=crash, **kwargs)
    resumed = TiUEDistiller(pipe()).distill(output_dir=tmp_path / "split", resume=True, **kwargs)
    for (name, a), b in zip(full.unet.named_parameters(), resumed.unet.parameters(), strict=True):
        assert torch.equal(a, b), name
