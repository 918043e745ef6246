"""The TiUE losses: VSD into z_0, the KL term on the predictions, the fake score's loss, DMD's regression term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vsd_loss(sample: torch.Tensor, teacher_eps: torch.Tensor, fake_eps: torch.Tensor,
             sigma_squared: torch.Tensor) -> torch.Tensor:
    r"""
    Variational score distillation (SwiftBrush): the gradient sent into the student's `sample` (z_0) is
    `w(t) * (teacher_eps - fake_eps)` with `w(t) = sigma_t^2 = 1 - alphabar_t` (one value per row), applied as
    `0.5 * mse(z_0, (z_0 - grad).detach())`; non-finite entries of the gradient are zeroed.

    Example:

    ```python
    >>> z = torch.zeros(1, 4, 2, 2, requires_grad=True)
    >>> vsd_loss(z, torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([0.5])).item()
    0.125
    ```
    """
    weight = sigma_squared.to(sample.dtype).reshape(-1, *[1] * (sample.ndim - 1))
    grad = torch.nan_to_num(weight * (teacher_eps - fake_eps).to(sample.dtype), nan=0.0, posinf=0.0, neginf=0.0)
    return 0.5 * F.mse_loss(sample.float(), (sample - grad).detach().float())


def kl_loss(outputs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""
    TiUE's KL term on the K x B predicted noise maps, before its weight lambda: per map the scalar mean `mu` and
    variance `s^2` over all its elements, `-0.5 * (1 + log s^2 - mu^2 - s^2)` (the KL of `N(mu, s^2)` from
    `N(0, 1)`), averaged (`"mean"`, which does not grow with K x B) or summed (`"sum"`, the paper's) over the maps.

    Example:

    ```python
    >>> kl_loss(torch.randn(8, 4, 64, 64, generator=torch.Generator().manual_seed(0))).item() < 1e-3
    True
    ```
    """
    flat = outputs.float().flatten(1)
    mu, var = flat.mean(dim=1), flat.var(dim=1, unbiased=False)
    per_map = -0.5 * (1 + torch.log(var.clamp_min(1e-12)) - mu**2 - var)
    return per_map.mean() if reduction == "mean" else per_map.sum()


def fake_score_loss(prediction_eps: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    r"""
    The fake score's denoising loss on the student's (detached) samples: `mse(sqrt(abar_t) * eps_hat,
    sqrt(abar_t) * eps)`, which weights each row by its signal level (as the x_0-space error would).

    Example:

    ```python
    >>> fake_score_loss(torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2), torch.tensor([1.0, 0.0])).item()
    0.5
    ```
    """
    scale = alphas_cumprod.to(noise.dtype).sqrt().reshape(-1, *[1] * (noise.ndim - 1))
    return F.mse_loss((scale * prediction_eps).float(), (scale * noise).float())


def regression_loss(sample: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""
    DMD's regression term (Yin et al. 2024): the distance of the student's z_0 from a teacher ODE pair's noise to the
    teacher's z_0 from the same noise, here the mean squared error on latents (DMD: LPIPS on images, which needs a
    pretrained VGG).

    Example:

    ```python
    >>> regression_loss(torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)).item()
    1.0
    ```
    """
    return F.mse_loss(sample.float(), target.float())
