"""Packaging: light import, installed sub-packages, console script, extras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import encoder_shrink

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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
    for dependency in ("torch", "transformers>=5", "diffusers", "accelerate", "safetensors", "huggingface_hub"):
        assert dependency in core
    assert "optimum" not in core
    extras = project["optional-dependencies"]
    assert any(d.startswith("onnxruntime>") for d in extras["onnx"]) and any(
        d.startswith("onnx>") for d in extras["onnx"]
    )
    assert any(d.startswith("onnxruntime-gpu") for d in extras["gpu"])
    assert any(d.startswith("tensorrt") for d in extras["tensorrt"])
    assert not any("gpu" in d or "tensorrt" in d for d in extras["dev"])


def test_console_script_help_prints_nothing_else():
    out = subprocess.run(["encoder-shrink", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "demo" in out.stdout and "convert" in out.stdout
    assert out.stderr == ""  # e.g. no "Multiple distributions found for package optimum"


@pytest.mark.slow
def test_nothing_is_installed_into_another_distributions_namespace():
    """Files of ours under `optimum/` made diffusers take encoder-shrink for optimum-quanto 0.1.0."""
    from importlib.metadata import distribution

    dist = distribution("encoder-shrink")
    top_level = set((dist.read_text("top_level.txt") or "").split())
    files = {f.parts[0] for f in dist.files or [] if len(f.parts) > 1}
    assert top_level <= {"encoder_shrink"} and "optimum" not in files
    code = ("import encoder_shrink\nfrom diffusers.utils import import_utils as u\nu._is_package_available('torch')\n"
            "print(sorted(u._package_map.get('optimum', [])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "encoder-shrink" not in out.stdout


def test_every_subpackage_is_declared_for_installation():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    package = ROOT / "encoder_shrink"
    found = {".".join(("encoder_shrink", *p.parent.relative_to(package).parts)) for p in package.rglob("__init__.py")}
    assert found and found <= declared, sorted(found - declared)
