"""The clip metric's mechanics on a tiny CLIP built in code: the score, its batching and truncation, its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder_shrink import EncoderShrinkError
from encoder_shrink.evaluation import CLIPScoreConfig, clip_score, score_images
from encoder_shrink.tiny import save_tiny_clip
from encoder_shrink.toy import render

PROMPTS = ["a red circle", "two blue squares", "a sign that says 'cat'"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def images():
    return np.stack([render(p, seed=i) for i, p in enumerate(PROMPTS)])


def test_clip_score_is_100_times_the_cosine_of_each_pair_averaged(clip_dir, images):
    from transformers import CLIPModel, CLIPProcessor

    scores = clip_score(images, PROMPTS, clip_dir)
    # The same figure from CLIP's own logits: logits_per_image = exp(logit_scale) x cosine.
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(**processor(text=PROMPTS, images=list(images), return_tensors="pt", padding=True))
        cosine = out.logits_per_image.diagonal() / model.logit_scale.exp()
    np.testing.assert_allclose(scores, 100 * cosine.numpy(), rtol=1e-4, atol=1e-4)
    assert scores.shape == (3,) and len(set(np.round(scores, 4))) == 3
    # batching does not change it; pairing does
    np.testing.assert_allclose(clip_score(images, PROMPTS, clip_dir, batch_size=1), scores, rtol=1e-5, atol=1e-5)
    assert not np.allclose(clip_score(images, PROMPTS[::-1], clip_dir)[[0, 2]], scores[[0, 2]])
    result = score_images(images, PROMPTS, "clip", clip=str(clip_dir))
    assert result["clip_score"] == pytest.approx(float(scores.mean()), rel=1e-6) and result["prompts"] == 3


def test_prompts_beyond_clips_positions_are_truncated(clip_dir, images):
    long_prompt = "a red circle " * 40  # ~160 tokens for a 77-position text model
    assert np.isfinite(clip_score(images[:1], [long_prompt], clip_dir)).all()


def test_clip_needs_a_safetensors_checkpoint(tmp_path, clip_dir):
    with pytest.raises(EncoderShrinkError, match=r"needs a CLIP checkpoint: pass --clip PATH") as error:
        CLIPScoreConfig()
    assert "\n" not in str(error.value)
    for missing in (tmp_path / "missing", "ckpts/clip"):  # a typo is not taken for a hub id
        with pytest.raises(EncoderShrinkError, match="no CLIP checkpoint there"):
            CLIPScoreConfig(clip=missing)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((clip_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(EncoderShrinkError, match="no safetensors weights there"):
        CLIPScoreConfig(clip=pickled)
