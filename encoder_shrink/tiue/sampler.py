"""TiUESampler: the TiUE UNet as one module, noise and text conditioning to z_0 (what is trained and exported)."""

from __future__ import annotations

import torch

from encoder_shrink.tiue.schedule import DDIMCombine
from encoder_shrink.tiue.split import UNetSplit


class TiUESampler(torch.nn.Module):
    r"""
    Loop-free sampling as one module: the UNet's encoder once on `noise` at the first timestep, its decoder for the
    K timesteps of `combine` in one batch (K x B rows, step-major), and the closed-form DDIM combine. The distiller
    trains through it (gradients reach the shared encoder through every decoder pass), the ONNX export traces it as
    one graph, and [`TiUEPipeline`] samples with it.

    Example:

    ```python
    >>> sampler = TiUESampler(pipe.unet, pipe.combine)  # doctest: +SKIP
    >>> z0 = sampler(torch.randn(1, 4, 64, 64), prompt_embeds)  # doctest: +SKIP
    ```
    """

    def __init__(self, unet, combine: DDIMCombine):
        super().__init__()
        self.unet = unet
        self.combine = combine
        self.split = UNetSplit(unet)
        # (FSDP2 through accelerate shards a model block by block, the blocks its `_no_split_modules` names)
        self._no_split_modules = getattr(unet, "_no_split_modules", None)

    def forward(self, noise: torch.Tensor, encoder_hidden_states: torch.Tensor, return_outputs: bool = False):
        """`z_0` for `noise` (B rows) and one row of text conditioning each; with `return_outputs` also the K x B
        decoder outputs (the noise predictions the KL term reads)."""
        timesteps = torch.tensor(self.combine.timesteps, device=noise.device)
        features = self.split.encode(noise, timesteps[0], encoder_hidden_states)
        outputs = self.split.decode(features, timesteps, encoder_hidden_states)
        sample = self.combine(noise.float(), outputs.float()).to(noise.dtype)
        return (sample, outputs) if return_outputs else sample
