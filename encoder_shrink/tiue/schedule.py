"""The closed-form combine of TiUE: K noise predictions and the starting noise to the DDIM (eta = 0) result."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.pipelines.base import CopiedLogic

# `DDIMScheduler.step` lines the coefficients follow (eta = 0); the TiUE tests fail when diffusers changes them.
COPIED_FROM = (
    CopiedLogic("diffusers.schedulers.scheduling_ddim.DDIMScheduler.step", (
        "prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps",
        "alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else "
        "self.final_alpha_cumprod",
        "pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)",
        "pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output",
        "pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample",
        "pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon",
        "prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction",
    )),
)


@dataclass(frozen=True)
class DDIMCombine:
    r"""
    DDIM with eta = 0 is linear: chaining `scheduler.step(out_i, t_i, x)` over the K timesteps from `x_T` gives
    `z_0 = noise_coefficient * x_T + sum_i output_coefficients[i] * out_i`. TiUE's decoder predicts all `out_i` from
    `x_T` at once, and this combines them in closed form. `prediction_type` `epsilon` and `v_prediction` are linear;
    `clip_sample`/`thresholding` are not and are refused (use SD's scheduler config: `clip_sample=False`).

    Example:

    ```python
    >>> from diffusers import DDIMScheduler
    >>> scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    ...                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    >>> scheduler.set_timesteps(4)
    >>> scheduler.timesteps.tolist()
    [751, 501, 251, 1]
    >>> combine = DDIMCombine.from_scheduler(scheduler)
    >>> len(combine.output_coefficients)
    4
    ```
    """

    timesteps: tuple[int, ...]
    noise_coefficient: float
    output_coefficients: tuple[float, ...]

    @classmethod
    def from_scheduler(cls, scheduler) -> DDIMCombine:
        """The coefficients of `scheduler`'s current timesteps (call `set_timesteps(K)` first)."""
        config = scheduler.config
        if type(scheduler).__name__ != "DDIMScheduler":
            raise InvalidArgumentError(f"the TiUE combine follows DDIMScheduler, got {type(scheduler).__name__}.")
        if config.clip_sample or config.thresholding:
            raise InvalidArgumentError(
                "DDIM with clip_sample or thresholding is not linear, so K predictions cannot be combined in closed "
                "form; use SD's scheduler config (clip_sample=False)."
            )
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise InvalidArgumentError(
                f"prediction_type {config.prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'."
            )
        if scheduler.num_inference_steps is None:
            raise InvalidArgumentError("call scheduler.set_timesteps(K) before DDIMCombine.from_scheduler.")
        step = config.num_train_timesteps // scheduler.num_inference_steps
        noise, outputs = 1.0, []
        for t in (int(t) for t in scheduler.timesteps):
            a = float(scheduler.alphas_cumprod[t])
            prev = t - step
            a_prev = float(scheduler.alphas_cumprod[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
            # x_prev = A x + B out: x0 and eps are linear in (x, out) for both prediction types.
            if config.prediction_type == "epsilon":
                x0_x, x0_out, eps_x, eps_out = a**-0.5, -((1 - a) ** 0.5) * a**-0.5, 0.0, 1.0
            else:
                x0_x, x0_out, eps_x, eps_out = a**0.5, -((1 - a) ** 0.5), (1 - a) ** 0.5, a**0.5
            step_x = a_prev**0.5 * x0_x + (1 - a_prev) ** 0.5 * eps_x
            step_out = a_prev**0.5 * x0_out + (1 - a_prev) ** 0.5 * eps_out
            outputs = [c * step_x for c in outputs] + [step_out]
            noise *= step_x
        return cls(tuple(int(t) for t in scheduler.timesteps), noise, tuple(outputs))

    def __call__(self, noise: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """
        `z_0` from `noise` (B rows) and the K x B decoder outputs, step-major; computed in fp32 at least (the
        coefficients, 4.23 against -2.49, ..., largely cancel: half precision would cost ~1e-2), even under autocast.
        """
        k = len(self.output_coefficients)
        if outputs.shape[0] != k * noise.shape[0]:
            raise InvalidArgumentError(
                f"expected {k} x {noise.shape[0]} decoder outputs (step-major), got {outputs.shape[0]}."
            )
        dtype = torch.promote_types(noise.dtype, torch.float32)  # fp32, or fp64 when given fp64
        with torch.autocast(noise.device.type, enabled=False):
            per_step = outputs.to(dtype).reshape(k, noise.shape[0], *outputs.shape[1:])
            weights = torch.tensor(self.output_coefficients, dtype=dtype, device=per_step.device)
            return self.noise_coefficient * noise.to(dtype) + torch.einsum("k,kb...->b...", weights, per_step)
