"""Synthetic real-architecture models: the published parameter counts, random but finite weights, no downloads."""

from __future__ import annotations

import pytest
import torch
from encoder_shrink.benchmarks.synthetic import (
    synthetic_names,
    synthetic_pipeline,
    synthetic_student,
    synthetic_t5,
    t5_config,
)

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.pipelines import get_adapter, registered_families, synthetic_families


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _t5_encoder_parameters(d_model, d_ff, num_layers, num_heads, d_kv=64, vocab=32128, buckets=32):
    """T5 v1.1 encoder parameters: embeddings, per layer attention + gated FF + 2 norms, the final norm."""
    inner = num_heads * d_kv
    layer = 4 * d_model * inner + 3 * d_model * d_ff + 2 * d_model
    return vocab * d_model + num_layers * layer + buckets * num_heads + d_model


def test_t5_xxl_has_the_published_encoder_size_without_allocating():
    config = t5_config("t5-xxl")
    assert _t5_encoder_parameters(config.d_model, config.d_ff, config.num_layers, config.num_heads) == 4_762_310_656
    model = synthetic_t5("t5-xxl", device="meta")
    assert _parameters(model) == 4_762_310_656  # google/t5-v1_1-xxl's encoder
    assert model.shared.weight is model.encoder.embed_tokens.weight


@pytest.mark.parametrize("family", synthetic_families())
def test_synthetic_pipelines_have_the_published_parameter_counts(family):
    adapter = get_adapter(family)
    pipe = synthetic_pipeline(family, device="meta")
    assert type(pipe).__name__ == adapter.pipeline_class
    for component, published in adapter.synthetic.parameters.items():
        assert _parameters(getattr(pipe, component)) == published, component
    for component, published in adapter.synthetic.approximate.items():
        count = _parameters(getattr(pipe, component))
        assert adapter.synthetic.within_published(count, published), f"{component}: {count:,} is not {published}"
    assert "transformer" in {**adapter.synthetic.parameters, **adapter.synthetic.approximate,
                             **dict.fromkeys(adapter.synthetic.unpublished)}
    if adapter.student_kind != "llm":  # (an LLM teacher is the family's own build, checked as published above)
        assert _parameters(getattr(pipe, adapter.encoder_slot)) == _parameters(
            synthetic_t5(adapter.synthetic.teacher, device="meta"))


def test_every_registered_family_with_an_architecture_is_a_synthetic_name():
    names = synthetic_names()
    assert {"t5-xxl", "flux-dev", "flux-schnell", "sd3", "pixart-alpha", "pixart-sigma", "chroma", "hidream",
            "cogview3plus", "bria", "sd3.5-large", "sd3.5-medium"} <= set(names)
    assert set(synthetic_families()) == {n for n in registered_families() if get_adapter(n).synthetic is not None}
    from encoder_shrink.benchmarks import BenchConfig

    from encoder_shrink.cli import build_parser

    for name in synthetic_families():  # the CLI and the bench take exactly the registry's names
        assert build_parser().parse_args(["bench", "--synthetic", name]).synthetic == name
        if get_adapter(name).student_kind == "llm":  # planned, not benched: refused in one line naming `plan`
            with pytest.raises(InvalidArgumentError, match=f"encoder-shrink plan --pipeline {name}"):
                BenchConfig(synthetic=name)
            continue
        assert BenchConfig(synthetic=name).synthetic == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--synthetic", "pixart"])


@pytest.mark.slow
def test_materialized_models_are_random_finite_and_in_the_requested_dtype():
    model = synthetic_t5("t5-small", dtype=torch.bfloat16)
    assert not any(p.is_meta for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert _parameters(model) == _t5_encoder_parameters(512, 1024, 8, 6)
    ids = torch.randint(3, 32128, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids).last_hidden_state.float()
    assert torch.isfinite(out).all() and 0.1 < out.std() < 10
    assert not torch.allclose(out[0], out[1])  # different tokens, different embeddings: the weights are not constant
    torch.testing.assert_close(synthetic_t5("t5-small", dtype=torch.bfloat16)(ids)[0].float(), out)  # seeded


def test_synthetic_student_projects_to_the_teacher_width():
    student = synthetic_student("t5-small", teacher_dim=4096, max_sequence_length=128)
    assert student.config.teacher_dim == 4096 and student.config.max_sequence_length == 128
    with torch.no_grad():
        out = student(torch.randint(3, 32128, (1, 128)))[0]
    assert out.shape == (1, 128, 4096) and torch.isfinite(out).all()
    assert _parameters(student) == _t5_encoder_parameters(512, 1024, 8, 6) + 512 * 4096 + 4096 * 4096


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="Unknown synthetic T5 't5-xxxl'"):
        synthetic_t5("t5-xxxl")
    with pytest.raises(ValueError, match="Unknown synthetic pipeline 'sdxl'; choose one of allegro, auraflow, bria"):
        synthetic_pipeline("sdxl", device="meta")


def test_rounded_published_counts_are_checked_to_their_precision():
    from encoder_shrink.pipelines import SyntheticSpec

    assert SyntheticSpec.within_published(8_056_627_520, "8.1B") and not SyntheticSpec.within_published(8_2e9, "8.1B")
    assert SyntheticSpec.within_published(17_105_733_184, "17B") and not SyntheticSpec.within_published(17.6e9, "17B")
