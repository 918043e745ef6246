"""The output folder of a training run: its record (`run.json`), its lock, and the refusal to mix two runs in one."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from encoder_shrink.errors import InvalidArgumentError, OutputExistsError
from encoder_shrink.files import atomic_write_text

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
LOCK = ".encoder-shrink.lock"
CHECKPOINTS = "checkpoints"
# What a run writes into its folder besides its final output: a folder holding any of these holds a run.
RUN_ENTRIES = (RUN_RECORD, CHECKPOINTS, "training_summary.json", "logs")


class RunLockedError(OutputExistsError):
    """An output folder that another live run is writing to."""


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: the record's fields by dotted name, to name the first that differs."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def first_difference(recorded: dict, current: dict) -> tuple[str, Any, Any] | None:
    """The first field (dotted name) whose value differs between two records, with both values; `None` if none."""
    old, new = _flat(recorded), _flat(current)
    for key in [*old, *(k for k in new if k not in old)]:
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            return key, old.get(key, "<absent>"), new.get(key, "<absent>")
    return None


def _lock_owner(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None  # a lock being written, or garbage: treated as held by an unknown owner below


def _launch() -> str | None:
    """
    The multi-process launch this process belongs to (`accelerate launch` / torchrun: its agent, the ranks' common
    parent, and its rendezvous port), or None when not launched that way: the processes of one launch share a lock.
    """
    if "LOCAL_RANK" not in os.environ:
        return None
    return f"{socket.gethostname()}:{os.getppid()}:{os.environ.get('MASTER_PORT', '')}"


def _is_alive(owner: dict | None) -> bool:
    """Whether the process that wrote a lock still runs (a lock from another host, or unreadable, counts as alive)."""
    if owner is None or owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return not _is_zombie(int(owner["pid"]))


def _is_zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet (state Z in /proc): it holds nothing, it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _refuse_if_locked(folder: Path) -> None:
    """Raise when a live run holds `folder`'s lock; a lock whose process has ended is left to `_take_lock`."""
    lock = folder / LOCK
    if not lock.exists():
        return
    owner = _lock_owner(lock)
    if owner is not None and owner.get("launch") is not None and owner.get("launch") == _launch():
        return  # held by this launch's main process (the others check the folder while it claims it)
    if _is_alive(owner):
        who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
        raise RunLockedError(
            f"{folder} is in use by a run of {who} (lock {lock}); wait for it to end, or choose another output_dir "
            "(if no run is using it, delete the lock file)."
        )


def _take_lock(folder: Path) -> Path:
    """Create the lock (O_EXCL, so of two runs started at once exactly one gets it); a dead owner's is taken over."""
    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _refuse_if_locked(folder)
            logger.warning("Took over the lock %s of a run that ended without releasing it (process %s).", lock,
                           (_lock_owner(lock) or {}).get("pid"))
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                       "launch": _launch()}, handle)
        return lock
    raise RunLockedError(f"{folder} was locked by another run while this one started; choose another output_dir.")


def holds_run(folder: Path, outputs: tuple[str, ...] = ()) -> list[str]:
    """The entries of an earlier run in `folder` (record, checkpoints, summary, logs, `outputs`), if any."""
    return [name for name in (*RUN_ENTRIES, *outputs) if (folder / name).exists()]


def check_run_folder(folder: str | os.PathLike, record: dict, *, resume: bool, overwrite: bool,
                     outputs: tuple[str, ...] = ()) -> None:
    r"""
    Refuse, before anything is written, an output folder that a live run holds (its lock), or that holds an earlier
    run when neither `resume` nor `overwrite` is asked for, or whose recorded recipe differs from `record` on
    `resume` (naming the first field that differs). Read-only, so every process of a launch can call it.

    Example:

    ```python
    >>> record = {"method": "distill", "recipe": {"max_steps": 10}}
    >>> check_run_folder("out", record, resume=False, overwrite=False)  # doctest: +SKIP
    ```
    """
    folder = Path(folder)
    if resume and overwrite:
        raise InvalidArgumentError("resume=True continues the run in the output folder and overwrite=True deletes it; "
                                   "pass one of them.")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file, not a folder; choose another output_dir.")
    _refuse_if_locked(folder)
    earlier = holds_run(folder, outputs)
    if earlier and not resume and not overwrite:
        raise OutputExistsError(
            f"{folder} holds an earlier run ({', '.join(earlier)}); continue it with resume=True, start over with "
            "overwrite=True (deletes it), or choose another output_dir."
        )
    if resume and (folder / RUN_RECORD).is_file():
        recorded = json.loads((folder / RUN_RECORD).read_text())
        # The sections given are compared (the command line checks the recipe before the pipeline is loaded), as
        # JSON has them: tuples are lists.
        recorded = {key: recorded.get(key, "<absent>") for key in record}
        difference = first_difference(recorded, json.loads(json.dumps(record)))
        if difference is not None:
            key, old, new = difference
            raise InvalidArgumentError(
                f"{folder} holds a run with {key}={old!r} and this one has {key}={new!r}; resume with the recipe and "
                "overrides the run was started with, or start over with overwrite=True."
            )


@contextmanager
def claim_run_folder(folder: str | os.PathLike, record: dict, *, resume: bool, overwrite: bool,
                     outputs: tuple[str, ...] = (), is_main: bool = True, barrier=lambda: None) -> Iterator[Path]:
    r"""
    Check the output folder of a training run ([`check_run_folder`]), then, from the main process: take its lock,
    delete an earlier run with `overwrite`, and write `record` as `run.json`. The lock is released when the block
    ends. A run that fails before its first checkpoint leaves nothing behind: its record goes, and the folder too if
    this run created it.

    Example:

    ```python
    >>> with claim_run_folder("out", {"method": "distill"}, resume=False, overwrite=False) as folder:  # doctest: +SKIP
    ...     train(folder)
    ```
    """
    folder = Path(folder)
    check_run_folder(folder, record, resume=resume, overwrite=overwrite, outputs=outputs)
    barrier()  # every process has checked before the main one writes
    created = not folder.exists()
    lock = None
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = _take_lock(folder)
            if overwrite:
                for name in holds_run(folder, outputs):
                    path = folder / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    logger.info("Deleted %s of the earlier run (overwrite).", path)
            if not (resume and (folder / RUN_RECORD).is_file()):
                atomic_write_text(folder / RUN_RECORD, json.dumps(record, indent=2, sort_keys=True))
        except BaseException:
            if lock is not None:
                lock.unlink(missing_ok=True)
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            raise
    barrier()
    try:
        yield folder
    except BaseException:
        if is_main and not any((folder / CHECKPOINTS).glob("step-*[0-9]")):
            # Nothing to resume from: leave the folder as it was found.
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                (folder / RUN_RECORD).unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def claim_for_run(accelerator, folder: Path | None, record: dict, *, resume: bool, overwrite: bool,
                  outputs: tuple[str, ...] = ()):
    """[`claim_run_folder`] for a training loop under `accelerator` (its main process writes, every process waits for
    it), or nothing to claim when the run has no output folder."""
    if folder is None:
        return nullcontext()
    return claim_run_folder(folder, record, resume=resume, overwrite=overwrite, outputs=outputs,
                            is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone)


__all__ = ["LOCK", "RUN_RECORD", "RunLockedError", "check_run_folder", "claim_for_run", "claim_run_folder",
           "first_difference", "holds_run"]
