"""The `onnx` export format: a student as one ONNX graph (fp32, fp16 or int8), checked against the torch model, and
the ONNX Runtime encoder that runs it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from encoder_shrink.exporters.formats import EXPORT_KEY, REPORT, Backend, export, register_export_format
from encoder_shrink.exporters.parity import ExportParityError, ParityCheck, raise_unless_passed, token_batches

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.files import atomic_write_text

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
# opset 18: the dynamo exporter's default, accepted by onnxruntime >= 1.14 and TensorRT >= 8.6.
OPSET = 18
# The protobuf limit: larger graphs keep their weights in an external data file.
PROTOBUF_LIMIT = 2 * 1024**3
# Longest input the dynamic sequence axis accepts (T5's relative buckets extrapolate; FLUX-dev uses 512).
MAX_TOKENS = 2048
# Layers kept out of int8 unless measured harmless (FIELD-NOTES: naive int8 of T5 broke it): the feed-forward output
# `wo`, the token embeddings and the self-attention projections q/k/v/o (T5 does not scale its attention logits by
# 1/sqrt(d), so int8 noise on q and k goes straight into the softmax). The relative attention bias and the norms are
# never quantized (only Linear MatMuls and, when selected, the token-embedding Gather are).
SENSITIVE_GROUPS = ("wo", "embed_tokens", "attention")
# "Harmless" for a sensitive group left at "auto" (`quantize_wo`, `quantize_embeddings`, `quantize_attention`): with
# the group in int8 the student's output
# still keeps 99 % of its direction on every token (the denoiser reads embeddings through attention and linear
# projections, so direction is what it sees) and its relative L2 error stays within 10 %.
HARMLESS = {"min_cosine": 0.99, "max_relative_l2": 0.1}
DEFAULT_PROMPTS = (
    "two red circles left of a blue square",
    "a cat holding a sign that says 'hello world'",
    "A photorealistic portrait of an astronaut riding a horse on the moon, dramatic lighting",
    "",
)


class OnnxEncoder:
    r"""
    The `onnx` format's runtime: an exported student run by ONNX Runtime, usable wherever the torch student is
    (`load_encoder` returns it combined with [`ExportedEncoder`] for the student's kind). The session runs where its
    execution provider runs (CPU, or CUDA with IO binding), so a CPU-resident encoder can feed a denoiser on a GPU.

    Example:

    ```python
    >>> encoder = load_encoder("out/student-onnx-int8")  # doctest: +SKIP
    >>> isinstance(encoder, OnnxEncoder)  # doctest: +SKIP
    True
    >>> pipe = FluxPipeline.from_pretrained(repo, text_encoder_2=encoder)  # doctest: +SKIP
    ```
    """

    format = "onnx"

    def __init__(self, config, session=None, folder: str | os.PathLike | None = None):
        super().__init__(config, folder=folder)
        self.session = session

    @classmethod
    def from_file(cls, graph: str | os.PathLike, config, providers: list[str] | None = None,
                  folder: str | os.PathLike | None = None):
        """An encoder running the ONNX graph `graph` (an export's `model.onnx`) for a student with `config`."""
        import onnxruntime as ort
        import torch
        from encoder_shrink.exporters.runtime import ExportedEncoder, encoder_class

        from encoder_shrink.student_kinds import kind_of_student

        if not issubclass(cls, ExportedEncoder):
            cls = encoder_class(cls, kind_of_student(config.model_type))
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if (
                "CUDAExecutionProvider" in available and torch.cuda.is_available()) else ["CPUExecutionProvider"]
        return cls(config, session=ort.InferenceSession(str(graph), providers=providers), folder=folder)

    @classmethod
    def _load(cls, folder, config, info, providers: list[str] | None = None, **kwargs):
        """`providers` defaults to CUDA when onnxruntime-gpu and a GPU are present, else CPU."""
        return cls.from_file(folder / info["file"], config, providers=providers, folder=folder)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        if self.session.get_providers()[0] == "CUDAExecutionProvider":
            return self._run_cuda(input_ids, attention_mask)
        feeds = {"input_ids": input_ids.detach().cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def _run_cuda(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run on the CUDA execution provider with IO binding: inputs and output stay on the GPU."""
        import numpy as np
        import torch

        device = torch.device("cuda", torch.cuda.current_device())
        ids = input_ids.to(device=device, dtype=torch.int64).contiguous()
        mask = attention_mask.to(device=device, dtype=torch.int64).contiguous()
        out = torch.empty((ids.shape[0], ids.shape[1], self.config.teacher_dim), device=device, dtype=torch.float32)
        binding = self.session.io_binding()
        for name, tensor in (("input_ids", ids), ("attention_mask", mask)):
            binding.bind_input(name, "cuda", device.index, np.int64, list(tensor.shape), tensor.data_ptr())
        binding.bind_output("last_hidden_state", "cuda", device.index, np.float32, list(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out


def _graph(student):
    """The exported signature as a module: (input_ids, attention_mask) -> last_hidden_state."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student

        def forward(self, input_ids, attention_mask):
            return self.student(input_ids, attention_mask=attention_mask, return_dict=False)[0]

    return Graph()


def _scope(node) -> list[str]:
    """The module path the exporter recorded for a node: ['', 'student', ..., '<op>']."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
    return [s.strip(" '\"") for s in scopes.strip("[]").split(",")]


# What stays fp32 in an fp16 export: T5 overflows fp16 in the feed-forward output `wo` and in the residual stream
# (transformers clamps it in fp16 for that reason), the norms need fp32 statistics, and T5's unscaled attention
# logits (no 1/sqrt(d)) plus position bias lose too much in an fp16 softmax. The Linear layers, where the time
# goes, run in fp16.
FP16_KEPT = ("wo", "norms", "residual stream", "attention scores and softmax")


def _keep_fp32(node) -> bool:
    modules = _scope(node)
    module, operation = (modules[-2], modules[-1]) if len(modules) >= 2 else ("", "")
    if module.endswith(".wo") or "layer_norm" in module:
        return True
    if module.endswith("SelfAttention") and not operation.startswith("linear"):
        return True
    # residual adds sit directly in `...block.N.layer.M` (T5LayerSelfAttention / T5LayerFF)
    return node.op_type == "Add" and module.rsplit(".", 2)[-2:-1] == ["layer"]


def _to_fp16(model):
    """fp16 weights and matmuls, with the nodes `_keep_fp32` selects computed in fp32 behind casts."""
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import convert_float_to_float16

    kept = sorted(node.name for node in model.graph.node if _keep_fp32(node))
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=kept)
    # The converter names each cast after the tensor it converts, so a tensor feeding two kept nodes gets two
    # identical casts (same input, same output name): keep the first, which is the same computation.
    seen, nodes = set(), []
    for node in converted.graph.node:
        signature = (node.op_type, tuple(node.input), tuple(node.output))
        if node.op_type == "Cast" and signature in seen:
            continue
        seen.add(signature)
        nodes.append(node)
    # The converter also sends every kept node's output through fp16 before the next kept node casts it back, which
    # would overflow exactly where fp32 is needed: wire fp32 consumers to the fp32 value and drop the round trip.
    to_fp16 = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT16}
    replace = {n.output[0]: to_fp16[n.input[0]] for n in nodes
               if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT and n.input[0] in to_fp16}
    nodes = [n for n in nodes if not (n.op_type == "Cast" and n.output[0] in replace)]
    for node in nodes:
        for index, name in enumerate(node.input):
            if name in replace:
                node.input[index] = replace[name]
    used = {name for n in nodes for name in n.input} | {o.name for o in converted.graph.output}
    nodes = [n for n in nodes if not (n.op_type == "Cast" and n.output[0] not in used)]
    del converted.graph.node[:]
    converted.graph.node.extend(nodes)
    return converted


def denoiser_error(adapter, student, exported, prompts, length: int, resolution: int, steps: int) -> dict:
    """
    Relative MSE of the denoiser's predictions with the `exported` runtime encoder's vs the torch student's
    embeddings along teacher trajectories (what an export costs the images, not only the embeddings).
    """
    import torch

    from encoder_shrink.fidelity import denoiser_fidelity

    exported.to(adapter.device)
    student = student.to(adapter.device)

    def torch_student_rows(texts):
        rows = adapter.encode_teacher(texts, length)
        input_ids, mask = adapter.tokenize(texts, length)
        with torch.no_grad():
            rows["t5"] = student(input_ids, attention_mask=adapter.encoder_mask(mask))[0]
        return rows

    prompts = [p for p in prompts if p]
    guidance = 3.5 if adapter.guidance else None
    result = denoiser_fidelity(adapter, exported, prompts, max_sequence_length=length, num_inference_steps=steps,
                               resolution=resolution, guidance_scale=guidance, teacher_rows=torch_student_rows)
    return {"relative_mse": result["relative_mse"], "steps": steps, "resolution": resolution,
            "prompts": len(prompts), "guidance_scale": guidance, "family": adapter.name}


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader over token batches, one example per row."""

    def __init__(self, batches):
        self._rows = iter([{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]}
                           for ids, mask in batches for i in range(len(ids))])

    def get_next(self):
        return next(self._rows, None)


def _quantize(source: Path, target: Path, mode: str, nodes: list[str], calibration, external: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    # Embedding lookups are quantized only when selected in `nodes`; relative-position Gathers never are.
    op_types = ["MatMul", "Gemm", "Gather"]
    if mode == "dynamic":
        # 7-bit weights (reduce_range): ONNX Runtime's CPU kernels multiply uint8 activations by int8 weights and add
        # pairs of products in int16 on CPUs without VNNI (AVX2), which saturates with full-range per-channel weights
        # (tiny test student: worst-token cosine 0.959 with 8 bits, 0.9996 with 7).
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=op_types, nodes_to_quantize=nodes, use_external_data_format=external)
        return
    # Symmetric int8 activations and weights in QDQ form, as TensorRT expects; percentile calibration keeps the few
    # very large T5 activations from stretching the scale of everything else.
    quantize_static(str(source), str(target), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=op_types, nodes_to_quantize=nodes, use_external_data_format=external,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})


def _cast_to(node) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _nodes_to_quantize(model, include: dict) -> list[str]:
    """
    Names of the nodes to quantize: MatMuls that implement a student Linear (the exporter records each node's module
    path), minus `wo` and the self-attention projections unless `include["wo"]` / `include["attention"]`, plus the
    token-embedding Gather if `include["embed_tokens"]`.
    """
    nodes = []
    for node in model.graph.node:
        modules = _scope(node)
        module, operation = (modules[-2], modules[-1]) if len(modules) >= 2 else ("", "")
        if node.op_type in ("MatMul", "Gemm") and operation.startswith("linear"):
            group = "wo" if module.endswith(".wo") else "attention" if ".SelfAttention." in module else None
            if group is None or include[group]:
                nodes.append(node.name)
        elif node.op_type == "Gather" and include["embed_tokens"] and module.endswith("embed_tokens"):
            nodes.append(node.name)
    return nodes


@dataclass
class OnnxExportConfig:
    r"""
    Options of the `onnx` export format: the student (T5 + projector) as one ONNX graph (opset 18) taking `input_ids`
    and `attention_mask` (dynamic batch and sequence up to `max_tokens`) and returning `last_hidden_state` at the
    teacher's width.

    Args:
        int8: `None` (no int8), `"dynamic"` (int8 weights, activations quantized at run time: fast on CPUs) or
            `"static"` (a QDQ graph with activation ranges calibrated on `calibration_prompts`: what TensorRT
            consumes).
        fp16: fp16 weights and matmuls (for GPUs / TensorRT), with `wo`, the norms, the residual stream and the
            attention scores kept in fp32 because T5 overflows fp16 there.
        max_tokens: the longest input the graph accepts.
        quantize_wo / quantize_embeddings / quantize_attention: whether int8 also covers the feed-forward output `wo`
            / the token embeddings / the self-attention q, k, v, o, which T5 is sensitive to. `"auto"` (default)
            measures it: the group is quantized only if the graph with it stays within `HARMLESS` of the torch student
            on the parity prompts (the measurements go to the report's `int8.sensitive`); `True` / `False` force it.
        prompts: the parity prompts (tokenized with the pipeline's or given tokenizer; seeded random ids without one).
        optimize: apply ONNX Runtime's transformer graph fusions for T5 (`onnxruntime.transformers.optimizer`,
            model type `t5`) to the fp32 or int8 graph: T5's RMS norms with their residual adds become
            `SkipSimplifiedLayerNormalization`, its GELU `FastGelu`; the fusions applied are listed in the report's
            `fusions`. CPU graphs only (not with fp16).
        calibration_prompts: for `int8="static"` (default: 32 CommonText validation prompts and the empty prompt).
        resolution / denoiser_steps: with a pipeline, the report adds the denoiser-output relative error the export
            causes along teacher trajectories of `denoiser_steps` steps at `resolution` px.

    Example:

    ```python
    >>> OnnxExportConfig(int8="dynamic").precision
    'int8-dynamic'
    ```
    """

    int8: str | None = None
    fp16: bool = False
    max_tokens: int = MAX_TOKENS
    quantize_wo: bool | str = "auto"
    quantize_embeddings: bool | str = "auto"
    quantize_attention: bool | str = "auto"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    calibration_prompts: tuple[str, ...] | None = None
    optimize: bool = False
    resolution: int = 512
    denoiser_steps: int = 4

    def __post_init__(self):
        if self.int8 not in (None, "dynamic", "static"):
            raise InvalidArgumentError(f"int8={self.int8!r} is not supported; use None, 'dynamic' or 'static'.")
        if self.optimize not in (True, False):
            raise InvalidArgumentError(f"optimize={self.optimize!r} must be True or False.")
        if self.optimize and self.fp16:
            raise InvalidArgumentError("optimize=True fuses CPU graphs (fp32, int8); drop it for an fp16 export.")
        if self.int8 and self.fp16:
            raise InvalidArgumentError("choose one of int8 and fp16: int8 weights are for CPUs, fp16 for GPUs.")
        for name in ("quantize_wo", "quantize_embeddings", "quantize_attention"):
            if getattr(self, name) not in (True, False, "auto"):
                raise InvalidArgumentError(
                    f"{name}={getattr(self, name)!r} is not supported; use 'auto' (quantize if measured harmless), "
                    "True or False."
                )
        if self.max_tokens < 2:
            raise InvalidArgumentError(f"max_tokens={self.max_tokens!r} must be at least 2.")

    @property
    def precision(self) -> str:
        return f"int8-{self.int8}" if self.int8 else "fp16" if self.fp16 else "fp32"

    @property
    def sensitive_groups(self) -> dict[str, bool | str]:
        return dict(zip(SENSITIVE_GROUPS, (self.quantize_wo, self.quantize_embeddings, self.quantize_attention),
                        strict=True))


def _export_graph(student, graph_file: Path, max_tokens: int) -> int:
    """Step 1: the fp32 graph of T5 + projector (external data past the protobuf limit); returns the weight bytes."""
    import torch

    example = torch.tensor([[5, 6, 7, 1, 0, 0], [5, 6, 1, 0, 0, 0]])
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", min=2, max=max_tokens)
    previous = student.config._attn_implementation
    # SDPA's transposed output cannot be re-viewed with symbolic shapes in the exporter; eager is the same math.
    student.set_attn_implementation("eager")
    try:
        program = torch.onnx.export(
            _graph(student).eval(), (example, (example != 0).long()), dynamo=True, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
            verbose=False,
        )
    finally:
        student.set_attn_implementation(previous)
    weights_bytes = sum(p.numel() * p.element_size() for p in student.parameters())
    program.save(str(graph_file), external_data=weights_bytes > PROTOBUF_LIMIT)
    return weights_bytes


def _apply_fp16(fp32_file: Path, graph_file: Path, weights_bytes: int) -> dict:
    """Step 2, fp16: fp16 matmuls with the `FP16_KEPT` regions in fp32."""
    import onnx

    converted = _to_fp16(onnx.load(str(fp32_file)))
    onnx.save(converted, str(graph_file), save_as_external_data=weights_bytes / 2 > PROTOBUF_LIMIT)
    return {"kept_fp32": list(FP16_KEPT)}


def _apply_fusions(graph_file: Path, student, external: bool) -> dict:
    """
    Step 3, optimize: ONNX Runtime's offline transformer fusions for T5 on the graph, rewritten in place (inside the
    export's staging folder); returns the fused operators and their counts.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    # opt_level 0: only the offline transformer fusions here; the session applies its own online ones when it loads.
    model = optimizer.optimize_model(
        str(graph_file), model_type="t5", num_heads=student.config.num_heads, hidden_size=student.config.d_model,
        opt_level=0, optimization_options=FusionOptions("t5"), use_gpu=False,
    )
    fused = {name: count for name, count in model.get_fused_operator_statistics().items() if count}
    model.save_model_to_file(str(graph_file), use_external_data_format=external)
    return fused


def _apply_int8(fp32_file: Path, staging: Path, config: OnnxExportConfig, parity: ParityCheck, calibration,
                external: bool) -> dict:
    """
    Step 2, int8: the Linear weights in int8; each sensitive group left at "auto" is tried on top of what was already
    accepted (so each is charged only its own error) and kept only if the graph stays within `HARMLESS`.
    """
    import onnx

    graph = onnx.load(str(fp32_file), load_external_data=False)
    requested = config.sensitive_groups
    chosen = {group: value is True for group, value in requested.items()}

    def build(include: dict, folder: Path) -> list[str]:
        folder.mkdir(exist_ok=True)
        nodes = _nodes_to_quantize(graph, include)
        _quantize(fp32_file, folder / ONNX_FILE, config.int8, nodes, calibration, external)
        return nodes

    nodes = build(chosen, staging)
    sensitive = {}
    automatic = [group for group, value in requested.items() if value == "auto"]
    current = parity.check(staging / ONNX_FILE) if automatic else None
    for group in automatic:
        trial_dir = staging / "trial"
        trial_nodes = build(dict(chosen, **{group: True}), trial_dir)
        trial = parity.check(trial_dir / ONNX_FILE)
        harmless = (trial["passed"] and trial["min_cosine"] >= HARMLESS["min_cosine"]
                    and trial["relative_l2"] <= HARMLESS["max_relative_l2"])
        sensitive[group] = {
            "quantized": harmless, "decided_by": "measurement",
            "min_cosine": {"fp32_group": current["min_cosine"], "int8_group": trial["min_cosine"]},
            "relative_l2": {"fp32_group": current["relative_l2"], "int8_group": trial["relative_l2"]},
            "criterion": dict(HARMLESS),
        }
        if harmless:
            for produced in trial_dir.iterdir():
                os.replace(produced, staging / produced.name)
            chosen[group], nodes, current = True, trial_nodes, trial
        shutil.rmtree(trial_dir)
    for group, value in requested.items():
        if value != "auto":
            sensitive[group] = {"quantized": bool(value), "decided_by": "argument"}
    kept = ["relative_attention_bias", "norms"] + [g for g in SENSITIVE_GROUPS if not sensitive[g]["quantized"]]
    return {"quantized_nodes": len(nodes), "kept_fp32": kept, "sensitive": sensitive}


def _export_onnx(student, staging: Path, config: OnnxExportConfig, context) -> None:
    """The `onnx` format's handler: export, precision, verify, package (into `staging`, renamed by `export`)."""
    length = student.config.max_sequence_length or 128
    if length > config.max_tokens:
        raise InvalidArgumentError(
            f"the student's max_sequence_length {length} exceeds max_tokens={config.max_tokens}; raise max_tokens."
        )
    adapter, tokenizer = context.resolve(student)
    parity = ParityCheck(student, token_batches(student, tokenizer, config.prompts, length), config.precision)
    graph_file = staging / ONNX_FILE

    # 1. export the fp32 graph
    fp32_file = staging / "fp32.onnx" if config.int8 or config.fp16 else graph_file
    weights_bytes = _export_graph(student, fp32_file, config.max_tokens)
    # 2. precision
    report: dict = {}
    if config.fp16:
        report["fp16"] = _apply_fp16(fp32_file, graph_file, weights_bytes)
    elif config.int8:
        calibration = None
        if config.int8 == "static":
            prompts = config.calibration_prompts
            if prompts is None:
                from encoder_shrink.data import generate_commontext

                # 32 generated CommonText validation prompts plus the empty prompt, which every CFG pipeline encodes
                # as its negative and whose activations lie outside the range of ordinary prompts (without: cos 0.96).
                prompts = generate_commontext(32, split="val") + [""]
            calibration = token_batches(student, tokenizer, prompts, length)
        report["int8"] = _apply_int8(fp32_file, staging, config, parity, calibration,
                                     external=weights_bytes > PROTOBUF_LIMIT)
    for leftover in staging.glob("fp32.onnx*"):
        if fp32_file != graph_file:
            leftover.unlink()
    if config.optimize:
        report["fusions"] = _apply_fusions(graph_file, student, external=weights_bytes > PROTOBUF_LIMIT)
    # 3. verify against the torch student (NaN/Inf included); an export beyond tolerance writes nothing
    checked = parity.check(graph_file)
    raise_unless_passed(checked, config.precision)
    if adapter is not None:
        exported = OnnxEncoder.from_file(graph_file, student.config, providers=["CPUExecutionProvider"])
        report["denoiser"] = denoiser_error(adapter, student, exported, config.prompts, length, config.resolution,
                                             config.denoiser_steps)
    # 4. package: the report and config.json with the export record
    report = {
        "precision": config.precision, "opset": OPSET, "max_tokens": config.max_tokens,
        "checked_sequence_length": length,
        "prompts": "tokenized prompts" if tokenizer is not None else "random token ids (no tokenizer given)",
        "parity": checked,
        "bytes": {"onnx": sum(f.stat().st_size for f in staging.iterdir()), "torch_weights": weights_bytes},
        **report,
    }
    atomic_write_text(staging / REPORT, json.dumps(report, indent=2))
    student_config = student.config.to_dict()
    student_config[EXPORT_KEY] = {"format": "onnx", "file": ONNX_FILE, "precision": config.precision, "opset": OPSET,
                                  "max_tokens": config.max_tokens, "optimized": config.optimize,
                                  "parity_cosine": checked["min_cosine"]}
    atomic_write_text(staging / "config.json", json.dumps(student_config, indent=2))
    logger.info("ONNX export (%s): %s", config.precision, checked)


def _onnx_unavailable() -> str | None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (pip install 'encoder-shrink[onnx]')" if missing else None


def _onnx_config(options, **fields) -> OnnxExportConfig:
    """An ONNX config for a backend: graphs accept at least 64 tokens (or the format's limit without a length)."""
    if options.tokens is not None:
        fields["max_tokens"] = max(options.tokens, 64)
    return OnnxExportConfig(**fields)


register_export_format(
    "onnx", OnnxExportConfig, _export_onnx, runtime=OnnxEncoder, unavailable=_onnx_unavailable,
    description="one ONNX graph (fp32, fp16 or int8) run by ONNX Runtime, parity-checked against the torch student",
    backends=(
        # On a GPU the fp16 graph (fp32 wo/norms) is the one worth running; on a CPU fp32.
        Backend("onnx", lambda options: _onnx_config(options, fp16=options.gpu), on_cpu=False),
        Backend("onnx-int8", lambda options: _onnx_config(options, int8="dynamic")),
        Backend("onnx-fused", lambda options: _onnx_config(options, optimize=True)),
        Backend("onnx-int8-fused", lambda options: _onnx_config(options, int8="dynamic", optimize=True)),
    ),
)


def export_onnx(student, output_dir: str | os.PathLike, int8: str | None = None, fp16: bool = False, tokenizer=None,
                pipeline=None, overwrite: bool = False, **options) -> Path:
    r"""
    Export a student to an ONNX folder that [`load_encoder`] loads drop-in, checked against the torch model:
    `export(student, output_dir, OnnxExportConfig(int8=..., fp16=..., **options))`. Max abs/rel error, relative L2,
    cosine and NaN/Inf counts go to `export_report.json`; an export beyond tolerance raises [`ExportParityError`]
    and writes nothing.

    Example:

    ```python
    >>> from encoder_shrink.exporters import export_onnx
    >>> export_onnx("out/student", "out/student-onnx-int8", int8="dynamic")  # doctest: +SKIP
    ```
    """
    if "prompts" in options:
        options["prompts"] = tuple(options["prompts"])
    config = OnnxExportConfig(int8=int8, fp16=fp16, **options)
    return export(student, output_dir, config, pipeline=pipeline, tokenizer=tokenizer, overwrite=overwrite)


def load_report(folder: str | os.PathLike) -> dict:
    """The export report written beside an exported encoder."""
    return json.loads((Path(folder) / REPORT).read_text())


__all__ = ["ExportParityError", "OnnxEncoder", "OnnxExportConfig", "export_onnx", "load_report"]
