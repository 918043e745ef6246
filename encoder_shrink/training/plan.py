"""The planner: one distill step of the real architecture on fake tensors, as memory, FLOPs and GPU-hours per GPU."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.training.sharding import accelerate_config

logger = logging.getLogger(__name__)

GIB = 2**30


@dataclass(frozen=True)
class GPUSpec:
    """A GPU's dense bf16 tensor-core peak (TFLOP/s, no sparsity) and its memory, from the vendor's data sheet."""

    name: str
    bf16_tflops: float
    memory_gib: float


GPUS = {
    "h100": GPUSpec("H100 SXM", 989.0, 80),
    "h200": GPUSpec("H200 SXM", 989.0, 141),
    "a100": GPUSpec("A100 SXM", 312.0, 80),
    "l40s": GPUSpec("L40S", 362.0, 48),
    "rtx4090": GPUSpec("RTX 4090", 165.0, 24),
}
# Model FLOPs utilisation assumed for the step time: large transformer training reaches 35-45 % of bf16 peak
# (torchtitan's FLUX and Llama runs); a frozen denoiser run twice per step with a small student sits at that range.
UTILISATION = 0.4
# FSDP2 keeps the next unit's all-gathered weights while the current unit runs (forward prefetch of one): two of the
# largest unit are unsharded at once.
FSDP_UNSHARDED_UNITS = 2


def parse_memory(value: str | float) -> float:
    r"""
    GiB from `"80GB"`, `"24GiB"`, `"80"` or a number (GB and GiB are both read as GiB, as GPU data sheets mean it).

    Example:

    ```python
    >>> parse_memory("80GB"), parse_memory(24)
    (80.0, 24.0)
    ```
    """
    text = str(value).strip().lower().removesuffix("ib").removesuffix("b").removesuffix("g")
    try:
        gib = float(text)
    except ValueError:
        raise InvalidArgumentError(f"gpu memory {value!r} is not a size; pass e.g. 80GB or 24GiB.") from None
    if not gib > 0:
        raise InvalidArgumentError(f"gpu memory {value!r} must be positive; pass e.g. 80GB.")
    return gib


def _accelerator():
    """
    The method's accelerator for a planned step: one process, no device move (the tensors are fake). No precision or
    device is asked for, so an accelerator this process made before (accelerate allows one state) is not contradicted.
    """
    from accelerate import Accelerator

    return Accelerator(device_placement=False)


def _autocast(recipe, device: str = "cpu"):
    """The recipe's autocast, as a GPU run applies it (bf16 or fp16 activations), on `device` (fake tensors: cpu)."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if recipe.mixed_precision not in dtypes:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtypes[recipe.mixed_precision])


@contextmanager
def _device_peak(device: str, out: dict):
    """`torch.cuda.max_memory_allocated` growth over the block, into `out["growth"]` (nothing off CUDA)."""
    if torch.device(device).type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield
    torch.cuda.synchronize(device)
    out["growth"] = torch.cuda.max_memory_allocated(device) - before


class _PlanRun:
    """The planner's stand-in for `TrainingRun` inside a step: no divergence check (fake values), no checkpoint."""

    def guard(self, value, what: str) -> None:
        return None

    def updating(self):
        return nullcontext()


def _step_tracker():
    r"""
    torch's `MemTracker` (weights, gradients, optimizer state, activations per device, on real or fake tensors), with
    its per-module statistics off: those assume one forward per module per step, and the step-following loss runs the
    frozen denoiser twice, with hooks a frozen parameter cannot take. Gradients are categorised by a hook on each
    trainable parameter instead (`track_grads`).
    """
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class StepMemTracker(MemTracker):
        def _pre_fw_hook(self, module, inputs):
            return None

        def _post_fw_hook(self, module, inputs, outputs):
            return None

        def _pre_bw_hook(self, module, args):
            return None

        def _post_bw_hook(self, module, args):
            return None

        def track_grads(self, parameters) -> None:
            def hook(parameter):
                self._update_and_maybe_create_winfos(parameter.grad, _MemRefType.GRAD)

            for parameter in parameters:
                parameter.register_post_accumulate_grad_hook(hook)

        def totals(self, which: str) -> dict[str, int]:
            snapshot = self.get_tracker_snapshot(which)
            out: dict[str, int] = {}
            for per_device in snapshot.values():
                for kind, nbytes in per_device.items():
                    name = {"_MemRefType.PARAM": "weights", "_MemRefType.BUFFER": "buffers",
                            "_MemRefType.GRAD": "gradients", "_MemRefType.ACT": "activations",
                            "_MemRefType.TEMP": "backward_temporaries", "_MemRefType.OPT": "optimizer_state",
                            "_MemRefType.OTH": "other", "Total": "total"}.get(str(kind), str(kind))
                    out[name] = out.get(name, 0) + int(nbytes)
            return out

    return StepMemTracker()


def _bytes(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _largest_unit(module: torch.nn.Module) -> int:
    """The parameter bytes of the largest block in one of `module`'s `ModuleList`s (FSDP2's unit), or all of it."""
    blocks = [child for m in module.modules() if isinstance(m, torch.nn.ModuleList) for child in m]
    return max((_bytes(b) for b in blocks), default=_bytes(module))


@dataclass
class StepMeasure:
    r"""
    What one distillation step at one batch size costs on one process.

    Args:
        batch: prompts per process in the step.
        gradient_checkpointing: the denoiser recomputed its activations in the backward pass.
        peak: the step's peak memory by category (bytes: weights, gradients, optimizer_state, activations, ...).
        start: memory held when the step began (weights, optimizer state).
        flops: the step's FLOPs (`FlopCounterMode`: the two denoiser passes, the backward, the student).
        teacher_bytes / denoiser_bytes / student_bytes: the weights of each (TiUE: the text encoder, the teacher
            UNet with the VAE, and the trainable student UNet plus the fake score's LoRA).
        largest_unit_bytes: the denoiser's largest block (what FSDP2 all-gathers at once).
        row_bytes_per_text: the teacher-embedding cache's bytes per text (the rows the step reads).
        device_peak_growth: on a GPU (a real step), `torch.cuda.max_memory_allocated` during the step minus what was
            allocated when it began: the figure the tracker's `peak - start` is checked against.
    """

    batch: int
    gradient_checkpointing: bool
    peak: dict[str, int]
    start: dict[str, int]
    flops: int
    teacher_bytes: int
    denoiser_bytes: int
    student_bytes: int
    largest_unit_bytes: int
    row_bytes_per_text: int
    device_peak_growth: int | None = None


@contextmanager
def _fake_modules(modules: list[torch.nn.Module], fake: bool):
    """A FakeTensorMode in which `modules` hold fake tensors of their shapes (or, with `fake=False`, nothing)."""
    if not fake:
        yield None
        return
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    made = [p for m in modules for p in m.parameters() if isinstance(p, FakeTensor)]
    mode = made[0].fake_mode if made else FakeTensorMode(allow_non_fake_inputs=True)  # (a pipeline measured before)
    with mode:
        for module in modules:
            if not any(isinstance(p, FakeTensor) for p in module.parameters()):
                module.to_empty(device="cpu")
    yield mode


def measure_step(pipe, recipe, *, batch: int | None = None, gradient_checkpointing: bool | None = None,
                 fake: bool = True, slot: str | None = None, warmup: bool = True,
                 device: str = "cpu") -> StepMeasure:
    r"""
    Run the distill method's own build and step (`encoder_shrink.distill.loop`) once to allocate the optimizer state,
    then once under torch's memory tracker and once under its FLOP counter, and return what they cost
    (`warmup=False`: the first step itself, as a fresh process runs it). With `fake=True` every module's weights
    become fake tensors first (FakeTensorMode): nothing is allocated or computed, so a FLUX-dev or Wan-14B step is
    measured on a laptop; `pipe` may then hold meta-device modules (`synthetic_pipeline(..., device="meta")`). With
    `fake=False` the same step runs for real (the planner's own check) where `pipe` is: with `device="cuda"` (the
    pipeline's modules there) `torch.cuda.max_memory_allocated` is recorded beside the tracker.

    Example:

    ```python
    >>> pipe = synthetic_pipeline("flux-dev", device="meta")  # doctest: +SKIP
    >>> measure_step(pipe, load_recipe("flux-t5base"), batch=1).peak["total"] / 2**30  # doctest: +SKIP
    ```
    """
    from torch.utils.flop_counter import FlopCounterMode

    if fake and device != "cpu":
        raise InvalidArgumentError(f"a fake step is planned on the CPU; drop device={device!r} or pass fake=False.")
    if getattr(recipe, "method", "distill") == "tiue":
        return _measure_tiue_step(pipe, recipe, batch=batch, gradient_checkpointing=gradient_checkpointing, fake=fake,
                                  warmup=warmup, device=device)
    from encoder_shrink.distill.cache import TeacherEmbeddingCache
    from encoder_shrink.distill.loop import DistillParts, build, step
    from encoder_shrink.distill.losses import get_loss
    from encoder_shrink.shrinker import EncoderShrinker

    overrides = {"batch_size": batch or recipe.batch_size}
    if gradient_checkpointing is not None:
        overrides["gradient_checkpointing"] = gradient_checkpointing
    recipe = recipe.with_overrides(**overrides)
    shrinker = EncoderShrinker(pipe, slot=slot)
    adapter = shrinker.adapter
    student = _plan_student(shrinker, recipe)
    if not fake:
        student.to(device)
    teacher = adapter.teacher
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)] + [student]
    length = recipe.max_sequence_length or adapter.max_sequence_length
    prompts = [f"a photo of {i} red cubes on a blue table" for i in range(recipe.batch_size)]
    texts = adapter.encoder_texts(prompts, recipe.negative_prompt)
    with _fake_modules(modules, fake) as mode:
        input_ids, mask = adapter.tokenize(texts, length)
        # The trajectory's latents and the scheduler stay real (small): the scheduler's bookkeeping reads values.
        trajectory = adapter.start_trajectory(len(prompts), recipe.resolution, recipe.num_inference_steps,
                                              torch.Generator("cpu").manual_seed(recipe.seed),
                                              num_frames=recipe.num_frames, texts=texts)
        # The teacher's rows too: prompt code that reads the mask's values (Wan cuts each row to its length) runs on
        # real masks; the teacher's weights are fake, so its outputs are.
        cache = TeacherEmbeddingCache(adapter, length)
        with torch.no_grad():
            rows = cache.rows(texts)
        row_bytes = sum(t.numel() * t.element_size() for t in rows.values() if isinstance(t, torch.Tensor))
        with mode or nullcontext():
            parts = DistillParts(adapter, student, None, cache)
            accelerator = _accelerator()
            with build(parts, recipe, accelerator) as built:
                built.current.update(index=0, stage=recipe.stages[0], rows=rows, input_ids=input_ids, mask=mask,
                                     loss_fn=get_loss(recipe.loss_at(0)), trajectory=trajectory,
                                     guidance=float(recipe.guidance_scales[0]) if adapter.guidance else None)
                if warmup:
                    with _autocast(recipe, device):
                        step(built, _PlanRun(), 0)  # allocates AdamW's state, as every later step finds it
                tracker = _step_tracker()
                tracker.track_external(*modules, built.optimizer)
                tracker.track_grads(p for p in student.parameters() if p.requires_grad)
                start = tracker.totals("current")
                device_peak: dict = {}
                with tracker, _autocast(recipe, device), _device_peak(device, device_peak):
                    step(built, _PlanRun(), 0)  # (the same trajectory step: its cost is every step's)
                peak = tracker.totals("peak")
                # FLOPs in a step of their own: the counter's module tracking keeps checkpointed activations alive.
                with FlopCounterMode(display=False) as flops, _autocast(recipe, device):
                    step(built, _PlanRun(), 0)
    return StepMeasure(
        batch=recipe.batch_size, gradient_checkpointing=recipe.gradient_checkpointing, peak=peak, start=start,
        flops=int(flops.get_total_flops()), teacher_bytes=_bytes(teacher),
        denoiser_bytes=sum(_bytes(d) for d in adapter.denoisers), student_bytes=_bytes(student),
        largest_unit_bytes=max(_largest_unit(d) for d in adapter.denoisers),
        row_bytes_per_text=row_bytes // max(1, len(texts)), device_peak_growth=device_peak.get("growth"),
    )


class _FixedPrompts:
    """The planner's prompt source: the same prompts at every step (a step's cost does not depend on the words)."""

    def batch(self, index: int, size: int, stream: int = 0) -> list[str]:
        return [f"a photo of {i} red cubes on a blue table" for i in range(size)]


def _measure_tiue_step(pipe, recipe, *, batch, gradient_checkpointing, fake, warmup, device) -> StepMeasure:
    """`measure_step` for a TiUE recipe: the TiUE method's own build and step on `pipe` (a Stable Diffusion one)."""
    from torch.utils.flop_counter import FlopCounterMode

    from encoder_shrink.tiue.distiller import TiUEDistiller
    from encoder_shrink.tiue.loop import build, step

    overrides = {"batch_size": batch or recipe.batch_size}
    if gradient_checkpointing is not None:
        overrides["gradient_checkpointing"] = gradient_checkpointing
    recipe = recipe.with_overrides(**overrides)
    distiller = TiUEDistiller(pipe)
    frozen = [pipe.vae, pipe.text_encoder, pipe.unet]
    for module in frozen:
        module.requires_grad_(False).eval()
    # The student (a copy of the teacher UNet in fp32), the schedule (it reads values) and the fake score's LoRA are
    # built before the weights become fake (a fake module cannot be moved or cast).
    template = None
    if fake:  # the student from the UNet's config, on the meta device (a copy of fake weights cannot be cast)
        from accelerate import init_empty_weights

        with init_empty_weights():
            template = type(pipe.unet).from_config(pipe.unet.config)
    student, tiue, combine, scheduler = distiller.build_student(recipe, "meta" if fake else device, template)
    distiller.add_fake_score(recipe)
    with _fake_modules([*frozen, student], fake) as mode:
        with mode or nullcontext():
            parts = distiller.build_parts(recipe, device, student, tiue, combine, scheduler)
            parts.mixture = _FixedPrompts()
            try:
                accelerator = _accelerator()
                with build(parts, recipe, accelerator) as built:
                    if warmup:
                        with _autocast(recipe, device):
                            step(built, _PlanRun(), 0)
                    tracker = _step_tracker()
                    tracker.track_external(*frozen, student, built.student_optimizer, built.fake_optimizer)
                    if built.ema is not None:
                        tracker.track_external(*built.ema.shadow_params)
                    trainable = [p for m in (student, pipe.unet) for p in m.parameters() if p.requires_grad]
                    tracker.track_grads(trainable)
                    start = tracker.totals("current")
                    device_peak: dict = {}
                    with tracker, _autocast(recipe, device), _device_peak(device, device_peak):
                        step(built, _PlanRun(), 0)
                    peak = tracker.totals("peak")
                    with FlopCounterMode(display=False) as flops, _autocast(recipe, device):  # (apart: measure_step)
                        step(built, _PlanRun(), 0)
                lora_bytes = sum(p.numel() * p.element_size() for p in pipe.unet.parameters() if p.requires_grad)
                largest = _largest_unit(pipe.unet)
                teacher_unet = _bytes(pipe.unet) - lora_bytes
            finally:
                pipe.unet.unload_lora()  # the next measurement starts from the plain teacher
    return StepMeasure(
        batch=recipe.batch_size, gradient_checkpointing=recipe.gradient_checkpointing, peak=peak, start=start,
        flops=int(flops.get_total_flops()), teacher_bytes=_bytes(pipe.text_encoder),
        denoiser_bytes=teacher_unet + _bytes(pipe.vae), student_bytes=_bytes(student) + lora_bytes,
        largest_unit_bytes=largest, row_bytes_per_text=0,
        device_peak_growth=device_peak.get("growth"),
    )


def _plan_student(shrinker, recipe):
    """
    The recipe's student with its architecture and no download: a `student_t5` that is not a local folder is built from
    the published T5 size its name carries (`google/t5-v1_1-base` -> t5-base), on the meta device when the pipeline is.
    """
    from pathlib import Path

    from accelerate import init_empty_weights
    from torch._subclasses.fake_tensor import FakeTensor

    from encoder_shrink.benchmarks.synthetic import T5_CONFIGS, t5_config
    from encoder_shrink.recipes.recipe import PACKAGE_PREFIX

    on_meta = any(p.is_meta or isinstance(p, FakeTensor) for p in shrinker.adapter.denoisers[0].parameters())
    if recipe.student_t5 is not None and not recipe.student_t5.startswith(PACKAGE_PREFIX) \
            and not Path(recipe.student_t5).is_dir():
        kind = shrinker.adapter.student_kind
        size = next((s for s in ("xxl", "xl", "large", "base", "small") if s in recipe.student_t5.lower()), "base")
        name = f"umt5-{size}" if kind == "umt5" and f"umt5-{size}" in T5_CONFIGS else f"t5-{size}"
        config = t5_config(name if name in T5_CONFIGS else "t5-base").to_dict()
        fields = {k: config[k] for k in ("d_model", "d_ff", "num_layers", "num_heads", "d_kv", "feed_forward_proj")}
        if kind != "llm":
            fields["vocab_size"] = config["vocab_size"]
        recipe = recipe.with_overrides(student_t5=None, student_config=fields)
    with init_empty_weights() if on_meta else nullcontext():
        return shrinker.build_student(recipe)


@dataclass
class Plan:
    r"""
    What `plan` tells before GPUs are rented: per GPU memory for DDP and FSDP2 (with and without gradient
    checkpointing, the teacher resident or cached), the largest batch that fits, FLOPs, step time and GPU-hours, and
    the teacher cache's size. `to_dict()` is the JSON; `table()` the text.
    """

    pipeline: str
    recipe: str
    gpus: int
    gpu: str
    gpu_memory_gib: float
    utilisation: float
    batch: int
    total_steps: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    flops_per_step: int = 0
    step_seconds: float = 0.0
    gpu_hours: float = 0.0
    cache_bytes_per_text: int = 0
    cache_texts: int = 0
    recommended: str = ""
    config: str | None = None
    measured_at: str = ""
    flops_per_step_largest: int = 0
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        head = (f"{'strategy':8} {'ckpt':5} {'teacher':9} {'weights':>8} {'grads':>7} {'optim':>7} {'activ.':>8} "
                f"{'peak GiB':>9} {'fits':>5} {'max batch':>9}")
        lines = [f"{self.pipeline} / {self.recipe} on {self.gpus} x {self.gpu} ({self.gpu_memory_gib:g} GiB), "
                 f"batch {self.batch} per GPU; memory at the largest stage, {self.measured_at}", head,
                 "-" * len(head)]
        for r in self.rows:
            gib = {k.removesuffix("_bytes"): v / GIB for k, v in r.items() if k.endswith("_bytes")}
            lines.append(f"{r['strategy']:8} {'on' if r['gradient_checkpointing'] else 'off':5} {r['teacher']:9} "
                         f"{gib['weights']:8.2f} {gib['gradients']:7.2f} {gib['optimizer']:7.2f} "
                         f"{gib['activations']:8.2f} {gib['peak']:9.2f} {'yes' if r['fits'] else 'no':>5} "
                         f"{r['max_batch']:>9}")
        lines += [
            f"FLOPs per step and GPU: {self.flops_per_step / 1e12:.1f} TFLOP on average over the stages "
            f"({self.flops_per_step_largest / 1e12:.1f} at the largest); step time at {self.utilisation:.0%} of "
            f"{self.gpu}'s bf16 peak: {self.step_seconds:.2f} s; {self.total_steps} steps: "
            f"{self.gpu_hours:.0f} GPU-hours",
            f"Teacher cache: {self.cache_bytes_per_text / 2**20:.2f} MiB per text; {self.cache_texts} texts drawn: "
            f"{self.cache_bytes_per_text * self.cache_texts / GIB:.1f} GiB",
            f"Launch: {self.recommended}",
        ]
        return "\n".join(lines)


def _per_gpu(m: StepMeasure, strategy: str, teacher: str, gpus: int) -> dict[str, float]:
    """One measured step's memory on each GPU under `strategy` (`ddp` or `fsdp2`), the teacher resident or cached."""
    frozen = m.denoiser_bytes + (m.teacher_bytes if teacher == "resident" else 0)
    weights = m.student_bytes + frozen
    gradients = m.peak.get("gradients", 0)
    optimizer = m.peak.get("optimizer_state", 0) + m.peak.get("other", 0)  # (TiUE's EMA is tracked as other)
    if strategy == "ddp":  # DDP's gradient buckets: one more copy of the student's gradients
        gradients *= 2
    else:  # FSDP2 (accelerate's prepare): every model sharded, two units all-gathered at once; the student's
        # gradients and AdamW state are sharded with it
        weights = (m.student_bytes + frozen) / gpus + FSDP_UNSHARDED_UNITS * m.largest_unit_bytes
        gradients, optimizer = gradients / gpus, optimizer / gpus
    activations = m.peak.get("activations", 0) + m.peak.get("backward_temporaries", 0)
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
            "total": weights + gradients + optimizer + activations + m.peak.get("buffers", 0)}


def _row(strategy: str, checkpointing: bool, teacher: str, one: StepMeasure, full: StepMeasure, gpus: int,
         memory: float) -> dict[str, Any]:
    """
    Per-GPU memory of one configuration at the recipe's batch (`full`, measured there), and the largest batch that
    fits, from the activations' growth per sample between batch 1 (`one`) and the recipe's.
    """
    figures = _per_gpu(full, strategy, teacher, gpus)
    small = _per_gpu(one, strategy, teacher, gpus)
    # Per sample: the activations' growth (the peak's other parts do not scale with the batch, and the moment of the
    # peak may move between the two measured batches, e.g. from the backward to AdamW's update).
    per_sample = (figures["activations"] - small["activations"]) / max(1, full.batch - one.batch)
    fixed = figures["total"] - per_sample * full.batch
    max_batch = max(0, math.floor((memory * GIB - fixed) / per_sample)) if per_sample > 0 else 0
    return {"strategy": strategy, "gradient_checkpointing": checkpointing, "teacher": teacher,
            **{f"{k}_bytes": int(v) for k, v in figures.items() if k != "total"},
            "peak_bytes": int(figures["total"]), "fits": figures["total"] <= memory * GIB, "max_batch": max_batch}


def plan(pipeline: str, recipe, *, gpus: int = 8, gpu_memory: str | float = "80GB", gpu: str = "h100",
         utilisation: float = UTILISATION, slot: str | None = None) -> Plan:
    r"""
    Whether and how a distillation recipe fits `gpus` GPUs of `gpu_memory` each, before renting them: the distill step
    of the real architecture is measured on fake tensors ([`measure_step`]) at batch 1 and at the recipe's batch,
    with and without gradient checkpointing (the largest batch that fits extends the growth between them); DDP and
    FSDP2 (the frozen denoiser, and a resident teacher, sharded) are derived from the categories.

    `pipeline` is a registered family with a published architecture (`encoder-shrink bench --synthetic` lists them:
    `flux-dev`, `wan`, `flux2`, ...), built on the meta device, or a local pipeline folder (loaded, then made fake).

    Example:

    ```python
    >>> print(plan("flux-dev", "flux-t5base", gpus=8, gpu_memory="80GB").table())  # doctest: +SKIP
    ```
    """
    from encoder_shrink.recipes import load_recipe
    from encoder_shrink.training.methods import get_training_method

    if gpu not in GPUS:
        raise InvalidArgumentError(f"gpu {gpu!r} is not one of {', '.join(GPUS)}; pass one, or the closest.")
    if gpus < 1:
        raise InvalidArgumentError(f"gpus={gpus} must be at least 1.")
    if not 0 < utilisation <= 1:
        raise InvalidArgumentError(f"utilisation={utilisation} must be in (0, 1]; 0.4 is typical.")
    memory = parse_memory(gpu_memory)
    if isinstance(recipe, str) and recipe in get_training_method("tiue").bundled_recipes():
        recipe = load_recipe(recipe, method="tiue")
    else:
        recipe = load_recipe(recipe) if not hasattr(recipe, "method") else recipe
    tiue = recipe.method == "tiue"
    # A fresh pipeline per measurement: a measured one holds fake weights, which cannot take a new LoRA or a cast.
    # Measured at batch 1 and at the recipe's (2 when that is 1): the reported figures are the recipe's, measured;
    # the largest batch that fits extends the growth between them.
    full = max(2, recipe.batch_size)
    # Memory is measured at the stage with the most latent tokens (FLUX's 1024 px CommonText): it decides the fit.
    shapes = _stage_shapes(recipe)
    largest = max(shapes, key=lambda shape: shape[1] ** 2 * (shape[2] or 1))
    measured = recipe if tiue else recipe.with_overrides(resolution=largest[1], num_frames=largest[2])
    measures = {(b, c): measure_step(_plan_pipeline(pipeline), measured, batch=b, gradient_checkpointing=c, slot=slot)
                for c in (False, True) for b in (1, full)}
    rows = [_row(strategy, c, teacher, measures[(1, c)], measures[(full, c)], gpus, memory)
            for strategy in ("ddp", "fsdp2") for c in (False, True) for teacher in ("resident", "cached")]
    one, two = measures[(1, False)], measures[(full, False)]
    flops = one.flops + (two.flops - one.flops) * (recipe.batch_size - 1) / (full - 1)
    # Time: each stage's steps at its own shape (a batch-1 step of each other shape, scaled as the largest scales).
    seconds = 0.0
    for _, resolution, frames, steps in shapes:
        stage_flops = flops
        if (resolution, frames) != largest[1:3]:
            small = measure_step(_plan_pipeline(pipeline), recipe.with_overrides(resolution=resolution,
                                 num_frames=frames), batch=1, gradient_checkpointing=False, slot=slot)
            stage_flops = small.flops * flops / one.flops
        seconds += steps * stage_flops / (GPUS[gpu].bf16_tflops * 1e12 * utilisation)
    step_seconds = seconds / recipe.total_steps
    # The texts the teacher encodes over the run (TiUE encodes its prompts with the frozen text encoder each step).
    drawn = 0 if tiue else (math.ceil(recipe.total_steps / recipe.num_inference_steps) * recipe.batch_size * gpus
                            * max(1, len(_texts_of_one(_plan_pipeline(pipeline), recipe))))
    fitting = [r for r in rows if r["fits"]]
    # The cheapest launch that fits: DDP before FSDP2, no recomputation before checkpointing, the teacher resident.
    best = min(fitting, key=lambda r: (r["strategy"] != "ddp", r["gradient_checkpointing"],
                                       r["teacher"] != "resident", r["peak_bytes"])) if fitting else None
    config = None
    if best is None:
        recommended = (f"nothing fits at batch {recipe.batch_size}: lower --batch-size to a max batch above, or use "
                       "more or larger GPUs")
    else:
        flags = (" --gradient-checkpointing" if best["gradient_checkpointing"] else "") + (
            " --release-teacher" if best["teacher"] == "cached" else "")
        config = str(accelerate_config(best["strategy"]))
        recommended = (f"{best['strategy'].upper()} ({'with' if best['gradient_checkpointing'] else 'no'} gradient "
                       f"checkpointing, teacher {best['teacher']}): accelerate launch --config_file {config} "
                       f"--num_processes {gpus} -m encoder_shrink.cli {'tiue distill' if tiue else 'distill'} "
                       f"...{flags}")
    return Plan(
        pipeline=pipeline, recipe=recipe.name, gpus=gpus, gpu=gpu, gpu_memory_gib=memory, utilisation=utilisation,
        batch=recipe.batch_size, total_steps=recipe.total_steps, rows=rows,
        flops_per_step=int(seconds * GPUS[gpu].bf16_tflops * 1e12 * utilisation / recipe.total_steps),
        step_seconds=step_seconds, gpu_hours=seconds * gpus / 3600, flops_per_step_largest=int(flops),
        measured_at=f"{largest[0]} ({largest[1]} px" + (f", {largest[2]} frames)" if largest[2] else ")"),
        cache_bytes_per_text=one.row_bytes_per_text,
        cache_texts=drawn, recommended=recommended, config=config,
        assumptions=[
            "memory from one step on fake tensors (torch MemTracker) at the recipe's batch; the largest batch "
            "extends the growth from batch 1 linearly",
            f"FSDP2 (the shipped fsdp2.yaml): every model's weights / {gpus} + {FSDP_UNSHARDED_UNITS} all-gathered "
            f"blocks; the student's gradients and AdamW state / {gpus} too",
            "DDP: one extra copy of the student's gradients (its buckets)",
            f"step time at {utilisation:.0%} of the GPU's dense bf16 peak; excludes data loading and the teacher "
            "encoding each trajectory once",
            "cache texts: every drawn prompt (and its negative under CFG) counted once per draw, an upper bound",
        ],
    )


def _stage_shapes(recipe) -> list[tuple[str, int, int | None, int]]:
    """(stage, resolution, frames, steps it runs) of each stage, in order, cut at the recipe's last step."""
    if getattr(recipe, "method", "distill") == "tiue":
        return [(recipe.name, recipe.resolution, None, recipe.total_steps)]
    shapes, done = [], 0
    for stage in recipe.stages:
        steps = min(stage.steps, recipe.total_steps - done)
        if steps > 0:
            shapes.append((stage.name, stage.resolution or recipe.resolution, stage.num_frames or recipe.num_frames,
                           steps))
        done += stage.steps
    if done < recipe.total_steps:  # (the last stage continues past its steps)
        name, resolution, frames, steps = shapes[-1]
        shapes[-1] = (name, resolution, frames, steps + recipe.total_steps - done)
    return shapes


def _texts_of_one(pipe, recipe) -> list[str]:
    from encoder_shrink.pipelines import adapter_for

    return adapter_for(pipe).encoder_texts(["a prompt"], recipe.negative_prompt)


def _plan_pipeline(pipeline: str):
    """A registered family's published architecture on the meta device, or a local pipeline folder loaded."""
    from pathlib import Path

    from encoder_shrink.benchmarks.synthetic import SD_CONFIGS, synthetic_pipeline, synthetic_sd_pipeline
    from encoder_shrink.pipelines import synthetic_families

    if pipeline in SD_CONFIGS or pipeline in synthetic_families():
        from diffusers.utils import logging as diffusers_logging

        # The frozen models in the dtype a GPU run loads them in: fp16 for SD (TiUE's recipes), bf16 otherwise.
        dtype = torch.float16 if pipeline in SD_CONFIGS else torch.bfloat16
        build = synthetic_sd_pipeline if pipeline in SD_CONFIGS else synthetic_pipeline
        pipe = build(pipeline, dtype=dtype, device="meta")
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # (its "keep these modules in fp32" advice names none here)
        try:
            for module in pipe.components.values():
                if isinstance(module, torch.nn.Module):
                    module.to(dtype)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        return pipe
    if Path(pipeline).is_dir():
        from encoder_shrink.loading import load_pipeline

        return load_pipeline(pipeline)
    raise InvalidArgumentError(
        f"pipeline {pipeline!r} is neither a family with a published architecture ({', '.join(synthetic_families())}"
        f", or {', '.join(SD_CONFIGS)} for TiUE) nor a local pipeline folder; pass one of them.")


def plan_chart(result: Plan, path) -> None:
    """A stacked bar per configuration (weights, gradients, optimizer, activations) against the GPU's memory."""
    from encoder_shrink.files import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['strategy']}\n{'ckpt' if r['gradient_checkpointing'] else 'no ckpt'}\n{r['teacher']}"
              for r in result.rows]
    bottom = [0.0] * len(result.rows)
    for key, colour in (("weights", "#4c72b0"), ("gradients", "#dd8452"), ("optimizer", "#55a868"),
                        ("activations", "#c44e52")):
        values = [r[f"{key}_bytes"] / GIB for r in result.rows]
        axis.bar(labels, values, bottom=bottom, label=key, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axis.axhline(result.gpu_memory_gib, color="black", linestyle="--", label=f"{result.gpu_memory_gib:g} GiB")
    axis.set_ylabel("GiB per GPU")
    axis.set_title(f"{result.pipeline} / {result.recipe}: {result.gpus} x {result.gpu}, batch {result.batch} per GPU")
    axis.legend(fontsize=8)
    axis.tick_params(axis="x", labelsize=7)
    save_figure(figure, path)


__all__ = ["GPUS", "GPUSpec", "Plan", "StepMeasure", "measure_step", "parse_memory", "plan", "plan_chart"]
