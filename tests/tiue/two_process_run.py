"""A TiUE run for the two-process test: `python two_process_run.py PIPELINE OUTPUT` under `accelerate launch`.

Each process writes the checksum of its final UNet to OUTPUT/checksum-RANK.json: DDP keeps the two in step.
"""

import json
import os
import sys
from pathlib import Path

from diffusers import StableDiffusionPipeline

from encoder_shrink.tiue import TiUEDistiller


def main(pipeline_dir: str, output: str) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    distiller = TiUEDistiller(pipe)
    tiue = distiller.distill(recipe="tiny-tiue", output_dir=output, max_steps=4, checkpoint_every=2,
                             eval_prompt_count=1, eval_images_per_prompt=2, eval_steps=2)
    rank = os.environ.get("RANK", "0")  # set by accelerate launch for each process
    checksum = sum(float(p.double().sum()) for p in tiue.unet.parameters())
    (Path(output) / f"checksum-{rank}.json").write_text(json.dumps(
        {"checksum": checksum, "processes": distiller.summary["processes"]}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
