"""The traced adapter: a pipeline served by running its own `__call__`, checked against every family file."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from encoder_shrink import EncoderShrinker, tiny
from encoder_shrink.errors import IncompatibleModelError
from encoder_shrink.inspection import inspect_pipeline
from encoder_shrink.pipelines import adapter_for, get_adapter
from encoder_shrink.pipelines.traced import TracedAdapter

PROMPTS = ["a red circle", "two green squares"]
# Registered families whose pipelines encode at per-prompt lengths: Bria encodes each prompt at its own length,
# Qwen-Image pads to the batch's longest, Sana encodes prompts (with an instruction) and negatives at different
# lengths. The trace runs their `__call__` one prompt at a time.
PER_PROMPT_LENGTHS = {"bria", "qwenimage", "sana"}
# CogView3-Plus's family file samples the negative as the pipeline does for negative_prompt=None (zeros); the trace
# passes the recipe's negative, "" here: the two are compared with the pipeline's own output for the same call.
NEGATIVE_AS_ZEROS = {"cogview3plus"}


def _tiny(family):
    adapter = get_adapter(family)
    pipe = tiny.tiny_pipeline_class(family)(**tiny.tiny_pipeline_components(family))
    adapter(pipe).prepare_for_sampling()
    pipe.set_progress_bar_config(disable=True)
    return pipe, adapter.tiny_call_kwargs()


def _sample(adapter, call, guidance, steps=3, seed=5, length=None, prompts=PROMPTS):
    """The adapter's teacher trajectory for `prompts`: its final latents."""
    length = length or adapter.max_sequence_length
    texts = adapter.encoder_texts(prompts, "")
    rows = adapter.encode_teacher(texts, length)
    _, mask = adapter.tokenize(texts, length)
    frames = call.get(adapter.frames_argument)
    trajectory = adapter.start_trajectory(len(prompts), call["height"], steps, torch.Generator().manual_seed(seed),
                                          num_frames=frames, texts=texts)
    with torch.no_grad():
        for t in trajectory.timesteps:
            adapter.step(trajectory, adapter.predict(trajectory, t, rows["t5"], rows, mask, guidance), t)
    return trajectory.latents


@pytest.mark.parametrize("family", tiny.TINY_FAMILIES)
def test_trace_of_a_registered_family_samples_as_its_family_file(family):
    pipe, call = _tiny(family)
    registered = adapter_for(pipe)
    traced = TracedAdapter(pipe, call_kwargs=call)
    # what the trace learned is what the family file states
    report = traced.report
    assert report.variable_length == (family in PER_PROMPT_LENGTHS)
    assert (traced.encoder_slot, traced.uses_attention_mask) == (registered.encoder_slot,
                                                                 registered.uses_attention_mask)
    assert traced.student_class() is registered.student_class()
    assert (traced.guidance is None) == (registered.guidance is None)
    if report.kind == "llm":
        assert traced.teacher_layout()["teacher_layers"] == registered.teacher_layout()["teacher_layers"]
    assert traced.conditioning_width == registered.conditioning_width

    guidance = 3.0 if registered.guidance else None
    length = registered.max_sequence_length
    latents = _sample(traced, call, guidance, length=length)
    # the traced trajectory is the pipeline's own sampling (the teacher's rows come from batches of their own, so a
    # batch-dependent kernel may move the last bits: HiDream's Llama differs by 2e-6); at per-prompt lengths, one
    # prompt per call, drawing from one generator in turn
    generator = torch.Generator().manual_seed(5)
    kwargs = {**call, "num_inference_steps": 3, "generator": generator, "output_type": "latent"}
    if "max_sequence_length" in inspect.signature(pipe.__call__).parameters:
        kwargs["max_sequence_length"] = length
    if guidance is not None:
        kwargs.update(registered.guidance_call_kwargs(guidance))
    batches = [[p] for p in PROMPTS] if report.variable_length else [PROMPTS]
    own = []
    for batch in batches:
        if registered.guidance == "cfg":
            kwargs["negative_prompt"] = [""] * len(batch)
        own.append(pipe(prompt=list(batch), **kwargs)[0])
    torch.testing.assert_close(latents, torch.cat(own), atol=1e-5, rtol=0)
    if family in NEGATIVE_AS_ZEROS:
        return
    # a family file samples the batch at once: at per-prompt lengths, compared on one prompt
    compared = PROMPTS[1:] if report.variable_length else PROMPTS
    torch.testing.assert_close(_sample(traced, call, guidance, length=length, prompts=compared),
                               _sample(registered, call, guidance, length=length, prompts=compared),
                               atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux-dev", "flux2", "wan"])
def test_traced_distillation_learns_and_drops_in(family, tiny_pipeline_dirs, tmp_path):
    # One family per kind of student and per denoiser call pattern: T5 with an embedded guidance, an LLM's three
    # layers, UMT5 with separate conditional and unconditional calls.
    pipe = tiny.load_tiny_pipeline(family, tiny_pipeline_dirs[family])
    call = get_adapter(family).tiny_call_kwargs()
    shrinker = EncoderShrinker(pipe, trace=True, call_kwargs=call)
    assert shrinker.adapter.name == f"traced:{type(pipe).__name__}"
    length = min(128, shrinker.adapter.max_sequence_length)
    student = shrinker.distill(recipe="tiny", output_dir=tmp_path / "out", max_steps=160, max_sequence_length=length,
                               **tiny.tiny_recipe_overrides(family))
    before = shrinker.summary["fidelity_before"]["relative_mse"]
    after = shrinker.summary["fidelity_after"]["relative_mse"]
    assert after < 0.3 * before
    assert shrinker.summary["family"] == f"traced:{type(pipe).__name__}"

    slot = shrinker.adapter.encoder_slot
    pipeline_class = tiny.tiny_pipeline_class(family)
    saved = type(student).from_pretrained(tmp_path / "out" / "student")
    with_student = pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: saved})
    run = {**tiny.tiny_call_kwargs(with_student), "max_sequence_length": length}
    first = tiny.generated(with_student(prompt="a red circle", **run))
    assert np.isfinite(first).all()
    with_student.save_pretrained(tmp_path / "saved")
    reloaded = pipeline_class.from_pretrained(tmp_path / "saved")
    assert type(getattr(reloaded, slot)) is type(student)
    run["generator"] = torch.Generator().manual_seed(0)
    np.testing.assert_array_equal(tiny.generated(reloaded(prompt="a red circle", **run)), first)


def test_trace_refuses_an_encoder_it_cannot_shrink_in_one_line():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny.tiny_sd_components())
    with pytest.raises(IncompatibleModelError, match="CLIPTextModel") as refused:
        adapter_for(pipe, call_kwargs={"height": 16, "width": 16})
    assert "\n" not in str(refused.value) and "nothing was written" in str(refused.value)


def test_trace_refuses_a_text_encoder_that_feeds_no_denoiser_input():
    pipe, call = _tiny("flux-dev")
    # FLUX's CLIP slot feeds the pooled projection: it is read. A slot nobody calls is refused as never called.
    with pytest.raises(IncompatibleModelError, match="no text encoder 'text_encoder_9'"):
        TracedAdapter(pipe, slot="text_encoder_9", call_kwargs=call)


def test_trace_refuses_prompt_upsampling_through_generate():
    from diffusers import FluxPipeline

    class UpsamplingFlux(FluxPipeline):
        def _get_t5_prompt_embeds(self, prompt, *args, **kwargs):
            self.text_encoder_2.generate(torch.zeros(1, 1, dtype=torch.long))
            return super()._get_t5_prompt_embeds(prompt, *args, **kwargs)

    pipe = UpsamplingFlux(**tiny.tiny_pipeline_components("flux-dev"))
    pipe.text_encoder_2.generate = lambda *a, **k: None  # a T5 encoder has no generate; this one says it does
    with pytest.raises(IncompatibleModelError, match="generate"):
        TracedAdapter(pipe, call_kwargs={"height": 16, "width": 16})


def test_trace_refuses_an_encoder_called_inside_the_loop():
    from diffusers import FluxPipeline

    class LoopEncodingFlux(FluxPipeline):
        pass

    pipe = LoopEncodingFlux(**tiny.tiny_pipeline_components("flux-dev"))
    denoiser = pipe.transformer.forward

    def forward(*args, **kwargs):  # the denoiser re-encodes a prompt at every call, as an in-loop encoder would
        pipe.text_encoder_2(torch.ones(1, 4, dtype=torch.long))
        return denoiser(*args, **kwargs)

    pipe.transformer.forward = forward
    with pytest.raises(IncompatibleModelError, match="inside its denoising loop"):
        TracedAdapter(pipe, call_kwargs={"height": 16, "width": 16})


def test_trace_refuses_a_required_image_input():
    from diffusers import FluxPipeline

    class ImageFlux(FluxPipeline):
        def __call__(self, image, prompt=None, **kwargs):
            return super().__call__(prompt=prompt, **kwargs)

    pipe = ImageFlux(**tiny.tiny_pipeline_components("flux-dev"))
    with pytest.raises(IncompatibleModelError, match="requires image"):
        TracedAdapter(pipe, call_kwargs={"height": 16, "width": 16})


@pytest.mark.parametrize("family", ["flux2", "qwenimage"])
def test_inspect_reports_registered_and_traced_families_alike(family):
    pipe, call = _tiny(family)
    registered = inspect_pipeline(pipe, call_kwargs=call)
    traced = inspect_pipeline(pipe, call_kwargs=call, trace=True)
    assert registered["family"] == family and traced["family"] == f"traced:{type(pipe).__name__}"
    for key in ("slot", "student", "attention_mask", "layers_read", "call_length_varies", "student_parameters"):
        assert registered[key] == traced[key], key
    assert traced["call_length_varies"] == (family in PER_PROMPT_LENGTHS)
    assert traced["weights_ratio"] == pytest.approx(traced["teacher_parameters"] / traced["student_parameters"],
                                                    rel=1e-3)
    if family == "flux2":  # (Qwen-Image's widest call is its template plus the tokenizer's longest)
        for key in ("call_length", "denoiser_calls_per_step", "text_derived_inputs"):
            assert registered[key] == traced[key], key
        assert traced["layers_read"] == "hidden_states[10, 20, 30]"
        assert traced["text_derived_inputs"] == [["encoder_hidden_states"]]


def test_inspect_command_prints_a_table_and_writes_json(tiny_pipeline_dirs, tmp_path, capsys):
    import json

    from encoder_shrink.cli import main

    out = tmp_path / "inspect.json"
    assert main(["inspect", "--pipeline", str(tiny_pipeline_dirs["flux-dev"]), "--trace", "--resolution", "16",
                 "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["family"] == "traced:FluxPipeline" and data["slot"] == "text_encoder_2"
    assert data["text_derived_inputs"] == [["encoder_hidden_states"]] and data["guidance"] == "embedded"
    printed = capsys.readouterr().out
    assert "layers_read" in printed and "last_hidden_state" in printed


def test_traced_release_teacher_frees_its_weights_and_trains_the_same_student(tiny_pipeline_dirs, tmp_path):
    from encoder_shrink.distill import TeacherEmbeddingCache

    call = get_adapter("flux2").tiny_call_kwargs()
    students = {}
    for release in (False, True):
        pipe = tiny.load_tiny_pipeline("flux2", tiny_pipeline_dirs["flux2"])
        shrinker = EncoderShrinker(pipe, trace=True, call_kwargs=call)
        students[release] = shrinker.distill(recipe="tiny", prompts=PROMPTS, eval_prompts=["a blue star"],
                                             max_steps=4, max_sequence_length=64, release_teacher=release)
    # the slot keeps a module (the prompt code reads its dtype and device) whose weights are empty
    assert pipe.text_encoder is not None and sum(p.numel() for p in pipe.text_encoder.parameters()) == 0
    assert shrinker.summary["teacher_parameters"] > 0
    for (name, kept), released in zip(students[False].state_dict().items(), students[True].state_dict().values(),
                                      strict=True):
        torch.testing.assert_close(released, kept, atol=0, rtol=0, msg=name)
    with pytest.raises(IncompatibleModelError, match="was released"):
        TeacherEmbeddingCache(shrinker.adapter, 64).rows(["an unseen prompt"])


@pytest.mark.parametrize("family", ["wan", "flux-dev", "ltx2"])
def test_the_trace_probes_at_a_small_size_and_learns_what_it_learns_at_the_callers(family):
    """A pipeline traced without a size probes at a few latent pixels (9 frames), not at its default (Wan's
    480 x 832 x 81; LTX-2's 512 x 768 x 121, minutes and gigabytes); the report equals the one traced at the given
    size, and the caller's call_kwargs are kept. LTX-2 wants multiples of 32 px: the probe size doubles to it."""
    if family == "ltx2":
        from tests.pipelines.traced_families import build_ltx2

        pipe, call = build_ltx2()
    else:
        pipe, call = _tiny(family)
    rest = {k: v for k, v in call.items() if k not in ("height", "width", "num_frames")}
    small = TracedAdapter(pipe, call_kwargs=rest)
    assert small.probe_kwargs["height"] == small.probe_kwargs["width"] <= 64  # (Wan: 4 x 8 px x patch 2)
    assert small.probe_kwargs.get("num_frames", 9) == 9 and small.call_kwargs == rest
    given = TracedAdapter(pipe, call_kwargs=call)
    assert given.probe_kwargs == {} and given.call_kwargs == call
    assert small.report == given.report


@pytest.mark.parametrize("family", ["qwenimage", "bria"])
def test_per_prompt_lengths_give_the_student_each_call_as_the_pipeline_gave_it(family):
    # Each text's call at its own length, padded (masked) to the batch's longest: an encoder run on the padded batch
    # sees what the pipeline's one-prompt call gave it, and the teacher rows are zeros past each call.
    pipe, call = _tiny(family)
    traced = TracedAdapter(pipe, call_kwargs=call)
    assert traced.report.variable_length
    texts = traced.encoder_texts(["a red circle", "two blue squares and a yellow star next to a green triangle"],
                                 "blurry")
    length = traced.max_sequence_length
    ids, mask = traced.tokenize(texts, length)
    lengths = traced.stored_lengths(texts, length)
    assert len(set(lengths)) > 1 and ids.shape[1] == max(lengths) < length
    assert [int(row.nonzero().max()) + 1 for row in mask] == lengths
    rows = traced.encode_teacher(texts, length)["t5"]
    assert rows.shape[:2] == ids.shape
    teacher = getattr(pipe, traced.encoder_slot)
    with torch.no_grad():
        batched = traced.encoder_features(teacher, ids, traced.encoder_mask(mask))
    for row, padded, n in zip(rows, batched, lengths, strict=True):
        assert row[n:].abs().sum() == 0 and row[:n].abs().sum() > 0
        torch.testing.assert_close(padded[:n], row[:n], atol=1e-5, rtol=1e-5)


def test_a_slot_no_family_file_shrinks_is_traced_hidreams_llama():
    # HiDream's family file shrinks its T5; slot= its Llama-3.1 (text_encoder_4) is served by the trace: an LLM
    # student of the layers it stacks, and the trajectory is the pipeline's own.
    pipe, call = _tiny("hidream")
    shrinker = EncoderShrinker(pipe, slot="text_encoder_4", call_kwargs=call)
    traced = shrinker.adapter
    assert traced.name == "traced:HiDreamImagePipeline" and traced.encoder_slot == "text_encoder_4"
    report = traced.report
    assert report.kind == "llm" and report.text_inputs == (("encoder_hidden_states_llama3",),)
    assert report.hidden_state_layers == tuple(range(1, report.num_hidden_states))  # every layer after the embeddings
    latents = _sample(traced, call, 3.0)
    own = pipe(prompt=list(PROMPTS), **call, num_inference_steps=3, generator=torch.Generator().manual_seed(5),
               output_type="latent", guidance_scale=3.0, negative_prompt=[""] * len(PROMPTS))[0]
    torch.testing.assert_close(latents, own, atol=1e-5, rtol=0)
