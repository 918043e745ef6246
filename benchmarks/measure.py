"""Measuring one encoder or pipeline variant inside this process: weights bytes, peak memory, latency.

`encoder-shrink bench` runs every variant through `python -m encoder_shrink.benchmarks.measure SPEC.json`, one process
each, so the memory figures of one variant never include another's.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from encoder_shrink.evaluation import generated_media
from encoder_shrink.files import atomic_write_text

logger = logging.getLogger(__name__)


def _proc_status(key: str) -> int | None:
    """A `VmRSS` / `VmHWM` figure of this process in bytes (Linux), or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemoryProbe:
    r"""
    Peak memory of what runs between `start()` and `peak()`: on CUDA the caching allocator's max allocated bytes (torch
    backends) and the device's used-memory growth (`cudaMemGetInfo`, which also sees ONNX Runtime and TensorRT); on
    CPU the process's peak resident set (Linux `VmHWM`, reset at `start()` through `/proc/self/clear_refs`) minus the
    resident set at `start()`.

    Example:

    ```python
    >>> probe = MemoryProbe("cpu"); probe.start(); x = bytearray(50_000_000)
    >>> probe.peak()["peak_bytes"] > 0  # doctest: +SKIP
    True
    ```
    """

    def __init__(self, device: str):
        self.device = torch.device(device)

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._allocated = torch.cuda.memory_allocated(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            self._used, self._max_used = total - free, total - free
            return
        try:  # "5" resets the peak resident set to the current one (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._rss = _proc_status("VmRSS") or 0

    def sample(self) -> None:
        """Record the device's used memory now (CUDA only; call while the peak is being reached)."""
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            self._max_used = max(self._max_used, total - free)

    def peak(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.sample()
            return {
                "peak_bytes": torch.cuda.max_memory_allocated(self.device) - self._allocated,
                "peak_device_used_bytes": self._max_used - self._used,
                "method": "CUDA max allocated (torch) and cudaMemGetInfo growth (all libraries)",
            }
        hwm = _proc_status("VmHWM")
        return {
            "peak_bytes": (hwm - self._rss) if hwm is not None else None,
            "resident_bytes": (_proc_status("VmRSS") or 0) - self._rss,
            "method": "process peak RSS growth (VmHWM)" + ("" if self._hwm_reset else ", peak not resettable here"),
        }


# The CPU features that decide which encoder backend is fastest: int8 (VNNI, AMX-INT8) and bf16 (AVX-512 BF16,
# AMX-BF16) matrix instructions.
MATRIX_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_info() -> dict:
    """The CPU's model name and its matrix instruction sets (Linux `/proc/cpuinfo`; the platform's name elsewhere)."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "isa": []}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", platform.machine()), "isa": [f for f in MATRIX_ISA if f in flags]}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: str, repeats: int, warmup: int, desc: str) -> dict:
    """Median, min, max and spread (IQR) of `fn`'s wall time after `warmup` calls, synchronised on CUDA."""
    from tqdm.auto import tqdm

    times = []
    for index in tqdm(range(warmup + repeats), desc=desc, unit="run", leave=False):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    quartiles = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "iqr_s": quartiles[2] - quartiles[0], "repeats": repeats, "warmup": warmup, "times_s": times}


def _weights_bytes(module) -> int:
    """Bytes of a torch module's parameters and buffers (tied tensors once), or of an export's files."""
    from encoder_shrink.exporters.runtime import ExportedEncoder

    if isinstance(module, ExportedEncoder):  # the graph / engine / IR / bf16 weight files hold the weights
        suffixes = (".onnx", ".data", ".engine", ".plan", ".bin", ".safetensors")
        return sum(f.stat().st_size for f in module.folder.iterdir() if f.suffix in suffixes)
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def _load_encoder(spec: dict):
    """The encoder a spec names: a synthetic T5 / student, a pipeline's T5 slot, or a student/export folder."""
    dtype, device = getattr(torch, spec["dtype"]), spec["device"]
    source = spec["encoder"]
    if source["kind"] == "synthetic":
        from encoder_shrink.benchmarks.synthetic import synthetic_t5

        return synthetic_t5(source["name"], dtype, device)
    if source["kind"] == "pipeline-slot":
        import transformers

        # The slot's own class, as model_index.json records it (T5EncoderModel for the T5 families).
        encoder_class = getattr(transformers, source["class"])
        return encoder_class.from_pretrained(source["path"], subfolder=source["slot"], dtype=dtype,
                                             use_safetensors=True).to(device).eval()
    from encoder_shrink.exporters import load_encoder

    encoder = load_encoder(source["path"], **({"providers": source["providers"]} if source.get("providers") else {}))
    # ONNX Runtime / TensorRT run where their provider runs; `.to()` sets where and in which dtype outputs come back.
    return encoder.to(device=device, dtype=dtype).eval()


def measure_encoder(spec: dict) -> dict:
    """Load the encoder (inside a memory probe), then time `repeats` encodes of `batch` x `seq_len` tokens."""
    device = spec["device"]
    probe = MemoryProbe(spec["run_device"])
    probe.start()
    started = time.perf_counter()
    encoder = _load_encoder(spec)
    load_s = time.perf_counter() - started
    vocab = encoder.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    # Every position a real token: FLUX and SD3 run T5 over the whole padded length anyway.
    ids = torch.randint(3, vocab, (spec["batch"], spec["seq_len"]), generator=generator)
    ids = ids.to(device)  # where a pipeline would pass them; exported encoders move them to their provider
    # As the pipeline calls it: with an all-ones mask only if the student was distilled with one (FLUX passes none).
    mask = torch.ones_like(ids) if getattr(encoder.config, "use_attention_mask", None) else None

    def encode():
        with torch.inference_mode():
            output = encoder(ids, attention_mask=mask)[0]
        probe.sample()
        return output

    output = encode()
    latency = timed(encode, device, spec["repeats"], spec["warmup"], desc=spec["name"])
    memory = probe.peak()
    by_length = {}
    for length in spec.get("more_seq_lens", []):  # the same encoder at other lengths, after the main figures
        ids = torch.randint(3, vocab, (spec["batch"], length), generator=generator).to(device)
        mask = torch.ones_like(ids) if getattr(encoder.config, "use_attention_mask", None) else None
        by_length[str(length)] = timed(encode, device, spec["repeats"], spec["warmup"],
                                       desc=f"{spec['name']} {length}")
    return {
        "name": spec["name"], "role": spec["role"], "backend": spec["backend"], "device": spec["run_device"],
        "dtype": str(output.dtype).replace("torch.", ""), "seq_len": spec["seq_len"], "batch": spec["batch"],
        "weights_bytes": _weights_bytes(encoder), "load_s": load_s, "memory": memory, "latency": latency,
        "output_width": int(output.shape[-1]), "output_finite": bool(torch.isfinite(output.float()).all()),
        "latency_by_length": by_length,
    }


def _load_pipeline(spec: dict):
    dtype, device = getattr(torch, spec["dtype"]), spec["device"]
    pipe_spec = spec["pipeline"]
    encoder = None if spec["role"] == "original" else _load_encoder(spec)
    if pipe_spec["kind"] == "synthetic":
        from encoder_shrink.benchmarks.synthetic import synthetic_pipeline

        # The original's T5-XXL is built inside; a student replaces it before the teacher is ever built.
        build_device = "cpu" if spec["offload"] else device
        pipe = synthetic_pipeline(pipe_spec["name"], dtype, build_device, text_encoder=encoder)
    else:
        from encoder_shrink.loading import load_pipeline

        extra = {pipe_spec["slot"]: encoder} if encoder is not None else {}
        pipe = load_pipeline(pipe_spec["path"], dtype=dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    if spec["offload"]:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def measure_pipeline(spec: dict) -> dict:
    """Load a pipeline with the original encoder or a student (inside a memory probe), then time generations."""
    device = spec["device"]
    probe = MemoryProbe(device)
    probe.start()
    started = time.perf_counter()
    pipe = _load_pipeline(spec)
    load_s = time.perf_counter() - started
    kwargs = {"prompt": spec["prompt"], "num_inference_steps": spec["pipeline_steps"], "height": spec["resolution"],
              "width": spec["resolution"], "output_type": "np"}
    if "max_sequence_length" in inspect.signature(pipe.__call__).parameters:
        kwargs["max_sequence_length"] = spec["seq_len"]
    images = []

    def generate():
        generator = torch.Generator("cpu").manual_seed(0)
        images.append(generated_media(pipe(generator=generator, **kwargs)))
        probe.sample()

    latency = timed(generate, device, spec["pipeline_repeats"], 1, desc=spec["name"])
    memory = probe.peak()
    return {
        "name": spec["name"],
        "role": spec["role"],
        "backend": spec["backend"],
        "device": device,
        "dtype": spec["dtype"],
        "offload": spec["offload"],
        "resolution": spec["resolution"],
        "pipeline_steps": spec["pipeline_steps"],
        "seq_len": spec["seq_len"],
        "load_s": load_s,
        "memory": memory,
        "latency": latency,
        "images_finite": bool(all(torch.isfinite(torch.as_tensor(i)).all() for i in images)),
    }


def run_isolated(spec: dict, work: str | os.PathLike) -> dict:
    r"""
    Measure one variant in a fresh Python process (`python -m encoder_shrink.benchmarks.measure SPEC.json`), so that
    its memory and thread pools never mix with another's; its progress bars show here, its figures come back as a
    dict (with an `error` key, not an exception, when the process fails: its traceback is printed above).
    """
    import subprocess

    work = Path(work)
    spec_file = work / f"spec-{spec['name']}.json".replace(" ", "_")
    spec = dict(spec, result=str(spec_file.with_name(spec_file.stem + "-result.json")))
    spec_file.write_text(json.dumps(spec, indent=2))
    completed = subprocess.run([sys.executable, "-m", "encoder_shrink.benchmarks.measure", str(spec_file)])
    if completed.returncode != 0 or not Path(spec["result"]).is_file():
        return {"name": spec["name"], "role": spec.get("role"), "backend": spec.get("backend"),
                "error": f"the measuring process exited with {completed.returncode} (its traceback is above)"}
    return json.loads(Path(spec["result"]).read_text())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("memory_fraction") and torch.device(spec["device"]).type == "cuda":
        # The consumer-GPU case: a 24 GB card simulated on a larger one.
        torch.cuda.set_per_process_memory_fraction(spec["memory_fraction"], torch.device(spec["device"]))
    if spec.get("quiet_libraries", True):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    result = measure_pipeline(spec) if spec["kind"] == "pipeline" else measure_encoder(spec)
    result["threads"], result["pid"] = torch.get_num_threads(), os.getpid()
    atomic_write_text(spec["result"], json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
