"""Re-train the toy teacher from scratch, reproducibly: the VAE, the T5 (pretrained on text, frozen), the denoiser.

Run:  python -m encoder_shrink.toy.train_teacher --output encoder_shrink/toy/teacher

As in FLUX, the text encoder is a language model trained before and apart from the image model: the toy "T5-XXL"
(`TEACHER_T5`) is pretrained to rebuild corrupted toy prompts (`encoder_shrink.toy.pretrain_t5`) and stays frozen
while the FLUX transformer learns to draw from its embeddings with flow matching.

Every random draw of step `s` is a function of `(seed, s)` and the learning rate is constant after warm-up (EMA
weights do the annealing), so a run stopped at any checkpoint and resumed with `--resume` (even with a larger
`--steps`) follows the same path as one run straight through to that many steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encoder_shrink.files import atomic_dir
from encoder_shrink.toy.checker import score
from encoder_shrink.toy.pretrain_t5 import pretrain_toy_t5
from encoder_shrink.toy.teacher import (
    MAX_SEQUENCE_LENGTH,
    TEACHER_T5,
    generate,
    toy_pipeline_components,
)
from encoder_shrink.toy.world import all_prompts, render, sample_prompts, split_of

logger = logging.getLogger(__name__)

# Spatial and text prompts are listed twice, so drawn twice as often: they are 98 % of the training prompts and
# the slowest to learn (binding two objects to two places; letters to cells), while 43 single and count prompts
# are learned early.
KIND_WEIGHTS = ("single", "count", "spatial", "text", "spatial", "text")
# Jittered renders of each training prompt in the latent pool: the jitter is at most +-3 px, so 8 draws cover its
# spread, and 2,730 prompts x 8 = 21,840 latents (22 MB) are encoded once instead of at every step.
VARIANTS = 8
# EMA of the weights, evaluated and shipped: a ~1,000-step average removes most of the noise of batch-32 steps at a
# constant learning rate; the ramp min(decay, (1 + s) / (10 + s)) keeps early averages from holding random weights.
EMA_DECAY = 0.999
# Steps of linear learning-rate warm-up: the fresh transformer's AdaLN modulations are otherwise unstable.
WARMUP_STEPS = 200
STATE = "state"


def rendered_batch(prompts, seeds) -> torch.Tensor:
    """Rendered scenes as a (B, 3, 32, 32) tensor in [-1, 1], one layout jitter seed each."""
    batch = np.stack([render(p, seed=int(s)) for p, s in zip(prompts, seeds)])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(vae, steps: int, batch_size: int, seed: int, progress) -> dict:
    """Reconstruction (L1 + MSE) with a small KL term, so that noisy generated latents still decode to clean shapes."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)  # small conv net: a high LR is stable
    vae.train()
    for step in progress(range(steps), desc="vae"):
        rng = np.random.default_rng([seed, step])
        images = rendered_batch(
            sample_prompts(batch_size, "train", seed=seed * 100_003 + step), rng.integers(2**31, size=batch_size)
        )
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(torch.Generator().manual_seed(int(rng.integers(2**62))))).sample
        kl = posterior.kl().mean() / images[0].numel()
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-4 * kl  # 1e-4: keeps latents O(1), no blur
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():  # normalise latents to zero mean, unit variance, as FLUX's VAE config does
        prompts = sample_prompts(256, "train", seed=seed + 7)
        latents = vae.encode(rendered_batch(prompts, range(len(prompts)))).latent_dist.mode()
    shift, scale = float(latents.mean()), float(1 / latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return {"vae_loss": float(loss), "shift_factor": shift, "scaling_factor": scale}


class TrainingPool:
    r"""
    Everything the denoiser's training reads per prompt, computed once: packed, normalised VAE latents of `variants`
    jittered renders (the posterior mean: its spread is under 2 % of the latents'), the pooled CLIP vector and the
    frozen T5's embeddings.
    """

    def __init__(self, pipe, seed: int, progress, variants: int = VARIANTS, batch_size: int = 256):
        self.variants = variants
        self.prompts = [p for p in all_prompts() if split_of(p) == "train"]
        self.index = {p.text: i for i, p in enumerate(self.prompts)}
        texts = [p.text for p in self.prompts]
        size = pipe.vae.config.sample_size // pipe.vae_scale_factor
        config = pipe.vae.config
        latents, pooled = [], []
        with torch.no_grad():
            for start in progress(range(0, len(texts), batch_size), desc="latent pool"):
                chunk = self.prompts[start:start + batch_size]
                pooled.append(pipe._get_clip_prompt_embeds([p.text for p in chunk], device="cpu"))
                for variant in range(variants):
                    seeds = [seed * 1_000_003 + (start + i) * variants + variant for i in range(len(chunk))]
                    x = pipe.vae.encode(rendered_batch(chunk, seeds)).latent_dist.mode()
                    x = (x - config.shift_factor) * config.scaling_factor
                    latents.append(pipe._pack_latents(x, len(chunk), x.shape[1], size, size))
        # latents[chunk * variants + variant] holds rows start:start+len(chunk): regroup to (prompt, variant, ...).
        chunks = [torch.stack(latents[c * variants:(c + 1) * variants], 1) for c in range(len(latents) // variants)]
        self.latents = torch.cat(chunks)
        self.pooled = torch.cat(pooled)
        input_ids = pipe.tokenizer_2(texts, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                                     return_tensors="pt").input_ids
        with torch.no_grad():  # FluxPipeline calls its T5 without an attention mask, on max-length padding
            self.text = torch.cat(
                [pipe.text_encoder_2(chunk).last_hidden_state for chunk in input_ids.split(batch_size)]
            )

    def batch(self, step: int, batch_size: int, seed: int):
        """The step's prompts (kinds weighted by `KIND_WEIGHTS`), one random jitter variant each."""
        rows = [self.index[p.text] for p in sample_prompts(batch_size, "train", seed=seed * 100_003 + step,
                                                           kinds=KIND_WEIGHTS)]
        variants = np.random.default_rng([seed, step, 1]).integers(self.variants, size=batch_size)
        rows_t = torch.tensor(rows)
        return self.latents[rows_t, torch.from_numpy(variants)], self.pooled[rows_t], self.text[rows_t]


def swap_weights(params: list[torch.nn.Parameter], other: list[torch.Tensor]) -> None:
    """Exchange the values of the live weights and the EMA weights in place (evaluate and save with the EMA)."""
    with torch.no_grad():
        for p, q in zip(params, other):
            tmp = p.detach().clone()
            p.copy_(q)
            q.copy_(tmp)


def update(loss: torch.Tensor, params, ema, optimizer, schedule, step: int) -> None:
    r"""
    One training update: backward, clip the gradient norm to 1, the optimizer and schedule steps, then the EMA with
    its ramp `min(EMA_DECAY, (1 + step) / (10 + step))`.

    Example:

    ```python
    >>> update(loss, params, ema, optimizer, schedule, step)  # doctest: +SKIP
    ```
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)


def evaluate_with_ema(params, ema, evaluate, history: list, step: int, loss: float, on_eval=None) -> None:
    r"""
    Swap the EMA weights in, record `evaluate()` (held-out checker scores) with the step and mean loss in `history`,
    log it, let `on_eval(step, history)` see (and save) the EMA weights, and swap the live weights back.

    Example:

    ```python
    >>> evaluate_with_ema(params, ema, lambda: evaluate_teacher(pipe, 64), history, 1000, 0.01)  # doctest: +SKIP
    ```
    """
    swap_weights(params, ema)
    accuracy = evaluate()
    history.append({"step": step, "loss": loss, "heldout": accuracy})
    logger.info("step %d loss %.4f held-out overall %.3f by kind %s", step, loss, accuracy["overall"],
                {k: v["overall"] for k, v in accuracy["by_kind"].items()})
    if on_eval is not None:
        on_eval(step, history)
    swap_weights(params, ema)


def save_training_state(state_dir: Path, params, ema, optimizer, schedule, step: int, history: list) -> None:
    """Live and EMA weights, optimizer and schedule: what `--resume` needs (written to a temp folder, renamed)."""
    from safetensors.torch import save_file

    from encoder_shrink.training.checkpoint import _optimizer_to_files

    with atomic_dir(state_dir) as tmp:
        save_file({**{f"live.{i}": p.detach().contiguous() for i, p in enumerate(params)},
                   **{f"ema.{i}": q.contiguous() for i, q in enumerate(ema)}}, tmp / "weights.safetensors")
        tensors, meta = _optimizer_to_files(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": meta, "history": history,
                                                    "schedule": schedule.state_dict()}))


def load_training_state(state_dir: Path, params, ema, optimizer, schedule) -> tuple[int, list]:
    """Restore what `save_training_state` wrote into the live `params`, `ema`, optimizer and schedule; return the
    step and the evaluation history."""
    from safetensors.torch import load_file

    from encoder_shrink.training.checkpoint import _optimizer_from_files

    saved = json.loads((state_dir / "state.json").read_text())
    weights = load_file(state_dir / "weights.safetensors")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(weights[f"live.{i}"])
            ema[i].copy_(weights[f"ema.{i}"])
    tensors = load_file(state_dir / "optimizer.safetensors")
    optimizer.load_state_dict(_optimizer_from_files(tensors, saved["optimizer"]))
    schedule.load_state_dict(saved["schedule"])
    return saved["step"], saved["history"]


def evaluate_teacher(pipe, prompts: int, seed: int = 1) -> dict:
    """Checker accuracy on `prompts` held-out prompts (balanced over kinds), seeds 0..n-1."""
    held_out = sample_prompts(prompts, "heldout", seed=seed)
    return score(generate(pipe, held_out, seeds=list(range(len(held_out)))), held_out)


def train_denoiser(pipe, steps: int, batch_size: int, seed: int, progress, learning_rate: float = 1e-3,
                   eval_every: int = 0, eval_prompts: int = 64, on_eval=None, state_dir: Path | None = None,
                   resume: bool = False, variants: int = VARIANTS) -> list[dict]:
    """Flow matching (x_t = (1 - s) x0 + s noise, predict noise - x0) of the transformer on the frozen T5's output."""
    transformer = pipe.transformer
    pipe.text_encoder_2.requires_grad_(False).eval()
    params = list(transformer.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))
    ema = [p.detach().clone() for p in params]
    history, start = [], 0
    if resume and state_dir is not None and (state_dir / "state.json").is_file():
        start, history = load_training_state(state_dir, params, ema, optimizer, schedule)
        logger.info("Resumed the denoiser at step %d from %s.", start, state_dir)

    def save_state(step: int) -> None:
        if state_dir is not None:
            save_training_state(state_dir, params, ema, optimizer, schedule, step, history)

    pool = TrainingPool(pipe, seed, progress, variants)
    size = pipe.vae.config.sample_size // pipe.vae_scale_factor
    image_ids = pipe._prepare_latent_image_ids(batch_size, size // 2, size // 2, "cpu", torch.float32)
    text_ids = torch.zeros(MAX_SEQUENCE_LENGTH, 3)
    losses = []
    bar = progress(range(start, steps), desc="teacher", initial=start, total=steps)
    for step in bar:
        transformer.train()
        x0, pooled, text = pool.batch(step, batch_size, seed)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        # Logit-normal noise levels (as SD3/FLUX train): most steps in the middle, where layout is decided.
        sigma = torch.sigmoid(torch.randn(batch_size, generator=generator))
        noise = torch.randn(x0.shape, generator=generator)
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        prediction = transformer(hidden_states=x_t, timestep=sigma, pooled_projections=pooled,
                                 encoder_hidden_states=text, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        loss = F.mse_loss(prediction, noise - x0)
        update(loss, params, ema, optimizer, schedule, step)
        losses.append(float(loss))
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            transformer.eval()
            evaluate_with_ema(params, ema, lambda: evaluate_teacher(pipe, eval_prompts), history, step + 1,
                              float(np.mean(losses[-eval_every:])), on_eval)
            save_state(step + 1)  # live weights again, and the history with this evaluation
    transformer.eval()
    swap_weights(params, ema)  # the pipeline leaves with its EMA weights
    return history


def save_teacher(pipe, output: Path, summary: dict) -> None:
    """Write the pipeline (safetensors) and its training summary to a temp folder, then move it into place."""
    with atomic_dir(output) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "training_summary.json").write_text(json.dumps(summary, indent=2))


def main(argv=None) -> None:
    from diffusers import FluxPipeline
    from tqdm.auto import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).parent / "teacher"))
    parser.add_argument("--work-dir", default="toy-teacher-work",
                        help="full training state (live and EMA weights, optimizer) for --resume")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--t5-steps", type=int, default=3000, help="pretraining steps of the T5 (batch 64)")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts at each --eval-every")
    parser.add_argument("--final-prompts", type=int, default=160, help="held-out prompts of the final evaluation")
    parser.add_argument(
        "--variants", type=int, default=VARIANTS, help="jittered renders per prompt in the latent pool"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue from --work-dir: after its VAE stage, or from its last evaluation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    started = time.time()
    work = Path(args.work_dir)
    # The VAE and T5 stages write work/pipeline (trained VAE, pretrained T5, initial transformer, and their record in
    # its training_summary.json) before the denoiser starts, so resuming from it, with or without denoiser state, is
    # the same run as one from scratch.
    resume = args.resume and (work / "pipeline" / "model_index.json").is_file()
    if resume:
        pipe = FluxPipeline.from_pretrained(work / "pipeline")
        vae = json.loads((work / "pipeline" / "training_summary.json").read_text())["vae"]
    else:
        pipe = FluxPipeline(**toy_pipeline_components(seed=args.seed))
        vae = train_vae(pipe.vae, args.vae_steps, args.batch_size, args.seed, tqdm)
        t5, vae["t5_pretraining"] = pretrain_toy_t5(TEACHER_T5, args.t5_steps, seed=args.seed, progress=tqdm)
        pipe.register_modules(text_encoder_2=t5)
        # The VAE, the T5 and the CLIP never change again: the state folder keeps them with the transformer's
        # initial weights.
        save_teacher(pipe, work / "pipeline", {"vae": vae})
    pipe.set_progress_bar_config(disable=True)
    logger.info("VAE: %s (%.0f s)", vae, time.time() - started)
    output = Path(args.output)
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "work_dir", "resume")}

    def checkpoint(step, history):
        save_teacher(pipe, output, {"args": settings, "vae": vae, "step": step, "history": history,
                                    "seconds": round(time.time() - started), "torch": torch.__version__})

    history = train_denoiser(pipe, args.steps, args.batch_size, args.seed, tqdm, args.learning_rate, args.eval_every,
                             args.eval_prompts, on_eval=checkpoint, state_dir=work / STATE, resume=resume,
                             variants=args.variants)
    final = {"step": args.steps, "heldout": evaluate_teacher(pipe, args.final_prompts, seed=2)}
    save_teacher(pipe, output, {"args": settings, "vae": vae, "history": history, "final": final,
                                "seconds": round(time.time() - started), "torch": torch.__version__})
    print(json.dumps(final, indent=2))


if __name__ == "__main__":
    main()
