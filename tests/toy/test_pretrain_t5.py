"""The toy world's pretrained T5s: T5-style corruption, a pretraining that learns, and the bundled encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import T5EncoderModel

from encoder_shrink import ShrunkT5EncoderModel
from encoder_shrink.toy.pretrain_t5 import BUNDLED_T5_SMALL, _corrupt, pretrain_toy_t5, save_t5_small
from encoder_shrink.toy.teacher import STUDENT_T5, student_t5_config, toy_t5_tokenizer
from encoder_shrink.toy.world import COLOURS, SHAPES


def test_corruption_hides_about_15_percent_in_spans_and_keeps_the_end_token():
    tokenizer = toy_t5_tokenizer()
    ids = tokenizer("a red triangle left of a purple square").input_ids
    unk, eos = tokenizer.unk_token_id, tokenizer.eos_token_id
    rng = np.random.default_rng(0)
    for _ in range(200):
        corrupted = _corrupt(ids, rng, unk)
        assert corrupted[-1] == eos and unk in corrupted
        assert all(a != unk or b != unk for a, b in zip(corrupted, corrupted[1:]))  # a span is one <unk>
        kept = [t for t in corrupted if t != unk]
        assert len(kept) < len(ids) and len(ids) - len(kept) <= 3 + 1  # 15 % of 9 tokens, spans of at most 3
        it = iter(ids)
        assert all(t in it for t in kept)  # what is kept stays in order


@pytest.mark.slow
def test_pretraining_learns_to_rebuild_prompts(tmp_path):
    short, history_short = pretrain_toy_t5(STUDENT_T5, steps=2, batch_size=16)
    encoder, history = pretrain_toy_t5(STUDENT_T5, steps=150, batch_size=32)
    assert (
        history["loss"] < 0.5 * history_short["loss"] and history["token_accuracy"] > history_short["token_accuracy"]
    )
    assert isinstance(encoder, T5EncoderModel) and encoder.config.d_model == STUDENT_T5["d_model"]
    saved = save_t5_small(encoder, tmp_path / "t5_small", history)
    student = ShrunkT5EncoderModel.from_t5(saved, teacher_dim=128)
    assert torch.equal(student.shared.weight, encoder.shared.weight)


def test_the_bundled_t5_small_is_the_students_size_and_tokenizer():
    encoder = T5EncoderModel.from_pretrained(BUNDLED_T5_SMALL)
    expected = student_t5_config()
    for field in ("d_model", "d_ff", "num_layers", "num_heads", "vocab_size", "relative_attention_num_buckets"):
        assert getattr(encoder.config, field) == getattr(expected, field), field
    assert len(toy_t5_tokenizer()) == encoder.config.vocab_size
    # Pretrained, not random: token embeddings of words with the same role (colours) point alike and away from
    # words of another role (shapes); a fresh initialisation has no such structure (measured: 0.24 vs 0.03).
    tokenizer = toy_t5_tokenizer()

    def role_margin(model) -> float:
        rows = torch.nn.functional.normalize(model.shared.weight.detach(), dim=-1)
        colours = rows[[tokenizer(word).input_ids[0] for word in COLOURS]]
        shapes = rows[[tokenizer(word).input_ids[0] for word in SHAPES]]
        within = colours @ colours.T
        n = len(colours)
        return float((within.sum() - within.diagonal().sum()) / (n * n - n) - (colours @ shapes.T).mean())

    torch.manual_seed(0)
    assert role_margin(encoder) > 0.15 > role_margin(T5EncoderModel(expected))
