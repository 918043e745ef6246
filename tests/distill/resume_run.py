"""A distillation run for the two-process resume test: `python resume_run.py PIPELINE OUTPUT MODE` under accelerate.

MODE is `full` (uninterrupted), `interrupt` (Ctrl-C after step 6, mid-trajectory) or `resume`. Nothing is seeded here:
the recipe's seed decides every random draw.
"""

import sys

from encoder_shrink import EncoderShrinker, tiny

STEPS, INTERRUPT_AT = 12, 6
# Linear decay, dropout on and a resumed step in the middle of a 4-step trajectory: every piece of state matters.
OVERRIDES = {"max_steps": STEPS, "lr_scheduler": "linear", "checkpoint_every": 0, "eval_prompt_count": 2}


def stop_at_six(step, loss):
    if step == INTERRUPT_AT:
        raise KeyboardInterrupt


def main(pipeline_dir: str, output: str, mode: str) -> None:
    pipe = tiny.load_tiny_pipeline("flux-dev", pipeline_dir)
    shrinker = EncoderShrinker(pipe)
    try:
        shrinker.distill(recipe="tiny", output_dir=output, resume=mode == "resume",
                         callback=stop_at_six if mode == "interrupt" else None, **OVERRIDES)
    except KeyboardInterrupt:
        if mode != "interrupt":
            raise
        return


if __name__ == "__main__":
    main(*sys.argv[1:4])
