"""TeacherEmbeddingCache: once per prompt, persisted in safetensors shards keyed by teacher and length."""

from __future__ import annotations

import json

import pytest
import torch

from encoder_shrink import EncoderShrinker, adapter_for, tiny
from encoder_shrink.distill import TeacherEmbeddingCache


@pytest.fixture
def flux(tiny_pipeline_dirs):
    return tiny.load_tiny_pipeline("flux-dev", tiny_pipeline_dirs["flux-dev"])


@pytest.mark.slow
def test_training_encodes_each_prompt_once_not_per_step(flux):
    shrinker = EncoderShrinker(flux)
    prompts = ["a red circle", "a blue square", "a green star", "two cats"]
    # 10 trajectories x 4 steps over 3 distinct training prompts: 40 optimizer steps, 3 + 1 held-out texts encoded
    shrinker.distill(recipe="tiny", prompts=prompts, max_steps=40)
    assert shrinker.summary["teacher_texts_encoded"] == len(prompts)


def test_rows_match_the_teacher_and_reuse(flux):
    adapter = adapter_for(flux)
    cache = TeacherEmbeddingCache(adapter, max_sequence_length=64)
    rows = cache.rows(["a cat", "a dog", "a cat"])
    assert cache.encoded == 2
    direct = adapter.encode_teacher(["a cat", "a dog"], 64)
    torch.testing.assert_close(rows["t5"][0], direct["t5"][0])
    torch.testing.assert_close(rows["t5"][2], direct["t5"][0])
    torch.testing.assert_close(rows["pooled"][1], direct["pooled"][1])
    cache.rows(["a dog"])
    assert cache.encoded == 2


def test_persisted_shards_serve_a_new_cache_without_the_teacher(flux, tmp_path):
    adapter = adapter_for(flux)
    prompts = [f"prompt number {i}" for i in range(10)]
    first = TeacherEmbeddingCache(adapter, 64, directory=tmp_path, teacher_id="tiny-flux")
    assert first.precompute(prompts, batch_size=4) == 10
    expected = first.rows(prompts)["t5"]
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".json", ".safetensors"]
    meta = json.loads((folder / "teacher.json").read_text())
    assert meta == {"teacher": "tiny-flux", "family": "flux-dev", "slot": "text_encoder_2", "max_sequence_length": 64,
                    "attention_mask": False}

    flux.text_encoder_2.to("meta")  # the teacher is gone: any encode would fail
    second = TeacherEmbeddingCache(adapter, 64, directory=tmp_path, teacher_id="tiny-flux")
    assert all(p in second for p in prompts)
    torch.testing.assert_close(second.rows(prompts)["t5"], expected)
    assert second.encoded == 0


def test_cache_is_keyed_by_length_and_teacher(flux, tmp_path):
    adapter = adapter_for(flux)
    TeacherEmbeddingCache(adapter, 64, directory=tmp_path, teacher_id="a").precompute(["x"])
    for other in (TeacherEmbeddingCache(adapter, 128, directory=tmp_path, teacher_id="a"),
                  TeacherEmbeddingCache(adapter, 64, directory=tmp_path, teacher_id="b")):
        assert "x" not in other
        other.precompute(["y"])
    assert "x" in TeacherEmbeddingCache(adapter, 64, directory=tmp_path, teacher_id="a")
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3
    # a cache that encodes nothing writes nothing (no empty folder, no teacher.json)
    assert "z" not in TeacherEmbeddingCache(adapter, 32, directory=tmp_path / "unused", teacher_id="a")
    assert not (tmp_path / "unused").exists()


def test_distill_with_precomputed_cache_needs_no_teacher(flux, tmp_path):
    prompts = ["a red circle", "a blue square", "a green star", "two cats", "one dog"]
    shrinker = EncoderShrinker(flux, teacher_id="tiny-flux")
    adapter = shrinker.adapter
    TeacherEmbeddingCache(adapter, adapter.max_sequence_length, directory=tmp_path, teacher_id="tiny-flux").precompute(
        prompts, offload_teacher=True
    )
    flux.text_encoder_2.to("meta")
    student = shrinker.distill(recipe="tiny", prompts=prompts[:4], eval_prompts=prompts[4:], cache_dir=tmp_path,
                               offload_teacher=True, max_steps=8)
    assert shrinker.summary["teacher_texts_encoded"] == 0
    assert all(torch.isfinite(p).all() for p in student.parameters())
