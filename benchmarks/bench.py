"""`encoder-shrink bench`: weights, peak memory and latency of the original T5 encoder against a student's backends.

Every variant is measured in its own process (`encoder_shrink.benchmarks.measure`), side by side in one run, and the
ratios against the original come from that run. Writes results.json, results.md and results.png.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from encoder_shrink.benchmarks.synthetic import T5_CONFIGS, synthetic_names

from encoder_shrink.errors import InvalidArgumentError, UnknownNameError
from encoder_shrink.files import atomic_write_text, pyplot, save_figure

logger = logging.getLogger(__name__)

# The torch student itself; every other backend is a registered export format's (`encoder_shrink.exporters.BACKENDS`).
TORCH = "torch"
DTYPES = ("float32", "bfloat16", "float16")
RESULTS = "results.json"


@dataclass
class BenchConfig:
    r"""
    What `encoder-shrink bench` measures.

    Args:
        pipeline: a pipeline id or folder whose T5 slot holds the original encoder, or None with `synthetic`.
        student: a saved student folder, or None with `synthetic` (then a random student with `synthetic_student`'s
            architecture, projecting to the original's width, is built).
        synthetic: a T5 size (`t5-xxl|t5-xl|t5-large|t5-base|t5-small`: the original encoder only) or a registered
            family with a synthetic pipeline (`flux-dev`, `sd3`, `pixart-sigma`, ...: the whole published pipeline,
            its teacher included), with real architectures and random weights (`synthetic_names()` lists them).
        synthetic_student: the size of the synthetic student (default: the family's recipe student, T5-base or
            UMT5-base; T5-base for an encoder alone).
        backends: student backends among `bench_backends()`: `torch` (the student itself) and every backend the
            export formats register (`encoder_shrink.exporters.registered_backends()`): `onnx` (fp32; fp16 on
            CUDA), `onnx-int8` (ONNX Runtime dynamic int8 on the CPU), `onnx-fused`, `onnx-int8-fused` (with ONNX
            Runtime's transformer fusions), `trt` (TensorRT engine; needs tensorrt and a GPU), `torch-bf16`,
            `torch-bf16-compiled`, `openvino` (int8), `openvino-fp32`, and `best-cpu`: the fastest of the CPU
            candidates measured on this machine at `seq_len`.
        device / dtype: where and in which dtype the torch encoders and the pipeline run.
        seq_len / batch: the encode input (every position a real token, as FLUX and SD3 run T5).
        repeats / warmup: timed encodes per variant after `warmup` untimed ones.
        pipeline_steps: >0 adds end-to-end generations (original vs each student backend) at `resolution` px.
        offload: also generate with `enable_model_cpu_offload()` (CUDA only).
        memory_fraction: cap the process's CUDA memory (e.g. 24 GiB / total for the consumer-GPU case).

    Example:

    ```python
    >>> from encoder_shrink.benchmarks import BenchConfig, run_bench
    >>> config = BenchConfig(synthetic="t5-xxl", backends=["torch", "onnx-int8"], dtype="bfloat16")
    >>> run_bench(config, "bench")  # doctest: +SKIP
    ```
    """

    pipeline: str | None = None
    student: str | None = None
    synthetic: str | None = None
    synthetic_student: str | None = None
    backends: list[str] = field(default_factory=lambda: ["torch", "onnx", "onnx-int8"])
    device: str = "cpu"
    dtype: str = "bfloat16"
    seq_len: int = 512
    batch: int = 1
    repeats: int = 5
    warmup: int = 1
    original_repeats: int | None = None
    pipeline_steps: int = 0
    pipeline_repeats: int = 2
    resolution: int = 1024
    offload: bool = False
    memory_fraction: float | None = None
    prompt: str = "a cat holding a sign that says 'hello world'"

    def __post_init__(self):
        if self.pipeline is None and self.synthetic is None:
            raise InvalidArgumentError(
                "nothing to measure: pass pipeline=ID_OR_PATH or synthetic=NAME (e.g. synthetic='t5-xxl')."
            )
        if self.pipeline is not None and self.synthetic is not None:
            raise InvalidArgumentError(
                f"pass one of pipeline={self.pipeline!r} and synthetic={self.synthetic!r}, not both."
            )
        if self.synthetic is not None and self.synthetic not in synthetic_names():
            raise UnknownNameError(
                f"synthetic={self.synthetic!r} is not known; choose one of {', '.join(synthetic_names())}."
            )
        if self.synthetic is not None and self.synthetic not in T5_CONFIGS:
            from encoder_shrink.pipelines import get_adapter

            if get_adapter(self.synthetic).student_kind == "llm":
                raise InvalidArgumentError(
                    f"synthetic={self.synthetic!r} has an LLM teacher, whose student the synthetic bench does not "
                    f"build yet; plan it (encoder-shrink plan --pipeline {self.synthetic}) or bench a distilled "
                    "student with pipeline=PATH."
                )
        if self.synthetic_student is not None and self.synthetic_student not in T5_CONFIGS:
            raise UnknownNameError(
                f"synthetic_student={self.synthetic_student!r} is not known; choose one of {', '.join(T5_CONFIGS)}."
            )
        if self.student is None and self.synthetic is None:
            raise InvalidArgumentError("a real pipeline needs student=PATH (a saved student folder).")
        known = bench_backends()
        unknown = [b for b in self.backends if b not in known]
        if unknown or not self.backends:
            raise InvalidArgumentError(f"backends={self.backends!r}: choose among {', '.join(known)}.")
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(f"dtype={self.dtype!r} is not supported; choose one of {', '.join(DTYPES)}.")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InvalidArgumentError(f"device={self.device!r} is not supported; use 'cpu' or 'cuda'.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidArgumentError(f"device={self.device!r} but torch sees no CUDA GPU; use device='cpu'.")
        if self.offload and not self.device.startswith("cuda"):
            raise InvalidArgumentError(
                "offload=True needs device='cuda' (enable_model_cpu_offload moves models to a GPU)."
            )
        if self.pipeline_steps and self.synthetic in T5_CONFIGS:
            raise InvalidArgumentError(
                f"pipeline_steps needs a pipeline; synthetic={self.synthetic!r} is an encoder only."
            )
        for name in ("seq_len", "batch", "repeats"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name}={getattr(self, name)} must be >= 1.")
        if self.memory_fraction is not None and not 0 < self.memory_fraction <= 1:
            raise InvalidArgumentError(f"memory_fraction={self.memory_fraction} must be in (0, 1].")


def _pipeline_slot(path: str) -> tuple[str, str]:
    """The slot of a saved pipeline that holds its teacher encoder, and that encoder's class (model_index.json)."""
    from huggingface_hub import hf_hub_download

    from encoder_shrink.pipelines import get_adapter, registered_families

    index_file = (
        Path(path) / "model_index.json" if Path(path).is_dir() else Path(hf_hub_download(path, "model_index.json"))
    )
    index = json.loads(index_file.read_text())
    denoiser = (index.get("transformer") or [None, None])[1]
    for family in registered_families():
        adapter = get_adapter(family)
        if adapter.denoiser_class == denoiser and adapter.encoder_slot in index:
            return adapter.encoder_slot, index[adapter.encoder_slot][1]
    raise InvalidArgumentError(
        f"{path} is not a pipeline of a registered family (transformer {denoiser!r}); supported: "
        f"{', '.join(registered_families())}."
    )


def _prepare_student(config: BenchConfig, work: Path, teacher_dim: int) -> Path:
    if config.student is not None:
        return Path(config.student)
    from encoder_shrink.benchmarks.synthetic import synthetic_student

    size = config.synthetic_student
    if size is None:
        from encoder_shrink.pipelines import FAMILIES

        family = FAMILIES.get(config.synthetic) if config.synthetic in FAMILIES else None
        size = family.synthetic.student if family is not None else "t5-base"
    folder = work / f"student-{size}-{teacher_dim}"
    if not (folder / "config.json").is_file():
        synthetic_student(size, teacher_dim, config.seq_len).save_pretrained(folder)
    return folder


def bench_backends() -> list[str]:
    """The backends `bench` measures: the torch student and every registered export backend."""
    from encoder_shrink.exporters import registered_backends

    return [TORCH, *registered_backends()]


def _backend_options(config: BenchConfig, work: Path):
    from encoder_shrink.exporters import BackendOptions

    return BackendOptions(tokens=config.seq_len, batch=config.batch, device=config.device, work=work)


def _backend_export(config: BenchConfig, backend: str, work: Path) -> tuple[str, object]:
    """A student backend's (folder under `work`, export config): the registered backend's config for this run."""
    from encoder_shrink.exporters import get_backend

    entry = get_backend(backend)
    # A backend whose config follows the device (ONNX: fp16 on a GPU) keeps one folder per device type.
    folder = backend if entry.on_cpu else f"{backend}-{config.device.split(':')[0]}"
    return folder, entry.config(_backend_options(config, work))


def _prepare_exports(config: BenchConfig, backends: list[str], student: Path, work: Path) -> dict[str, Path]:
    """The export folder of each backend (re-used when `work` already holds it)."""
    from encoder_shrink.exporters import export

    exports = {}
    for backend in backends:
        if backend == TORCH:
            continue
        folder, export_config = _backend_export(config, backend, work)
        exports[backend] = work / folder
        if not (exports[backend] / "config.json").is_file():
            export(student, exports[backend], export_config, overwrite=True)
    return exports


def _skip_reason(backend: str, config: BenchConfig, work: Path) -> str | None:
    """Why a backend cannot be measured here (its export format's missing package or GPU), or None."""
    from encoder_shrink.exporters import format_of

    if backend == TORCH:
        return None
    entry = format_of(_backend_export(config, backend, work)[1])
    reason = entry.unavailable() if entry.unavailable else None
    if reason is None and entry.name == "tensorrt" and not config.device.startswith("cuda"):
        reason = "TensorRT needs device='cuda'"
    return reason


def run_bench(config: BenchConfig, output_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> dict:
    r"""
    Measure the original encoder and each student backend (and, with `pipeline_steps`, whole generations) as
    [`BenchConfig`] says, each in its own process; write results.json, results.md and results.png to `output_dir`.

    Example:

    ```python
    >>> results = run_bench(BenchConfig(synthetic="t5-xxl"), "bench-out")  # doctest: +SKIP
    >>> results["encoders"]["student onnx-int8"]["smaller_than_original"]  # doctest: +SKIP
    72.4
    ```
    """
    # Imported here: `python -m encoder_shrink.benchmarks.measure` must not find itself imported by the package.
    from encoder_shrink.benchmarks.measure import run_isolated
    from encoder_shrink.exporters import get_backend
    from tqdm.auto import tqdm

    if config.pipeline is not None and Path(config.pipeline).exists():
        from encoder_shrink.loading import check_pipeline_folder

        check_pipeline_folder(config.pipeline)  # safetensors only, refused before anything is written
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir is not None else output_dir / "work"
    work.mkdir(parents=True, exist_ok=True)

    if config.synthetic in T5_CONFIGS:
        original = {"kind": "synthetic", "name": config.synthetic}
        teacher_dim, pipeline = T5_CONFIGS[config.synthetic]["d_model"], None
    elif config.synthetic is not None:
        from encoder_shrink.pipelines import get_adapter

        family = get_adapter(config.synthetic)
        original = {"kind": "synthetic", "name": family.synthetic.teacher}
        teacher_dim = T5_CONFIGS[family.synthetic.teacher]["d_model"]
        pipeline = {"kind": "synthetic", "name": config.synthetic, "slot": family.encoder_slot}
    else:
        from transformers import AutoConfig

        slot, encoder_class = _pipeline_slot(config.pipeline)
        original = {"kind": "pipeline-slot", "path": config.pipeline, "slot": slot, "class": encoder_class}
        teacher_dim = AutoConfig.from_pretrained(config.pipeline, subfolder=slot).d_model
        pipeline = {"kind": "path", "path": config.pipeline, "slot": slot}

    reasons = {b: _skip_reason(b, config, work) for b in config.backends}
    skipped = {f"student {b}": reason for b, reason in reasons.items() if reason}
    backends = [b for b, reason in reasons.items() if not reason]
    student = _prepare_student(config, work, teacher_dim)
    exports = _prepare_exports(config, backends, student, work)
    common = {"device": config.device, "dtype": config.dtype, "seq_len": config.seq_len, "batch": config.batch,
              "warmup": config.warmup, "memory_fraction": config.memory_fraction, "prompt": config.prompt,
              "resolution": config.resolution, "pipeline_steps": config.pipeline_steps,
              "pipeline_repeats": config.pipeline_repeats, "offload": False}
    variants = [{"name": "original", "role": "original", "backend": "torch", "encoder": original,
                 "repeats": config.original_repeats or config.repeats, "run_device": config.device}]
    for backend in backends:
        source = {"kind": "folder", "path": str(exports.get(backend, student))}
        run_device = config.device
        if backend != TORCH and get_backend(backend).on_cpu:
            # CPU kernels (ONNX Runtime int8, torch bf16, OpenVINO): the encoder runs on the CPU, its output goes to
            # the device.
            source["providers"], run_device = ["CPUExecutionProvider"], "cpu"
        variants.append({"name": f"student {backend}", "role": "student", "backend": backend, "encoder": source,
                         "repeats": config.repeats, "run_device": run_device})

    jobs = [dict(common, kind="encoder", **v) for v in variants]
    if pipeline is not None and config.pipeline_steps:
        for offload in (False, True) if config.offload else (False,):
            for v in variants:
                job = dict(common, **v, kind="pipeline", pipeline=pipeline, offload=offload)
                job["name"] = f"{v['name']} pipeline" + (" offload" if offload else "")
                jobs.append(job)

    results = {
        "benchmark": "encoder-shrink bench", "config": asdict(config), "host": platform.node(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if config.device.startswith("cuda") else None,
        "student": str(student), "exports": {k: str(v) for k, v in exports.items()},
        "encoders": {}, "pipelines": {}, "skipped": skipped,
    }
    for job in tqdm(jobs, desc="bench", unit="variant"):
        figures = run_isolated(job, work)
        (results["pipelines"] if job["kind"] == "pipeline" else results["encoders"])[job["name"]] = figures
    _ratios(results)
    atomic_write_text(output_dir / RESULTS, json.dumps(results, indent=2))
    atomic_write_text(output_dir / "results.md", markdown(results) + "\n")
    chart(results, output_dir / "results.png")
    return results


def _ratios(results: dict) -> None:
    """Each student's figures as multiples of the original's, from this run."""
    original = results["encoders"].get("original", {})
    for figures in results["encoders"].values():
        if "error" in figures or "error" in original:
            continue
        figures["smaller_than_original"] = round(original["weights_bytes"] / figures["weights_bytes"], 2)
        peak, peak_original = figures["memory"].get("peak_bytes"), original["memory"].get("peak_bytes")
        figures["peak_memory_vs_original"] = round(peak / peak_original, 4) if peak and peak_original else None
        figures["faster_than_original"] = round(original["latency"]["median_s"] / figures["latency"]["median_s"], 1)
    for figures in results["pipelines"].values():
        base = results["pipelines"].get("original pipeline" + (" offload" if figures.get("offload") else ""))
        if not base or "error" in figures or "error" in base:
            continue
        figures["latency_vs_original"] = round(figures["latency"]["median_s"] / base["latency"]["median_s"], 3)
        figures["peak_memory_vs_original"] = round(figures["memory"]["peak_bytes"] / base["memory"]["peak_bytes"], 3)


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}"


def markdown(results: dict) -> str:
    r"""The results as Markdown tables (encoders, then pipelines), each headed by device, dtype, length and repeats."""
    config = results["config"]
    where = results["gpu"] or f"CPU ({results['cpu']})"
    lines = [f"Encoders on {where}, {config['dtype']} torch, batch {config['batch']} x {config['seq_len']} tokens, "
             f"median of the repeats after {config['warmup']} warm-up; every variant in its own process.", "",
             "| variant | runs on | output dtype | weights MB | x smaller | peak memory MB | encode median s "
             "(min-max) | repeats | x faster |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, f in results["encoders"].items():
        if "error" in f:
            lines.append(f"| {name} | failed: {f['error']} |||||||")
            continue
        lat = f["latency"]
        lines.append(
            f"| {name} | {f['device']} | {f['dtype']} | {_mb(f['weights_bytes'])} | "
            f"{f.get('smaller_than_original', 1):g} | "
            f"{_mb(f['memory'].get('peak_bytes'))} | {lat['median_s']:.4g} ({lat['min_s']:.3g}-{lat['max_s']:.3g}) | "
            f"{lat['repeats']} | {f.get('faster_than_original', 1):g} |"
        )
    for name, reason in results["skipped"].items():
        lines.append(f"| {name} | skipped: {reason} |||||||")
    if results["pipelines"]:
        lines += [
            "",
            f"Generation on {where}, {config['dtype']}, {config['resolution']} px, {config['pipeline_steps']} "
            f"steps, median of {config['pipeline_repeats']} after 1 warm-up.",
            "",
            "| variant | offload | latency s | x original | peak memory MB | x original |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, f in results["pipelines"].items():
            if "error" in f:
                lines.append(f"| {name} | failed: {f['error']} |||||")
                continue
            lines.append(
                f"| {name} | {f['offload']} | {f['latency']['median_s']:.3f} | {f.get('latency_vs_original', 1):g} | "
                f"{_mb(f['memory']['peak_bytes'])} | {f.get('peak_memory_vs_original', 1):g} |"
            )
    method = next((f["memory"]["method"] for f in results["encoders"].values() if "memory" in f), "")
    lines += ["", f"Peak memory: {method}."]
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    """Bar charts (log scale) of weights, peak memory and encode latency per variant."""
    plt = pyplot()

    rows = {n: f for n, f in results["encoders"].items() if "error" not in f}
    names = list(rows)
    panels = [
        ("weights (MB)", [rows[n]["weights_bytes"] / 1e6 for n in names]),
        ("peak memory (MB)", [(rows[n]["memory"].get("peak_bytes") or 0) / 1e6 for n in names]),
        (
            f"encode latency (s), {results['config']['seq_len']} tokens",
            [rows[n]["latency"]["median_s"] for n in names],
        ),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.6 * len(names) + 1.6))
    for index, (axis, (title, values)) in enumerate(zip(axes, panels)):
        axis.barh(names, [max(v, 1e-6) for v in values], color=["#b44" if n == "original" else "#27a" for n in names])
        axis.set_xscale("log")
        axis.set_title(title, fontsize=9)
        if index:
            axis.set_yticks([])
    fig.suptitle(f"{results['gpu'] or 'CPU'} - {results['config']['dtype']}", fontsize=9)
    save_figure(fig, path, dpi=110)


__all__ = ["BenchConfig", "bench_backends", "chart", "markdown", "run_bench"]
