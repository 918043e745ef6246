"""TeacherEmbeddingCache: the teacher's conditioning computed once per prompt, in memory and in safetensors shards."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from encoder_shrink.errors import IncompatibleModelError
from encoder_shrink.files import atomic_write_text, first_missing
from encoder_shrink.pipelines import PipelineAdapter

logger = logging.getLogger(__name__)

INDEX = "index.json"


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class TeacherEmbeddingCache:
    r"""
    The teacher's conditioning rows (`"t5"` plus CLIP parts where the pipeline has them) for each text, computed
    once: a trajectory of 20 scheduler steps reuses them 20 times, and a prompt met again is never re-encoded.

    With `directory`, rows are also persisted as safetensors shards under a folder keyed by teacher, family,
    sequence length and masking, so `precompute` can encode a whole prompt set once; the teacher encoder can then
    leave the device (`offload_teacher`) while training. Positions the denoiser never reads (padding the pipeline
    masks) are not stored: a row keeps its positions up to the last one the denoiser reads, and is padded back with
    zeros when read. Several processes can fill one cache at once: each writes its own shards and index
    (`writer`, e.g. the process rank), and every reader merges all indexes.

    Example:

    ```python
    >>> cache = TeacherEmbeddingCache(adapter, max_sequence_length=512, directory="cache")  # doctest: +SKIP
    >>> cache.precompute(prompts)  # doctest: +SKIP
    >>> rows = cache.rows(["a red circle"])  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        adapter: PipelineAdapter,
        max_sequence_length: int,
        directory: str | os.PathLike | None = None,
        teacher_id: str | None = None,
        max_items: int = 65536,
        writer: str | None = None,
    ):
        self.adapter = adapter
        self.max_sequence_length = max_sequence_length
        self.max_items = max_items
        self.teacher_id = teacher_id or str(getattr(adapter.pipe, "name_or_path", None) or type(adapter.pipe).__name__)
        self.encoded = 0  # texts the teacher has encoded through this cache (for accounting and tests)
        self._memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self.directory = None
        self._index: dict[str, str] = {}
        # This writer's own index file and shard names: `index.json` / `shard-000000` for a single writer.
        self._index_name = f"index-{writer}.json" if writer else INDEX
        self._shard_prefix = f"shard-{writer}-" if writer else "shard-"
        self._written: dict[str, str] = {}  # what this writer's index holds
        self.bytes_written = 0  # safetensors bytes this cache wrote (the disk cost of what it encoded)
        self.padded_length = adapter.encoded_length(max_sequence_length)
        # Under FSDP2 the teacher is sharded and each call is collective: `lockstep(texts)` gathers every process's
        # texts (e.g. accelerate's `gather_object`), so every process encodes the same texts in the same calls.
        self.lockstep = None
        if directory is not None:
            fingerprint = (f"{self.teacher_id}|{adapter.name}|{adapter.encoder_slot}|{max_sequence_length}|"
                           f"{adapter.uses_attention_mask}")
            self.directory = Path(directory) / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
            # What the rows were encoded with; written with the first shard, so a run that encodes nothing leaves
            # no folder behind.
            self._teacher_record = {
                "teacher": self.teacher_id, "family": adapter.name, "slot": adapter.encoder_slot,
                "max_sequence_length": max_sequence_length, "attention_mask": adapter.uses_attention_mask,
            }
            self.reload()

    def reload(self) -> None:
        """Read every writer's index again (rows other processes have written since)."""
        if not self.directory.is_dir():
            return
        for index in sorted(self.directory.glob("index*.json")):
            shards = json.loads(index.read_text())["shards"]
            self._index.update(shards)
            if index.name == self._index_name:
                self._written = dict(shards)

    def __contains__(self, text: str) -> bool:
        key = _text_key(text)
        return key in self._memory or key in self._pending or key in self._index

    def rows(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The teacher rows of `texts`, stacked in order, on the pipeline's device; encodes only unseen texts."""
        keys = [_text_key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if self._lookup(k) is None))
        if self.lockstep is not None:  # every process's misses, encoded by all of them alike
            missing = list(dict.fromkeys(self.lockstep(missing)))
        if missing:
            self._encode(missing)
        found = [self._lookup(k) for k in keys]
        device = self.adapter.device
        length = self.padded_length
        if self.adapter.pads_to_batch_longest:  # (each row is stored at its call's length)
            length = max(row["t5"].shape[0] for row in found)
        return {name: torch.stack([self._padded(name, row[name], length) for row in found]).to(device)
                for name in found[0]}

    def _padded(self, name: str, value: torch.Tensor, length: int) -> torch.Tensor:
        """A stored row at `length` positions (the positions not stored are zeros)."""
        missing = length - value.shape[0]
        if name != "t5" or missing <= 0:
            return value
        return torch.cat([value, value.new_zeros(missing, *value.shape[1:])])

    def precompute(self, texts, batch_size: int = 32, offload_teacher: bool = False, flush_every: int = 8) -> int:
        """
        Encode every text not cached yet (in batches, with progress), persist the shards when the cache has a
        directory (every `flush_every` batches, so a killed run keeps what it encoded and a rerun continues), and
        optionally move the teacher encoder to the CPU afterwards. Returns how many were encoded.
        """
        todo = [t for t in dict.fromkeys(texts) if t not in self]
        if self.lockstep is not None:
            todo = list(dict.fromkeys(self.lockstep(todo)))
        starts = range(0, len(todo), batch_size)
        for number, start in enumerate(tqdm(starts, desc="teacher embeddings", unit="batch", disable=not todo)):
            self._encode(todo[start:start + batch_size])
            if (number + 1) % flush_every == 0:
                self.flush()
        self.flush()
        if offload_teacher:
            self.adapter.teacher.to("cpu")
        return len(todo)

    def flush(self) -> None:
        """Write rows encoded since the last flush as one new safetensors shard (no-op without a directory)."""
        if self.directory is None or not self._pending:
            return
        created = first_missing(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        shard = f"{self._shard_prefix}{len(set(self._written.values())):06d}.safetensors"
        tensors = {f"{key}.{name}": row[name].contiguous() for key, row in self._pending.items() for name in row}
        tmp = self.directory / f".{shard}.tmp"
        try:
            save_file(tensors, tmp, metadata={"format": "pt"})
            os.replace(tmp, self.directory / shard)
            written = {**self._written, **{key: shard for key in self._pending}}
            atomic_write_text(self.directory / self._index_name, json.dumps({"shards": written}))
            if not (self.directory / "teacher.json").is_file():
                atomic_write_text(self.directory / "teacher.json", json.dumps(self._teacher_record, indent=2))
        except BaseException:  # a full disk: no half-written shard stays, nor a cache folder this flush created
            tmp.unlink(missing_ok=True)
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        self.bytes_written += (self.directory / shard).stat().st_size
        self._written = written
        self._index.update({key: shard for key in self._pending})
        self._pending.clear()

    def _encode(self, texts: list[str]) -> None:
        if self.adapter.teacher is None or getattr(self.adapter, "teacher_released", False):
            raise IncompatibleModelError(
                f"{len(texts)} texts are not in the teacher cache and the pipeline's {self.adapter.encoder_slot} was "
                f"released (first: {texts[0][:60]!r}); cache them before releasing the teacher."
            )
        rows = self.adapter.encode_teacher(texts, self.max_sequence_length)
        kept = self.adapter.stored_lengths(texts, self.max_sequence_length)
        self.encoded += len(texts)
        for i, text in enumerate(texts):
            row = {name: value[i].detach().to("cpu") for name, value in rows.items()}
            if kept is not None:  # positions past the last one the denoiser reads are not kept
                row["t5"] = row["t5"][: kept[i]].clone()
            self._remember(_text_key(text), row)
            if self.directory is not None:
                self._pending[_text_key(text)] = row

    def _remember(self, key: str, row: dict[str, torch.Tensor]) -> None:
        self._memory[key] = row
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _lookup(self, key: str) -> dict[str, torch.Tensor] | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if key in self._pending:
            return self._pending[key]
        if key in self._index:
            with safe_open(str(self.directory / self._index[key]), framework="pt") as shard:
                row = {
                    name.split(".", 1)[1]: shard.get_tensor(name)
                    for name in shard.keys()
                    if name.startswith(key + ".")
                }
            self._remember(key, row)
            return row
        return None
