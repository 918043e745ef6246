"""TracedAdapter: a pipeline no family file describes, served by running its own `__call__` with hooks."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import types
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from encoder_shrink.errors import IncompatibleModelError
from encoder_shrink.pipelines.base import PipelineAdapter, Trajectory
from encoder_shrink.pipelines.llm import NEGATIVE, LLMAdapter

logger = logging.getLogger(__name__)

# Probe prompts of the trace: two, so batching shows; different lengths, so a pipeline that pads to the longest shows.
PROBE_PROMPTS = ("a red circle", "two blue squares and a yellow star next to a green triangle")
PROBE_NEGATIVES = ("blurry", "grainy")
# Scheduler steps of the trace's sampling run: Mochi's schedule needs more than 2.
PROBE_STEPS = 4
# A guidance above 1, so CFG pipelines encode their negatives and run their unconditional pass.
PROBE_GUIDANCE = 3.0
# Words of the trace's longest probe: more than any pipeline's max_sequence_length (CogView4's 1024 and Qwen-Image's
# 1024 + template are the widest in diffusers 0.42), so its calls show the widest call a pipeline truncates to.
LONG_PROBE_WORDS = 4096
# Texts whose per-prompt call (ids and mask) is kept for reuse: a batch's texts and more, a bounded memory.
SOLO_TOKENS_KEPT = 4096
# Parameters of `__call__` a text-only call never needs, even when they have no default.
_NOT_INPUTS = {"self", "prompt", "args", "kwargs"}


class _Stop(Exception):
    """Raised inside the pipeline's `__call__` once a probe has seen what it came for."""


class _Refused(Exception):
    """Raised inside `__call__` by a hook that saw a step the trace cannot follow; `traced` turns it into an error."""


@dataclass
class TraceReport:
    r"""
    What tracing a pipeline's `__call__` learned about its text encoder and denoiser(s): which slot is shrunk and
    how the pipeline calls it, which of its outputs it reads, how its denoiser is called per scheduler step, and which
    denoiser inputs derive from the encoder. `encoder-shrink inspect` prints it.

    Example:

    ```python
    >>> TracedAdapter(pipe).report.hidden_state_layers  # doctest: +SKIP
    (9, 18, 27)
    ```
    """

    pipeline: str
    slots: dict[str, int]
    slot: str
    tokenizer_slot: str | None
    teacher_class: str
    kind: str
    call_length: int
    uses_attention_mask: bool
    # None: the pipeline reads `last_hidden_state`; else the `hidden_states` indices it reads (non-negative).
    hidden_state_layers: tuple[int, ...] | None
    hidden_size: int
    num_hidden_states: int
    # Whether it reads `last_hidden_state` (an LLM's then stands for its last layer).
    reads_last: bool
    encoder_calls: tuple[str, ...]
    guidance: str | None
    denoisers: tuple[str, ...]
    calls_per_step: int
    # Per denoiser call of a step: the names of the inputs that derive from the encoder.
    text_inputs: tuple[tuple[str, ...], ...]
    # Whether the call length varies per prompt (padding to the batch's longest, prompts and negatives at different
    # lengths, one call per prompt): then `call_length` is the widest call, and `__call__` runs one prompt at a time.
    variable_length: bool = False
    # Per denoiser call of a step: the positions of those inputs among the call's flattened inputs.
    text_leaves: tuple[tuple[int, ...], ...] = field(repr=False, default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("text_leaves")
        return data


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any):
    """Set `owner.name = value` on the instance for the block (whatever an offload hook set there is restored)."""
    had, old = name in vars(owner), vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, old)
        else:
            delattr(owner, name)


@contextlib.contextmanager
def _quiet(*names: str):
    """Only errors from these libraries' loggers for the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _cloned(value: Any) -> Any:
    """Copies of a call's tensors, gradients kept: the pipeline may write into its inputs after the call (Kandinsky
    5 steps the latents in place)."""
    return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, value)


def _detached(value: Any) -> Any:
    return pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, value)


def _equal(a: Any, b: Any) -> bool:
    """Whether two pytrees of call inputs are equal: the same structure, equal tensors and equal other leaves."""
    leaves_a, spec_a = pytree.tree_flatten(a)
    leaves_b, spec_b = pytree.tree_flatten(b)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                    and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif type(x) is not type(y):
            return False
        elif x is not y:
            try:
                if not bool(x == y):
                    return False
            except (TypeError, ValueError, RuntimeError):  # an object without a plain equality
                return False
    return True


def _first_tensor(output: Any) -> torch.Tensor:
    """
    The prediction of a denoiser call: `output[0]` of a tuple or of a diffusers output (`.sample`); a list of
    per-sample predictions (Z-Image) is stacked.
    """
    prediction = output if isinstance(output, torch.Tensor) else output[0]
    return torch.stack(list(prediction)) if isinstance(prediction, (list, tuple)) else prediction


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TracedAdapter(PipelineAdapter):
    r"""
    The adapter of a pipeline that no registered family matches (or whose `slot=` no family file shrinks). It learns
    what a family file states by running the pipeline's own `__call__` on probe prompts, with hooks on the text
    encoder and the denoiser(s) (see [`TraceReport`]), and copies none of the pipeline's loop:

    - the teacher trajectory *is* the pipeline's sampling: `__call__` runs once per trajectory with the teacher's
      (cached) outputs in the slot, and every denoiser call is recorded (inputs and prediction);
    - the student's conditioning comes from the same prompt code: `__call__` runs (with gradients) until the denoiser's
      first calls, with the student's outputs in the slot, and its text-derived inputs replace the teacher's in the
      recorded calls of the step being trained.

    A step the trace cannot follow (prompt upsampling through `generate`, an encoder called inside the loop, a
    required image input, an encoder that feeds no denoiser input, a kind of encoder with no student yet) raises a
    one-line `IncompatibleModelError` before any training.

    Example:

    ```python
    >>> adapter = TracedAdapter(pipe)  # doctest: +SKIP
    >>> adapter.report.slot, adapter.report.kind, adapter.report.hidden_state_layers  # doctest: +SKIP
    ('text_encoder', 'llm', (9, 18, 27))
    ```
    """

    pipeline_class = ""
    denoiser_class = ""
    conditioning_width_key = "the traced text features"
    traced = True

    def __init__(self, pipe: Any, slot: str | None = None, call_kwargs: dict[str, Any] | None = None):
        super().__init__(pipe)
        self.call_kwargs = dict(call_kwargs or {})
        self.pipeline_class = type(pipe).__name__
        self.name = f"traced:{self.pipeline_class}"
        self._length_override: int | None = None
        self._student_cache: tuple[torch.Tensor, list] | None = None
        # Variable call lengths: per (text, length override), the call's ids and mask; per override, the widest call.
        self._solo_tokens: OrderedDict[tuple[str, int | None], tuple] = OrderedDict()
        self._widest: dict[int | None, int] = {}
        self.teacher_released = False
        self.report = self._trace(slot)
        report = self.report
        self.encoder_slot, self.tokenizer_slot = report.slot, report.tokenizer_slot
        self.max_sequence_length = report.call_length
        if report.variable_length:
            # The length the pipeline is called with (what `evaluate` and the recipes pass as max_sequence_length),
            # not its widest call (Qwen-Image's: its template and 1024 tokens, over what its __call__ accepts).
            self.max_sequence_length = self._own_length() or report.call_length
        self.uses_attention_mask = report.uses_attention_mask
        self.guidance = report.guidance
        self.student_kind = report.kind
        if report.hidden_state_layers is not None:
            self.hidden_state_layers = report.hidden_state_layers
        if report.variable_length:
            # Each text's row is as long as its call: the positions past it are padding of ours, which neither the
            # embedding loss nor the cache keeps.
            self.denoiser_positions = "tokens"
            self.pads_to_batch_longest = True  # (not to the widest call: Qwen-Image's is its template and 1024 tokens)
            self._widest[None] = report.call_length

    # --- what the distiller calls -----------------------------------------------------------------------------------

    @property
    def conditioning_width(self) -> int:
        layers = self.report.hidden_state_layers
        return self.report.hidden_size * (1 if layers is None else len(layers))

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.report.denoisers[0])

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        return [getattr(self.pipe, name) for name in self.report.denoisers]

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def student_class(self) -> type:
        """The student class of the traced teacher's kind."""
        from encoder_shrink.student_kinds import get_student_kind

        return get_student_kind(self.student_kind).student_class

    def record(self, max_sequence_length: int) -> dict[str, Any]:
        # Per-prompt lengths: no length for the student to warn about; an unmasked pipeline's student is trained
        # with a mask over the batch's padding and called without one, both right.
        fixed = not self.report.variable_length
        return {"pipeline_family": self.name, "component": self.encoder_slot,
                "max_sequence_length": max_sequence_length if fixed else None,
                "use_attention_mask": self.uses_attention_mask if fixed or self.uses_attention_mask else None}

    def student_fields(self) -> dict[str, Any]:
        return LLMAdapter.student_fields(self) if self.report.kind == "llm" else {}

    def teacher_layout(self) -> dict[str, Any]:
        return LLMAdapter.teacher_layout(self)

    def initialise_student(self, student: torch.nn.Module) -> None:
        if self.report.kind == "llm":
            LLMAdapter.initialise_student(self, student)

    def check_student(self, student: torch.nn.Module) -> None:
        if self.report.kind == "llm":
            LLMAdapter.check_student(self, student)
            return
        from encoder_shrink.student_kinds import kind_of_student

        kind = kind_of_student(student)
        if kind is None or kind.name != self.report.kind:
            raise IncompatibleModelError(
                f"{self.pipeline_class}.{self.encoder_slot} holds a {self.report.kind.upper()} encoder but the "
                f"student is a {type(student).__name__}; use a {self.student_class().__name__} distilled for this "
                "pipeline."
            )

    def encoder_texts(self, prompts: list[str], negative_prompt: str = "") -> list[str]:
        """The texts of the pipeline's encoder calls, in its order; a negative carries the `NEGATIVE` mark."""
        texts = []
        for kind in self.report.encoder_calls:
            texts += list(prompts) if kind == "prompt" else [NEGATIVE + negative_prompt] * len(prompts)
        return texts

    def tokenize(self, texts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The token ids and mask the pipeline's own prompt code gives the encoder for `texts`."""
        self._set_length(max_sequence_length)
        calls = self._encoder_calls(texts, mode="tokens")
        masks = [torch.ones_like(ids) if mask is None else mask.to(ids.dtype) for ids, mask, _ in calls]
        if self.report.variable_length:  # each call padded (masked) to the batch's longest
            width = max(ids.shape[1] for ids, _, _ in calls)
            pad = self._pad_token_id()
            masks = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
            calls = [(torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad), None, None)
                     for ids, _, _ in calls]
        input_ids = torch.cat([ids for ids, _, _ in calls]).to(self.device)
        return input_ids, torch.cat(masks).to(self.device)

    def encoder_mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        # Per-prompt lengths: the mask hides our padding of each call to the batch's longest, whether or not the
        # pipeline passes one (a call it does not mask is all ones up to its length).
        return mask if self.uses_attention_mask or self.report.variable_length else None

    def encoded_length(self, max_sequence_length: int) -> int:
        """The call length; per-prompt lengths: the widest call (at the pipeline's truncation for this length)."""
        if not self.report.variable_length:
            return max_sequence_length
        given = self._length_override
        self._set_length(max_sequence_length)
        key = self._length_override
        try:
            if key not in self._widest:
                self._widest[key] = max((ids.shape[1] for ids, _, _ in self._widest_calls()),
                                        default=self.report.call_length)
        finally:
            self._length_override = given
        return self._widest[key]

    def stored_lengths(self, texts: list[str], max_sequence_length: int) -> list[int] | None:
        if not self.report.variable_length:
            return super().stored_lengths(texts, max_sequence_length)
        self._set_length(max_sequence_length)
        return [ids.shape[1] for ids, _, _ in self._encoder_calls(texts, mode="tokens")]

    def _pad_token_id(self) -> int:
        tokenizer = getattr(self.pipe, self.tokenizer_slot) if self.tokenizer_slot else None
        pad = getattr(tokenizer, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def encoder_features(self, encoder: torch.nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None) -> torch.Tensor:
        output = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return self._features(output)

    @torch.no_grad()
    def encode_teacher(self, texts: list[str], max_sequence_length: int) -> dict[str, torch.Tensor]:
        if self.teacher_released:
            raise IncompatibleModelError(
                f"the teacher in {self.encoder_slot} was released but {len(texts)} text(s) are not in the cache; "
                "precompute every prompt the run draws before releasing it.")
        self._set_length(max_sequence_length)
        calls = self._encoder_calls(texts, mode="teacher")
        features = [f for _, _, f in calls]
        if self.report.variable_length:  # each call's features, zeros past it to the batch's longest
            width = max(f.shape[1] for f in features)
            features = [torch.nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f in features]
        return {"t5": torch.cat(features)}

    def start_trajectory(self, batch_size: int, resolution: int, num_inference_steps: int,
                         generator: torch.Generator, num_frames: int | None = None,
                         texts: list[str] | None = None) -> Trajectory:
        """
        A trajectory the pipeline's `__call__` samples on the first `predict` (it needs the teacher's rows): the
        timesteps are step indices, the latents its final latents once it has run.
        """
        if texts is None:
            raise IncompatibleModelError("a traced pipeline's trajectory needs the batch's encoder texts (texts=...).")
        extras = {
            "texts": list(texts), "resolution": resolution, "num_frames": num_frames, "steps": num_inference_steps,
            "generator": None if generator is None else generator.get_state(),
        }
        placeholder = torch.zeros(batch_size, dtype=self.denoiser.dtype, device=self.device)
        return Trajectory(latents=placeholder, timesteps=torch.arange(num_inference_steps), scheduler=None,
                          extras=extras)

    def predict(self, trajectory, t, t5, rows, attention_mask, guidance_scale) -> torch.Tensor:
        """The denoiser's outputs at step `t`, on the recorded inputs with `t5`'s text-derived inputs, side by side."""
        if "steps_record" not in trajectory.extras:
            self._sample(trajectory, rows["t5"], guidance_scale)
        recorded = trajectory.extras["steps_record"][int(t)]
        if t5 is rows["t5"]:
            return torch.cat([_first_tensor(call["output"]) for call in recorded])
        leaves = self._text_leaves(trajectory, t5, guidance_scale)
        predictions = []
        for k, call in enumerate(recorded):
            flat, spec = pytree.tree_flatten(call["inputs"])
            for position, value in zip(self.report.text_leaves[k % self.report.calls_per_step], leaves[k],
                                       strict=True):
                flat[position] = value
            args, kwargs = pytree.tree_unflatten(flat, spec)
            predictions.append(_first_tensor(getattr(self.pipe, call["module"])(*args, **kwargs)))
        return torch.cat(predictions)

    def step(self, trajectory: Trajectory, prediction: torch.Tensor, t: torch.Tensor) -> None:
        """Nothing to do: the pipeline's own loop advanced the latents when the trajectory was sampled."""

    def release_teacher(self) -> None:
        """
        Free the teacher's weights but keep the module in its slot: the pipeline's prompt code still runs (its
        outputs are replayed from the cache) and reads the slot's `dtype` and `device`. Each parameter and buffer
        becomes an empty tensor of its dtype on its device.
        """
        teacher = getattr(self.pipe, self.encoder_slot)
        for tensor in [*teacher.parameters(), *teacher.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        self.teacher_released = True

    def guidance_call_kwargs(self, guidance_scale: float) -> dict[str, Any]:
        report = getattr(self, "report", None)
        if report is not None and report.guidance == "cfg" and self._accepts("true_cfg_scale"):
            # diffusers' name for the CFG scale where `guidance_scale` is an embedded one (Qwen-Image, FLUX)
            return {"true_cfg_scale": guidance_scale}
        return {"guidance_scale": guidance_scale} if self._accepts("guidance_scale") else {}

    @classmethod
    def tiny_components(cls, seed: int = 0) -> dict[str, Any]:
        raise NotImplementedError("a traced pipeline has no tiny components of ours")

    # --- running the pipeline's own __call__ ------------------------------------------------------------------------

    def _accepts(self, name: str) -> bool:
        return name in inspect.signature(type(self.pipe).__call__).parameters

    def _own_length(self) -> int | None:
        """The `max_sequence_length` `__call__` runs at (the caller's, or its default), if it takes one."""
        parameter = inspect.signature(type(self.pipe).__call__).parameters.get("max_sequence_length")
        value = self.call_kwargs.get("max_sequence_length", None if parameter is None else parameter.default)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _set_length(self, max_sequence_length: int | None) -> None:
        default = getattr(self, "report", None)
        unchanged = (None,) if default is None else (None, default.call_length, self.max_sequence_length)
        changed = default is not None and max_sequence_length not in unchanged
        if changed and not self._accepts("max_sequence_length"):
            raise IncompatibleModelError(
                f"{self.pipeline_class} encodes at {default.call_length} tokens and takes no max_sequence_length; "
                "leave the recipe's max_sequence_length unset."
            )
        self._length_override = max_sequence_length if changed else None

    def _call(self, prompts: list[str], negatives: list[str] | None, guidance: float | None, steps: int,
              generator_state: torch.Tensor | None = None, resolution: int | None = None,
              num_frames: int | None = None, grad: bool = False, generator: torch.Generator | None = None) -> Any:
        """
        Run `__call__` (without its `no_grad` when `grad`) to the end or to a probe's `_Stop`; with `generator` (one
        prompt at a time: the runs of a batch draw from one generator in turn) or a fresh one at `generator_state`.
        """
        pipe = self.pipe
        kwargs = dict(self.call_kwargs)
        kwargs.update(prompt=list(prompts), num_inference_steps=steps, output_type="latent")
        if generator is None:
            generator = torch.Generator("cpu")
            if generator_state is not None:
                generator.set_state(generator_state)
            else:
                generator.manual_seed(0)
        kwargs["generator"] = generator
        if negatives is not None and self._accepts("negative_prompt"):
            kwargs["negative_prompt"] = list(negatives)
        if guidance is not None:
            kwargs.update(self.guidance_call_kwargs(guidance))
        if resolution is not None and self._accepts("height"):
            kwargs.update(height=resolution, width=resolution)
        if num_frames is not None:
            for name in ("num_frames", "video_length"):
                if self._accepts(name):
                    kwargs[name] = num_frames
        if self._length_override is not None:
            kwargs["max_sequence_length"] = self._length_override
        function = type(pipe).__call__
        if grad:
            function = getattr(function, "__wrapped__", function)
        config = getattr(pipe, "_progress_bar_config", None)
        pipe.set_progress_bar_config(disable=True)
        try:
            return function(pipe, **kwargs)
        except _Stop:
            return None
        finally:
            if config is None:
                del pipe._progress_bar_config
            else:
                pipe._progress_bar_config = config

    @contextlib.contextmanager
    def _hooked(self, encoder, denoiser, on_step=None, others=None):
        """
        Replace the slot's and the denoisers' `forward` (and count scheduler steps) for the block; `others(name,
        original, *args, **kwargs)` replaces the `forward` of the pipeline's other text encoders.
        """
        stack = contextlib.ExitStack()
        with stack:
            slot = self.report.slot if hasattr(self, "report") else self._slot
            module = getattr(self.pipe, slot)
            original = module.forward
            if others is not None:
                for name in self._other_encoders(slot):
                    other = getattr(self.pipe, name)
                    stack.enter_context(_patched(
                        other, "forward", lambda *a, _n=name, _f=other.forward, **k: others(_n, _f, *a, **k)))
            stack.enter_context(_patched(module, "forward", lambda *a, **k: encoder(original, *a, **k)))
            if hasattr(module, "generate"):
                stack.enter_context(_patched(module, "generate", self._refuse_generate))
            names = self.report.denoisers if hasattr(self, "report") else self._denoisers
            for name in names:
                target = getattr(self.pipe, name)
                forward = target.forward
                stack.enter_context(_patched(
                    target, "forward", lambda *a, _n=name, _f=forward, **k: denoiser(_n, _f, *a, **k)))
            if on_step is not None:
                scheduler = self.pipe.scheduler

                # A method bound to the scheduler: a pipeline that deep-copies it (LTX-2 steps its audio latents
                # with a copy) gets a copy bound to the copy, which steps itself and is not counted.
                def counted(bound, *args, **kwargs):
                    if bound is scheduler:
                        on_step()
                    return type(bound).step(bound, *args, **kwargs)

                stack.enter_context(_patched(scheduler, "step", types.MethodType(counted, scheduler)))
            yield

    def _other_encoders(self, slot: str) -> list[str]:
        """The pipeline's frozen text encoders other than `slot` (their outputs do not change during training)."""
        return [name for name, module in self.pipe.components.items()
                if name != slot and name.startswith("text_encoder") and isinstance(module, torch.nn.Module)]

    def _refuse_generate(self, *args, **kwargs):
        raise _Refused(
            f"{self.pipeline_class} rewrites prompts with {self._slot}.generate (prompt upsampling), which the trace "
            "cannot follow; disable it in the call or distil a family file."
        )

    def _denoiser_candidates(self) -> list[str]:
        from diffusers import ModelMixin

        return [name for name, module in self.pipe.components.items()
                if isinstance(module, ModelMixin) and not name.startswith(("vae", "text_encoder", "image_encoder"))]

    # --- the trace --------------------------------------------------------------------------------------------------

    def _trace(self, slot: str | None) -> TraceReport:
        """What the pipeline does (the report); its probes run at the probe size, the caller's size is kept after."""
        given = dict(self.call_kwargs)
        try:
            return self._trace_probes(slot)
        finally:
            self.call_kwargs = given

    def _trace_probes(self, slot: str | None) -> TraceReport:
        pipe = self.pipe
        name = self.pipeline_class
        encoders = {k: v for k, v in pipe.components.items()
                    if k.startswith("text_encoder") and isinstance(v, torch.nn.Module)}
        if not encoders:
            from encoder_shrink.pipelines.base import registered_families

            raise IncompatibleModelError(
                f"{name} is not a supported pipeline (it has no text_encoder* component to shrink); supported "
                f"families: {', '.join(registered_families())}, and any pipeline with a transformers text encoder "
                "(traced).")
        slots = {k: _parameter_count(v) for k, v in encoders.items()}
        if slot is None:
            from encoder_shrink.student_kinds import kind_of_student

            students = [k for k, v in encoders.items() if kind_of_student(v) is not None]
            slot = students[0] if students else max(slots, key=slots.get)
        elif slot not in encoders:
            raise IncompatibleModelError(
                f"{name} has no text encoder {slot!r}; its text encoders are {', '.join(slots)}: pass one of them.")
        self._slot = slot
        teacher = encoders[slot]
        kind = self._kind(teacher)
        required = [p.name for p in inspect.signature(type(pipe).__call__).parameters.values()
                    if p.default is inspect.Parameter.empty and p.name not in _NOT_INPUTS
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in self.call_kwargs]
        if required:
            raise IncompatibleModelError(
                f"{name}.__call__ requires {', '.join(required)} besides the prompt (an image or video input); the "
                "trace distils text-to-image and text-to-video pipelines only: distil on the text-only pipeline "
                "of the family and load the student into this one."
            )
        denoisers = self._denoisers = self._denoiser_candidates()
        if not denoisers:
            raise IncompatibleModelError(f"{name} has no denoiser (transformer or unet) the trace can hook.")
        tokenizer_slot = "tokenizer" + slot[len("text_encoder"):]
        tokenizer_slot = tokenizer_slot if getattr(pipe, tokenizer_slot, None) is not None else None

        # 1. The pipeline's own sampling, 2 steps: the encoder calls, the denoiser calls, the scheduler steps. At a
        # small size when the pipeline takes one: what the trace learns does not depend on it, and the default size
        # of a video pipeline (LTX-2's 121 frames) costs minutes and gigabytes.
        self._probe_prompts = list(PROBE_PROMPTS)
        first = self._observe_at_probe_size(teacher, denoisers)
        encoder_calls, denoiser_calls, per_step = self._loop_calls(first)
        masked = {mask is not None for _, mask, _ in encoder_calls}
        if len(masked) > 1:
            raise IncompatibleModelError(
                f"{name} calls {slot} with an attention mask for some prompts and without for others; the trace "
                "needs one way: a family file can serve it.")
        # A fixed call length shows as one length for every call: of the two probes (prompts and negatives), of one
        # short prompt twice, and of a prompt longer than any pipeline keeps (the length it truncates to).
        short = self._probe_tokens([PROBE_PROMPTS[0]] * 2, [PROBE_NEGATIVES[0]] * 2)
        widest = self._widest_calls()
        lengths = {ids.shape[1] for ids, _, _ in [*encoder_calls, *short]}
        # (a pipeline that pads to a length without truncating keeps its fixed length for prompts that fit)
        truncated = [call for call in widest if call[0].shape[1] < LONG_PROBE_WORDS]
        lengths |= {ids.shape[1] for ids, _, _ in truncated} if len(truncated) == len(widest) else set()
        variable = len(lengths) > 1
        if variable:
            # Per-prompt lengths (padding to the batch's longest, prompts and negatives at different lengths, a call
            # per prompt): `__call__` runs one prompt at a time, its calls at their own lengths, each padded to the
            # longest call of the batch. What follows is learned from a one-prompt run.
            self._check_solo_calls(widest)
            self._probe_prompts = [PROBE_PROMPTS[1]]
            encoder_calls, denoiser_calls, per_step = self._loop_calls(self._observe_run(teacher, self._denoisers))
            self._check_solo_calls(encoder_calls)
        call_length = max(lengths)

        # 2. Which encoder calls carry negatives: those whose tokens change with the negative prompt, or do not
        # change with the prompt (a pipeline's own fixed negative, as FLUX.2 [klein] encodes "" without taking one).
        count = len(self._probe_prompts)
        other = self._probe_tokens(self._probe_prompts, [PROBE_NEGATIVES[1]] * count)
        short = self._probe_tokens([PROBE_PROMPTS[0]] * count, [PROBE_NEGATIVES[0]] * count)
        layout = tuple("prompt" if _equal(a[0], b[0]) and not _equal(a[0], c[0]) else "negative"
                       for a, b, c in zip(encoder_calls, other, short, strict=True))

        # 3. Which denoiser inputs derive from the encoder: they change when only its outputs change.
        reference = denoiser_calls[:per_step]
        perturbed = self._capture(lambda out: self._map_output(out, lambda x: x + torch.randn_like(x)), reference)
        text_leaves = []
        for base, moved in zip(reference, perturbed, strict=True):
            a, b = pytree.tree_leaves(base["inputs"]), pytree.tree_leaves(moved["inputs"])
            text_leaves.append(tuple(
                i for i, (x, y) in enumerate(zip(a, b, strict=True))
                if isinstance(x, torch.Tensor) and (x.shape != y.shape or not torch.equal(x, y))))
        if not any(text_leaves):
            raise IncompatibleModelError(
                f"{name}.{slot} feeds no denoiser input (its outputs change nothing the denoiser sees); there is "
                "nothing to distil: pass the slot= of the encoder the denoiser reads.")
        # Guidance: CFG where negatives are encoded; else embedded where the scale changes a denoiser input.
        guidance = "cfg" if "negative" in layout else None
        if guidance is None and self._accepts("guidance_scale"):
            guided = self._capture(lambda out: out, reference, guidance=2 * PROBE_GUIDANCE)
            for base, moved in zip(reference, guided, strict=True):
                a, b = pytree.tree_leaves(base["inputs"]), pytree.tree_leaves(moved["inputs"])
                if any(isinstance(x, torch.Tensor) and (x.shape != y.shape or not torch.equal(x, y))
                       for x, y in zip(a, b, strict=True)):
                    guidance = "embedded"
        names = tuple(tuple(self._leaf_names(call["inputs"])[i] for i in leaves)
                      for call, leaves in zip(reference, text_leaves, strict=True))

        # 4. Which outputs the pipeline reads: those the text-derived inputs have a gradient with respect to.
        read = self._read_fields(reference, text_leaves)
        if not read:
            raise IncompatibleModelError(
                f"{name}'s denoiser inputs do not depend on any output of {slot} the trace can see; a family file "
                "can serve it.")
        sample = encoder_calls[0][2]
        width = next(h for h in self._fields(sample) if h is not None).shape[-1]
        if kind == "llm":
            count = teacher.config.get_text_config().num_hidden_layers + 1
            if getattr(teacher.config, "model_type", "") == "shrunk_llm":
                count, width = teacher.config.teacher_num_hidden_states, teacher.config.teacher_hidden_size
        else:
            count = 1
        layers = tuple(sorted({count - 1 if r == "last_hidden_state" else r % count for r in read}))
        if kind in ("t5", "umt5"):
            if read != ["last_hidden_state"]:
                raise IncompatibleModelError(
                    f"{name} reads hidden_states {[r for r in read if r != 'last_hidden_state']} of its "
                    f"{kind.upper()} encoder; a {kind.upper()} student returns the last hidden state only: a family "
                    "file can serve it.")
            layers = None
        return TraceReport(
            pipeline=name, slots=slots, slot=slot, tokenizer_slot=tokenizer_slot, teacher_class=type(teacher).__name__,
            kind=kind, call_length=call_length, uses_attention_mask=masked.pop(), hidden_state_layers=layers,
            hidden_size=width, num_hidden_states=count, reads_last="last_hidden_state" in read, encoder_calls=layout,
            guidance=guidance,
            denoisers=tuple(dict.fromkeys(call["module"] for call in denoiser_calls)), calls_per_step=per_step,
            text_inputs=names, variable_length=variable, text_leaves=tuple(text_leaves),
        )

    def _loop_calls(self, seen: dict[str, Any]) -> tuple[list, list, int]:
        """The encoder calls, the denoiser calls in the loop and the calls per step of an observed run."""
        name, slot = self.pipeline_class, self._slot
        encoder_calls, denoiser_calls, steps = seen["encoder"], seen["denoiser"], seen["steps"]
        if not encoder_calls:
            raise IncompatibleModelError(f"{name} never called {slot} in __call__; pass the slot it encodes with.")
        # The denoisers are the models called at every scheduler step; one called only before the loop (LTX-2's
        # text connectors) is prompt code, and runs as such.
        in_loop = [m for m in dict.fromkeys(c["module"] for c in denoiser_calls)
                   if {c["step"] for c in denoiser_calls if c["module"] == m} == set(range(steps))]
        denoiser_calls = [c for c in denoiser_calls if c["module"] in in_loop]
        self._denoisers = in_loop
        if not denoiser_calls or steps == 0 or len(denoiser_calls) % steps:
            raise IncompatibleModelError(
                f"{name} called its denoiser {len(denoiser_calls)} times over {steps} scheduler steps; the trace "
                "needs the same denoiser calls at every step.")
        return encoder_calls, denoiser_calls, len(denoiser_calls) // steps

    def _widest_calls(self) -> list[tuple]:
        """The encoder calls (ids and masks) for a prompt and negative longer than any the pipeline keeps."""
        long = " ".join(["red"] * LONG_PROBE_WORDS)
        with _quiet("diffusers", "transformers"):  # not the truncation warnings that quote the cut 4000 words
            try:
                return self._probe_tokens([long], [long])
            except IncompatibleModelError:
                raise
            except Exception as error:  # noqa: BLE001 (a pipeline that refuses an over-long prompt: no widest call)
                logger.debug("%s refused the trace's longest probe (%s).", self.pipeline_class, error)
                return []

    def _check_solo_calls(self, calls: list[tuple]) -> None:
        """Refuse what one-prompt runs cannot serve: calls that batch several texts, or prompts never truncated."""
        batched = sorted({ids.shape[0] for ids, _, _ in calls} - {1})
        if batched:
            raise IncompatibleModelError(
                f"{self.pipeline_class} encodes at per-prompt lengths and calls {self._slot} on {batched[0]} texts "
                "at once for one prompt (prompt and negative padded together); the trace cannot follow it: a "
                "family file can serve it.")
        width = max((ids.shape[1] for ids, _, _ in calls), default=LONG_PROBE_WORDS)
        if width >= LONG_PROBE_WORDS:
            raise IncompatibleModelError(
                f"{self.pipeline_class} encodes at per-prompt lengths and keeps a {LONG_PROBE_WORDS}-word prompt "
                "whole (or refuses it); the trace needs the longest call it truncates to: pass max_sequence_length "
                "in call_kwargs.")

    def _kind(self, teacher: torch.nn.Module) -> str:
        from encoder_shrink.student_kinds import kind_of_teacher, registered_student_kinds

        kind = kind_of_teacher(teacher.config)
        if kind is None:
            raise IncompatibleModelError(
                f"{self.pipeline_class}.{self._slot} is a {type(teacher).__name__} "
                f"({getattr(teacher.config, 'model_type', '')}); encoder-shrink shrinks "
                f"{', '.join(registered_student_kinds())} text encoders, not this kind yet: nothing was written.")
        return kind.name

    def _probe_sizes(self) -> dict[str, int]:
        r"""
        A small `height`/`width` (and `num_frames`) for the trace's own probes, where `__call__` takes them and the
        caller's `call_kwargs` do not set them: 4 latent pixels per side times the denoiser's patch (at most the
        pipeline's default), and 9 frames (a valid length for 4k+1 and 8k+1 video models).
        """
        pipe, sizes = self.pipe, {}
        if self._accepts("height") and self._accepts("width") and not {"height", "width"} & set(self.call_kwargs):
            factor = next((getattr(pipe, name) for name in ("vae_scale_factor", "vae_scale_factor_spatial",
                                                            "vae_spatial_compression_ratio")
                           if isinstance(getattr(pipe, name, None), int)), None)
            patch = getattr(getattr(self.denoiser_module, "config", None), "patch_size", None) or 1
            patch = max(patch) if isinstance(patch, (tuple, list)) else patch
            if isinstance(factor, int) and isinstance(patch, int):
                small = 4 * factor * patch
                default = getattr(pipe, "default_sample_size", None)
                if not isinstance(default, int) or small < default * factor:
                    sizes.update(height=small, width=small)
        for name in ("num_frames", "video_length"):
            if self._accepts(name) and name not in self.call_kwargs:
                sizes[name] = 9
        return sizes

    @property
    def denoiser_module(self) -> torch.nn.Module:
        return getattr(self.pipe, self._denoisers[0])

    def _observe_at_probe_size(self, teacher, denoisers) -> dict[str, Any]:
        """`_observe_run` at the probe size (`_probe_sizes`); at the caller's size if the pipeline refuses it."""
        sizes = self._probe_sizes()
        given = dict(self.call_kwargs)
        # A pipeline may want a multiple of more than its VAE's factor (LTX-2: 32 px): the size doubles, 4 times.
        for _ in range(4 if sizes else 0):
            # (the trace's later probes run at the same size: `_trace` restores the caller's afterwards)
            self.call_kwargs = {**given, **sizes}
            try:
                seen = self._observe_run(teacher, denoisers)
                self.probe_kwargs = sizes
                return seen
            except IncompatibleModelError:
                raise
            except Exception as error:  # noqa: BLE001 (a size the pipeline's checks refuse)
                logger.debug("%s refused the probe size %s (%s).", self.pipeline_class, sizes, error)
                if "height" not in sizes:
                    break
                sizes = {**sizes, "height": 2 * sizes["height"], "width": 2 * sizes["width"]}
        self.call_kwargs = given  # probed at the pipeline's own size
        self.probe_kwargs = {}
        return self._observe_run(teacher, denoisers)

    def _observe_run(self, teacher, denoisers) -> dict[str, Any]:
        """The probe prompts sampled for 2 steps by `__call__`, every encoder and denoiser call recorded."""
        seen: dict[str, Any] = {"encoder": [], "denoiser": [], "steps": 0}

        def encoder(original, *args, **kwargs):
            if seen["steps"]:
                raise _Refused(
                    f"{self.pipeline_class} calls {self._slot} inside its denoising loop; the trace needs the prompt "
                    "encoded before the loop: a family file can serve it.")
            output = original(*args, **kwargs)
            self._last_output = output
            ids, mask = self._encoder_inputs(args, kwargs)
            seen["encoder"].append((ids.detach().clone(), None if mask is None else mask.detach().clone(), output))
            return output

        def denoiser(name, original, *args, **kwargs):
            output = original(*args, **kwargs)
            seen["denoiser"].append({"module": name, "inputs": _detached((args, kwargs)), "output": _detached(output),
                                     "step": seen["steps"]})
            return output

        def count():
            seen["steps"] += 1

        with torch.no_grad(), self._hooked(encoder, denoiser, on_step=count):
            try:
                self._call(self._probe_prompts, [PROBE_NEGATIVES[0]] * len(self._probe_prompts), PROBE_GUIDANCE,
                           PROBE_STEPS)
            except _Refused as refused:
                raise IncompatibleModelError(str(refused)) from None
        return seen

    @staticmethod
    def _encoder_inputs(args, kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if ids is None:
            raise _Refused("the pipeline calls its text encoder without input_ids (inputs_embeds); the trace "
                           "needs token ids: a family file can serve it.")
        return ids, mask

    def _map_output(self, output, function):
        """The encoder's output with `function` applied to `last_hidden_state` and every hidden state."""
        if isinstance(output, tuple):
            return tuple(self._map_output(o, function) if isinstance(o, tuple) else function(o) for o in output)
        updated = copy.copy(output)
        for key in list(output.keys()):
            value = output[key]
            if key == "last_hidden_state":
                updated[key] = function(value)
            elif key == "hidden_states" and value is not None:
                updated[key] = tuple(None if h is None else function(h) for h in value)
        return updated

    def _capture(self, transform, reference: list[dict], grad: bool = False,
                 guidance: float = PROBE_GUIDANCE) -> list[dict]:
        """
        Run `__call__` until the first scheduler step's denoiser calls, the encoder's outputs passed through
        `transform`; the denoiser does not run: each call returns the `reference` call's prediction. Returns the
        calls' inputs.
        """
        captured: list[dict] = []

        def encoder(original, *args, **kwargs):
            return transform(original(*args, **kwargs))

        def denoiser(name, original, *args, **kwargs):
            if len(captured) == len(reference):
                raise _Stop
            captured.append({"module": name, "inputs": _cloned((args, kwargs))})
            return reference[len(captured) - 1]["output"]

        with self._hooked(encoder, denoiser):
            self._call(self._probe_prompts, [PROBE_NEGATIVES[0]] * len(self._probe_prompts), guidance, PROBE_STEPS,
                       grad=grad)
        if len(captured) < len(reference):
            raise IncompatibleModelError(f"{self.pipeline_class} called its denoiser differently on a second run.")
        return captured

    def _read_fields(self, reference, text_leaves) -> list:
        """The encoder outputs the text-derived inputs depend on (by their gradient), over every encoder call."""
        fields: dict[Any, list[torch.Tensor]] = {}

        def leaf(key, x):
            if x is None:
                return None
            made = x.detach().clone().float().requires_grad_(True)
            fields.setdefault(key, []).append(made)
            return made.to(x.dtype) * 1  # not the leaf itself: prompt code may write into it (Cosmos zeroes padding)

        def transform(output):
            updated = copy.copy(output)
            if output.get("last_hidden_state") is not None:
                updated["last_hidden_state"] = leaf("last_hidden_state", output["last_hidden_state"])
            if output.get("hidden_states") is not None:
                updated["hidden_states"] = tuple(leaf(i, h) for i, h in enumerate(output["hidden_states"]))
            return updated

        if isinstance(self._last_output, tuple):
            raise IncompatibleModelError(
                f"{self.pipeline_class} calls {self._slot} with return_dict=False; the trace reads named outputs: a "
                "family file can serve it.")
        with torch.enable_grad():
            captured = self._capture(transform, reference, grad=True)
            generator = torch.Generator().manual_seed(0)
            total = 0
            for call, leaves in zip(captured, text_leaves, strict=True):
                flat = pytree.tree_leaves(call["inputs"])
                for i in leaves:
                    value = flat[i]
                    if not value.requires_grad:
                        raise IncompatibleModelError(
                            f"{self.pipeline_class}'s prompt code cuts the gradient between {self._slot} and the "
                            "denoiser (no_grad or a detach); the student could not learn through it.")
                    weights = torch.rand(value.shape, generator=generator).to(value.device)
                    total = total + (value.float() * weights).sum()
            total.backward()
        return [key for key, leaves in fields.items()
                if any(x.grad is not None and bool(x.grad.abs().sum() > 0) for x in leaves)]

    # --- encoder calls on demand ------------------------------------------------------------------------------------

    def _probe_tokens(self, prompts: list[str], negatives: list[str]) -> list[tuple]:
        """The encoder calls' ids and masks for a prompt-code run (the encoder does not run: it returns zeros)."""
        return self._prompt_code(prompts, negatives, mode="tokens")

    def _prompt_code(self, prompts, negatives, mode: str, features: list[torch.Tensor] | None = None) -> list[tuple]:
        """
        Run `__call__` up to its first denoiser call. `mode` "tokens": the encoder returns zeros and its inputs are
        recorded; "teacher": it runs, and its inputs and read features are recorded.
        """
        calls: list[tuple] = []
        slot_module = getattr(self.pipe, self._slot)

        def encoder(original, *args, **kwargs):
            ids, mask = self._encoder_inputs(args, kwargs)
            if mode == "teacher":
                output = original(*args, **kwargs)
                calls.append((ids, mask, self._features(output)))
                return output
            calls.append((ids, mask, None))
            return self._zeros_like_output(slot_module, ids, kwargs)

        def denoiser(name, original, *args, **kwargs):
            raise _Stop

        with torch.no_grad(), self._hooked(encoder, denoiser):
            try:
                self._call(prompts, negatives, PROBE_GUIDANCE if negatives is not None else None, PROBE_STEPS)
            except _Refused as refused:
                raise IncompatibleModelError(str(refused)) from None
        return calls

    def _zeros_like_output(self, module, ids, kwargs):
        """What the encoder would return, as zeros of its shapes (a probe that only wants the tokens)."""
        last = self._last_output
        shape = (ids.shape[0], ids.shape[1])
        return self._replay_output(last, [None if h is None else
                                          torch.zeros(*shape, h.shape[-1], dtype=h.dtype, device=h.device)
                                          for h in self._fields(last)])

    def _fields(self, output) -> list[torch.Tensor | None]:
        """The tensors of an encoder output: its last hidden state (or None), then each hidden state."""
        return [output.get("last_hidden_state"), *(output.get("hidden_states") or ())]

    def _replay_output(self, template, fields: list[torch.Tensor | None]):
        updated = copy.copy(template)
        if template.get("last_hidden_state") is not None:
            updated["last_hidden_state"] = fields[0]
        if template.get("hidden_states") is not None:
            updated["hidden_states"] = tuple(fields[1:])
        return updated

    def _features(self, output) -> torch.Tensor:
        """The features the pipeline reads from an encoder output, side by side (what a student returns)."""
        layers = self.report.hidden_state_layers
        if layers is None:
            return output["last_hidden_state"]
        last = self.report.num_hidden_states - 1
        return torch.cat([output["last_hidden_state"] if k == last and self.report.reads_last
                          else output["hidden_states"][k]
                          for k in layers], dim=-1)

    def _output_from_features(self, template, features: torch.Tensor):
        """An encoder output the pipeline reads `features` from (the unread hidden states are zeros, not stored)."""
        layers = self.report.hidden_state_layers
        if layers is None:
            return self._replay_output(template, [features, *([features] * (self.report.num_hidden_states - 1)
                                                              if template.get("hidden_states") is not None else [])])
        chunks = dict(zip(layers, features.split(self.report.hidden_size, dim=-1), strict=True))
        zero = features.new_zeros(()).expand(*features.shape[:-1], self.report.hidden_size)
        hidden = [chunks.get(i, zero) for i in range(self.report.num_hidden_states)]
        return self._replay_output(template, [hidden[-1], *hidden])

    def _encoder_calls(self, texts: list[str], mode: str) -> list[tuple]:
        """Per text, in order: its ids, its mask and (mode "teacher") its features, as the pipeline calls for it."""
        if self.report.variable_length:
            return [self._solo_call(text, mode) for text in texts]
        prompts = list(dict.fromkeys(t for t in texts if not t.startswith(NEGATIVE)))
        negatives = list(dict.fromkeys(t[len(NEGATIVE):] for t in texts if t.startswith(NEGATIVE)))
        rows: dict[str, tuple] = {}
        cfg = self.report.guidance == "cfg"
        for group, marked in ((prompts, False), (negatives, True)):
            if not group:
                continue
            kind = "negative" if marked else "prompt"
            if marked:
                calls = self._prompt_code(group, group, mode)
            else:
                calls = self._prompt_code(group, [""] * len(group) if cfg else None, mode)
            layout = self.report.encoder_calls if (cfg or marked) else tuple(
                k for k in self.report.encoder_calls if k == "prompt")
            for call_kind, (ids, mask, features) in zip(layout, calls, strict=True):
                if call_kind != kind:
                    continue
                for r, text in enumerate(group):
                    key = NEGATIVE + text if marked else text
                    rows[key] = (ids[r:r + 1], None if mask is None else mask[r:r + 1],
                                 None if features is None else features[r:r + 1])
        return [rows[t] for t in texts]

    def _solo_call(self, text: str, mode: str) -> tuple:
        """One text's encoder call in a one-prompt run (per-prompt lengths): its ids, its mask, its features."""
        key = (text, self._length_override)
        if mode == "tokens" and key in self._solo_tokens:
            self._solo_tokens.move_to_end(key)
            return (*self._solo_tokens[key], None)
        marked = text.startswith(NEGATIVE)
        body = text[len(NEGATIVE):] if marked else text
        cfg = self.report.guidance == "cfg"
        calls = self._prompt_code([body], [body] if marked else ([""] if cfg else None), mode)
        layout = self.report.encoder_calls if (cfg or marked) else tuple(
            k for k in self.report.encoder_calls if k == "prompt")
        kind = "negative" if marked else "prompt"
        if len(calls) == len(layout):
            ids, mask, features = next(call for k, call in zip(layout, calls, strict=True) if k == kind)
        elif len(calls) == layout.count("prompt") and not marked:  # the negative not encoded (below)
            ids, mask, features = calls[0]
        elif len(calls) == layout.count("prompt"):
            # No call for this negative (Bria samples an empty negative as zeros, never encoding it): a row of
            # length 0, which no run reads (of the run's own call's dtypes).
            ids, mask, features = calls[0]
            ids, mask = ids[:, :0], None if mask is None else mask[:, :0]
            features = None if features is None else features[:, :0]
        else:
            raise IncompatibleModelError(
                f"{self.pipeline_class} called {self._slot} {len(calls)} times for one prompt where the trace saw "
                f"{len(layout)} calls; the trace cannot tell them apart: a family file can serve it.")
        ids, mask = ids.cpu(), None if mask is None else mask.cpu()  # (kept on the CPU: a few thousand of them)
        self._solo_tokens[key] = (ids, mask)
        while len(self._solo_tokens) > SOLO_TOKENS_KEPT:
            self._solo_tokens.popitem(last=False)
        return ids, mask, features

    # --- a trajectory -----------------------------------------------------------------------------------------------

    def _runs(self, texts: list[str]) -> list[tuple[list[str], list[str] | None, list[int]]]:
        """
        The `__call__` runs that sample a batch: one with every prompt, or (per-prompt lengths) one per prompt; each
        with the indices of its encoder texts (in `encoder_texts` order: call kind by call kind).
        """
        prompts, negatives = self._split(texts)
        if not self.report.variable_length:
            return [(prompts, negatives, list(range(len(texts))))]
        kinds = len(self.report.encoder_calls)
        return [([prompt], None if negatives is None else [negatives[i]],
                 [k * len(prompts) + i for k in range(kinds)]) for i, prompt in enumerate(prompts)]

    def _sample(self, trajectory: Trajectory, teacher_features: torch.Tensor, guidance_scale) -> None:
        """
        Sample the trajectory with the pipeline's `__call__`, the teacher's features in the slot; record every
        denoiser call (the calls of a step: run by run, in each run's order) and the other encoders' outputs.
        """
        extras = trajectory.extras
        texts = extras["texts"]
        generator = torch.Generator("cpu")
        if extras["generator"] is not None:
            generator.set_state(extras["generator"])
        else:
            generator.manual_seed(0)
        records, others_records, states, latents = [], [], [], []
        for prompts, negatives, rows in self._runs(texts):
            blocks = self._blocks(texts, teacher_features, rows)
            record: list[dict] = []
            # The other (frozen) text encoders' outputs, in call order: the student's passes replay them rather
            # than re-encode the same prompts at every training step.
            others_record: list[tuple] = []

            def encoder(original, *args, _blocks=blocks, **kwargs):
                return self._output_from_features(self._last_output, _blocks.pop(0))

            def denoiser(name, original, *args, _record=record, **kwargs):
                output = original(*args, **kwargs)
                _record.append({"module": name, "inputs": _detached((args, kwargs)), "output": _detached(output)})
                return output

            def others(name, original, *args, _record=others_record, **kwargs):
                output = original(*args, **kwargs)
                _record.append((name, _detached((args, kwargs)), _detached(output)))
                return output

            states.append(generator.get_state())
            with torch.no_grad(), self._hooked(encoder, denoiser, others=others):
                result = self._call(prompts, negatives, guidance_scale, extras["steps"], None, extras["resolution"],
                                    extras["num_frames"], generator=generator)
            records.append(record)
            others_records.append(others_record)
            latents.append(result[0])
        per_step = self.report.calls_per_step
        if len({len(record) for record in records}) > 1 or len(records[0]) % per_step:
            raise IncompatibleModelError(
                f"{self.pipeline_class} called its denoiser {[len(r) for r in records]} times for the batch's "
                f"prompts, where the trace saw {per_step} calls per step; sample at a guidance the trace saw (above "
                "1 for CFG).")
        extras["steps_record"] = [[call for record in records for call in record[i:i + per_step]]
                                  for i in range(0, len(records[0]), per_step)]
        extras["other_encoder_outputs"] = others_records
        extras["run_generators"] = states
        trajectory.latents = torch.cat(latents)

    def _text_leaves(self, trajectory: Trajectory, features: torch.Tensor, guidance_scale) -> list[list]:
        """
        The text-derived denoiser inputs the pipeline's prompt code makes from `features` (gradients kept), per
        denoiser call of a step in `steps_record`'s order.
        """
        cached = self._student_cache
        if cached is not None and cached[0] is features and cached[1] is trajectory:
            return cached[2]
        extras = trajectory.extras
        texts = extras["texts"]
        per_step = self.report.calls_per_step
        leaves: list[list] = []
        for run, (prompts, negatives, rows) in enumerate(self._runs(texts)):
            blocks = self._blocks(texts, features, rows)
            reference = extras["steps_record"][0][run * per_step:(run + 1) * per_step]
            captured: list = []

            def encoder(original, *args, _blocks=blocks, **kwargs):
                return self._output_from_features(self._last_output, _blocks.pop(0))

            def denoiser(name, original, *args, _captured=captured, _reference=reference, **kwargs):
                if len(_captured) == len(_reference):
                    raise _Stop
                _captured.append(_cloned((args, kwargs)))
                return _reference[len(_captured) - 1]["output"]

            replays = iter(extras["other_encoder_outputs"][run])

            def others(name, original, *args, _replays=replays, **kwargs):
                # The sampling run's output for the same call (same encoder, equal inputs), else a real forward.
                recorded = next(_replays, None)
                if recorded is not None and recorded[0] == name and _equal(recorded[1], (args, kwargs)):
                    return _detached(recorded[2])  # a copy: prompt code may change what it gets in place
                return original(*args, **kwargs)

            with self._hooked(encoder, denoiser, others=others):
                self._call(prompts, negatives, guidance_scale, extras["steps"], extras["run_generators"][run],
                           extras["resolution"], extras["num_frames"], grad=True)
            leaves += [[pytree.tree_leaves(call)[i] for i in positions]
                       for call, positions in zip(captured, self.report.text_leaves, strict=True)]
        self._student_cache = (features, trajectory, leaves)
        return leaves

    def _blocks(self, texts: list[str], features: torch.Tensor, rows: list[int]) -> list[torch.Tensor]:
        """
        The encoder outputs of a run: `features`' rows (one per text, in `encoder_texts` order) of its texts, split
        into its encoder calls; per-prompt lengths: each row cut to its call's length.
        """
        # Copies, not `split`'s views: prompt code may write into the embeddings (Cosmos zeroes the padding), which
        # autograd refuses on the views of a multi-output function.
        if self.report.variable_length:  # (a text its run never encodes has length 0, and no block)
            lengths = {r: self._solo_call(texts[r], "tokens")[0].shape[1] for r in rows}
            return [features[r:r + 1, :lengths[r]].clone() for r in rows if lengths[r]]
        batch = len(texts) // len(self.report.encoder_calls)
        return [block.clone() for block in features.split(batch)]

    @staticmethod
    def _split(texts: list[str]) -> tuple[list[str], list[str] | None]:
        prompts = [t for t in texts if not t.startswith(NEGATIVE)]
        negatives = [t[len(NEGATIVE):] for t in texts if t.startswith(NEGATIVE)]
        return prompts, (negatives or None)

    @staticmethod
    def _leaf_names(inputs) -> list[str]:
        args, kwargs = inputs
        names = []
        for i, value in enumerate(args):
            names += [f"args[{i}]"] * len(pytree.tree_leaves(value))
        for key, value in kwargs.items():
            count = len(pytree.tree_leaves(value))
            names += [key if count == 1 else f"{key}[{j}]" for j in range(count)]
        return names
