"""What a training run sets up before its first step, for every method: the accelerator and its tracker, the
train / held-out prompt split, and what it writes at the end (the model, its card, the summary)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from encoder_shrink.files import atomic_write_text

logger = logging.getLogger(__name__)

# The run folder's summary of a finished run (next to the trained model's folder).
SUMMARY = "training_summary.json"


def make_accelerator(mixed_precision: str, output_dir: Path | None, tracker: str | None = None,
                     config: dict | None = None):
    r"""
    The run's `accelerate.Accelerator`: `mixed_precision` on a GPU (fp32 on the CPU), TensorBoard logging under
    `<output_dir>/logs` when tensorboard is installed and there is a run folder. Call `start_tracking` once the run
    folder is claimed. Under an FSDP2 launch (`accelerate launch --config_file configs/accelerate/fsdp2.yaml`) its
    `is_fsdp2` is true, on the CPU too (see `encoder_shrink.training.sharding`).

    Example:

    ```python
    >>> accelerator = make_accelerator("bf16", Path("out"))  # doctest: +SKIP
    ```
    """
    import torch
    from accelerate import Accelerator

    from encoder_shrink.training.sharding import check_fsdp_version, enable_fsdp_on_cpu

    check_fsdp_version()
    on_accelerator = torch.cuda.is_available()
    log_with = "tensorboard" if output_dir is not None and has_tensorboard() else None
    accelerator = Accelerator(mixed_precision=mixed_precision if on_accelerator else "no", cpu=not on_accelerator,
                              log_with=log_with, project_dir=str(Path(output_dir) / "logs") if output_dir else None)
    enable_fsdp_on_cpu(accelerator)
    return accelerator


def start_tracking(accelerator, project: str, recipe: dict) -> None:
    """Open the accelerator's tracker (if it has one) with the recipe's scalar fields as the run's config."""
    if accelerator.log_with:
        accelerator.init_trackers(project, config=scalars(recipe))


def has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def scalars(data: dict, prefix: str = "") -> dict:
    """Flatten a recipe dict to the scalar values trackers accept."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, (int, float, str, bool)):
            flat[prefix + key] = value
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            flat[prefix + key] = ",".join(map(str, value))
    return flat


def split_held_out(prompts, eval_prompts, count: int, seed: int) -> tuple[Any, list[str]]:
    r"""
    The training prompts and the held-out prompts a run measures before and after (never trained on): the given
    `eval_prompts`; else the last fifth (at most `count`) of a given list; else `count` generated CommonText
    validation prompts.

    Example:

    ```python
    >>> split_held_out([f"p{i}" for i in range(10)], None, count=4, seed=0)[1]
    ['p8', 'p9']
    ```
    """
    if eval_prompts is not None:
        return prompts, list(eval_prompts)
    if isinstance(prompts, (list, tuple)) and len(prompts) >= 2:
        held = max(1, min(count, len(prompts) // 5))  # at most a fifth of a small list is held out
        return list(prompts[:-held]), list(prompts[-held:])
    from encoder_shrink.data import generate_commontext

    return prompts, generate_commontext(count, split="val", seed=seed)


def finish_run(accelerator, output_dir: Path | None, model_folder: str, save: Callable[[Path], None],
               card: Callable[[Path, dict], None], summary: dict) -> None:
    """
    End the tracker; from the main process, write the trained model (`save(folder)`), its model card
    (`card(folder, summary)`) and the summary (`training_summary.json`) into the run folder.
    """
    accelerator.end_training()
    if output_dir is None or not accelerator.is_main_process:
        return
    folder = Path(output_dir) / model_folder
    save(folder)
    card(folder, summary)
    atomic_write_text(Path(output_dir) / SUMMARY, json.dumps(summary, indent=2))


__all__ = ["SUMMARY", "finish_run", "has_tensorboard", "make_accelerator", "scalars", "split_held_out",
           "start_tracking"]
