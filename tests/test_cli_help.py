"""The CLI's help texts name exactly what the registries hold, and showing them imports no heavy library."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from encoder_shrink.cli import build_parser


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100000")  # one line per option: no name is split across a line break
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def _registries():
    from encoder_shrink.benchmarks.bench import bench_backends
    from encoder_shrink.benchmarks.synthetic import synthetic_names
    from encoder_shrink.exporters import registered_formats
    from encoder_shrink.recipes import available_recipes

    from encoder_shrink.data import registered_prompt_sources
    from encoder_shrink.distill import registered_losses
    from encoder_shrink.evaluation import registered_metrics
    from encoder_shrink.pipelines import registered_families
    from encoder_shrink.tiue import available_tiue_recipes

    return [
        (["demo"], "families", registered_families()),
        (["distill"], "families", registered_families()),
        (["distill"], "recipes", list(available_recipes())),
        (["distill"], "sources", registered_prompt_sources()),
        (["distill"], "losses", registered_losses()),
        (["tiue", "distill"], "TiUE recipes", list(available_tiue_recipes())),
        (["tiue", "distill"], "sources", registered_prompt_sources()),
        (["export"], "formats", registered_formats()),
        (["eval"], "metrics", registered_metrics()),
        (["bench"], "backends", bench_backends()),
        (["bench"], "synthetic models", synthetic_names()),
    ]


@pytest.mark.parametrize("index", range(11))
def test_help_names_every_member_of_its_registry(index, capsys, monkeypatch):
    argv, what, names = _registries()[index]
    text = _help(argv, capsys, monkeypatch)
    missing = [name for name in names if name not in text]
    assert names and not missing, f"`{' '.join(argv)} --help` does not name the {what} {missing}"


def test_a_name_added_to_a_registry_appears_in_the_help(capsys, monkeypatch):
    from encoder_shrink.data import register_prompt_source
    from encoder_shrink.data.sources import PROMPT_SOURCES

    register_prompt_source("my-captions", lambda source, where, seed: [])
    try:
        assert "my-captions" in _help(["distill"], capsys, monkeypatch)
    finally:
        PROMPT_SOURCES._items.pop("my-captions")


def test_choices_come_from_the_registry(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--pipeline", "p", "--loss", "no-such-loss"])
    assert "invalid choice: 'no-such-loss'" in capsys.readouterr().err
    assert parser.parse_args(["distill", "--pipeline", "p", "--loss", "embedding"]).loss == "embedding"


def test_top_level_help_imports_neither_torch_nor_diffusers():
    code = ("import sys; from encoder_shrink.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert done.stderr == ""



@pytest.mark.parametrize(("words", "shown", "heavy"), [
    (("export",), "torch-bf16", ("torch", "transformers", "diffusers", "onnx", "onnxruntime")),
    (("bench",), "openvino-fp32", ("transformers", "diffusers", "onnxruntime")),
])
def test_help_listing_the_export_registry_imports_no_heavy_library(words, shown, heavy):
    # The format registry (formats, their backends and descriptions) is read without transformers (nor torch for
    # `export`): the format files import them inside the functions that run an export or an encoder.
    code = (
        "import sys\n"
        "from encoder_shrink.cli import build_parser\n"
        f"try:\n    build_parser().parse_args({[*words, '--help']!r})\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "100000"})
    assert shown in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]", f"`{' '.join(words)} --help` imports {done.stderr}"


def test_a_plain_command_prints_no_library_warning(tiny_pipeline_dirs):
    """A command that loads a pipeline (whose image processors transformers falls back on without torchvision)
    prints its result on stdout and nothing on stderr."""
    done = subprocess.run([sys.executable, "-m", "encoder_shrink.cli", "inspect", "--pipeline",
                           str(tiny_pipeline_dirs["flux-dev"])], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"family": "flux-dev"' in done.stdout
    assert done.stderr == ""
