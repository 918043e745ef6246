"""UNetSplit: a `UNet2DConditionModel` as an encoder run once and a decoder run for K timesteps in one batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from encoder_shrink.errors import IncompatibleModelError, InvalidArgumentError
from encoder_shrink.pipelines.base import CopiedLogic

_FORWARD = "diffusers.models.unets.unet_2d_condition.UNet2DConditionModel.forward"

# The parts of `UNet2DConditionModel.forward` the split follows; the TiUE tests fail when diffusers changes them.
COPIED_FROM = (
    CopiedLogic(_FORWARD, (
        "t_emb = self.get_time_embed(sample=sample, timestep=timestep)",
        "emb = self.time_embedding(t_emb, timestep_cond)",
        "aug_emb = self.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, "
        "added_cond_kwargs=added_cond_kwargs)",
        "emb = emb + aug_emb if aug_emb is not None else emb",
        "if self.time_embed_act is not None: emb = self.time_embed_act(emb)",
        "encoder_hidden_states = self.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states, "
        "added_cond_kwargs=added_cond_kwargs)",
        "sample = self.conv_in(sample)",
        "down_block_res_samples = (sample,)",
        "down_block_res_samples += res_samples",
        "res_samples = down_block_res_samples[-len(upsample_block.resnets) :]",
        "if not is_final_block and forward_upsample_size: upsample_size = down_block_res_samples[-1].shape[2:]",
        "sample = self.conv_out(sample)",
    )),
)


@dataclass
class UNetFeatures:
    r"""
    What the encoder hands the decoder: every down-block residual (`conv_in`'s output first) and the mid block's
    output, for a batch of `batch_size` samples.
    """

    residuals: tuple[torch.Tensor, ...]
    mid: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.mid.shape[0]

    def repeat(self, k: int) -> UNetFeatures:
        """The features tiled `k` times, step-major (rows `i*B .. (i+1)*B` are copy `i`), as the decoder batch is."""
        return UNetFeatures(tuple(r.repeat(k, *[1] * (r.ndim - 1)) for r in self.residuals),
                            self.mid.repeat(k, *[1] * (self.mid.ndim - 1)))


class UNetSplit:
    r"""
    A [`~diffusers.UNet2DConditionModel`] seen as TiUE sees it: `encode` (time embedding, `conv_in`, the down blocks
    and the mid block) runs once on the noise, and `decode` (the up blocks and the output layers) runs for K
    timesteps in one batch of K x B rows, step-major, each row with its own time embedding, the encoder features and
    the text conditioning tiled K times. Both go through the UNet's own helpers (`get_time_embed`, `time_embedding`,
    `get_class_embed`, `get_aug_embed`, `process_encoder_hidden_states`), so SD 1.5/2.1 layouts and SDXL-style UNets
    (added time and text embeddings, `added_cond_kwargs`) split the same way. With K = 1 and the encoder's timestep,
    `decode(encode(x))` is `unet(x)`.

    Example:

    ```python
    >>> split = UNetSplit(pipe.unet)  # doctest: +SKIP
    >>> features = split.encode(noise, 751, prompt_embeds)  # doctest: +SKIP
    >>> eps = split.decode(features, torch.tensor([751, 501, 251, 1]), prompt_embeds)  # doctest: +SKIP
    >>> eps.shape[0] == 4 * noise.shape[0]  # doctest: +SKIP
    True
    ```
    """

    def __init__(self, unet: Any):
        if type(unet).__name__ != "UNet2DConditionModel" and not hasattr(unet, "up_blocks"):
            raise IncompatibleModelError(
                f"UNetSplit splits a UNet2DConditionModel, got {type(unet).__name__}; TiUE needs a UNet denoiser."
            )
        unsupported = {"image_hint": "ControlNet-XS hints", "image": "image embeddings (Kandinsky)"}
        kind = unet.config.addition_embed_type
        if kind in unsupported or getattr(unet.config, "class_embeddings_concat", False):
            raise IncompatibleModelError(
                f"this UNet uses {unsupported.get(kind, 'concatenated class embeddings')}, which the TiUE split does "
                "not follow; use an SD 1.5/2.1 or SDXL-style UNet."
            )
        self.unet = unet

    def embed(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
              added_cond_kwargs: dict | None = None, class_labels: torch.Tensor | None = None,
              timestep_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The time embedding of each row of `sample` and the processed text conditioning, as `forward` makes them."""
        unet = self.unet
        if unet.config.center_input_sample:
            raise IncompatibleModelError("a UNet with center_input_sample is not supported by the TiUE split.")
        t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
        emb = unet.time_embedding(t_emb, timestep_cond)
        class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = emb + class_emb
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added_cond_kwargs or {})
        emb = emb + aug_emb if aug_emb is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        encoder_hidden_states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {})
        return emb, encoder_hidden_states

    def encode(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
               added_cond_kwargs: dict | None = None, class_labels: torch.Tensor | None = None) -> UNetFeatures:
        """`conv_in`, the down blocks and the mid block on `sample` at `timestep` (once per image)."""
        unet = self.unet
        emb, encoder_hidden_states = self.embed(sample, timestep, encoder_hidden_states, added_cond_kwargs,
                                                class_labels)
        hidden = unet.conv_in(sample)
        residuals = (hidden,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            residuals += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden = unet.mid_block(hidden, emb)
        return UNetFeatures(residuals, hidden)

    def decode(self, features: UNetFeatures, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor,
               added_cond_kwargs: dict | None = None, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        The up blocks and output layers for every timestep in `timesteps` (K of them) in one batch of K x B rows,
        step-major: rows `i*B .. (i+1)*B` are timestep `i`. `features`, `encoder_hidden_states` and the tensors in
        `added_cond_kwargs` are for the B samples and are tiled here; B comes from the tensors, so a short last batch
        works.
        """
        unet = self.unet
        timesteps = torch.as_tensor(timesteps, device=features.mid.device).reshape(-1)
        k, batch = timesteps.shape[0], features.batch_size
        if encoder_hidden_states.shape[0] != batch:
            raise InvalidArgumentError(
                f"decode got features of {batch} samples but text conditioning of {encoder_hidden_states.shape[0]}; "
                "pass one row of conditioning per sample."
            )
        tiled = features.repeat(k) if k > 1 else features
        tile = (lambda x: x.repeat(k, *[1] * (x.ndim - 1))) if k > 1 else (lambda x: x)
        added = {name: tile(value) for name, value in (added_cond_kwargs or {}).items()}
        rows = torch.repeat_interleave(timesteps, batch)  # step-major: B rows of timestep 0, then of timestep 1, ...
        emb, context = self.embed(tiled.mid, rows, tile(encoder_hidden_states), added,
                                  tile(class_labels) if class_labels is not None else None)
        # As forward: sizes to upsample to are passed when the latent is not a multiple of the total up factor.
        forward_upsample_size = any(dim % 2**unet.num_upsamplers for dim in tiled.residuals[0].shape[-2:])
        residuals, hidden, upsample_size = tiled.residuals, tiled.mid, None
        for i, block in enumerate(unet.up_blocks):
            res = residuals[-len(block.resnets):]
            residuals = residuals[: -len(block.resnets)]
            if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = residuals[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=context, upsample_size=upsample_size)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               upsample_size=upsample_size)
        if unet.conv_norm_out:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)
