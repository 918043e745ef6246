"""The teacher-cache job: a pipeline's text encoder alone encodes prompts into cache shards, resumable and parallel."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from encoder_shrink.distill.cache import TeacherEmbeddingCache
from encoder_shrink.errors import IncompatibleModelError, InputNotFoundError, InvalidArgumentError
from encoder_shrink.files import atomic_write_text
from encoder_shrink.loading import check_pipeline_folder, from_pretrained_or_fail, require_folder_or_hub_id
from encoder_shrink.pipelines import FAMILIES

logger = logging.getLogger(__name__)


def load_teacher_only(id_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    r"""
    The pipeline of `id_or_path` loaded without its denoisers and VAE (only the text encoders, tokenizers and
    scheduler), and its family's adapter: what encoding prompts needs, without the memory of the rest.

    Example:

    ```python
    >>> pipe, adapter = load_teacher_only("black-forest-labs/FLUX.2-dev", dtype=torch.bfloat16)  # doctest: +SKIP
    ```
    """
    from diffusers import DiffusionPipeline

    require_folder_or_hub_id(id_or_path, "pipeline")
    if Path(id_or_path).exists():
        index = check_pipeline_folder(id_or_path)
    else:
        try:
            index = DiffusionPipeline.load_config(id_or_path)
        except OSError as error:  # a hub id that is not there, or no network
            raise InputNotFoundError(f"could not load pipeline {id_or_path}: {str(error).splitlines()[0]} (pass an "
                                     "existing pipeline folder, or a hub id with the network on)") from None
    adapters = [a for a in FAMILIES.values() if a.pipeline_class == index.get("_class_name")]
    if not adapters:
        raise IncompatibleModelError(
            f"{id_or_path} holds a {index.get('_class_name')}, which no registered family samples; families: "
            f"{', '.join(FAMILIES.names())}."
        )
    skipped = {name: None for name in index if not name.startswith("_")
               and (name.startswith(("transformer", "unet")) or name == "vae")}
    pipe = from_pretrained_or_fail(DiffusionPipeline, id_or_path, dtype=dtype, **skipped)
    return pipe, adapters[0](pipe)


def build_teacher_cache(
    pipeline: str | os.PathLike,
    prompts: list[str],
    cache_dir: str | os.PathLike,
    max_sequence_length: int | None = None,
    negative_prompt: str = "",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    process_index: int | None = None,
    num_processes: int | None = None,
) -> dict[str, Any]:
    r"""
    Encode `prompts` (and the negative prompt, for CFG families) with the pipeline's teacher alone into the cache a
    distillation run with the same pipeline id/path, length and `cache_dir` reads. Texts already cached are skipped,
    so a killed job continues where it stopped; under `accelerate launch`, each process encodes every
    `num_processes`-th text into its own shards. Returns a report (also written as `cache_report[-rank].json`):
    texts encoded and skipped, bytes written and bytes per text.

    Example:

    ```python
    >>> build_teacher_cache("black-forest-labs/FLUX.2-dev", prompts, "cache/", dtype=torch.bfloat16)  # doctest: +SKIP
    {'encoded': 1000, 'bytes_per_text': 15729664, ...}
    ```
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size={batch_size} encodes nothing; pass at least 1.")
    if process_index is None or num_processes is None:
        from accelerate import PartialState

        state = PartialState()
        process_index, num_processes = state.process_index, state.num_processes
    started = time.perf_counter()
    pipe, adapter = load_teacher_only(pipeline, dtype=dtype)
    if torch.cuda.is_available():
        adapter.teacher.to(f"cuda:{torch.cuda.current_device()}")
    length = max_sequence_length or adapter.max_sequence_length
    texts = list(dict.fromkeys(adapter.encoder_texts(list(prompts), negative_prompt)))
    mine = texts[process_index::num_processes]
    writer = f"r{process_index}" if num_processes > 1 else None
    cache = TeacherEmbeddingCache(adapter, length, directory=cache_dir, teacher_id=str(pipeline), writer=writer)
    encoded = cache.precompute(mine, batch_size=batch_size)
    report = {
        "pipeline": str(pipeline), "family": adapter.name, "max_sequence_length": length,
        "encoded_length": adapter.encoded_length(length), "texts": len(mine), "encoded": encoded,
        "already_cached": len(mine) - encoded, "bytes_written": cache.bytes_written,
        "bytes_per_text": cache.bytes_written / encoded if encoded else None,
        "process": process_index, "processes": num_processes, "directory": str(cache.directory),
        "seconds": round(time.perf_counter() - started, 2),
    }
    suffix = f"-{writer}" if writer else ""
    atomic_write_text(Path(cache.directory) / f"cache_report{suffix}.json", json.dumps(report, indent=2))
    logger.info("Encoded %d of %d texts (%s bytes per text) into %s", encoded, len(mine),
                report["bytes_per_text"], cache.directory)
    return report

