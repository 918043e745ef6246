"""`encoder-shrink demo --tiue` and the toy TiUE students: what the demo measures, and how the students are made."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoder_shrink.cli import main as cli
from encoder_shrink.errors import InputNotFoundError, InvalidArgumentError
from encoder_shrink.toy.tiue_demo import ONE_STEP, PROPAGATION, TEACHER, TEACHER_FEW, TIUE, VARIANTS, diversity
from encoder_shrink.toy.tiue_students import BUNDLED_TIUE, load_toy_tiue
from encoder_shrink.toy.tiue_students import main as make_students
from encoder_shrink.toy.world import render
from tests.doctests import run_docstring_examples


def test_diversity_is_zero_for_copies_and_measures_the_layout_spread():
    prompt = "a red circle"
    copies = np.stack([render(prompt, seed=0)] * 4)
    assert diversity(copies, seeds=4) == {"appearance": 0.0, "position": 0.0, "position_prompts": 1}
    # One image and the same shifted 4 px right: each centroid is 2 px from their mean.
    image = render(prompt, seed=0)
    shifted = np.full_like(image, 255)
    shifted[:, 4:] = image[:, :-4]
    assert diversity(np.stack([image, shifted]), seeds=2)["position"] == pytest.approx(2.0, abs=1e-6)
    # The world's own jitter: 8 seeds of one prompt spread, and two prompts are averaged.
    jittered = np.stack([render(p, seed=s) for p in (prompt, "a blue square") for s in range(8)])
    spread = diversity(jittered, seeds=8)
    assert spread["position"] > 0.5 and spread["appearance"] > 0.05


@pytest.mark.slow
def test_demo_compares_teacher_students_and_propagation(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--tiue", "--output", str(out), "--eval-prompts", "4", "--seeds", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["variants"]) == list(VARIANTS) and (results["prompts"], results["seeds"]) == (4, 2)
    v = results["variants"]
    for figures in v.values():
        assert set(figures["accuracy"]) == {"overall", "colour", "shape", "count", "position", "text"}
        assert figures["latency_s"] > 0 and figures["diversity"]["appearance"] > 0
    # The UNet work, counted: 25 steps x 2 (CFG) full passes for the teacher, 4 x 2 at 4 steps; TiUE one encoder
    # and 4 decoder passes, more than K = 1 and more than ten times less than the teacher.
    assert v[TEACHER]["unet_flops"] == pytest.approx(25 / 4 * v[TEACHER_FEW]["unet_flops"], rel=1e-6)
    assert v[TIUE]["fewer_flops"] >= 10 and v[ONE_STEP]["unet_flops"] < v[TIUE]["unet_flops"]
    assert 1 < v[PROPAGATION]["fewer_flops"] < 2  # its encoder once, its decoder 50 times
    assert set(results["targets"]) and all(isinstance(ok, bool) for ok in results["targets"].values())
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| TiUE K=4 |" in report and "position spread" in report
    assert "| encoder propagation |" in capsys.readouterr().out


def test_demo_refusals(tmp_path, capsys):
    for args in (["--tiue", "--drop-in"], ["--tiue", "--steps", "5"], ["--students", "x"], ["--seeds", "4"],
                 ["--tiue", "--seeds", "1"]):
        assert cli(["demo", "--output", str(tmp_path / "out"), *args]) == 2, args
        assert len(capsys.readouterr().err.strip().splitlines()) == 1, args
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_students_are_remade_by_the_recipe_and_load_with_their_schedule(tmp_path):
    # 2 steps, 8 regression pairs of 2 teacher steps instead of 1,024 of 25, and a summary of 2 prompts x 2 images
    # at 2 steps instead of 64 x 8 at 25 (minutes on the CPU)
    cheap = {"regression_pairs": 8, "regression_steps": 2, "eval_prompt_count": 2, "eval_images_per_prompt": 2,
             "eval_steps": 2}
    sets = [arg for field, value in cheap.items() for arg in ("--set", field, str(value))]
    make_students(["--students", "k1", "--max-steps", "2", *sets,
                   "--output", str(tmp_path / "students"), "--work-dir", str(tmp_path / "work")])
    k1 = load_toy_tiue("k1", tmp_path / "students" / "k1")
    assert k1.timesteps == (999,)  # the one-step student samples at t = 999, not at leading spacing's t = 1
    summary = json.loads((tmp_path / "students" / "k1" / "training_summary.json").read_text())
    assert (summary["recipe"]["name"], summary["steps"], summary["timesteps"]) == ("toy-tiue", 2, [999])
    assert {field: summary["recipe"][field] for field in cheap} == cheap  # --set
    assert summary["wall_seconds"] > 0
    shipped = load_toy_tiue("k1")
    assert load_toy_tiue("k4").timesteps == (751, 501, 251, 1)  # the paper's schedule, stored with the student
    # The shipped students are what the bundled recipe makes: their recorded recipe is today's `toy-tiue`, field for
    # field (fake_updates 5 and regression_weight 0.25 included), so a recipe change without re-made students fails.
    from encoder_shrink.tiue import load_tiue_recipe
    from encoder_shrink.toy.tiue_students import STUDENTS

    for name, overrides in STUDENTS.items():
        recorded = json.loads((BUNDLED_TIUE / name / "training_summary.json").read_text())["recipe"]
        assert (recorded["fake_updates"], recorded["regression_weight"]) == (5, 0.25), name
        assert recorded == load_tiue_recipe("toy-tiue").with_overrides(**overrides).to_dict(), name
    assert {f.suffix for f in BUNDLED_TIUE.rglob("*") if f.is_file()} <= {".safetensors", ".json"}
    assert any(not torch.equal(a, b) for a, b in zip(k1.unet.parameters(), shipped.unet.parameters()))
    image = k1("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    with pytest.raises(InvalidArgumentError, match="unknown toy TiUE student 'k2'"):
        load_toy_tiue("k2")
    with pytest.raises(InputNotFoundError, match="python -m encoder_shrink.toy.tiue_students --students k4"):
        load_toy_tiue("k4", tmp_path)


def test_the_summary_distance_reads_images_and_the_checker_beside_the_latents():
    """`sample_distance`, the training summary's figures: a student that draws the toy world's images is closer to the
    teacher in image space and scores higher on the checker than one whose UNet is random."""
    from diffusers import UNet2DConditionModel

    from encoder_shrink.tiue import sample_distance, sample_teacher
    from encoder_shrink.toy.sd_teacher import load_toy_sd_teacher

    teacher, student = load_toy_sd_teacher(), load_toy_tiue("k4")
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a green triangle", "two blue squares"]
    options = dict(images_per_prompt=2, num_inference_steps=4, guidance_scale=3.0, resolution=32, metric="checker")
    trained = sample_distance(teacher, student, prompts, **options)
    # the teacher's samples, drawn once, serve every later measure (as a run's before and after) with the same result
    reference = sample_teacher(teacher, prompts, **{k: v for k, v in options.items() if k != "metric"})
    assert sample_distance(teacher, student, prompts, **options, teacher_latents=reference) == trained
    shifted = sample_distance(teacher, student, prompts, **options, teacher_latents=[t + 1 for t in reference])
    assert shifted["energy_distance"] > trained["energy_distance"]  # the reference given is the one measured against
    with pytest.raises(InvalidArgumentError, match="teacher_latents hold 0 prompts, not 3 of \\(2, 4, 16, 16\\)"):
        sample_distance(teacher, student, prompts, **options, teacher_latents=[])
    with pytest.raises(InvalidArgumentError, match="teacher_latents hold 3 prompts of \\(2, 4, 16, 16\\) latents, "
                       "not 3 of \\(4, 4, 16, 16\\); sample them with sample_teacher"):
        sample_distance(teacher, student, prompts, **{**options, "images_per_prompt": 4}, teacher_latents=reference)
    torch.manual_seed(0)
    student.register_modules(unet=UNet2DConditionModel.from_config(student.unet.config))
    random = sample_distance(teacher, student, prompts, **options, teacher_latents=reference)
    assert trained["metric"] == "checker" and trained["metric_figure"] == "overall"
    assert trained["teacher_score"] == random["teacher_score"]  # the same teacher images
    assert random["student_score"] < trained["student_score"]
    assert trained["image_energy_distance"] < random["image_energy_distance"]  # (unbiased: a few rows may dip below 0)
    assert trained["per_prompt_image_energy_distance"] < random["per_prompt_image_energy_distance"]
    assert "student_score" not in sample_distance(teacher, student, prompts[:1], **{**options, "metric": None})


def test_docstring_examples_run():
    import encoder_shrink.toy.sd_teacher
    import encoder_shrink.toy.tiue_demo

    assert run_docstring_examples(encoder_shrink.toy.tiue_demo) >= 1
    assert run_docstring_examples(encoder_shrink.toy.sd_teacher) >= 1


def test_student_overrides_are_refused_before_anything_loads(tmp_path, capsys):
    """`tiue_students --set`: a student's own K or seed, an unknown field or a bad value stop it in one line."""
    for field, value, message in (("num_steps", "1", "each student sets its own seed and K"),
                                  ("seed", "3", "each student sets its own seed and K"),
                                  ("regresion_pairs", "8", "Did you mean 'regression_pairs'"),
                                  ("fake_updates", "0", "fake_updates must be positive")):
        with pytest.raises(SystemExit) as exit_:
            make_students(["--set", field, value, "--output", str(tmp_path / "students"),
                           "--work-dir", str(tmp_path / "work")])
        assert exit_.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in error, error
    assert not (tmp_path / "students").exists() and not (tmp_path / "work").exists()
