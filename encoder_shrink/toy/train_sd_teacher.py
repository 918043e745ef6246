"""Re-train the toy SD teacher reproducibly: a CLIP text encoder and a UNet learn noise prediction on the toy world.

Run:  python -m encoder_shrink.toy.train_sd_teacher --output encoder_shrink/toy/sd_teacher

The VAE is the world's (the FLUX toy teacher's, frozen). The CLIP text encoder and the UNet train together from
scratch with SD's objective: epsilon prediction at a uniform timestep of SD's scaled-linear schedule, weighted by
Min-SNR-5 (Hang et al., 2023: faster convergence at equal quality), with 10 % of prompts dropped to the empty one so
that classifier-free guidance works. Every random draw of step `s` is a function of `(seed, s)` and the learning rate
is constant after warm-up (EMA weights do the annealing), so a run stopped at an evaluation and resumed with
`--resume` (even with a larger `--steps`) follows the same path as one run straight through.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from encoder_shrink.toy.checker import score
from encoder_shrink.toy.sd_teacher import SD_GUIDANCE_SCALE, SD_STEPS, generate_sd, toy_sd_components
from encoder_shrink.toy.teacher import MAX_SEQUENCE_LENGTH
from encoder_shrink.toy.train_teacher import (
    KIND_WEIGHTS,
    STATE,
    VARIANTS,
    WARMUP_STEPS,
    evaluate_with_ema,
    load_training_state,
    rendered_batch,
    save_teacher,
    save_training_state,
    swap_weights,
    update,
)
from encoder_shrink.toy.world import all_prompts, sample_prompts, split_of

logger = logging.getLogger(__name__)

# Share of training prompts replaced by the empty prompt: SD's 10 %, what classifier-free guidance samples against.
UNCOND_PROBABILITY = 0.1
# Min-SNR-gamma: per-timestep loss weight min(SNR, gamma) / SNR for epsilon prediction; 5 is the paper's setting.
SNR_GAMMA = 5.0
# CFG scales tried on held-out prompts after training; the report keeps them all (training_summary.json "guidance").
GUIDANCE_SWEEP = (1.0, 2.0, 3.0, 4.5)


class SDTrainingPool:
    r"""
    What the UNet's training reads per prompt, computed once: scaled VAE latents (the posterior mean) of `variants`
    jittered renders, and the prompt's token ids (the text encoder trains, so its input is kept, not its output).
    """

    def __init__(self, pipe, seed: int, progress, variants: int = VARIANTS, batch_size: int = 256):
        self.variants = variants
        self.prompts = [p for p in all_prompts() if split_of(p) == "train"]
        self.index = {p.text: i for i, p in enumerate(self.prompts)}
        scale = pipe.vae.config.scaling_factor
        latents = []
        with torch.no_grad():
            for start in progress(range(0, len(self.prompts), batch_size), desc="latent pool"):
                chunk = self.prompts[start:start + batch_size]
                per_variant = []
                for variant in range(variants):
                    seeds = [seed * 1_000_003 + (start + i) * variants + variant for i in range(len(chunk))]
                    per_variant.append(pipe.vae.encode(rendered_batch(chunk, seeds)).latent_dist.mode() * scale)
                latents.append(torch.stack(per_variant, 1))
        self.latents = torch.cat(latents)  # (prompt, variant, C, h, w)
        self.input_ids = _token_ids(pipe.tokenizer, [p.text for p in self.prompts])
        self.uncond_ids = _token_ids(pipe.tokenizer, [""])[0]

    def batch(self, step: int, batch_size: int, seed: int):
        """The step's latents and token ids: prompts weighted by `KIND_WEIGHTS`, one random jitter variant each."""
        drawn = sample_prompts(batch_size, "train", seed=seed * 100_003 + step, kinds=KIND_WEIGHTS)
        rows = torch.tensor([self.index[p.text] for p in drawn])
        variants = torch.from_numpy(np.random.default_rng([seed, step, 1]).integers(self.variants, size=batch_size))
        return self.latents[rows, variants], self.input_ids[rows]


def _token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids as `StableDiffusionPipeline.encode_prompt` makes them: padded to the tokenizer's length."""
    return tokenizer(texts, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                     return_tensors="pt").input_ids


def evaluate_sd_teacher(pipe, prompts: int, seed: int = 1, guidance_scale: float = SD_GUIDANCE_SCALE,
                        num_inference_steps: int = SD_STEPS) -> dict:
    """Checker accuracy on `prompts` held-out prompts (balanced over kinds), seeds 0..n-1."""
    held_out = sample_prompts(prompts, "heldout", seed=seed)
    images = generate_sd(pipe, held_out, seeds=list(range(len(held_out))), num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale)
    return score(images, held_out)


def train_sd_denoiser(pipe, steps: int, batch_size: int, seed: int, progress, learning_rate: float = 1e-3,
                      eval_every: int = 0, eval_prompts: int = 64, on_eval=None, state_dir: Path | None = None,
                      resume: bool = False, variants: int = VARIANTS) -> list[dict]:
    """Noise prediction of the UNet and the CLIP text encoder together; the pipeline leaves with the EMA weights."""
    from diffusers.training_utils import compute_snr

    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    pipe.vae.requires_grad_(False).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))
    ema = [p.detach().clone() for p in params]
    history, start = [], 0
    if resume and state_dir is not None and (state_dir / "state.json").is_file():
        start, history = load_training_state(state_dir, params, ema, optimizer, schedule)
        logger.info("Resumed the SD teacher at step %d from %s.", start, state_dir)
    elif resume:
        logger.warning("--resume: no training state in %s (it is written at each evaluation); starting from step 0.",
                       state_dir)

    pool = SDTrainingPool(pipe, seed, progress, variants)
    losses = []
    bar = progress(range(start, steps), desc="sd teacher", initial=start, total=steps)
    for step in bar:
        unet.train()
        text_encoder.train()
        x0, input_ids = pool.batch(step, batch_size, seed)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        dropped = torch.rand(batch_size, generator=generator) < UNCOND_PROBABILITY
        input_ids = torch.where(dropped[:, None], pool.uncond_ids, input_ids)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(input_ids)[0]).sample
        snr = compute_snr(scheduler, timesteps)
        weight = torch.clamp(snr, max=SNR_GAMMA) / snr
        loss = (weight * (prediction - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        update(loss, params, ema, optimizer, schedule, step)
        losses.append(loss.item())
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            unet.eval()
            text_encoder.eval()
            evaluate_with_ema(params, ema, lambda: evaluate_sd_teacher(pipe, eval_prompts), history, step + 1,
                              float(np.mean(losses[-eval_every:])), on_eval)
            if state_dir is not None:
                save_training_state(state_dir, params, ema, optimizer, schedule, step + 1, history)
    unet.eval()
    text_encoder.eval()
    swap_weights(params, ema)
    return history


def main(argv=None) -> None:
    from diffusers import StableDiffusionPipeline
    from tqdm.auto import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).parent / "sd_teacher"))
    parser.add_argument("--work-dir", default="toy-sd-teacher-work",
                        help="full training state (live and EMA weights, optimizer) for --resume")
    parser.add_argument("--steps", type=int, default=7000,
                        help="the shipped teacher's 7,000: its held-out accuracy plateaued from 4,000")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts at each --eval-every")
    parser.add_argument("--final-prompts", type=int, default=160, help="held-out prompts of the final evaluation")
    parser.add_argument("--variants", type=int, default=VARIANTS,
                        help="jittered renders per prompt in the latent pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from --work-dir's last evaluation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.time()
    pipe = StableDiffusionPipeline(**toy_sd_components(seed=args.seed))
    pipe.set_progress_bar_config(disable=True)
    output = Path(args.output)
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "work_dir", "resume")}

    def checkpoint(step, history):
        save_teacher(pipe, output, {"args": settings, "step": step, "history": history,
                                    "seconds": round(time.time() - started), "torch": torch.__version__})

    history = train_sd_denoiser(pipe, args.steps, args.batch_size, args.seed, tqdm, args.learning_rate,
                                args.eval_every, args.eval_prompts, on_eval=checkpoint,
                                state_dir=Path(args.work_dir) / STATE, resume=args.resume, variants=args.variants)
    guidance = {str(scale): evaluate_sd_teacher(pipe, args.final_prompts, seed=2, guidance_scale=scale)["overall"]
                for scale in GUIDANCE_SWEEP}
    final = {"step": args.steps, "guidance_scale": SD_GUIDANCE_SCALE, "num_inference_steps": SD_STEPS,
             "heldout": evaluate_sd_teacher(pipe, args.final_prompts, seed=2)}
    save_teacher(pipe, output, {"args": settings, "history": history, "final": final, "guidance": guidance,
                                "seconds": round(time.time() - started), "torch": torch.__version__})
    print(json.dumps({**final, "guidance": guidance}, indent=2))


if __name__ == "__main__":
    main()
