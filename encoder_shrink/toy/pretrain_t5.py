"""The toy world's pretrained T5s: its "t5-xxl" (the teacher's frozen encoder) and "t5-small" (where students start).

Run:  python -m encoder_shrink.toy.pretrain_t5 --output encoder_shrink/toy/t5_small

Real FLUX conditions on T5-XXL, a language model pretrained on C4 by span corruption and frozen while the denoiser
trained; real students start from a pretrained T5 too (T5-base), never from random weights (FIELD-NOTES: random
students give "the same image for every prompt"). The toy analogue: encoder-decoder T5s pretrained, with nothing of
images, to rebuild toy prompts from corrupted copies (spans replaced by `<unk>`, BART-style, since the toy tokenizer
has no sentinel tokens), on the training split only. Rebuilding a prompt makes the encoder carry every token with
its position and context, e.g. which letter of a sign sits in which cell. The encoder is kept as a `T5EncoderModel`.
`train_teacher` pretrains the teacher's `TEACHER_T5` this way; this script makes the students' `STUDENT_T5`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from encoder_shrink.files import atomic_dir
from encoder_shrink.toy.teacher import (
    MAX_SEQUENCE_LENGTH,
    STUDENT_T5,
    TEACHER_T5,
    toy_t5_config,
    toy_t5_tokenizer,
)
from encoder_shrink.toy.world import all_prompts, spell_quoted, split_of

logger = logging.getLogger(__name__)

# Shipped with the package (python -m encoder_shrink.toy.pretrain_t5 re-creates it).
BUNDLED_T5_SMALL = Path(__file__).parent / "t5_small"
# T5's corruption rate: 15 % of the tokens, in spans of mean length 3 (rounded to whole spans of 1-3 here, since
# toy prompts are 6-10 tokens long).
CORRUPTION_RATE = 0.15
MAX_SPAN = 3


def _corrupt(ids: list[int], rng: np.random.Generator, unk: int) -> list[int]:
    """Replace spans covering ~15 % of the tokens (at least one) with a single `<unk>` each, T5-style."""
    body = ids[:-1]  # keep </s>
    budget = max(1, round(CORRUPTION_RATE * len(body)))
    masked = np.zeros(len(body), dtype=bool)
    while masked.sum() < budget:
        span = int(rng.integers(1, MAX_SPAN + 1))
        start = int(rng.integers(0, len(body)))
        masked[start:start + span] = True
    out, previous = [], False
    for token, hidden in zip(body, masked):
        if hidden and not previous:
            out.append(unk)
        elif not hidden:
            out.append(token)
        previous = hidden
    return out + ids[-1:]


def pretrain_toy_t5(size: dict = STUDENT_T5, steps: int = 1500, batch_size: int = 64, seed: int = 0,
                    learning_rate: float = 3e-3, progress=None) -> tuple:
    r"""
    Pretrain an encoder-decoder T5 of `size` (T5Config fields such as `STUDENT_T5` or `TEACHER_T5`; the decoder as
    deep as the encoder) on toy prompts by denoising; return `(encoder, summary)` with the encoder a
    [`~transformers.T5EncoderModel`] and `summary` the reconstruction loss and token accuracy at the end.

    Example:

    ```python
    >>> encoder, summary = pretrain_toy_t5(STUDENT_T5, steps=1500)  # doctest: +SKIP
    >>> summary["token_accuracy"] > 0.9  # doctest: +SKIP
    True
    ```
    """
    from transformers import T5EncoderModel, T5ForConditionalGeneration

    progress = progress or (lambda iterable, **_: iterable)
    tokenizer = toy_t5_tokenizer()
    texts = [spell_quoted(p.text) for p in all_prompts() if split_of(p) == "train"]
    encoded = [tokenizer(t).input_ids for t in texts]
    unk, pad = tokenizer.unk_token_id, tokenizer.pad_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = toy_t5_config(size, len(tokenizer))
        config.is_encoder_decoder, config.num_decoder_layers = True, size["num_layers"]
        config.decoder_start_token_id = pad
        model = T5ForConditionalGeneration(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    # 100 warm-up steps (a fresh T5's attention is unstable at full rate), then linear decay to zero: a one-off run
    # of fixed length, unlike the resumable teacher.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100) * (1 - s / steps))
    model.train()
    loss = accuracy = None
    for step in progress(range(steps), desc=f"pretrain toy t5 ({size['num_layers']} x {size['d_model']})"):
        rng = np.random.default_rng([seed, step])
        rows = rng.integers(len(encoded), size=batch_size)
        inputs = [_corrupt(encoded[r], rng, unk) for r in rows]
        targets = [encoded[r] for r in rows]
        input_ids = torch.full((batch_size, MAX_SEQUENCE_LENGTH), pad)
        labels = torch.full((batch_size, MAX_SEQUENCE_LENGTH), -100)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            input_ids[i, :len(x)] = torch.tensor(x)
            labels[i, :len(y)] = torch.tensor(y)
        # No attention mask, on max-length padding: FluxPipeline calls its T5 that way, so the encoder learns what to
        # do with the pad positions the denoiser will attend to.
        out = model(input_ids=input_ids, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        schedule.step()
        loss = float(out.loss)
        known = labels != -100
        accuracy = float((out.logits.argmax(-1)[known] == labels[known]).float().mean())
    model.eval()
    encoder = T5EncoderModel(toy_t5_config(size, len(tokenizer))).eval()
    encoder.shared.load_state_dict(model.shared.state_dict())
    encoder.encoder.load_state_dict(model.encoder.state_dict())
    return encoder, {"size": dict(size), "steps": steps, "batch_size": batch_size, "seed": seed,
                     "learning_rate": learning_rate, "loss": loss, "token_accuracy": accuracy, "prompts": len(texts)}


def save_t5_small(encoder, output: str | os.PathLike, summary: dict) -> Path:
    """Write the encoder (safetensors) and its pretraining summary to a temp folder, then move it into place."""
    with atomic_dir(output) as staging:
        encoder.save_pretrained(staging, safe_serialization=True)
        (staging / "pretraining_summary.json").write_text(json.dumps(summary, indent=2))
    return Path(output)


def main(argv=None) -> None:
    from tqdm.auto import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(BUNDLED_T5_SMALL))
    parser.add_argument("--size", choices=["small", "teacher"], default="small",
                        help="STUDENT_T5 (the students' t5-small, default) or TEACHER_T5")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = STUDENT_T5 if args.size == "small" else TEACHER_T5
    encoder, summary = pretrain_toy_t5(size, args.steps, args.batch_size, args.seed, args.learning_rate, tqdm)
    save_t5_small(encoder, args.output, {**summary, "torch": torch.__version__})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
