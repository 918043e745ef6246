"""The TiUE UNet as one ONNX graph: parity with torch (NaN/Inf included), run by ONNX Runtime inside TiUEPipeline."""

from __future__ import annotations

import json

import pytest
import torch
from encoder_shrink.exporters.parity import ExportParityError
from encoder_shrink.exporters.tiue_onnx import OnnxTiUEUNet, export_tiue_onnx

from encoder_shrink.cli import main
from encoder_shrink.errors import InvalidArgumentError, OutputExistsError
from encoder_shrink.tiue import TiUEPipeline

pytest.importorskip("onnxruntime")


def _pipe(folder):
    pipe = TiUEPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
def test_export_matches_torch_and_runs_inside_the_pipeline(tiue_dir, tmp_path, capsys):
    assert main(["tiue", "export", str(tiue_dir), "--output", str(tmp_path / "onnx"), "--batch-size", "2"]) == 0
    assert "parity with torch" in capsys.readouterr().out
    report = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["nan"] == report["parity"]["inf"] == 0
    assert report["timesteps"] == [751, 501, 251, 1] and report["batch_size"] == 2
    pipe = _pipe(tiue_dir)
    onnx = TiUEPipeline(**{**pipe.components, "unet": OnnxTiUEUNet.from_pretrained(tmp_path / "onnx")},
                        timesteps=list(pipe.timesteps))
    onnx.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a cat", "a sign that says hi"]  # 3 images: two graph calls, the last one padded
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch_latents = pipe(prompts, generator=generator(), output_type="latent").images
    onnx_latents = onnx(prompts, generator=generator(), output_type="latent").images
    torch.testing.assert_close(onnx_latents, torch_latents, atol=1e-4, rtol=1e-4)
    assert onnx("a cat", generator=generator(), output_type="np").images.shape == (1, 16, 16, 3)
    assert main(["tiue", "generate", "--pipeline", str(tiue_dir), "--onnx", str(tmp_path / "onnx"),
                 "--prompt", "a cat", "--output", str(tmp_path / "images")]) == 0
    assert (tmp_path / "images" / "000.png").is_file()

    # a graph made for another schedule is refused, not run
    other = TiUEPipeline(**{**pipe.components, "unet": OnnxTiUEUNet.from_pretrained(tmp_path / "onnx")},
                         timesteps=[667, 334, 1])
    with pytest.raises(InvalidArgumentError, match="made for timesteps"):
        other("a cat", output_type="latent")
    with pytest.raises(OutputExistsError):
        export_tiue_onnx(pipe, tmp_path / "onnx")


@pytest.mark.slow
def test_an_export_with_nan_outputs_writes_nothing(tiue_dir, tmp_path):
    pipe = _pipe(tiue_dir)
    with torch.no_grad():
        pipe.unet.conv_out.bias[0] = float("nan")
    with pytest.raises(ExportParityError, match="NaN [1-9]"):
        export_tiue_onnx(pipe, tmp_path / "broken")
    assert not (tmp_path / "broken").exists() and not list(tmp_path.iterdir())
