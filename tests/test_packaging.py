"""Packaging: light import, installed sub-packages, console script, extras."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import encoder_shrink

ROOT = Path(__file__).resolve().parents[1]


def test_import_stays_light():
    code = (
        "import sys, encoder_shrink\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'tensorrt') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_top_level_folders_install_under_encoder_shrink(tmp_path):
    import encoder_shrink.benchmarks
    import encoder_shrink.exporters
    import encoder_shrink.recipes

    for name, folder in [("exporters", "exporters"), ("recipes", "recipes"), ("benchmarks", "benchmarks")]:
        module = getattr(encoder_shrink, name)
        assert Path(module.__file__).resolve().parent == (ROOT / folder).resolve()
    # nothing generic is installed at the top level (run outside the checkout, where `exporters/` is a folder)
    for generic in ("exporters", "recipes", "benchmarks"):
        run = subprocess.run([sys.executable, "-c", f"import {generic}"], capture_output=True, cwd=tmp_path)
        assert run.returncode != 0, generic


def test_public_names():
    for name in ("ShrunkT5EncoderModel", "ShrunkT5Config", "check_compatible", "swap_text_encoder", "adapter_for"):
        assert hasattr(encoder_shrink, name)


def test_pyproject_declares_extras_and_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["encoder-shrink"] == "encoder_shrink.cli:main"
    core = " ".join(project["dependencies"])
    for dependency in ("torch", "transformers>=5", "diffusers", "accelerate", "safetensors", "huggingface_hub", "optimum"):
        assert dependency in core
    extras = project["optional-dependencies"]
    assert any(d.startswith("onnxruntime>") for d in extras["onnx"]) and any(d.startswith("onnx>") for d in extras["onnx"])
    assert any(d.startswith("onnxruntime-gpu") for d in extras["gpu"])
    assert any(d.startswith("tensorrt") for d in extras["tensorrt"])
    assert not any("gpu" in d or "tensorrt" in d for d in extras["dev"])


def test_console_script_help():
    out = subprocess.run(["encoder-shrink", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "demo" in out.stdout and "convert" in out.stdout
