"""FSDP2 through accelerate: sharding the frozen models, and full (unsharded) state for checkpoints and the result.

A run launched with an FSDP2 accelerate config (`accelerate launch --config_file fsdp2.yaml ...`) has an accelerator
whose `is_fsdp2` is true. Its frozen denoiser(s), and a resident teacher, are sharded by `accelerator.prepare` (each
process holds 1/N of the weights; a block's weights are all-gathered while it runs), and so are the trainable model
and its optimizer state. What is written (checkpoints, the trained model) is always the full state, gathered here, so
a run's folder reads the same whatever launched it.

Every function here is collective under FSDP2: all processes call it, in the same order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from encoder_shrink.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


# The accelerate configs shipped with the package: `ddp.yaml` and `fsdp2.yaml`.
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def accelerate_config(name: str) -> Path:
    r"""
    The path of a shipped accelerate config, `"ddp"` or `"fsdp2"`, for `accelerate launch --config_file`.

    Example:

    ```python
    >>> accelerate_config("fsdp2").name
    'fsdp2.yaml'
    ```
    """
    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
        raise InvalidArgumentError(f"no shipped accelerate config {name!r}; the shipped ones are {shipped}.")
    return path


def fsdp_requested() -> bool:
    """Whether the launch asks for FSDP (`accelerate launch` with an FSDP config sets `ACCELERATE_USE_FSDP`)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_fsdp_version() -> None:
    """FSDP1 (`fsdp_version: 1`) is refused: the frozen models' sharding and the full-state checkpoints are FSDP2's."""
    version = os.environ.get("FSDP_VERSION", "1")
    if fsdp_requested() and version != "2":
        raise InvalidArgumentError(
            f"the accelerate config asks for FSDP version {version}; encoder-shrink runs FSDP2: set "
            "`fsdp_version: 2` in its fsdp_config (or launch with configs/accelerate/fsdp2.yaml)."
        )


def enable_fsdp_on_cpu(accelerator) -> None:
    r"""
    Honour an FSDP2 launch on the CPU (gloo). accelerate (1.16) runs FSDP only on accelerators: with `cpu=True` it
    makes the run MULTI_CPU (DDP) and ignores the FSDP config. torch's FSDP2 (`fully_shard`) runs on gloo, so the same
    accelerate code (its FSDP2 `prepare`, clipping and state dicts) serves a CPU run once the state says FSDP: this
    sets the state's distributed type and its plugin (read from the launch's `FSDP_*` variables, as accelerate does).
    A no-op where accelerate already chose FSDP, or where the launch did not ask for it.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not fsdp_requested() or state.distributed_type == DistributedType.FSDP:
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    # (both shared states: every `AcceleratorState()` re-reads the process state's fields over its own)
    PartialState().distributed_type = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    logger.info("FSDP2 on the CPU (gloo): %d processes.", accelerator.num_processes)


def strategy(accelerator) -> str:
    """How the run is spread: `"fsdp2"`, `"ddp"` (several processes, each with every model) or `"single"`."""
    if is_sharded(accelerator):
        return "fsdp2"
    return "ddp" if accelerator.num_processes > 1 else "single"


def held_fraction(module: torch.nn.Module) -> float:
    """The fraction of `module`'s weights this process holds (1.0 unsharded; about 1/N under FSDP2 on N)."""
    local = total = 0
    for p in module.parameters():
        total += p.numel()
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return local / max(1, total)


def is_sharded(accelerator) -> bool:
    """Whether the run shards its models with FSDP2."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def shard_frozen(accelerator, modules) -> None:
    r"""
    Shard frozen modules (a denoiser, a resident teacher) with accelerate's FSDP2 `prepare`, in place: afterwards
    each process holds 1/N of their weights, and each call all-gathers a block's weights while it runs (every process
    must call them the same number of times). A no-op without FSDP2.
    """
    if not is_sharded(accelerator):
        return
    for module in modules:
        module.requires_grad_(False)
        prepare(accelerator, module)


def prepare(accelerator, *objects):
    r"""
    `accelerator.prepare(*objects)`; under FSDP2 each model gets its own FSDP units, its `_no_split_modules` blocks.
    (accelerate's plugin keeps the block classes of the first model it prepared, and refuses the next model, which
    has none of them; the classes are re-read per model unless the config names them: `fsdp_transformer_layer_cls_
    to_wrap`.)
    """
    if not is_sharded(accelerator):
        return accelerator.prepare(*objects)
    if not os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP"):
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = None
    for model in objects:
        if isinstance(model, torch.nn.Module):
            join_tied_modules(model)
    return accelerator.prepare(*objects)


def join_tied_modules(model: torch.nn.Module) -> None:
    r"""
    Make modules that share all their weights one module, registered under each of their names (T5's `shared` and
    `encoder.embed_tokens` are two `nn.Embedding`s holding one tied weight). FSDP2 refuses a weight managed by two
    FSDP units, and accelerate gives the input embedding a unit of its own; as one module the weight has one unit.
    The state dict keeps both names, and the computation is the same.
    """
    first: dict[tuple, torch.nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            weights = tuple(id(p) for p in child.parameters(recurse=False))
            if not weights or list(child.children()):
                continue
            key = (type(child), weights)
            if key in first and first[key] is not child:
                setattr(parent, name, first[key])
            first.setdefault(key, child)


def is_sharded_module(module: torch.nn.Module) -> bool:
    """Whether `module` holds sharded (DTensor) weights: an FSDP2 module, or a model inside one (TiUE's UNet)."""
    return any(hasattr(p, "device_mesh") for p in module.parameters())


def plain_class(module: torch.nn.Module) -> type:
    """The module's own class (FSDP2 makes a sharded module an instance of a subclass, `FSDP<Class>`)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict on the CPU, gathered whole on every process when it is sharded (collective)."""
    if not is_sharded_module(module):
        return {name: value.detach().cpu() for name, value in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # (torch's cpu_offload gives the full state to the main process only; every process gets it here)
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    return {name: value.detach().cpu() for name, value in state.items()}


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a full state dict into `module`, each process keeping its shard when it is sharded."""
    if not is_sharded_module(module):
        module.load_state_dict(state, strict=strict)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    # A tied weight once, under its first name (the names `join_tied_modules` added are the same tensor).
    # (torch's loader, strict, would also ask for the alias: strictness is checked here on the unique names)
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    missing = sorted(names - set(state)) if strict else []
    if missing:
        raise InvalidArgumentError(
            f"the saved state for {plain_class(module).__name__} has no {missing[0]} (and {len(missing) - 1} more); "
            "resume with the recipe the run started with.")
    state = {name: value for name, value in state.items() if name in names}
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state(module: torch.nn.Module, optimizer) -> dict:
    r"""
    The optimizer's state dict with full tensors, in `torch.optim`'s own layout (parameters by index, in the order
    of its param groups), so a sharded run's checkpoint has the files of an unsharded one (collective). Under FSDP2
    only the main process gets it (the one that writes); the others get `{}`.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # (accelerate's wrapper: torch's own optimizer inside)
    if not is_sharded_module(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))
    if not full:
        return {}
    index = {name: i for i, name in enumerate(n for group in full["param_groups"] for n in group["params"])}
    return {"state": {index[name]: value for name, value in full["state"].items()},
            "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                             for group in full["param_groups"]]}


def load_full_optimizer_state(module: torch.nn.Module, optimizer, state: dict) -> None:
    """Restore what `full_optimizer_state` returned, each process keeping its shard when the module is sharded."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if not is_sharded_module(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # The names torch's full optimizer state uses: the module's parameter names, in the param groups' order.
    names = {id(p): n for n, p in module.named_parameters()}
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    full = {"state": {ordered[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [ordered[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]]}
    set_optimizer_state_dict(module, optimizer, full, options=StateDictOptions(full_state_dict=True))


def unsharded_copy(module: torch.nn.Module) -> torch.nn.Module:
    r"""
    An ordinary (unsharded) copy of a `save_pretrained` model on the CPU with its full weights (collective): what a
    sharded run writes and returns. An unsharded module is returned as it is.
    """
    if not is_sharded_module(module):
        return module
    state = full_state_dict(module)
    cls = plain_class(module)
    # (a student or a UNet, built on the CPU: small next to the frozen models sharded for memory)
    copy = cls.from_config(module.config) if hasattr(cls, "from_config") else cls(module.config)
    copy.load_state_dict(state)
    return copy.train(module.training)


__all__ = ["ACCELERATE_CONFIGS", "accelerate_config", "check_fsdp_version", "enable_fsdp_on_cpu", "fsdp_requested",
           "full_optimizer_state", "full_state_dict", "held_fraction", "is_sharded", "is_sharded_module",
           "join_tied_modules", "load_full_optimizer_state", "load_full_state_dict", "plain_class", "prepare",
           "shard_frozen", "strategy", "unsharded_copy"]
