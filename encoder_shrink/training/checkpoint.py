"""Full training-state checkpoints in safetensors + JSON, one format for every training method: named modules,
optimizers, LR schedulers, an EMA, fp16's loss scaler and the position.

No RNG state is stored: every random draw of a run is a function of `(recipe seed, step, process)` (see
`encoder_shrink.training.run.step_seed`), so the step restores it; the run record (`run.json`) holds the seed, and a
resume with another recipe is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.files import atomic_write_text

STATE = "state.json"
CHECKPOINTS = "checkpoints"
# The layout `TrainingState` writes; state.json records it, and a checkpoint of another layout is refused.
LAYOUT = 2


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under `output_dir`, or `None`."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / STATE).is_file() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def _optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
    save_optimizer_state(folder, optimizer.state_dict(), name)


def save_optimizer_state(folder: Path, state: dict, name: str = "optimizer") -> None:
    """An optimizer's `state_dict()` (parameters by index) as `save_optimizer` writes it."""
    tensors, meta = _optimizer_to_files(state)
    save_file(tensors, folder / f"{name}.safetensors")
    atomic_write_text(folder / f"{name}.json", json.dumps(meta))


def read_optimizer_state(folder: Path, name: str = "optimizer") -> dict:
    """The `state_dict()` `save_optimizer` wrote."""
    return _optimizer_from_files(load_file(folder / f"{name}.safetensors"),
                                 json.loads((folder / f"{name}.json").read_text()))


def load_optimizer(folder: Path, optimizer, name: str = "optimizer") -> None:
    """Restore what `save_optimizer` wrote into `optimizer`."""
    optimizer.load_state_dict(read_optimizer_state(folder, name))


def _like(full: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `current`: sharded the same way when `current` is a DTensor, else as it is."""
    if not hasattr(current, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(current.device), current.device_mesh, current.placements)


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


@dataclass
class TrainingState:
    r"""
    Everything a run's checkpoint holds besides the position, by name: what [`TrainingRun`] saves and restores.

    Args:
        modules: the trained modules. A model with `save_pretrained` (a student, a UNet) is written as the folder
            `<name>/` it writes, loadable on its own; another module as `<name>.safetensors` (tied weights once);
            one named in `trainable_only` as its parameters with `requires_grad` (a LoRA on a frozen UNet).
        optimizers: `<name>.safetensors` (tensors) and `<name>.json` (the rest).
        schedulers: LR schedulers, in `lr_schedulers.json`.
        ema: the EMA of a module (diffusers' `EMAModel`), in `ema.safetensors` and `ema.json`.
        scaler: fp16's gradient scaler (`accelerator.scaler`; it decides which steps are skipped), in
            `grad_scaler.json`.
        trainable_only: the names in `modules` written as their trainable parameters only.
        ema_of: the name in `modules` the EMA follows (its shadow goes to that module's device when read).

    Example:

    ```python
    >>> state = TrainingState({"student": student}, {"optimizer": optimizer}, {"lr": schedule})  # doctest: +SKIP
    >>> state.write(folder); state.read(folder)  # doctest: +SKIP
    ```
    """

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    ema: Any = None
    scaler: Any = None
    trainable_only: tuple[str, ...] = ()
    ema_of: str | None = None
    optimizer_of: dict[str, str] = field(default_factory=dict)

    def _module_of(self, optimizer: str) -> torch.nn.Module:
        """The module whose parameters optimizer `optimizer` updates (FSDP2 reads its state through it)."""
        return self.modules[self.optimizer_of.get(optimizer, next(iter(self.modules)))]

    def gather(self) -> dict[str, Any] | None:
        r"""
        The full state of sharded (FSDP2) modules and their optimizers, gathered on every process (collective: all
        call it): what `write` writes in place of the shards. None when nothing is sharded.
        """
        from encoder_shrink.training.sharding import (
            full_optimizer_state,
            full_state_dict,
            is_sharded_module,
            unsharded_copy,
        )

        if not any(is_sharded_module(m) for m in self.modules.values()):
            return None
        modules = {}
        for name, module in self.modules.items():
            if name in self.trainable_only:
                trainable = {n for n, p in module.named_parameters() if p.requires_grad}
                modules[name] = {n: v for n, v in full_state_dict(module).items() if n in trainable}
            elif hasattr(module, "save_pretrained"):
                modules[name] = unsharded_copy(module)
            else:
                modules[name] = full_state_dict(module)
        optimizers = {name: full_optimizer_state(self._module_of(name), optimizer)
                      for name, optimizer in self.optimizers.items()}
        ema = None
        if self.ema is not None:
            ema = self.ema.state_dict()
            ema["shadow_params"] = [p.full_tensor() if hasattr(p, "full_tensor") else p
                                    for p in ema["shadow_params"]]
        return {"modules": modules, "optimizers": optimizers, "ema": ema}

    def write(self, folder: Path, gathered: dict[str, Any] | None = None) -> None:
        """
        Write every object into `folder` (a checkpoint's staging folder: see `write_checkpoint`); sharded modules as
        their full state, `gathered` (from `gather`).
        """
        from safetensors.torch import save_model

        for name, module in self.modules.items():
            full = gathered["modules"][name] if gathered is not None else None
            if name in self.trainable_only:
                weights = full if full is not None else {n: p for n, p in module.named_parameters() if p.requires_grad}
                save_file({n: p.detach().cpu().contiguous() for n, p in weights.items()},
                          folder / f"{name}.safetensors")
            elif hasattr(module, "save_pretrained"):
                (full if full is not None else module).save_pretrained(folder / name)
            elif full is not None:
                save_file({n: p.contiguous() for n, p in full.items()}, folder / f"{name}.safetensors")
            else:
                save_model(module, str(folder / f"{name}.safetensors"))
        for name, optimizer in self.optimizers.items():
            if gathered is not None:
                save_optimizer_state(folder, gathered["optimizers"][name], name)
            else:
                save_optimizer(folder, optimizer, name)
        if self.schedulers:
            atomic_write_text(folder / "lr_schedulers.json",
                              json.dumps({name: s.state_dict() for name, s in self.schedulers.items()}))
        if self.scaler is not None:
            atomic_write_text(folder / "grad_scaler.json", json.dumps(self.scaler.state_dict()))
        if self.ema is not None:
            saved = gathered["ema"] if gathered is not None else self.ema.state_dict()
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(saved.pop("shadow_params"))},
                      folder / "ema.safetensors")
            atomic_write_text(folder / "ema.json", json.dumps(saved))

    def read(self, folder: Path) -> None:
        r"""
        Restore what `write` wrote into the objects (weights in place; each process keeps its shard of a sharded
        module), or a one-line error naming what differs.
        """
        from safetensors.torch import load_model

        from encoder_shrink.training.sharding import (
            is_sharded_module,
            load_full_optimizer_state,
            load_full_state_dict,
            plain_class,
        )

        for name, module in self.modules.items():
            file = folder / f"{name}.safetensors"
            pretrained = name not in self.trainable_only and hasattr(module, "save_pretrained")
            if not (folder / name if pretrained else file).exists():
                raise InvalidArgumentError(f"{folder} holds no {name}; resume with the recipe the run started with.")
            if pretrained:  # the folder `save_pretrained` wrote, read by the class's own loader (safetensors only)
                load_full_state_dict(module, plain_class(module).from_pretrained(folder / name).state_dict())
                continue
            if name not in self.trainable_only:
                if is_sharded_module(module):
                    load_full_state_dict(module, load_file(file))
                else:
                    load_model(module, str(file), strict=True, device=str(next(module.parameters()).device))
                continue
            saved = load_file(file)
            missing = {n for n, p in module.named_parameters() if p.requires_grad} - set(saved)
            if missing:
                raise InvalidArgumentError(
                    f"{folder} holds no {name} weights for {sorted(missing)[0]} (and {len(missing) - 1} more); resume "
                    "with the recipe the run started with.")
            load_full_state_dict(module, saved, strict=False)
        for name, optimizer in self.optimizers.items():
            load_full_optimizer_state(self._module_of(name), optimizer, read_optimizer_state(folder, name))
        if self.schedulers:
            saved = json.loads((folder / "lr_schedulers.json").read_text())
            for name, scheduler in self.schedulers.items():
                scheduler.load_state_dict(saved[name])
        if self.scaler is not None and (folder / "grad_scaler.json").is_file():
            self.scaler.load_state_dict(json.loads((folder / "grad_scaler.json").read_text()))
        if self.ema is not None:
            if not (folder / "ema.safetensors").is_file():
                raise InvalidArgumentError(f"{folder} holds no EMA; resume with the recipe's ema_decay the run "
                                           "started with (null there: no EMA).")
            shadow = load_file(folder / "ema.safetensors")
            shadow = [shadow[str(i)] for i in range(len(shadow))]
            current = self.ema.shadow_params
            # (a sharded module's EMA keeps its shards: each full tensor is cut as the parameter it follows is)
            shadow = [_like(full, now) for full, now in zip(shadow, current, strict=True)]
            self.ema.load_state_dict({**json.loads((folder / "ema.json").read_text()), "shadow_params": shadow})
            if self.ema_of is not None:
                self.ema.to(next(self.modules[self.ema_of].parameters()).device)

    def save(self, directory: Path, state: dict, *, is_main: bool, barrier) -> None:
        r"""
        A complete checkpoint in `directory`: the objects, then `state.json` (with the layout) last. Every process
        calls it (sharded state is gathered first; the main process writes).
        """
        gathered = self.gather()
        write_checkpoint(directory, lambda folder: self.write(folder, gathered), {**state, "layout": LAYOUT},
                         is_main=is_main, barrier=barrier)

    def load(self, directory: Path, processes: int) -> dict:
        """Restore the checkpoint in `directory`; return its `state.json`."""
        state = check_processes(directory, processes)
        if state.get("layout") != LAYOUT:
            raise InvalidArgumentError(
                f"{directory} was written by an older encoder-shrink (checkpoint layout {state.get('layout', 1)}, "
                f"this version reads {LAYOUT}); start the run over with overwrite=True (--overwrite).")
        self.read(directory)
        return state


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the `keep` newest complete checkpoints."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / STATE).is_file() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
