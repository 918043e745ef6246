"""The encoder-shrink CLI: demo end to end, convert, and clean errors."""

from __future__ import annotations

import importlib.util
import json

import pytest

from encoder_shrink import ShrunkT5EncoderModel, tiny
from encoder_shrink.cli import main
from encoder_shrink.demo import DISTILL_STEPS
from tests.test_reference import write_reference_checkpoint


@pytest.mark.slow
def test_drop_in_demo_runs_end_to_end(tmp_path, capsys):
    assert (
        main(["demo", "--drop-in", "--output", str(tmp_path / "demo"), "--families", "flux-dev", "pixart-sigma"]) == 0
    )
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["families"]) == {"flux-dev", "pixart-sigma"}
    for figures in results["families"].values():
        assert figures["reload_identical"] and figures["images_finite"]
        assert figures["student_class_after_reload"] == "ShrunkT5EncoderModel"
        assert figures["student_parameters"] < figures["teacher_parameters"]
        assert figures["distill_steps"] == DISTILL_STEPS
        assert figures["relative_mse_after"] < 0.3 * figures["relative_mse_before"]
    assert (tmp_path / "demo" / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| flux-dev | text_encoder_2 |" in (tmp_path / "demo" / "report.md").read_text()
    assert "| pixart-sigma | text_encoder |" in capsys.readouterr().out


def test_convert_reference_checkpoint(tmp_path, capsys):
    write_reference_checkpoint(tmp_path / "ref")
    assert main(["convert", str(tmp_path / "ref"), "--output", str(tmp_path / "student")]) == 0
    assert "teacher_dim=64" in capsys.readouterr().out
    assert json.loads((tmp_path / "student" / "config.json").read_text())["model_type"] == "shrunk_t5"
    ShrunkT5EncoderModel.from_pretrained(tmp_path / "student")
    capsys.readouterr()
    # a second conversion into the same non-empty folder is refused in one line
    assert main(["convert", str(tmp_path / "ref"), "--output", str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and err.count("\n") == 1


def test_convert_refuses_pickle_only_folder(tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "config.json").write_text(json.dumps({"model_type": "t5", "project_in_dim": 512}))
    (tmp_path / "ref" / "pytorch_model.bin").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "ref"), "--output", str(tmp_path / "out")]) == 2
    assert "holds only pickle weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit) as exit_info:
        main(["distil"])
    assert exit_info.value.code == 2


def test_distill_writes_student_model_card_summary_and_resumes(tiny_pipeline_dirs, tmp_path, capfd, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    out = tmp_path / "run"
    args = ["distill", "--pipeline", str(tiny_pipeline_dirs["pixart-sigma"]), "--recipe", "tiny", "--output", str(out),
            "--checkpoint-every", "4"]
    assert main([*args, "--max-steps", "8"]) == 0
    captured = capfd.readouterr()
    assert "distill (vision)" in captured.err and "loss=" in captured.err  # progress bar with loss
    assert "held-out denoiser relative MSE" in captured.out
    assert sorted(p.name for p in (out / "student").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = ModelCard.load(out / "student" / "README.md")
    assert card.data.teacher == str(tiny_pipeline_dirs["pixart-sigma"])
    assert card.data.pipeline == "PixArtSigmaPipeline" and card.data.recipe == "tiny@v1"
    # the card's usage comes from the family registry: the pipeline class, the slot and the student class
    assert "PixArtSigmaPipeline.from_pretrained(" in card.text and "text_encoder=student" in card.text
    assert "ShrunkT5EncoderModel.from_pretrained(" in card.text and "vision-based step-following" in card.text
    assert card.data.training_steps == 8 and card.data.denoiser_relative_mse >= 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 8 and summary["family"] == "pixart-sigma"
    assert list((out / "logs").rglob("events.out.tfevents.*")), "tensorboard tracker wrote no events"
    assert ShrunkT5EncoderModel.from_pretrained(out / "student").config.max_sequence_length == 300

    capfd.readouterr()
    # a resume with other overrides than the run's is refused, naming the first field that differs
    assert main([*args, "--max-steps", "12", "--resume"]) == 2
    err = capfd.readouterr().err
    assert "recipe.max_steps=8" in err and "recipe.max_steps=12" in err and err.count("\n") == 1
    assert main([*args, "--max-steps", "8", "--resume"]) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 8 and summary["steps_this_run"] == 4  # resumed from the step-4 checkpoint


def test_distill_reports_bad_input_in_one_line(tiny_pipeline_dirs, tmp_path, capsys):
    code = main(["distill", "--pipeline", str(tiny_pipeline_dirs["flux-dev"]), "--recipe", "flux-t5bse",
                 "--output", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'flux-t5bse'. Did you mean 'flux-t5base'?" in err
    assert main(["distill", "--pipeline", str(tiny_pipeline_dirs["flux-dev"]), "--recipe", "tiny", "--prompts",
                 str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o")]) == 2
    assert "missing.txt does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_export_cli(tmp_path, capsys):
    student = tmp_path / "student"
    ShrunkT5EncoderModel.from_t5(tiny.tiny_t5_encoder(d_model=16, num_layers=1), teacher_dim=32,
                                 max_sequence_length=32).save_pretrained(student)
    assert main(["export", str(student), "--onnx", "--int8", "dynamic", "--output", str(tmp_path / "int8")]) == 0
    out = capsys.readouterr().out
    assert "int8-dynamic" in out and "NaN 0, Inf 0" in out
    assert main(["export", str(student), "--output", str(tmp_path / "x")]) == 2
    assert "choose an export format: --format NAME" in capsys.readouterr().err
    assert main(["export", str(student), "--onnx", "--output", str(tmp_path / "int8")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    # an option of another format is refused in one line, before anything is written
    assert (
        main(["export", str(student), "--format", "distillt5", "--int8", "dynamic", "--output", str(tmp_path / "d")])
        == 2
    )
    err = capsys.readouterr().err
    assert "--int8 does not apply to --format distillt5" in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()
    assert main(["export", str(student), "--format", "onnx", "--trt", "--output", str(tmp_path / "t")]) == 2
    assert "disagree" in capsys.readouterr().err


def test_errors_on_purpose_are_one_line_and_verbose_shows_the_traceback(tmp_path, capsys):
    args = ["convert", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["-v", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith(err.strip().splitlines()[-1])


def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch):
    from encoder_shrink.recipes import recipe

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(recipe, "load_recipe", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["recipes"])


def test_distill_refuses_bad_pipeline_folders_in_one_line(tiny_pipeline_dirs, tmp_path, capsys):
    import shutil

    index = json.loads((tiny_pipeline_dirs["flux-dev"] / "model_index.json").read_text())
    (tmp_path / "no-class").mkdir()
    (tmp_path / "no-class" / "model_index.json").write_text(json.dumps({k: v for k, v in index.items()
                                                                        if k != "_class_name"}))
    assert main(["distill", "--pipeline", str(tmp_path / "no-class"), "--recipe", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no pipeline class (`_class_name`)" in err

    # a pipeline whose T5 weights are a pickle file is refused before anything is unpickled
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline_dirs["flux-dev"], pickled)
    weights = pickled / "text_encoder_2" / "model.safetensors"
    weights.rename(weights.with_name("pytorch_model.bin"))
    assert main(["distill", "--pipeline", str(pickled), "--recipe", "tiny", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds only pickle weights (pytorch_model.bin)" in err
    assert "unsafe" not in err.lower() and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_eval_on_the_toy_teacher(tmp_path, capsys):
    from encoder_shrink.toy.teacher import load_toy_teacher

    pipe = load_toy_teacher()
    student = ShrunkT5EncoderModel.from_t5(pipe.text_encoder_2.config.__class__(
        **{**pipe.text_encoder_2.config.to_dict(), "d_model": 32, "num_layers": 1}), teacher_dim=128,
        max_sequence_length=16, use_attention_mask=False)
    student.save_pretrained(tmp_path / "random-student")
    capsys.readouterr()
    # A metric that cannot be configured fails in one line before anything is loaded or written.
    for bad, message in ((["--metric", "clip"], "needs a CLIP checkpoint"), (["--clip", "x"], "add --metric clip"),
                         (["--metric", "ocrr"], "Unknown metric 'ocrr'")):
        assert main(["eval", "--pipeline", "toy", "--student", str(tmp_path / "random-student"), *bad,
                     "--output", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
    clip = tiny.save_tiny_clip(tmp_path / "tiny-clip")
    ocr = importlib.util.find_spec("rapidocr_onnxruntime") is not None  # encoder-shrink[eval]
    assert main(["eval", "--pipeline", "toy", "--student", str(tmp_path / "random-student"), "--num-prompts", "8",
                 "--metric", "checker", *(["--metric", "ocr"] if ocr else []), "--metric", "clip", "--clip", str(clip),
                 "--output", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert ("| checker overall | ocr char | ocr word | ocr sentence | clip clip_score |" if ocr
            else "| checker overall | clip clip_score |") in out
    assert "| teacher | 0 | - |" in out and "| random-student |" in out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    # 2 of the 8 held-out prompts (one per kind in turn) are signs: their quoted text is what OCR is asked to read
    if ocr:
        assert results["teacher"]["ocr"]["prompts"] == 2 and results["teacher"]["ocr"]["without_quoted_text"] == 6
    assert 0 < results["students"]["random-student"]["clip"]["clip_score"] <= 100
    assert results["prompts"] == 8 and results["resolution"] == 32 and results["max_sequence_length"] == 16
    student_figures = results["students"]["random-student"]
    # an untrained student: the denoiser is far from the teacher's and the checker sees it
    assert student_figures["denoiser_relative_mse"] > 0.05
    assert student_figures["checker"]["overall"] < results["teacher"]["checker"]["overall"]
    assert (tmp_path / "eval" / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_toy_demo_writes_its_report(tmp_path):
    from encoder_shrink.toy.demo import run_toy_demo

    results = run_toy_demo(tmp_path / "demo", steps=6, eval_prompts=8, bench=False)
    assert set(results["evaluation"]["students"]) == {"student", "naive", "student int8"}
    assert results["parameters"]["smaller"] >= 4
    assert set(results["targets"]) == {
        "student >= 4x smaller than the teacher's T5", "student keeps >= 90% of the teacher's accuracy",
        "student beats the naive baseline", "int8 student within 2 points of the fp32 student"}
    assert results["int8_export"]["precision"] == "int8-dynamic" and "denoiser" in results["int8_export"]
    for name in ("student", "naive"):
        summary = json.loads((tmp_path / "demo" / name / "training_summary.json").read_text())
        recipe = summary["recipe"]
        losses = [stage["loss"] or recipe["loss"] for stage in recipe["stages"]]
        assert summary["steps"] == 6 and losses == (
            ["embedding", "vision"] if name == "student" else ["embedding"] * 2
        )
    assert [s.split(",")[0] for s in results["training"]["student"]] == [
        "align: embedding loss",
        "follow: vision loss",
    ]
    assert [s.split(",")[0] for s in results["training"]["naive"]] == [
        "align: embedding loss",
        "follow: embedding loss",
    ]
    report = (tmp_path / "demo" / "report.md").read_text()
    assert (
        "| teacher |" in report
        and "- student: recipe `toy`, align: embedding loss" in report
        and "| student int8 |" in report
        and "![grid](grid.png)" in report
    )
    assert (tmp_path / "demo" / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
