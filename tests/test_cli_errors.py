"""Bad input through the command line, as a user types it: one line, exit 2, nothing written, the CLI's own flags.

The walk covers every registered subcommand: a new one joins it by registering (`cli._register`) the options that
name what it reads and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from diffusers import DiffusionPipeline

from encoder_shrink import adapter_for, cli, tiny
from encoder_shrink.cli import main
from encoder_shrink.run_folder import LOCK, RUN_RECORD

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def _tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` (a read-only or a nearly full file system, for real EROFS / ENOSPC errors)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def read_only(tmp_path):
    with _tmpfs(tmp_path / "read-only", "size=1m,ro") as path:
        yield path


def _leaves(parser: argparse.ArgumentParser, prefix=()):
    """Every subcommand that runs something: (words, its parser)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, child in subparsers[0].choices.items():
        yield from _leaves(child, (*prefix, name))


LEAVES = dict(_leaves(cli.build_parser()))


def _argv(words, parser, inputs: Path, output: Path) -> list[str]:
    """The subcommand with every input it reads at `inputs` (missing) and its output at `output`."""
    defaults = parser._defaults
    argv = list(words)
    for action in parser._actions:
        if not action.option_strings and action.dest not in defaults["input_options"]:
            continue
        if action.dest in defaults["input_options"]:
            value = str(inputs / action.dest)
        elif action.dest == defaults["output_option"]:
            value = str(output)
        elif action.required:
            value = "1" if action.type in (int, float) else "a"
        else:
            continue
        argv += [value] if not action.option_strings else [action.option_strings[-1], value]
    return argv


def _one_line_error(capsys, code) -> str:
    """The error line of a refused command: exit 2, no traceback, one line (after any progress bar it had drawn)."""
    err = capsys.readouterr().err
    lines = err.splitlines()  # a progress bar's redraws end in \r: they are lines of their own here
    assert code == 2 and "Traceback" not in err and lines and ": error: " in lines[-1], err
    assert sum(": error: " in line for line in lines) == 1 and not any("Error" in line for line in lines[:-1]), err
    return lines[-1]


def test_every_subcommand_is_registered_with_what_it_reads_and_writes():
    for words, parser in LEAVES.items():
        defaults = parser._defaults
        assert {"func", "input_options", "output_option"} <= defaults.keys(), f"{' '.join(words)} is not registered"
        dests = {a.dest for a in parser._actions}
        assert set(defaults["input_options"]) <= dests and defaults["output_option"] in dests | {None}
    assert {" ".join(w) for w in LEAVES} >= {"distill", "cache", "export", "eval", "bench", "convert", "demo",
                                              "tiue distill", "tiue generate", "tiue export", "recipes"}


@pytest.mark.parametrize("words", [w for w, p in LEAVES.items() if p._defaults.get("input_options")],
                         ids=" ".join)
def test_walk_missing_input(words, tmp_path, capsys):
    output = tmp_path / "out"
    err = _one_line_error(capsys, main(_argv(words, LEAVES[words], tmp_path / "missing", output)))
    assert "missing" in err and "does not exist" in err
    assert sorted(tmp_path.iterdir()) == [], "something was written"


@pytest.mark.parametrize("words", [w for w, p in LEAVES.items() if p._defaults.get("output_option")],
                         ids=" ".join)
def test_walk_read_only_output(words, tmp_path, read_only, capsys):
    err = _one_line_error(capsys, main(_argv(words, LEAVES[words], tmp_path / "missing", read_only / "out")))
    assert str(read_only / "out") in err and "cannot be written" in err
    assert list(read_only.iterdir()) == []


def test_eval_uses_the_familys_default_guidance_and_checks_the_resolution_first(tiny_pipeline_dirs, tmp_path,
                                                                                 capsys):
    student = tmp_path / "student"
    for family in ("flux-dev", "sd3"):
        adapter = adapter_for(DiffusionPipeline.from_pretrained(tiny_pipeline_dirs[family]))
        tiny.tiny_student(teacher_dim=adapter.conditioning_width, pipeline_family=family,
                             student_class=adapter.student_class(),
                             **adapter.student_fields()).save_pretrained(student / family)
        out = tmp_path / f"eval-{family}"
        assert main(["eval", "--pipeline", str(tiny_pipeline_dirs[family]), "--student", str(student / family),
                     "--num-prompts", "2", "--num-inference-steps", "2", "--resolution", "32", "--output",
                     str(out)]) == 0, capsys.readouterr().err
        assert json.loads((out / "results.json").read_text())["students"][family]["images_finite"]
    capsys.readouterr()
    # SD3's position table covers a few latent patches here: a larger size is refused in one line, naming the flag,
    # before anything is loaded
    config = json.loads((tiny_pipeline_dirs["sd3"] / "transformer" / "config.json").read_text())
    scale = 2 ** (len(json.loads((tiny_pipeline_dirs["sd3"] / "vae" / "config.json").read_text())[
        "block_out_channels"]) - 1)
    too_big = (config["pos_embed_max_size"] + 1) * config["patch_size"] * scale
    eval_sd3 = ["eval", "--student", str(student / "sd3"), "--num-prompts", "2", "--num-inference-steps", "2"]
    err = _one_line_error(capsys, main([*eval_sd3, "--pipeline", str(tiny_pipeline_dirs["sd3"]), "--resolution",
                                        str(too_big), "--output", str(tmp_path / "big")]))
    assert f"--resolution {too_big} is above" in err and "pos_embed_max_size" in err
    # SD3-medium's real factors (VAE 8 x patch 2): 1000 px is not a multiple of 16. Only the configs are read.
    real = tmp_path / "sd3-factors"
    shutil.copytree(tiny_pipeline_dirs["sd3"], real)
    vae = json.loads((real / "vae" / "config.json").read_text())
    vae["block_out_channels"] = [8, 8, 8, 8]
    (real / "vae" / "config.json").write_text(json.dumps(vae))
    config.update(patch_size=2, pos_embed_max_size=192)
    (real / "transformer" / "config.json").write_text(json.dumps(config))
    err = _one_line_error(capsys, main([*eval_sd3, "--pipeline", str(real), "--resolution", "1000", "--output",
                                        str(tmp_path / "b")]))
    assert "--resolution 1000 is not a multiple of 16" in err
    assert not (tmp_path / "big").exists() and not (tmp_path / "b").exists()


def _pickle_only(folder: Path, component: str, beside: str | None = None) -> None:
    """Replace `component`'s safetensors weights with a pickle file (and an unrelated safetensors file beside)."""
    for weights in (folder / component).glob("*.safetensors"):
        weights.unlink()
    (folder / component / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    if beside:
        (folder / component / beside).write_bytes(b"x")


def test_tiue_commands_read_pipelines_through_the_safetensors_only_loader(tiue_dir, tmp_path, capsys,
                                                                        monkeypatch):
    bad = tmp_path / "pickled"
    shutil.copytree(tiue_dir, bad)
    _pickle_only(bad, "unet", beside="notes.safetensors")
    for argv in (["tiue", "generate", "--pipeline", str(bad), "--prompt", "a cat", "--output", str(tmp_path / "i")],
                 ["tiue", "export", str(bad), "--output", str(tmp_path / "o")]):
        err = _one_line_error(capsys, main(argv))
        assert "holds only pickle weights (diffusion_pytorch_model.bin)" in err
    monkeypatch.chdir(tmp_path)  # a missing relative name (it looks like a hub id; there is no network here)
    for argv in (["tiue", "generate", "--pipeline", "my-tiue", "--prompt", "a cat", "--output", "i"],
                 ["tiue", "export", "my-tiue", "--output", "o"]):
        err = _one_line_error(capsys, main(argv))
        assert "could not load pipeline my-tiue" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pickled"]


def test_every_command_that_reads_a_pipeline_refuses_pickle_weights(tiny_pipeline_dirs, tiue_dir, tmp_path,
                                                                    capsys):
    flux, tiue = tmp_path / "flux", tmp_path / "tiue"
    shutil.copytree(tiny_pipeline_dirs["flux-dev"], flux)
    shutil.copytree(tiue_dir, tiue)
    _pickle_only(flux, "transformer", beside="adapter.safetensors")
    _pickle_only(tiue, "unet")
    out = tmp_path / "out"
    commands = {
        "distill": ["distill", "--pipeline", str(flux), "--recipe", "tiny", "--output", str(out)],
        "cache": ["cache", "--pipeline", str(flux), "--prompts", str(tmp_path / "p.txt"), "--cache-dir", str(out)],
        "eval": ["eval", "--pipeline", str(flux), "--student", str(tmp_path), "--num-prompts", "1", "--output",
                 str(out)],
        "bench": ["bench", "--pipeline", str(flux), "--student", str(tmp_path), "--output", str(out)],
        "demo": ["demo", "--teacher", str(flux), "--output", str(out)],
        "tiue distill": ["tiue", "distill", "--pipeline", str(tiue), "--recipe", "tiny-tiue", "--output", str(out)],
        "tiue generate": ["tiue", "generate", "--pipeline", str(tiue), "--prompt", "a", "--output", str(out)],
        "tiue export": ["tiue", "export", str(tiue), "--output", str(out)],
    }
    (tmp_path / "p.txt").write_text("a red circle\n")
    for name, argv in commands.items():
        err = _one_line_error(capsys, main(argv))
        assert "holds only pickle weights" in err, f"{name}: {err}"
        assert not out.exists(), f"{name} wrote {out}"


@pytest.mark.slow
def test_cache_validates_its_arguments_before_writing(tiny_pipeline_dirs, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    cache = tmp_path / "cache"

    def run(pipeline, *extra):
        return main(["cache", "--pipeline", str(pipeline), "--prompts", str(prompts), "--cache-dir", str(cache),
                     *extra])

    err = _one_line_error(capsys, run(tiny_pipeline_dirs["flux-dev"], "--batch-size", "0"))
    assert "--batch-size 0 encodes nothing" in err
    err = _one_line_error(capsys, run(prompts))  # a file, not a pipeline folder
    assert "has no model_index.json" in err
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline_dirs["flux-dev"], bad)
    _pickle_only(bad, "transformer", beside="lora.safetensors")
    err = _one_line_error(capsys, run(bad))
    assert "holds only pickle weights" in err
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, run("tiny-flux"))
    assert "could not load pipeline tiny-flux" in err
    assert not cache.exists()


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tiny_pipeline_dirs, tmp_path, capsys):
    from encoder_shrink import ShrunkT5EncoderModel

    student = tmp_path / "student"
    ShrunkT5EncoderModel.from_t5(tiny.tiny_t5_encoder(d_model=64, num_layers=4), teacher_dim=64,
                                 max_sequence_length=32).save_pretrained(student)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle number {i}" for i in range(64)) + "\n")
    capsys.readouterr()
    # 256 KiB: the run's record fits, a checkpoint (student + Adam state) does not; the cache's first shard neither
    with _tmpfs(tmp_path / "full", "size=256k") as disk:
        runs = {
            "export": ["export", str(student), "--format", "distillt5", "--output", str(disk / "export")],
            "distill": ["distill", "--pipeline", str(tiny_pipeline_dirs["flux-dev"]), "--recipe", "tiny",
                        "--max-steps", "2", "--checkpoint-every", "1", "--max-sequence-length", "32",
                        "--output", str(disk / "run")],
            "cache": ["cache", "--pipeline", str(tiny_pipeline_dirs["flux-dev"]), "--prompts", str(prompts),
                      "--batch-size", "64", "--cache-dir", str(disk / "cache")],
        }
        (disk / "ballast").write_bytes(b"\0" * 200 * 1024)
        for name, argv in runs.items():
            err = _one_line_error(capsys, main(argv))
            assert "the disk is full" in err, f"{name}: {err}"
            left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.name != "ballast")
            assert left == [], f"{name} left {left}"


def _distill_args(pipeline: Path, output: Path, *extra: str) -> list[str]:
    return ["distill", "--pipeline", str(pipeline), "--recipe", "tiny", "--max-steps", "2", "--max-sequence-length",
            "32", "--output", str(output), *extra]


def test_an_output_folder_holding_a_run_is_refused_without_resume_or_overwrite(tiny_pipeline_dirs, tmp_path,
                                                                              capsys):
    out = tmp_path / "run"
    pipeline = tiny_pipeline_dirs["flux-dev"]
    assert main(_distill_args(pipeline, out)) == 0
    first = (out / "student" / "model.safetensors").read_bytes()
    capsys.readouterr()
    err = _one_line_error(capsys, main(_distill_args(pipeline, out, "--learning-rate", "1e-3")))
    assert "holds an earlier run" in err and "--resume" in err and "--overwrite" in err
    assert "resume=True" not in err and "overwrite=True" not in err and "output_dir" not in err  # the CLI's words
    assert (out / "student" / "model.safetensors").read_bytes() == first  # untouched
    err = _one_line_error(capsys, main(_distill_args(pipeline, out, "--learning-rate", "1e-3", "--resume")))
    assert "recipe.learning_rate" in err  # the first field that differs from the recorded run
    assert main(_distill_args(pipeline, out, "--learning-rate", "1e-3", "--overwrite")) == 0
    assert json.loads((out / RUN_RECORD).read_text())["recipe"]["learning_rate"] == 1e-3
    assert (out / "student" / "model.safetensors").read_bytes() != first
    assert not (out / LOCK).exists()  # released when the run ended


def test_a_live_runs_lock_refuses_a_second_run_and_a_dead_ones_is_taken_over(tiny_pipeline_dirs, tmp_path, capsys,
                                                                            caplog):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        err = _one_line_error(capsys, main(_distill_args(tiny_pipeline_dirs["flux-dev"], out)))
        assert f"in use by a run of process {sleeper.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
    # the same lock once its process is gone: taken over, with one line saying so
    with caplog.at_level("WARNING", logger="encoder_shrink.run_folder"):
        assert main(_distill_args(tiny_pipeline_dirs["flux-dev"], out)) == 0
    assert [r.message for r in caplog.records if "Took over the lock" in r.message]
    assert (out / "student" / "model.safetensors").is_file() and not (out / LOCK).exists()


@pytest.mark.slow
def test_two_runs_started_at_once_on_one_output_one_is_refused(tiny_pipeline_dirs, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "encoder_shrink.cli", *_distill_args(tiny_pipeline_dirs["flux-dev"], out)]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2).splitlines()
    assert "Traceback" not in refused and sum(": error: " in line for line in refused) == 1
    assert "in use by a run of process" in refused[-1] or "holds an earlier run" in refused[-1]
