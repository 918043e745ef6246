"""The training-run driver both methods share: resume, the step loop, checkpoints, divergence and interrupts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from encoder_shrink.errors import EncoderShrinkError
from encoder_shrink.training.checkpoint import TrainingState, checkpoint_dir, latest_checkpoint, prune_checkpoints

logger = logging.getLogger(__name__)

# Full-state checkpoints kept on disk; older ones are deleted (each holds the student and 2x its size of Adam state).
KEEP_CHECKPOINTS = 2


class DistillationDiverged(EncoderShrinkError, FloatingPointError):
    """A loss or gradient norm became NaN or infinite; the last good state was saved."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of step `step` on process `rank`: every draw a method makes in that step derives from it."""
    return int(np.random.default_rng([seed, step, rank]).integers(2**62))


@dataclass(kw_only=True)
class Built:
    r"""
    What a training method's build yields: the checkpointed [`TrainingState`], the step the run ends at, the progress
    bar's label and extra `state.json` fields. A method subclasses it with what its step reads (models, optimizers).
    """

    state: TrainingState
    total: int
    desc: str
    record: dict = field(default_factory=dict)


class TrainingRun:
    r"""
    One run of a training method: it restores the newest checkpoint, calls the method's `step(step) -> figures` until
    `total`, and owns what every method needs around that: the progress bar and tracker logging, a checkpoint every
    `checkpoint_every` steps (the [`TrainingState`], written atomically, the newest `KEEP_CHECKPOINTS` kept), the
    divergence check (`guard`), and interrupts (Ctrl-C saves the state, unless it came in the middle of a step's
    updates: see `updating`).

    Args:
        state: what a checkpoint holds.
        accelerator: the run's `accelerate.Accelerator`.
        total: the step the run ends at.
        output_dir: the run folder (checkpoints go to `checkpoints/`); None writes no checkpoint.
        record: extra `state.json` fields (the recipe's name, the method).
        checkpoint_every: steps between checkpoints (0: only on interrupt or divergence).
        desc: the progress bar's label.
        callback: called as `callback(step, figures)` after every step.

    Example:

    ```python
    >>> run = TrainingRun(state, accelerator, total=100, output_dir=out)  # doctest: +SKIP
    >>> summary = run.train(step, resume=True)  # doctest: +SKIP
    ```
    """

    def __init__(self, state: TrainingState, accelerator, *, total: int, output_dir: Path | None = None,
                 record: dict | None = None, checkpoint_every: int = 0, desc: str = "train",
                 callback: Callable[[int, dict], None] | None = None):
        self.state, self.accelerator, self.total = state, accelerator, total
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.record, self.checkpoint_every, self.desc, self.callback = record or {}, checkpoint_every, desc, callback
        self.step = 0
        self._updating = False

    def resume(self) -> int:
        """Restore the newest checkpoint under the run folder, if any; return the step the run continues from."""
        found = latest_checkpoint(self.output_dir) if self.output_dir is not None else None
        if found is None:
            logger.info("No checkpoint under %s; starting from step 0.", self.output_dir)
            return self.step
        self.step = self.state.load(found, self.accelerator.num_processes)["step"]
        logger.info("Resumed from %s at step %d.", found, self.step)
        return self.step

    def save(self, step: int) -> Path | None:
        """A checkpoint of the state at `step` (all processes call it); None without a run folder."""
        if self.output_dir is None:
            return None
        target = checkpoint_dir(self.output_dir, step)
        state = {"step": step, **self.record, "processes": self.accelerator.num_processes}
        self.state.save(target, state, is_main=self.accelerator.is_main_process,
                        barrier=self.accelerator.wait_for_everyone)
        if self.accelerator.is_main_process:
            prune_checkpoints(self.output_dir, KEEP_CHECKPOINTS)
        return target

    def guard(self, value: torch.Tensor | None, what: str) -> None:
        r"""
        Raise [`DistillationDiverged`] when `value` (a loss or gradient norm) is not finite on any process; every
        process checks every process's value, so all stop together. Before the step's first update (outside
        `updating`) the state is the last good one and is saved; inside, the newest checkpoint is the one to resume.
        """
        if value is None:  # (a backend whose clipping returns no norm)
            return
        values = self.accelerator.gather(value.detach().float().reshape(1))
        if torch.isfinite(values).all():
            return
        shown = values.item() if values.numel() == 1 else values.tolist()
        saved = self._last_good()
        raise DistillationDiverged(
            f"{what} became {shown} at step {self.step}; last good state saved to {saved}. Lower the learning rate "
            "or max_grad_norm, or train in bf16/fp32 instead of fp16."
        )

    @contextmanager
    def updating(self) -> Iterator[None]:
        """The step's parameter updates: a checkpoint taken inside would hold half a step."""
        self._updating = True
        try:
            yield
        finally:
            self._updating = False

    def _last_good(self) -> Path | None:
        if not self._updating:
            return self.save(self.step)
        return latest_checkpoint(self.output_dir) if self.output_dir is not None else None

    def train(self, step: Callable[[int], dict[str, float]], resume: bool = False) -> dict:
        """
        Run `step(i)` for i from the resumed step to `total`; return the timings and each figure's history (the
        figures of this process's steps in this call).
        """
        if resume:
            self.resume()
        history: dict[str, list[float]] = {}
        main = self.accelerator.is_main_process
        started, first = time.perf_counter(), self.step
        progress = tqdm(total=self.total, initial=self.step, desc=self.desc, unit="step", disable=not main)
        try:
            while self.step < self.total:
                # (A step returns its figures as tensors, read here: the planner runs the same step on fake tensors.)
                figures = {name: value.item() if isinstance(value, torch.Tensor) else value
                           for name, value in step(self.step).items()}
                self.step += 1
                for name, value in figures.items():
                    history.setdefault(name, []).append(value)
                progress.update(1)
                progress.set_postfix({name: f"{value:.4g}" for name, value in figures.items()
                                      if isinstance(value, float)})
                self.accelerator.log({n: v for n, v in figures.items() if isinstance(v, float)}, step=self.step)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.step < self.total:
                    self.save(self.step)
                if self.callback is not None:
                    self.callback(self.step, figures)
        except KeyboardInterrupt:
            saved = self._last_good()
            logger.warning("Interrupted at step %d; resume from %s with resume=True.", self.step, saved)
            raise
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        trained = self.step - first
        return {
            "steps": self.step,
            "steps_this_run": trained,
            "seconds": round(seconds, 3),
            "steps_per_second": round(trained / seconds, 4) if seconds > 0 else None,
            "history": history,
            "processes": self.accelerator.num_processes,
        }


def run_method(method: str, parts, recipe, accelerator, *, output_dir: Path | None = None, resume: bool = False,
               callback: Callable[[int, dict], None] | None = None) -> tuple[dict, object]:
    r"""
    Train with the registered training method `method`: its build (inside whose context the models are set up and
    afterwards restored), a [`TrainingRun`] over its step, and its summary. Returns `(summary, built)`: the summary
    dict, and what the build made (the method's models, optimizers, EMA).

    Example:

    ```python
    >>> summary, built = run_method("distill", parts, recipe, accelerator, output_dir=out)  # doctest: +SKIP
    ```
    """
    from encoder_shrink.training.methods import get_training_method

    entry = get_training_method(method)
    step, summarize = entry.resolved("step"), entry.resolved("summarize")
    with entry.resolved("build")(parts, recipe, accelerator) as built:
        run = TrainingRun(built.state, accelerator, total=built.total, output_dir=output_dir,
                          record={"recipe": recipe.name, "method": method, **built.record},
                          checkpoint_every=recipe.checkpoint_every, desc=built.desc, callback=callback)
        summary = run.train(lambda at: step(built, run, at), resume=resume and output_dir is not None)
    return (summarize(built, summary) if summarize is not None else summary), built


__all__ = ["KEEP_CHECKPOINTS", "Built", "DistillationDiverged", "TrainingRun", "run_method", "step_seed"]
