"""Re-train the toy teacher from scratch, reproducibly: VAE first, then the T5 and the FLUX transformer together.

Run:  python -m encoder_shrink.toy.train_teacher --output encoder_shrink/toy/teacher
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encoder_shrink.toy.checker import score
from encoder_shrink.toy.teacher import MAX_SEQUENCE_LENGTH, generate, toy_pipeline_components
from encoder_shrink.toy.world import render, sample_prompts

logger = logging.getLogger(__name__)


def _images(prompts, rng: np.random.Generator) -> torch.Tensor:
    """Rendered scenes as a (B, 3, 32, 32) tensor in [-1, 1], each with its own random layout jitter."""
    batch = np.stack([render(p, seed=int(rng.integers(2**31))) for p in prompts])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(vae, steps: int, batch_size: int, seed: int, progress) -> dict:
    """Reconstruction (L1 + MSE) with a small KL term, so that noisy generated latents still decode to clean shapes."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)  # small conv net: a high LR is stable
    vae.train()
    for step in progress(range(steps), desc="vae"):
        images = _images(sample_prompts(batch_size, "train", seed=seed * 100_003 + step), rng)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / images[0].numel()
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-4 * kl  # 1e-4: keeps latents O(1), no blur
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():  # normalise latents to zero mean, unit variance, as FLUX's VAE config does
        images = _images(sample_prompts(256, "train", seed=seed + 7), rng)
        latents = vae.encode(images).latent_dist.mode()
    shift, scale = float(latents.mean()), float(1 / latents.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return {"vae_loss": float(loss), "shift_factor": shift, "scaling_factor": scale}


def train_denoiser(pipe, steps: int, batch_size: int, seed: int, progress, learning_rate: float = 1e-3,
                   eval_every: int = 0, eval_prompts: int = 64, on_eval=None) -> list[dict]:
    """Flow matching (x_t = (1 - s) x0 + s noise, predict noise - x0) of the transformer and the T5 together."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    t5, transformer = pipe.text_encoder_2, pipe.transformer
    params = list(t5.parameters()) + list(transformer.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    warmup = 100  # steps of linear warm-up: the fresh transformer's AdaLN modulations are otherwise unstable
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / max(steps, 1)))
    size = pipe.vae.config.sample_size // pipe.vae_scale_factor
    image_ids = pipe._prepare_latent_image_ids(batch_size, size // 2, size // 2, "cpu", torch.float32)
    text_ids = torch.zeros(MAX_SEQUENCE_LENGTH, 3)
    history = []
    for step in progress(range(steps), desc="teacher"):
        t5.train(), transformer.train()
        prompts = sample_prompts(batch_size, "train", seed=seed * 100_003 + step)
        texts = [p.text for p in prompts]
        with torch.no_grad():
            images = _images(prompts, rng)
            latents = pipe.vae.encode(images).latent_dist.sample(generator)
            latents = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
            x0 = pipe._pack_latents(latents, batch_size, latents.shape[1], size, size)
            pooled = pipe._get_clip_prompt_embeds(texts, device="cpu")
        ids = pipe.tokenizer_2(texts, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                               return_tensors="pt").input_ids
        text = t5(ids).last_hidden_state
        # Logit-normal noise levels (as SD3/FLUX train): most steps in the middle, where layout is decided.
        sigma = torch.sigmoid(torch.randn(batch_size, generator=generator))
        noise = torch.randn(x0.shape, generator=generator)
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        prediction = transformer(hidden_states=x_t, timestep=sigma, pooled_projections=pooled,
                                 encoder_hidden_states=text, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        loss = F.mse_loss(prediction, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            t5.eval(), transformer.eval()
            held_out = sample_prompts(eval_prompts, "heldout", seed=1)
            accuracy = score(generate(pipe, held_out, seeds=list(range(len(held_out)))), held_out)
            history.append({"step": step + 1, "loss": float(loss), "heldout": accuracy})
            logger.info("step %d loss %.4f held-out accuracy %s", step + 1, float(loss), accuracy)
            if on_eval is not None:
                on_eval(step + 1, accuracy)
    t5.eval(), transformer.eval()
    return history


def save_teacher(pipe, output: Path, summary: dict) -> None:
    """Write the pipeline (safetensors) and its training summary to a temp folder, then move it into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "training_summary.json").write_text(json.dumps(summary, indent=2))
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv=None) -> None:
    from diffusers import FluxPipeline
    from tqdm.auto import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).parent / "teacher"))
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", help="continue from this saved teacher (its VAE is kept; --vae-steps is ignored)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    started = time.time()
    if args.init:
        pipe = FluxPipeline.from_pretrained(args.init)
        previous = json.loads((Path(args.init) / "training_summary.json").read_text())
        vae = dict(previous["vae"], continued_from=previous)
    else:
        pipe = FluxPipeline(**toy_pipeline_components(seed=args.seed))
        vae = train_vae(pipe.vae, args.vae_steps, args.batch_size, args.seed, tqdm)
    pipe.set_progress_bar_config(disable=True)
    logger.info("VAE: %s (%.0f s)", vae, time.time() - started)
    output = Path(args.output)

    def checkpoint(step, accuracy):
        save_teacher(pipe, output, {"args": vars(args), "vae": vae, "step": step, "heldout": accuracy,
                                    "seconds": round(time.time() - started)})

    history = train_denoiser(pipe, args.steps, args.batch_size, args.seed, tqdm, args.learning_rate, args.eval_every,
                             on_eval=checkpoint)
    save_teacher(pipe, output, {"args": vars(args), "vae": vae, "history": history, "seconds": round(time.time() - started),
                                "torch": torch.__version__})
    print(json.dumps(history[-1] if history else {}, indent=2))


if __name__ == "__main__":
    main()
