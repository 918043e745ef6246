"""A faithful re-implementation of the reference DistillT5 training loop, the baseline of the throughput benchmark.

What it keeps from the reference (train_flux.py): every scheduler step re-encodes the prompts with CLIP, the T5-XXL
teacher and the student; the pooled CLIP vector is zeroed; the teacher prediction is computed without gradients;
one optimizer step per scheduler step; latents advance along the teacher's prediction. What it does not copy: its
bugs (it clips gradients on the wrong model and keeps the student in bf16); here the student is clipped and fp32,
so the two loops differ only in how conditioning is obtained.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps


def reference_loop(pipe, student, prompt_batches, resolution: int, num_inference_steps: int, guidance_scales,
                   max_length: int, learning_rate: float = 1e-4, seed: int = 0) -> dict:
    """Run the reference loop over `prompt_batches` (one trajectory each); return timing and the losses."""
    import copy

    transformer = pipe.transformer.requires_grad_(False).eval()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate)
    scheduler = copy.deepcopy(pipe.scheduler)
    rng = np.random.default_rng(seed)
    losses, started = [], time.perf_counter()
    for prompts in prompt_batches:
        generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))
        latents, image_ids = pipe.prepare_latents(len(prompts), transformer.config.in_channels // 4, resolution,
                                                  resolution, transformer.dtype, transformer.device, generator)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(latents.shape[1], scheduler.config.get("base_image_seq_len", 256),
                             scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                             scheduler.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, transformer.device, sigmas=sigmas, mu=mu)
        guidance = torch.full([len(prompts)], float(rng.choice(guidance_scales)))
        for t in timesteps:
            # The reference's encode_prompt, called at every step: CLIP, teacher T5 and student, all re-run.
            with torch.no_grad():
                teacher_t5 = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=max_length)
                pooled = pipe._get_clip_prompt_embeds(prompts)
            tokens = pipe.tokenizer_2(prompts, padding="max_length", max_length=max_length, truncation=True,
                                      return_tensors="pt")
            student_t5 = student(tokens.input_ids.to(transformer.device))[0]
            pooled = torch.zeros_like(pooled)  # the reference zeroes the pooled CLIP vector during training
            text_ids = torch.zeros(max_length, 3, dtype=latents.dtype)
            timestep = t.expand(len(prompts)).to(latents.dtype) / 1000
            with torch.no_grad():
                teacher = transformer(hidden_states=latents, timestep=timestep, guidance=guidance,
                                      pooled_projections=pooled, encoder_hidden_states=teacher_t5, txt_ids=text_ids,
                                      img_ids=image_ids, return_dict=False)[0]
            predicted = transformer(hidden_states=latents, timestep=timestep, guidance=guidance,
                                    pooled_projections=pooled, encoder_hidden_states=student_t5, txt_ids=text_ids,
                                    img_ids=image_ids, return_dict=False)[0]
            loss = F.mse_loss(predicted.float(), teacher.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            latents = scheduler.step(teacher, t, latents, return_dict=False)[0]
            losses.append(loss.item())
    seconds = time.perf_counter() - started
    return {"steps": len(losses), "seconds": seconds, "steps_per_second": len(losses) / seconds, "losses": losses}
