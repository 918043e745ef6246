"""The cache job: the teacher alone encodes prompts into shards distillation reads; resumable, split by process."""

from __future__ import annotations

import json

import pytest
import torch

from encoder_shrink import EncoderShrinker, adapter_for, tiny
from encoder_shrink.cli import main
from encoder_shrink.distill import TeacherEmbeddingCache
from encoder_shrink.distill.cache import _text_key
from encoder_shrink.distill.cache_job import build_teacher_cache, load_teacher_only

PROMPTS = ["a red circle", "two blue squares left of a cat", "A sign that says hello", "a green star above a tree",
           "three yellow cubes", "a dog next to a house"]


def test_teacher_only_load_skips_the_denoiser(tiny_pipeline_dirs):
    pipe, adapter = load_teacher_only(tiny_pipeline_dirs["qwenimage"])
    assert pipe.transformer is None and pipe.vae is None and adapter.name == "qwenimage"
    assert adapter.teacher is not None and adapter.device == adapter.teacher.device


def test_two_processes_fill_one_cache_that_distillation_reads_without_the_teacher(tiny_pipeline_dirs, tmp_path):
    path = tiny_pipeline_dirs["qwenimage"]
    reports = [build_teacher_cache(path, PROMPTS, tmp_path / "cache", process_index=rank, num_processes=2)
               for rank in (0, 1)]
    # prompts and the negative prompt, split between the two writers, each in its own shards and index
    assert [r["encoded"] for r in reports] == [4, 3] and all(r["bytes_per_text"] > 0 for r in reports)
    folder = tmp_path / "cache" / reports[0]["directory"].rsplit("/", 1)[-1]
    assert sorted(p.name for p in folder.glob("index*.json")) == ["index-r0.json", "index-r1.json"]
    assert json.loads((folder / "cache_report-r1.json").read_text())["encoded"] == 3
    # resumable: a rerun of either process encodes nothing
    assert build_teacher_cache(path, PROMPTS, tmp_path / "cache", process_index=1, num_processes=2)["encoded"] == 0

    pipe = tiny.load_tiny_pipeline("qwenimage", path)
    adapter = adapter_for(pipe)
    cache = TeacherEmbeddingCache(adapter, 512, directory=tmp_path / "cache", teacher_id=str(path))
    texts = adapter.encoder_texts(PROMPTS[:2])
    rows = cache.rows(texts)
    assert cache.encoded == 0
    # positions the denoiser never reads were not stored, and read back as zeros at the full encoded length
    stored = cache._lookup(_text_key(PROMPTS[0]))["t5"]
    _, mask = adapter.tokenize(texts, 512)
    assert stored.shape[0] == int(mask[2].sum()) < adapter.encoded_length(512) == rows["t5"].shape[1]
    expected = adapter.encode_teacher(texts, 512)["t5"] * mask[..., None]
    torch.testing.assert_close(rows["t5"], expected, atol=1e-6, rtol=1e-5)

    # distillation with the cache never calls the teacher
    calls = []
    adapter.teacher.register_forward_pre_hook(lambda *args, **kwargs: calls.append(1))
    shrinker = EncoderShrinker(pipe, teacher_id=str(path))
    shrinker.distill(recipe="tiny", prompts=PROMPTS[:4], eval_prompts=PROMPTS[4:], cache_dir=tmp_path / "cache",
                     max_steps=4)
    assert not calls


def test_cache_command_reports_the_disk_cost_per_text(tiny_pipeline_dirs, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    argv = ["cache", "--pipeline", str(tiny_pipeline_dirs["flux2"]), "--prompts", str(prompts),
            "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "encoded 6 of 6 texts" in out and "MiB per text on disk" in out
    # FLUX.2's denoiser reads all 512 positions: every one is stored (512 x 48 floats per prompt, plus the header)
    report = json.loads(next((tmp_path / "c").glob("*/cache_report.json")).read_text())
    assert 512 * 48 * 4 <= report["bytes_per_text"] < 512 * 48 * 4 * 1.1
    assert main(argv) == 0 and "encoded 0 of 6 texts (6 already cached)" in capsys.readouterr().out


def test_release_teacher_encodes_every_prompt_once_then_frees_it(tiny_pipeline_dirs, tmp_path):
    from encoder_shrink.errors import IncompatibleModelError

    pipe = tiny.load_tiny_pipeline("flux2", tiny_pipeline_dirs["flux2"])
    shrinker = EncoderShrinker(pipe)
    teacher = pipe.text_encoder
    student = shrinker.distill(recipe="tiny", prompts=PROMPTS[:4], eval_prompts=PROMPTS[4:], max_steps=8,
                               release_teacher=True)
    assert pipe.text_encoder is None and shrinker.summary["teacher_parameters"] == sum(
        p.numel() for p in teacher.parameters())
    assert shrinker.summary["teacher_texts_encoded"] == len(PROMPTS)  # each prompt once, before training
    assert shrinker.summary["fidelity_after"]["relative_mse"] < shrinker.summary["fidelity_before"]["relative_mse"]
    with_student = tiny.tiny_pipeline_class("flux2").from_pretrained(tiny_pipeline_dirs["flux2"],
                                                                        text_encoder=student)
    assert with_student(prompt="a red circle", **tiny.tiny_call_kwargs(with_student)).images is not None
    # a prompt that was never cached cannot be encoded any more, and says so in one line
    cache = TeacherEmbeddingCache(adapter_for(pipe), 512)
    with pytest.raises(IncompatibleModelError, match="not in the teacher cache and the pipeline's text_encoder was "
                                                     "released"):
        cache.rows(["an unseen prompt"])
