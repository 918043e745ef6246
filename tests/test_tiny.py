"""encoder_shrink.tiny: offline tokenizers and tiny pipelines that reload through from_pretrained."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from encoder_shrink import adapter_for, tiny


def test_t5_tokenizer_covers_the_published_prompts(shared_data):
    tokenizer = tiny.tiny_t5_tokenizer()
    prompts = json.loads((shared_data / "CommonText_Test.json").read_text())[:200]
    prompts += (shared_data / "T2I-CompBench" / "color_val.txt").read_text().splitlines()[:200]
    prompts = [p for p in prompts if p.isascii()]
    assert len(prompts) > 300
    for prompt in prompts:
        ids = tokenizer(prompt).input_ids
        assert tokenizer.unk_token_id not in ids, prompt
        assert ids[-1] == tokenizer.eos_token_id


def test_tokenizers_reload_from_disk(tmp_path):
    t5 = tiny.tiny_t5_tokenizer(300)
    t5.save_pretrained(tmp_path / "t5")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "t5")
    assert reloaded("a red circle").input_ids == t5("a red circle").input_ids
    assert reloaded.model_max_length == 300
    clip = tiny.tiny_clip_tokenizer()
    clip.save_pretrained(tmp_path / "clip")
    assert AutoTokenizer.from_pretrained(tmp_path / "clip")("a cat").input_ids == clip("a cat").input_ids


@pytest.mark.parametrize("family", tiny.TINY_FAMILIES)
def test_tiny_pipeline_is_a_model_folder_that_reloads(family, tiny_pipeline_dirs):
    folder = tiny_pipeline_dirs[family]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == tiny.tiny_pipeline_class(family).__name__
    pipe = tiny.load_tiny_pipeline(family, folder)
    adapter = adapter_for(pipe)
    assert adapter.name == family
    # the family's real encoder class (UMT5 for Wan, SkyReels-V2 and AuraFlow's Pile-T5; the LLM of LLM families)
    expected = {"umt5": ("UMT5EncoderModel",),
                "llm": ("Mistral3ForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "Qwen3Model",
                        "Gemma2Model")}.get(adapter.student_kind, ("T5EncoderModel",))
    assert type(adapter.teacher).__name__ in expected
    media = tiny.generated(pipe(prompt="a red circle", **tiny.tiny_call_kwargs(pipe)))
    assert media.shape[0] == 1 and np.isfinite(media).all()
    if adapter.tiny_call_kwargs().get("output_type") != "latent":
        assert media.shape[-1] == 3  # RGB images or frames


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match=re.escape(
        f"Unknown pipeline family 'flux'; registered: {', '.join(tiny.TINY_FAMILIES)}."
    )):
        tiny.save_tiny_pipeline("flux", tmp_path)
