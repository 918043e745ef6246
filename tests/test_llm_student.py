"""ShrunkLLMEncoderModel: the student of an LLM teacher returns the teacher's layers, stays small, saves and loads."""

from __future__ import annotations

import pytest
import torch

from encoder_shrink import (
    ShrunkLLMConfig,
    ShrunkLLMEncoderModel,
    ShrunkT5EncoderModel,
    check_compatible,
    load_student,
    tiny,
)
from encoder_shrink.errors import IncompatibleModelError, InvalidArgumentError
from encoder_shrink.llm_student import tokenizer_fingerprint


def _student(**overrides) -> ShrunkLLMEncoderModel:
    fields = dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=500, embedding_rank=8,
                  teacher_hidden_size=16, teacher_dim=48, teacher_layers=[10, 20, 30], teacher_num_hidden_states=41,
                  teacher_model_type="mistral3")
    torch.manual_seed(0)
    return ShrunkLLMEncoderModel(ShrunkLLMConfig(**{**fields, **overrides})).eval()


def test_returns_the_teachers_layers_at_their_indices():
    student = _student()
    ids, mask = torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]])
    output = student(ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    assert output.last_hidden_state.shape == (1, 4, 48) and len(output.hidden_states) == 41
    stacked = torch.cat([output.hidden_states[k] for k in (10, 20, 30)], dim=-1)
    torch.testing.assert_close(stacked, output.last_hidden_state)
    assert output.hidden_states[-11] is output.hidden_states[30]
    # what FLUX.2's prompt code does with it: stack, permute, reshape to 3 x 16
    out = torch.stack([output.hidden_states[k] for k in (10, 20, 30)], dim=1)
    assert out.permute(0, 2, 1, 3).reshape(1, 4, 48).shape == (1, 4, 48)
    with pytest.raises(IncompatibleModelError, match=r"reads hidden_states\[-2\] \(layer 39\).*layers \[10, 20, 30\]"):
        output.hidden_states[-2]
    assert student(ids).hidden_states is None  # only when asked, as transformers models do


def test_hidden_states_survive_accelerates_send_to_device():
    """Sequential CPU offload moves every output through accelerate's `send_to_device`, which rebuilds tuples from
    their items: the layers must come through, and a layer the student lacks must still refuse to be read."""
    from accelerate.utils import send_to_device

    output = _student()(torch.tensor([[5, 6, 7]]), output_hidden_states=True, use_cache=False)
    moved = send_to_device(output.hidden_states, "cpu")
    assert type(moved) is type(output.hidden_states) and len(moved) == 41 and moved[10] is output.hidden_states[10]
    with pytest.raises(IncompatibleModelError, match=r"layers \[10, 20, 30\]"):
        moved[-2]


def test_padding_is_masked_out():
    student = _student()
    short = student(torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long))[0]
    padded = student(torch.tensor([[5, 6, 7, 0, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0, 0]]))[0]
    torch.testing.assert_close(padded[:, :3], short, atol=1e-5, rtol=1e-5)
    unmasked = student(torch.tensor([[5, 6, 7, 0, 0]]))[0]
    assert not torch.allclose(unmasked[:, :3], short, atol=1e-4)


def test_a_token_past_the_vocabulary_names_the_tokenizer():
    with pytest.raises(IncompatibleModelError, match="token id 500 is past the student's 500-token vocabulary"):
        _student()(torch.tensor([[5, 500]]))


@pytest.mark.parametrize("vocab, hidden, layers", [(131_072, 5120, [10, 20, 30]), (152_064, 3584, [28]),
                                                   (256_000, 2304, [26])])
def test_a_t5_base_sized_student_of_a_big_vocabulary_stays_under_250m(vocab, hidden, layers):
    # T5-base blocks (FLAN-T5-base's config), rank-256 embedding: FLUX.2's Mistral, Qwen2.5-VL, Gemma-2.
    config = ShrunkLLMConfig(d_model=768, d_ff=2048, num_layers=12, num_heads=12, d_kv=64,
                             feed_forward_proj="gated-gelu", vocab_size=vocab, embedding_rank=256,
                             teacher_hidden_size=hidden, teacher_dim=hidden * len(layers), teacher_layers=layers,
                             teacher_num_hidden_states=max(layers) + 1)
    with torch.device("meta"):
        student = ShrunkLLMEncoderModel(config)
        full = ShrunkLLMEncoderModel(ShrunkLLMConfig(**{**config.to_dict(), "embedding_rank": None}))
    count = sum(p.numel() for p in student.parameters())
    assert count <= 250_000_000
    # the factorisation is what keeps it there: a full table costs vocab x 768
    assert sum(p.numel() for p in full.parameters()) - count == vocab * 768 - (vocab * 256 + 256 * 768)


@pytest.mark.parametrize("field, value, message", [
    ("teacher_dim", 40, "teacher_dim must be len"), ("teacher_layers", [41], "indices into the teacher's 41"),
    ("embedding_rank", 0, "embedding_rank must be positive"),
])
def test_config_validation_quotes_the_bad_value(field, value, message):
    with pytest.raises(InvalidArgumentError, match=message):
        _student(**{field: value})


def test_low_rank_init_keeps_what_the_teacher_embeds_alike():
    torch.manual_seed(0)
    basis = torch.randn(4, 64)
    table = torch.randn(500, 4) @ basis  # a rank-4 table
    table[7] = table[3]
    student = _student()
    student.init_embeddings_from(table)
    embed = student.get_input_embeddings()
    rows = embed(torch.arange(500))
    torch.testing.assert_close(rows[7], rows[3])
    # rank 8 >= the table's rank 4: the teacher's geometry (inner products of centred rows) is kept up to scale
    centred = table - table.mean(0)
    teacher_gram, student_gram = centred @ centred.T, embed.table.weight @ embed.table.weight.T
    ratio = (student_gram / teacher_gram)[teacher_gram.abs() > 1].flatten()
    assert ratio.std() / ratio.mean().abs() < 1e-3
    with pytest.raises(IncompatibleModelError, match="build the student with vocab_size=600"):
        student.init_embeddings_from(torch.randn(600, 64))


def test_from_t5_keeps_the_blocks_and_replaces_the_table():
    t5 = tiny.tiny_t5_encoder(d_model=32)
    student = ShrunkLLMEncoderModel.from_t5(t5, teacher_dim=48, vocab_size=500, embedding_rank=8,
                                            teacher_hidden_size=16, teacher_layers=[10, 20, 30],
                                            teacher_num_hidden_states=41)
    for name, tensor in t5.encoder.state_dict().items():
        if not name.startswith("embed_tokens"):
            torch.testing.assert_close(student.encoder.state_dict()[name], tensor)
    assert student.get_input_embeddings().table.weight.shape == (500, 8)


def test_save_load_auto_and_the_wrong_class(tmp_path):
    from transformers import AutoModel

    student = _student()
    student.save_pretrained(tmp_path / "s")
    ids = torch.tensor([[5, 6, 7]])
    for loaded in (load_student(tmp_path / "s"), AutoModel.from_pretrained(tmp_path / "s"),
                   ShrunkLLMEncoderModel.from_pretrained(tmp_path / "s")):
        assert type(loaded) is ShrunkLLMEncoderModel
        torch.testing.assert_close(loaded(ids)[0], student(ids)[0], rtol=0, atol=0)
    with pytest.raises(IncompatibleModelError, match="holds a ShrunkLLMEncoderModel.*load it with"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "s")


def _llm_student(adapter, **overrides):
    fields = {**adapter.student_fields(), **overrides}
    return tiny.tiny_student(teacher_dim=adapter.conditioning_width, student_class=ShrunkLLMEncoderModel,
                                **fields)


def test_a_student_of_another_layout_is_refused_in_one_line(tiny_pipeline_dirs):
    from encoder_shrink import adapter_for

    flux2 = tiny.load_tiny_pipeline("flux2", tiny_pipeline_dirs["flux2"])
    qwen = tiny.load_tiny_pipeline("qwenimage", tiny_pipeline_dirs["qwenimage"])
    flux2_adapter, qwen_adapter = adapter_for(flux2), adapter_for(qwen)
    student = _llm_student(flux2_adapter)
    assert check_compatible(flux2, student).name == "flux2"
    checks = [
        (qwen, student, r"reproduces layers \[10, 20, 30\] of a 31-state teacher but QwenImagePipeline reads layers "
                        r"\[2\] of a 3-state one"),
        (flux2, _llm_student(flux2_adapter, tokenizer_fingerprint="0" * 16),
         "not the tokenizer the student was distilled with"),
        (flux2, tiny.tiny_student(teacher_dim=48), "a ShrunkT5EncoderModel does not return them"),
        (tiny.load_tiny_pipeline("flux-dev", tiny_pipeline_dirs["flux-dev"]), _llm_student(qwen_adapter),
         "reproduces hidden states of an LLM .qwen2_5_vl. but FluxPipeline reads a T5's"),
    ]
    for pipe, other, message in checks:
        with pytest.raises(IncompatibleModelError, match=message) as error:
            check_compatible(pipe, other)
        assert "\n" not in str(error.value)
    # the width: a FLUX.2 student of the right layers but another width
    with pytest.raises(IncompatibleModelError, match="Student returns 96-dim embeddings but Flux2Pipeline"):
        check_compatible(flux2, tiny.tiny_student(
            teacher_dim=96, student_class=ShrunkLLMEncoderModel,
            **{**flux2_adapter.student_fields(), "teacher_hidden_size": 32}))
    assert tokenizer_fingerprint(flux2_adapter.tokenizer) != tokenizer_fingerprint(qwen_adapter.tokenizer)
