"""TiUEPipeline: loop-free text-to-image sampling with a TiUE UNet (encoder once, K decoders in one batch)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.tiue.sampler import TiUESampler
from encoder_shrink.tiue.schedule import DDIMCombine

logger = logging.getLogger(__name__)

# The paper's schedule: K = 4 DDIM steps of SD's scheduler (leading spacing, steps_offset 1).
DEFAULT_NUM_STEPS = 4


class TiUEPipeline(DiffusionPipeline):
    r"""
    Text-to-image sampling with a TiUE student ("One-Way Ticket", arXiv 2505.21960): the UNet's encoder runs once on
    the noise at the first timestep, its decoder runs for all K timesteps of a fixed DDIM schedule in one batch, and
    the K noise predictions are combined in closed form ([`DDIMCombine`]). No classifier-free guidance by default:
    one text embedding per image, as the paper samples (`guidance_scale` serves training-free encoder propagation).
    The schedule the student was trained with (`timesteps`, and the scheduler's config) is stored with the pipeline.

    Args:
        vae, text_encoder, tokenizer, unet: as in [`~diffusers.StableDiffusionPipeline`].
        scheduler: a [`~diffusers.DDIMScheduler`] with SD's config (`clip_sample=False`: DDIM must stay linear).
        timesteps: the K timesteps of the student's schedule; default the scheduler's 4-step schedule
            (`[751, 501, 251, 1]` with SD's config).

    Example:

    ```python
    >>> pipe = TiUEPipeline.from_pretrained("out/tiue")  # doctest: +SKIP
    >>> generator = torch.Generator().manual_seed(0)
    >>> image = pipe("a red circle above a blue square", generator=generator).images[0]  # doctest: +SKIP
    ```
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: list[str] = []

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, timesteps: list[int] | None = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        schedule = copy.deepcopy(scheduler)
        schedule.set_timesteps(len(timesteps) if timesteps else DEFAULT_NUM_STEPS)
        if timesteps is not None and [int(t) for t in schedule.timesteps] != [int(t) for t in timesteps]:
            raise InvalidArgumentError(
                f"timesteps {list(timesteps)} are not the scheduler's {len(timesteps)}-step DDIM schedule "
                f"{schedule.timesteps.tolist()}; store the schedule the student was trained with (a one-step [999] "
                "needs a scheduler with timestep_spacing='trailing')."
            )
        self.combine = DDIMCombine.from_scheduler(schedule)
        self.register_to_config(timesteps=list(self.combine.timesteps))
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def timesteps(self) -> tuple[int, ...]:
        """The K timesteps the decoder runs at, in sampling order."""
        return self.combine.timesteps

    def encode_prompt(self, prompt: str | list[str], device: torch.device) -> torch.Tensor:
        """The text encoder's last hidden state for `prompt`, padded to the tokenizer's length (as SD encodes)."""
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        tokens = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(device))[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images in one encoder pass and one batched decoder pass.

        Args:
            prompt: the prompt(s), or `prompt_embeds` (the text encoder's output) instead.
            guidance_scale: `None` (a TiUE student: one text embedding per image, as the paper samples) or a
                classifier-free guidance scale against the empty prompt. The combine is linear, so guiding each of
                the K predictions equals `z0_uncond + s * (z0_cond - z0_uncond)`, which is what runs (the encoder
                and the decoders on 2 x B rows): training-free encoder propagation on a teacher UNet uses it.
            height, width: image size (default: the UNet's sample size x the VAE's scale factor).
            num_images_per_prompt: images per prompt.
            generator, latents: the noise's generator(s), or the noise itself (`(B, C, h, w)`).
            output_type: `"pil"`, `"np"`, `"pt"`, or `"latent"` (the combined `z_0`, before the VAE).
            return_dict: return an [`~diffusers.ImagePipelineOutput`] rather than a tuple.
        """
        if (prompt is None) == (prompt_embeds is None):
            raise InvalidArgumentError("pass exactly one of prompt and prompt_embeds.")
        device = self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self.encode_prompt(prompt, device)
        prompt_embeds = prompt_embeds.to(device=device, dtype=self.unet.dtype).repeat_interleave(
            num_images_per_prompt, dim=0)
        batch = prompt_embeds.shape[0]
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        elif tuple(latents.shape) != shape:
            raise InvalidArgumentError(f"latents have shape {tuple(latents.shape)}, expected {shape}.")
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma

        if getattr(self.unet, "is_tiue_graph", False):  # an exported graph (ONNX Runtime): the same computation
            if tuple(self.unet.timesteps) != self.timesteps:
                raise InvalidArgumentError(
                    f"the exported UNet was made for timesteps {list(self.unet.timesteps)}, this pipeline samples "
                    f"{list(self.timesteps)}; export the pipeline it runs in."
                )
            sampler = self.unet
        else:
            sampler = TiUESampler(self.unet, self.combine)
        guided = guidance_scale is not None and guidance_scale != 1.0
        if guided:
            uncond = self.encode_prompt([""], device).to(prompt_embeds.dtype).expand_as(prompt_embeds)
            prompt_embeds, latents = torch.cat([uncond, prompt_embeds]), torch.cat([latents, latents])
        hook = getattr(self.unet, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            # enable_model_cpu_offload hooks the UNet's forward; the sampler calls its blocks, so load it here.
            hook.pre_forward(self.unet)
        with self.progress_bar(total=1) as progress:  # one encoder pass and one batched decoder pass
            sample = sampler(latents, prompt_embeds).to(device=device, dtype=latents.dtype)
            progress.update()
        if guided:
            unconditional, conditional = sample.chunk(2)
            sample = unconditional + guidance_scale * (conditional - unconditional)

        if output_type == "latent":
            images = sample
        else:
            decoded = self.vae.decode(sample.to(self.vae.dtype) / self.vae.config.scaling_factor,
                                      return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @classmethod
    def from_sd_pipeline(cls, pipe: Any, timesteps: list[int] | None = None) -> TiUEPipeline:
        """A TiUE pipeline sharing `pipe`'s components (an SD pipeline's UNet is the student's initialisation)."""
        return cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                   scheduler=pipe.scheduler, timesteps=timesteps)
