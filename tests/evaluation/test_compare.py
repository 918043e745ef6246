"""evaluate: fidelity, PSNR and registered metrics of students against the pipeline's own T5."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from encoder_shrink import EncoderShrinkError, ShrunkT5EncoderModel
from encoder_shrink.evaluation import evaluate, psnr
from encoder_shrink.toy.teacher import toy_pipeline_components


def test_psnr():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    assert psnr(a, a) == 100.0
    assert psnr(a, b) == pytest.approx((100.0 + 0.0) / 2)


@pytest.fixture(scope="module")
def pipe():
    pipe = FluxPipeline(**toy_pipeline_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_evaluate_compares_students_on_the_same_seeds(pipe):
    teacher = pipe.text_encoder_2
    random_student = ShrunkT5EncoderModel.from_t5(
        teacher.config.__class__(**{**teacher.config.to_dict(), "d_model": 32, "num_layers": 1}), teacher_dim=128
    ).eval()
    # a "student" that is the teacher's own T5 behind an exact projector: same embeddings, same images
    copy = ShrunkT5EncoderModel.from_t5(teacher, teacher_dim=128).eval()
    with torch.no_grad():
        copy.final_projection[0].weight.copy_(torch.eye(128))
        copy.final_projection[3].weight.copy_(torch.eye(128))
    prompts = ["a red circle", "two blue squares", "a sign that says 'cat'", "a green triangle above a red circle"]
    results = evaluate(pipe, {"random": random_student, "copy": copy}, prompts, num_inference_steps=3, resolution=32,
                       max_sequence_length=16, guidance_scale=None, metrics=["checker"])
    assert pipe.text_encoder_2 is teacher  # the teacher is back in its slot
    assert set(results["images"]) == {"teacher", "random", "copy"}
    # ReLU(teacher) != teacher, so "copy" is close but not identical; the random student is far
    assert results["students"]["copy"]["psnr_db"] > results["students"]["random"]["psnr_db"]
    assert (
        results["students"]["copy"]["denoiser_relative_mse"] < results["students"]["random"]["denoiser_relative_mse"]
    )
    for figures in [results["teacher"]] + list(results["students"].values()):
        assert set(figures["checker"]) >= {"overall", "colour", "shape", "count", "position", "text", "prompts"}
        assert figures["checker"]["prompts"] == 4
    again = evaluate(pipe, {"random": random_student}, prompts, num_inference_steps=3, resolution=32,
                     max_sequence_length=16, guidance_scale=None)
    assert (again["images"]["teacher"] == results["images"]["teacher"]).all()
    assert (again["images"]["random"] == results["images"]["random"]).all()
    assert "checker" not in again["teacher"]


def test_denoiser_fidelities_share_one_teacher_trajectory(pipe):
    from encoder_shrink.fidelity import denoiser_fidelities, denoiser_fidelity
    from encoder_shrink.pipelines import adapter_for

    teacher = pipe.text_encoder_2
    students = {
        name: ShrunkT5EncoderModel.from_t5(teacher.config.__class__(**{**teacher.config.to_dict(), "d_model": width,
                                           "num_layers": 1}), teacher_dim=128).eval()
        for name, width in (("narrow", 16), ("wide", 32))
    }
    adapter = adapter_for(pipe)
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        kwargs = dict(max_sequence_length=16, num_inference_steps=3, resolution=32, guidance_scale=None)
        together = denoiser_fidelities(adapter, students, ["a red circle", "two blue squares"], **kwargs)
        shared_calls = len(calls)
        alone = {name: denoiser_fidelity(adapter, s, ["a red circle", "two blue squares"], **kwargs)
                 for name, s in students.items()}
    finally:
        hook.remove()
    # 3 steps: the teacher once and each of the 2 students once per step, against 2 x (3 + 3) one at a time.
    assert shared_calls == 3 * (1 + 2) and len(calls) - shared_calls == 2 * (3 + 3)
    for name in students:
        assert together[name]["relative_mse"] == pytest.approx(alone[name]["relative_mse"], rel=1e-6)
        assert together[name]["per_step"] == pytest.approx(alone[name]["per_step"], rel=1e-5, abs=1e-9)
    assert together["narrow"]["relative_mse"] != together["wide"]["relative_mse"]
    with pytest.raises(ValueError, match="no students"):
        denoiser_fidelities(adapter, {}, ["a red circle"], **kwargs)


def test_evaluate_scores_every_encoders_images_with_each_metric(pipe, scratch_registry):
    from encoder_shrink.evaluation import register_metric

    @dataclasses.dataclass
    class MeanConfig:
        pass

    seen = []

    def _mean(config, images, prompts):
        seen.append(images.copy())
        return {"mean": float(images.mean())}

    register_metric("mean", MeanConfig, _mean, headline=("mean",))
    student = ShrunkT5EncoderModel.from_t5(pipe.text_encoder_2, teacher_dim=128).eval()
    prompts = ["a red circle", "a sign that says 'cat'"]
    results = evaluate(pipe, {"s": student}, prompts, num_inference_steps=2, resolution=32, max_sequence_length=16,
                       guidance_scale=None, metrics=["mean", "checker"])
    assert len(seen) == 2
    assert (seen[0] == results["images"]["teacher"]).all() and (seen[1] == results["images"]["s"]).all()
    assert results["teacher"]["mean"]["mean"] == pytest.approx(float(results["images"]["teacher"].mean()))
    assert results["students"]["s"]["checker"]["prompts"] == 2
    with pytest.raises(EncoderShrinkError, match="name one metric twice"):
        evaluate(pipe, {"s": student}, prompts, metrics=["mean", MeanConfig()])
    with pytest.raises(EncoderShrinkError, match="needs a CLIP checkpoint"):
        evaluate(pipe, {"s": student}, prompts, metrics=["clip"])
    with pytest.raises(EncoderShrinkError, match="none of the 1 prompts quotes any"):
        evaluate(pipe, {"s": student}, ["a red circle"], metrics=["mean", "ocr"])
    assert len(seen) == 2  # refused before any image was generated
