"""The shared suite every registered pipeline family passes: one parametrised test per promise, no per-family copies.

A new family (one file under encoder_shrink/pipelines/) is picked up by every test here through the registry.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from encoder_shrink import adapter_for, tiny
from encoder_shrink.pipelines import get_adapter

FAMILIES = tiny.TINY_FAMILIES
PROMPTS = ["two red circles left of a blue square", "A Cat holding a sign that says 'hello'"]
PROMPT = PROMPTS[0]
# CPU kernels are not bit-reproducible across calls with different batch layouts; 1e-4 is far below any real change.
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _load(family, path_or_dirs, **kwargs):
    path = path_or_dirs[family] if isinstance(path_or_dirs, dict) else path_or_dirs
    pipe = tiny.tiny_pipeline_class(family).from_pretrained(path, **kwargs)
    adapter_for(pipe).prepare_for_sampling()  # what the family's documentation has users do (Allegro: VAE tiling)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _guidance(adapter) -> float | None:
    return 4.5 if adapter.guidance else None


def _student(adapter, **config):
    student = tiny.tiny_student(teacher_dim=adapter.conditioning_width, pipeline_family=adapter.name,
                                   student_class=adapter.student_class(), **adapter.student_fields(), **config)
    assert isinstance(student, adapter.student_class())
    return student


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_recognises_its_pipeline(family, tiny_pipeline_dirs):
    pipe = _load(family, tiny_pipeline_dirs)
    adapter = adapter_for(pipe)
    assert adapter.name == family and type(pipe).__name__ == adapter.pipeline_class
    assert adapter.teacher is getattr(pipe, adapter.encoder_slot)
    assert adapter.tokenizer is getattr(pipe, adapter.tokenizer_slot)
    rows = adapter.encode_teacher(["a cat"], adapter.max_sequence_length)
    assert rows["t5"].shape == (1, adapter.encoded_length(adapter.max_sequence_length), adapter.conditioning_width)


@pytest.mark.parametrize("family", FAMILIES)
def test_deployment_length_is_the_pipelines_default_or_says_why_not(family):
    adapter = get_adapter(family)
    call = inspect.signature(adapter.diffusers_pipeline_class().__call__)
    if "max_sequence_length" not in call.parameters:  # a length fixed in the pipeline's code (Latte)
        assert adapter.length_note and str(adapter.max_sequence_length) in adapter.length_note
        return
    default = call.parameters["max_sequence_length"].default
    if adapter.max_sequence_length != default:
        assert adapter.length_note, f"{family} encodes at {adapter.max_sequence_length}, the pipeline at {default}"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_student_sees_the_teachers_tokens(family, tiny_pipeline_dirs):
    adapter = adapter_for(_load(family, tiny_pipeline_dirs))
    length = adapter.max_sequence_length
    texts = adapter.encoder_texts(PROMPTS)
    rows = adapter.encode_teacher(texts, length)
    ids, mask = adapter.tokenize(texts, length)
    assert (adapter.encoder_mask(mask) is not None) == (adapter.uses_attention_mask or not adapter.pads_prompts)
    with torch.no_grad():
        embeddings = adapter.encoder_features(adapter.teacher, ids, adapter.encoder_mask(mask))
    attended = adapter.attended(mask)
    if attended is not None:  # the rows only count where the denoiser reads them
        embeddings, rows["t5"] = embeddings * attended[..., None], rows["t5"] * attended[..., None]
    torch.testing.assert_close(embeddings, rows["t5"], **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_trajectory_reproduces_pipeline_sampling(family, tiny_pipeline_dirs):
    pipe = _load(family, tiny_pipeline_dirs)
    adapter = adapter_for(pipe)
    kwargs = tiny.tiny_call_kwargs(pipe, num_inference_steps=3, seed=11)
    kwargs["output_type"] = "latent"
    guidance = _guidance(adapter)
    if guidance is not None:
        kwargs.update(adapter.guidance_call_kwargs(guidance))
    expected = tiny.generated(pipe(prompt=list(PROMPTS), **kwargs))  # a copy: ZImagePipeline rewrites its list

    length = adapter.max_sequence_length
    texts = adapter.encoder_texts(PROMPTS)
    rows = adapter.encode_teacher(texts, length)
    _, mask = adapter.tokenize(texts, length)
    trajectory = adapter.start_trajectory(len(PROMPTS), kwargs["height"], 3, torch.Generator("cpu").manual_seed(11),
                                          num_frames=kwargs.get(adapter.frames_argument))
    with torch.no_grad():
        for t in trajectory.timesteps:
            adapter.step(trajectory, adapter.predict(trajectory, t, rows["t5"], rows, mask, guidance), t)
    torch.testing.assert_close(trajectory.latents, torch.as_tensor(expected), atol=1e-5, rtol=1e-4)


def _source(dotted: str) -> str:
    """The source of a dotted diffusers name (module, class, method)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return inspect.getsource(target)
    raise AssertionError(f"{dotted} does not exist in the installed diffusers")


def _contains(source: str, line: str) -> bool:
    squeeze = lambda text: re.sub(r"\s+", "", text)  # noqa: E731
    return squeeze(line) in squeeze(source)


@pytest.mark.parametrize("family", [f for f in FAMILIES if get_adapter(f).copied_from])
def test_logic_copied_from_diffusers_has_not_drifted(family):
    for copied in get_adapter(family).copied_from:
        source = _source(copied.source)
        for line in copied.lines:
            assert _contains(source, line), f"{copied.source} changed: {line!r} is no longer there"
    # the check can fail: an altered line is not found
    assert not _contains(source, copied.lines[0].replace("(", "[", 1) + "#")


def _admits(annotation, student) -> bool:
    """Whether a pipeline's type annotation (a class, a union, a string) admits `student`'s class."""
    import typing

    if isinstance(annotation, str):
        return any(cls.__name__ in annotation for cls in type(student).__mro__ if cls.__name__ != "object")
    options = typing.get_args(annotation) or (annotation,)
    return any(isinstance(option, type) and isinstance(student, option) for option in options)


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_from_pretrained_with_student_uses_it_without_type_warnings(family, tiny_pipeline_dirs, caplog):
    teacher_pipe = _load(family, tiny_pipeline_dirs)
    adapter = adapter_for(teacher_pipe)
    slot, student = adapter.encoder_slot, _student(adapter)

    def load_with(encoder):
        caplog.clear()
        diffusers_logging.enable_propagation()
        try:
            with caplog.at_level(logging.WARNING):
                return _load(family, tiny_pipeline_dirs, **{slot: encoder})
        finally:
            diffusers_logging.disable_propagation()

    pipe = load_with(student)
    assert "non-standard module" not in caplog.text
    annotation = inspect.signature(type(pipe).__init__).parameters[slot].annotation
    if _admits(annotation, student):
        assert "Expected types" not in caplog.text
    else:
        # A slot annotated with the LLM's own class (Mistral3ForConditionalGeneration, Gemma2PreTrainedModel, ...):
        # diffusers names the mismatch, and loads the student all the same.
        assert f"Expected types for {slot}" in caplog.text and type(student).__name__ in caplog.text
    assert getattr(pipe, slot) is student
    control = tiny.tiny_student().encoder  # a T5Stack: no T5EncoderModel, no LLM class
    if not _admits(annotation, control):  # Z-Image's slot takes any PreTrainedModel
        load_with(control)  # control: the capture does see the warning for an encoder of another class
        assert f"Expected types for {slot}" in caplog.text

    # the pipeline's own prompt code runs the student, and its output conditions the denoiser
    seen = []
    hook = student.register_forward_hook(lambda module, args, output: seen.append(output[0]))
    try:
        images = tiny.generated(pipe(prompt=PROMPT, **tiny.tiny_call_kwargs(pipe)))
    finally:
        hook.remove()
    assert seen and seen[0].shape[-1] == adapter.conditioning_width
    teacher_images = tiny.generated(teacher_pipe(prompt=PROMPT, **tiny.tiny_call_kwargs(teacher_pipe)))
    assert images.shape == teacher_images.shape and np.isfinite(images).all()
    assert not np.allclose(images, teacher_images)


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_saved_with_the_student_reloads_to_identical_images(family, tiny_pipeline_dirs, tmp_path):
    adapter = adapter_for(_load(family, tiny_pipeline_dirs))
    slot = adapter.encoder_slot
    pipe = _load(family, tiny_pipeline_dirs, **{slot: _student(adapter)})
    pipe.save_pretrained(tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "plain" / slot).iterdir()) == ["config.json", "model.safetensors"]
    reloaded = _load(family, tmp_path / "plain")
    assert type(getattr(reloaded, slot)) is adapter.student_class()
    expected = tiny.generated(pipe(prompt=PROMPT, **tiny.tiny_call_kwargs(pipe)))
    images = tiny.generated(reloaded(prompt=PROMPT, **tiny.tiny_call_kwargs(reloaded)))
    np.testing.assert_array_equal(images, expected)

    # diffusers' serialization with a variant: every component, the student included, writes its variant file
    pipe.save_pretrained(tmp_path / "variant", variant="fp16")
    for component in ("transformer", slot):
        assert sorted(p.name for p in (tmp_path / "variant" / component).glob("*.safetensors")) == [
            "diffusion_pytorch_model.fp16.safetensors" if component == "transformer" else "model.fp16.safetensors"]
    again = _load(family, tmp_path / "variant", variant="fp16")
    assert type(getattr(again, slot)) is adapter.student_class()
    np.testing.assert_array_equal(tiny.generated(again(prompt=PROMPT, **tiny.tiny_call_kwargs(again))), expected)


DROP_IN = [(family, name) for family in FAMILIES for name in get_adapter(family).drop_in_pipelines]


@pytest.mark.parametrize("family, pipeline_class", DROP_IN)
def test_derivative_pipelines_take_the_familys_student(family, pipeline_class, tmp_path, caplog):
    import diffusers

    adapter_class = get_adapter(family)
    components, call = adapter_class.tiny_drop_in(pipeline_class)
    cls = getattr(diffusers, pipeline_class)
    cls(**components).save_pretrained(tmp_path / "teacher")
    teacher_pipe = cls.from_pretrained(tmp_path / "teacher")
    adapter = adapter_for(teacher_pipe)
    assert adapter.name == family and type(teacher_pipe).__name__ == pipeline_class
    student = _student(adapter)
    slot = adapter.encoder_slot
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            pipe = cls.from_pretrained(tmp_path / "teacher", **{slot: student})
    finally:
        diffusers_logging.disable_propagation()
    assert "Expected types" not in caplog.text and getattr(pipe, slot) is student
    kwargs = {
        "num_inference_steps": 2,
        "output_type": "np",
        "max_sequence_length": adapter.max_sequence_length,
        **call,
    }
    seen = []
    hook = student.register_forward_hook(lambda module, args, output: seen.append(output[0]))
    try:
        images = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    finally:
        hook.remove()
    assert seen and np.isfinite(images).all()
    teacher_images = teacher_pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert not np.allclose(images, teacher_images)
    pipe.save_pretrained(tmp_path / "with-student")
    reloaded = cls.from_pretrained(tmp_path / "with-student")
    assert type(getattr(reloaded, slot)) is adapter.student_class()
    again = reloaded(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(again, images)
    # the adapter does not reproduce this pipeline's sampling: distilling on it is refused in one line
    from encoder_shrink import EncoderShrinker, EncoderShrinkError

    with pytest.raises(EncoderShrinkError, match=f"distil on {adapter.pipeline_class} and load the student into"):
        EncoderShrinker(teacher_pipe)


def test_bfloat16_pipeline_with_bfloat16_student(tiny_pipeline_dirs):
    """FLUX casts prompt embeddings to text_encoder_2.dtype: the student's dtype must be its output dtype."""
    student = tiny.tiny_student(teacher_dim=tiny.T5_TINY_DIM, pipeline_family="flux-dev").to(torch.bfloat16)
    pipe = _load("flux-dev", tiny_pipeline_dirs, text_encoder_2=student, dtype=torch.bfloat16)
    embeds, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=512)
    assert embeds.dtype == torch.bfloat16
    assert np.isfinite(tiny.generated(pipe(prompt=PROMPT, **tiny.tiny_call_kwargs(pipe)))).all()
