"""The diffusers pipeline contract with a student in the encoder slot: every save/load path, run through
`DiffusionPipeline` for every family (so every student kind: T5, UMT5, LLM) and compared with the original encoder
in the same slot. A path that works with the original must work with the student, and give the student back."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from encoder_shrink import adapter_for, tiny
from encoder_shrink.weights import PICKLE_SUFFIXES
from tests.pipelines.test_families import FAMILIES, PROMPT, _load, _student

# Small enough that every tiny encoder is written in several shards.
SHARD = "2KB"


def _saves(pipe, root, slot):
    """The pipeline saved the ways diffusers saves one; each folder is named for what it tests."""
    pipe.save_pretrained(root / "unsafe", safe_serialization=False)
    pipe.save_pretrained(root / "sharded", max_shard_size=SHARD)
    pipe.save_pretrained(root / "safe", safe_serialization=True)
    # diffusers' optional-components test: the optional ones set to None are saved as such and come back as None
    optional = {name: None for name in pipe._optional_components if name in pipe.components and name != slot}
    if optional:
        pipe = type(pipe)(**{**pipe.components, **optional})
    pipe.save_pretrained(root / "variant", variant="fp16")
    return sorted(optional)


def _loads(root, slot):
    """Every way of loading those folders back: name -> (folder, from_pretrained kwargs)."""
    return {
        "unsafe": (root / "unsafe", {}),
        "sharded": (root / "sharded", {}),
        "dtype": (root / "safe", {"dtype": torch.float16}),
        "torch_dtype": (root / "safe", {"torch_dtype": torch.bfloat16}),
        "dtype dict": (root / "safe", {"torch_dtype": {"default": torch.bfloat16, slot: torch.float16}}),
        "dtype dict default": (root / "safe", {"torch_dtype": {"default": torch.float16}}),
        "use_safetensors": (root / "safe", {"use_safetensors": True}),
        "no use_safetensors": (root / "safe", {"use_safetensors": False}),
        "no use_safetensors, unsafe save": (root / "unsafe", {"use_safetensors": False}),
        "variant": (root / "variant", {"variant": "fp16"}),
    }


def _outcome(folder, kwargs):
    """`DiffusionPipeline.from_pretrained(folder, **kwargs)` and "loads", or `None` and the error's type."""
    try:
        return DiffusionPipeline.from_pretrained(folder, **kwargs), "loads"
    except Exception as error:  # the outcome compared with the original's: which error, not its traceback
        return None, type(error).__name__


# The three costliest tiny families run in the slow tier; the other 21 keep the contract in the default one.
@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in ("hidream", "allegro", "flux2")
                                    else f for f in FAMILIES])
def test_every_diffusers_save_and_load_path_behaves_as_with_the_original_encoder(family, tiny_pipeline_dirs,
                                                                                  tmp_path, caplog):
    original = _load(family, tiny_pipeline_dirs)
    adapter = adapter_for(original)
    slot, student = adapter.encoder_slot, _student(adapter)
    with_student = _load(family, tiny_pipeline_dirs, **{slot: student})
    expected_state = {k: v.clone() for k, v in student.state_dict().items()}

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            optional = _saves(with_student, tmp_path / "student", slot)
    finally:
        diffusers_logging.disable_propagation()
    _saves(original, tmp_path / "original", slot)
    assert "saved as safetensors only (safe_serialization=False" in caplog.text  # said once, not silently
    for folder in ("unsafe", "sharded", "safe", "variant"):
        files = sorted(p.name for p in (tmp_path / "student" / folder / slot).iterdir())
        assert not any(f.endswith(PICKLE_SUFFIXES) for f in files), f"{folder}: the student wrote pickle: {files}"
    sharded = tmp_path / "student" / "sharded" / slot
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()

    passed = set()
    for name, (folder, kwargs) in _loads(tmp_path / "student", slot).items():
        reference, reference_outcome = _outcome(tmp_path / "original" / folder.name, kwargs)
        loaded, outcome = _outcome(folder, kwargs)
        # A path the original passes, the student passes. One it fails on (transformers 5 writes safetensors, then
        # finds no `.bin` under use_safetensors=False) may load with the student, which reads safetensors only.
        assert outcome in ("loads", reference_outcome) and (outcome == "loads" or reference_outcome != "loads"), (
            f"{name}: {outcome} with the student, {reference_outcome} with the original")
        if loaded is None:
            continue
        encoder = getattr(loaded, slot)
        assert type(encoder) is adapter.student_class(), name
        if reference is not None:
            assert encoder.dtype == getattr(reference, slot).dtype, name  # the dtype the original gets on this path
        state = encoder.state_dict()
        for key, value in expected_state.items():
            # (T5's `wo` stays fp32 in half-precision loads, as in the original T5)
            assert torch.equal(state[key], value.to(state[key].dtype)), f"{name}: {key} differs after the round trip"
        if name == "variant":
            assert all(getattr(loaded, component) is None for component in optional)
        passed.add(name)
    # every path diffusers writes and reads with safetensors gave the student back (the test is not vacuous)
    assert passed >= {"unsafe", "sharded", "dtype", "torch_dtype", "dtype dict", "dtype dict default",
                      "use_safetensors", "variant"}, passed


@pytest.mark.slow
def test_an_exported_student_keeps_the_contract_too(tiny_pipeline_dirs, tmp_path):
    """An ONNX export in the slot (what `encoder-shrink export` writes) through the same paths."""
    pytest.importorskip("onnxruntime")
    from encoder_shrink.exporters import load_encoder
    from encoder_shrink.exporters.onnx_export import export_onnx

    original = _load("flux-dev", tiny_pipeline_dirs)
    adapter = adapter_for(original)
    slot = adapter.encoder_slot
    _student(adapter).save_pretrained(tmp_path / "torch")
    exported = load_encoder(export_onnx(tmp_path / "torch", tmp_path / "onnx"))
    ids = adapter.tokenize(["a red circle"], 16)[0]
    expected = exported(ids).last_hidden_state
    _saves(_load("flux-dev", tiny_pipeline_dirs, **{slot: exported}), tmp_path / "student", slot)
    _saves(original, tmp_path / "original", slot)
    for name, (folder, kwargs) in _loads(tmp_path / "student", slot).items():
        _, reference_outcome = _outcome(tmp_path / "original" / folder.name, kwargs)
        loaded, outcome = _outcome(folder, kwargs)
        assert outcome == reference_outcome, f"{name}: {outcome} with the export, {reference_outcome} without"
        if loaded is not None:
            encoder = getattr(loaded, slot)
            assert type(encoder) is type(exported), name
            torch.testing.assert_close(encoder(ids).last_hidden_state.float(), expected.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_cpu_offload_with_a_student_gives_the_same_images(family, tiny_pipeline_dirs):
    """`enable_model_cpu_offload`'s hooks, on the CPU as execution device (the CUDA run is the accelerator tier)."""
    adapter = adapter_for(_load(family, tiny_pipeline_dirs))
    pipe = _load(family, tiny_pipeline_dirs, **{adapter.encoder_slot: _student(adapter)})
    expected = tiny.generated(pipe(prompt=PROMPT, **tiny.tiny_call_kwargs(pipe)))
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(getattr(pipe, adapter.encoder_slot), "_hf_hook")  # the student is one of the offloaded models
    images = tiny.generated(pipe(prompt=PROMPT, **tiny.tiny_call_kwargs(pipe)))
    np.testing.assert_allclose(images, expected, atol=1e-5)


@pytest.mark.accelerator
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload to a CUDA accelerator needs one")
@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_offload_to_cuda_with_student(family, offload, tiny_pipeline_dirs):
    adapter = adapter_for(_load(family, tiny_pipeline_dirs))
    slot = adapter.encoder_slot
    on_gpu = _load(family, tiny_pipeline_dirs, **{slot: _student(adapter)}).to("cuda")
    expected = tiny.generated(on_gpu(prompt=PROMPT, **tiny.tiny_call_kwargs(on_gpu)))
    offloaded = _load(family, tiny_pipeline_dirs, **{slot: _student(adapter)})
    getattr(offloaded, offload)()
    assert offloaded._execution_device.type == "cuda"
    images = tiny.generated(offloaded(prompt=PROMPT, **tiny.tiny_call_kwargs(offloaded)))
    assert getattr(offloaded, slot).device.type in ("cpu", "meta")  # moved back (or kept off the GPU) by the hooks
    np.testing.assert_allclose(images, expected, atol=1e-3)
