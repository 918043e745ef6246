"""Full training-state checkpoints in safetensors + JSON (student, optimizer, LR schedule, position).

No RNG state is stored: every random draw of the loop is a function of the recipe's seed and the step (see
`encoder_shrink.distill.loop`), so the step alone restores it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.files import atomic_write_text

STATE = "state.json"
CHECKPOINTS = "checkpoints"


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under `output_dir`, or `None`."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / STATE).is_file() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_optimizer(folder: Path, optimizer, name: str = "optimizer") -> None:
    """`optimizer`'s state as `<name>.safetensors` (its tensors) and `<name>.json` (the rest) in `folder`."""
    tensors, meta = _optimizer_to_files(optimizer)
    save_file(tensors, folder / f"{name}.safetensors")
    atomic_write_text(folder / f"{name}.json", json.dumps(meta))


def load_optimizer(folder: Path, optimizer, name: str = "optimizer") -> None:
    """Restore what `save_optimizer` wrote into `optimizer`."""
    optimizer.load_state_dict(_optimizer_from_files(
        load_file(folder / f"{name}.safetensors"), json.loads((folder / f"{name}.json").read_text())
    ))


def write_checkpoint(directory: Path, write: Callable[[Path], None], state: dict, *, is_main: bool, barrier) -> None:
    r"""
    Write a checkpoint to `directory` from the main process: `write(folder)` writes the training objects, then
    `state.json` last. Written under `<directory>.tmp` and renamed when complete, so an interrupted (or killed) save
    never looks like a checkpoint.
    """
    barrier()
    if is_main:
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            write(tmp)
            atomic_write_text(tmp / STATE, json.dumps(state, indent=2))
        except BaseException:  # a full disk or an error: no half-written checkpoint stays (a kill -9 leaves one,
            shutil.rmtree(tmp, ignore_errors=True)  # which the next save of that step replaces)
            raise
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    barrier()


def check_processes(directory: Path, processes: int) -> dict:
    """`state.json` of the checkpoint in `directory`, refused when another number of processes wrote it."""
    state = json.loads((directory / STATE).read_text())
    if state.get("processes", 1) != processes:
        raise InvalidArgumentError(
            f"{directory} was written by a run of {state.get('processes', 1)} processes and this one has {processes}; "
            "resume with the same number of processes (each trains on its own prompts)."
        )
    return state


def save_checkpoint(directory: Path, *, student, optimizer, lr_scheduler, state: dict, is_main: bool,
                    barrier) -> None:
    """A text-encoder run's checkpoint (`write_checkpoint`): the student, the optimizer and the LR schedule."""

    def write(folder: Path) -> None:
        student.save_pretrained(folder / "student")
        save_optimizer(folder, optimizer)
        atomic_write_text(folder / "lr_scheduler.json", json.dumps(lr_scheduler.state_dict()))

    write_checkpoint(directory, write, state, is_main=is_main, barrier=barrier)


def load_checkpoint(directory: Path, *, student, optimizer, lr_scheduler, processes: int) -> dict:
    """Restore what `save_checkpoint` wrote into the given objects (weights in place); return `state.json`."""
    from encoder_shrink.student import load_student

    state = check_processes(directory, processes)
    saved = load_student(directory / "student")
    student.load_state_dict(saved.state_dict())
    load_optimizer(directory, optimizer)
    lr_scheduler.load_state_dict(json.loads((directory / "lr_scheduler.json").read_text()))
    return state


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the `keep` newest complete checkpoints."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / STATE).is_file() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
