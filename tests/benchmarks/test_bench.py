"""encoder-shrink bench on a tiny saved pipeline: every variant in its own process, consistent ratios, reports."""

from __future__ import annotations

import json
import os

import pytest
import torch
from encoder_shrink.benchmarks import BenchConfig, run_bench

from encoder_shrink import tiny
from encoder_shrink.cli import main


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    pipeline = tiny.save_tiny_pipeline("flux-dev", root / "pipe")
    student = root / "student"
    tiny.tiny_student(teacher_dim=tiny.T5_TINY_DIM, max_sequence_length=32).save_pretrained(student)
    config = BenchConfig(pipeline=str(pipeline), student=str(student), backends=["torch", "onnx-int8"],
                         dtype="float32", seq_len=32, repeats=3, pipeline_steps=2, pipeline_repeats=2, resolution=32)
    return run_bench(config, root / "out"), root


@pytest.mark.slow
def test_each_variant_is_measured_in_its_own_process(bench):
    results, _ = bench
    assert set(results["encoders"]) == {"original", "student torch", "student onnx-int8"}
    assert set(results["pipelines"]) == {f"{n} pipeline" for n in results["encoders"]}
    figures = list(results["encoders"].values()) + list(results["pipelines"].values())
    assert all("error" not in f for f in figures), [f.get("error") for f in figures]
    pids = [f["pid"] for f in figures]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids


@pytest.mark.slow
def test_encoder_figures_are_real_and_ratios_come_from_the_same_run(bench):
    results, root = bench
    encoders = results["encoders"]
    original, student = encoders["original"], encoders["student torch"]
    # weights: the tiny T5 teacher and the student as saved (fp32), counted from the modules themselves
    teacher = tiny.load_tiny_pipeline("flux-dev", root / "pipe").text_encoder_2
    assert original["weights_bytes"] == sum(p.numel() * 4 for p in teacher.parameters())
    assert encoders["student onnx-int8"]["weights_bytes"] == (root / "out/work/onnx-int8/model.onnx").stat().st_size
    for name, f in encoders.items():
        assert (
            f["seq_len"] == 32 and f["output_finite"] and f["latency"]["repeats"] == (3 if name != "original" else 3)
        )
        assert (
            len(f["latency"]["times_s"]) == 3
            and f["latency"]["min_s"] <= f["latency"]["median_s"] <= f["latency"]["max_s"]
        )
        assert f["smaller_than_original"] == round(original["weights_bytes"] / f["weights_bytes"], 2)
        assert f["faster_than_original"] == round(original["latency"]["median_s"] / f["latency"]["median_s"], 1)
        assert f["memory"]["peak_bytes"] is not None and f["memory"]["peak_bytes"] >= 0
    assert encoders["student onnx-int8"]["device"] == "cpu" and student["output_width"] == original["output_width"]


@pytest.mark.slow
def test_pipeline_generations_and_reports(bench):
    results, root = bench
    for f in results["pipelines"].values():
        assert f["images_finite"] and f["pipeline_steps"] == 2 and f["offload"] is False
        assert f["latency"]["repeats"] == 2 and f["latency_vs_original"] > 0
    out = root / "out"
    assert json.loads((out / "results.json").read_text())["encoders"].keys() == results["encoders"].keys()
    table = (out / "results.md").read_text()
    assert "| student onnx-int8 | cpu |" in table and "32 tokens" in table and "float32" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_bench_reuses_exports_and_reports_skipped_backends(bench, capsys):
    _, root = bench
    code = main(
        [
            "bench",
            "--pipeline",
            str(root / "pipe"),
            "--student",
            str(root / "student"),
            "--backends",
            "onnx-int8,trt,torch-bf16",
            "--dtype",
            "float32",
            "--seq-len",
            "32",
            "--repeats",
            "2",
            "--output",
            str(root / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "| student onnx-int8 | cpu |" in out
    assert "| student torch-bf16 | cpu | float32 |" in out  # a CPU backend: runs in bf16, returns the asked dtype
    bf16 = json.loads((root / "out" / "results.json").read_text())["encoders"]["student torch-bf16"]
    assert bf16["weights_bytes"] == (root / "out/work/torch-bf16/model.safetensors").stat().st_size
    assert "student trt | skipped:" in out  # no tensorrt / GPU here: reported, never measured


@pytest.mark.parametrize("kwargs, message", [
    ({}, "nothing to measure"),
    ({"synthetic": "t5-xxxl"}, "synthetic='t5-xxxl' is not known"),
    ({"synthetic": "t5-xxl", "backends": ["tensorrt"]}, "choose among torch, best-cpu, onnx, onnx-fused"),
    ({"synthetic": "t5-xxl", "offload": True}, "offload=True needs device='cuda'"),
    ({"synthetic": "t5-xxl", "pipeline_steps": 4}, "needs a pipeline"),
    ({"pipeline": "some/pipe"}, "needs student=PATH"),
    ({"synthetic": "t5-xxl", "dtype": "int8"}, "dtype='int8' is not supported"),
])
def test_bad_configs_fail_early_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        BenchConfig(synthetic="t5-xxl", device="cuda")
