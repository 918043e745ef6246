"""The TiUE UNet as one ONNX graph (encoder, batched decoder, combine), checked against torch, run in TiUEPipeline."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from encoder_shrink.exporters.formats import REPORT, read_config
from encoder_shrink.exporters.onnx_export import DEFAULT_PROMPTS, OPSET
from encoder_shrink.exporters.parity import ExportParityError, compare

from encoder_shrink.errors import InvalidArgumentError, OutputExistsError
from encoder_shrink.files import atomic_dir, atomic_write_text

logger = logging.getLogger(__name__)

GRAPH_FILE = "tiue_unet.onnx"
# The key of config.json that marks a TiUE export (the UNet's own config is the rest of the file).
TIUE_KEY = "tiue_export"


class _Graph(torch.nn.Module):
    """The exported signature: (noise, encoder_hidden_states) -> z_0."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler

    def forward(self, noise, encoder_hidden_states):
        return self.sampler(noise, encoder_hidden_states)


def export_tiue_onnx(pipe, output_dir: str | os.PathLike, *, resolution: int | None = None, batch_size: int = 1,
                     overwrite: bool = False, prompts: tuple[str, ...] = DEFAULT_PROMPTS) -> Path:
    r"""
    Export the UNet of a [`TiUEPipeline`] as one ONNX graph: `(noise, encoder_hidden_states) -> z_0`, the encoder
    pass, the batched K-step decoder pass and the closed-form combine, for `batch_size` images at the latent size of
    `resolution` (default: the UNet's sample size). The shapes are fixed (the exporter cannot keep the split's batch
    symbolic); [`OnnxTiUEUNet`] runs any number of images in chunks of `batch_size`. The graph is compared with the
    torch sampler on the pipeline's own prompt embeddings and seeded noise (max abs/rel error, relative L2, cosine
    per image, NaN/Inf counts, in `export_report.json`); an export beyond the fp32 tolerance raises
    [`ExportParityError`] and writes nothing.

    Example:

    ```python
    >>> from encoder_shrink.exporters.tiue_onnx import OnnxTiUEUNet, export_tiue_onnx
    >>> pipe = TiUEPipeline.from_pretrained("out/pipeline")  # doctest: +SKIP
    >>> export_tiue_onnx(pipe, "out/tiue-onnx", batch_size=4)  # doctest: +SKIP
    >>> onnx_pipe = TiUEPipeline(**{**pipe.components, "unet": OnnxTiUEUNet.from_pretrained("out/tiue-onnx")},
    ...                          timesteps=list(pipe.timesteps))  # doctest: +SKIP
    ```
    """
    from encoder_shrink.tiue.sampler import TiUESampler

    output_dir = Path(output_dir)
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size!r}.")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output_dir} exists and is not empty; choose another folder or pass overwrite=True.")
    unet = pipe.unet
    if not isinstance(unet, torch.nn.Module):
        raise InvalidArgumentError(f"the pipeline's unet is a {type(unet).__name__}, not a torch UNet to export.")
    size = (resolution // pipe.vae_scale_factor) if resolution else unet.config.sample_size
    # The graph is fp32 on the CPU whatever the pipeline runs in (a copy, so the pipeline is left as it is).
    if unet.dtype != torch.float32 or unet.device.type != "cpu":
        unet = copy.deepcopy(unet).to("cpu", torch.float32)
    sampler = TiUESampler(unet, pipe.combine).eval()
    device, dtype = unet.device, unet.dtype
    with torch.no_grad():
        embeds = pipe.encode_prompt(list(prompts), pipe.text_encoder.device).to(device, dtype)
        noise = torch.randn((len(prompts), unet.config.in_channels, size, size),
                            generator=torch.Generator().manual_seed(0)).to(device, dtype)
        reference = sampler(noise, embeds).float().cpu().numpy()
    with atomic_dir(output_dir) as staging:
        graph_file = staging / GRAPH_FILE
        example = (noise[:1].expand(batch_size, -1, -1, -1).contiguous(), embeds[:1].expand(batch_size, -1, -1))
        program = torch.onnx.export(
            _Graph(sampler), (example[0], example[1].contiguous()), dynamo=True, opset_version=OPSET,
            input_names=["noise", "encoder_hidden_states"], output_names=["sample"], verbose=False,
        )
        program.save(str(graph_file))
        runtime = OnnxTiUEUNet(graph_file, dict(unet.config), pipe.timesteps, batch_size)
        exported = runtime(noise.cpu().float(), embeds.cpu().float()).numpy()
        flat = lambda x: x.reshape(x.shape[0], 1, -1)  # noqa: E731  (one vector per image for the cosine)
        parity = compare(flat(reference), flat(exported), "fp32").to_dict()
        if not parity["passed"]:
            raise ExportParityError(
                f"the TiUE ONNX graph is not close to the torch sampler: cosine {parity['min_cosine']:.6f} (needs >= "
                f"{parity['min_cosine_required']}), relative L2 {parity['relative_l2']:.3g} (allowed "
                f"{parity['max_relative_l2_allowed']}), NaN {parity['nan']}, Inf {parity['inf']}."
            )
        report = {
            "precision": "fp32", "opset": OPSET, "timesteps": list(pipe.timesteps), "latent_size": size,
            "batch_size": batch_size,
            "checked_batch": len(prompts), "prompts": list(prompts), "parity": parity,
            "bytes": {"onnx": graph_file.stat().st_size,
                      "torch_weights": sum(p.numel() * p.element_size() for p in unet.parameters())},
        }
        atomic_write_text(staging / REPORT, json.dumps(report, indent=2))
        # sample_size is the graph's latent size: a pipeline called without a height samples what the graph takes.
        record = {"format": "onnx", "file": GRAPH_FILE, "timesteps": list(pipe.timesteps), "latent_size": size,
                  "opset": OPSET, "batch_size": batch_size, "parity_cosine": parity["min_cosine"]}
        config = {**dict(unet.config), "sample_size": size, TIUE_KEY: record}
        atomic_write_text(staging / "config.json", json.dumps(config, indent=2, default=list))
    logger.info("TiUE ONNX export: %s", parity)
    return output_dir


class _Config(dict):
    """The UNet config of an export, readable as attributes as diffusers configs are (`config.sample_size`)."""

    __getattr__ = dict.__getitem__


class OnnxTiUEUNet:
    r"""
    The exported TiUE UNet run by ONNX Runtime, in the `unet` slot of a [`TiUEPipeline`]: called as
    `unet(noise, encoder_hidden_states) -> z_0` (torch tensors in, a torch tensor out, fp32 on the CPU by default).

    Example:

    ```python
    >>> unet = OnnxTiUEUNet.from_pretrained("out/tiue-onnx")  # doctest: +SKIP
    >>> pipe = TiUEPipeline(**{**torch_pipe.components, "unet": unet}, timesteps=list(torch_pipe.timesteps))
    ... # doctest: +SKIP
    ```
    """

    # What `TiUEPipeline` checks to run the whole graph instead of its own split.
    is_tiue_graph = True
    dtype = torch.float32

    def __init__(self, graph_file: str | os.PathLike, config: dict, timesteps, batch_size: int,
                 providers: list[str] | None = None):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(graph_file), providers=providers or ["CPUExecutionProvider"])
        self.config = _Config(config)
        self.timesteps = tuple(int(t) for t in timesteps)
        self.batch_size = batch_size
        self.device = torch.device("cpu")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, providers: list[str] | None = None) -> OnnxTiUEUNet:
        """Load a folder written by [`export_tiue_onnx`]."""
        config = read_config(folder)
        info = config.pop(TIUE_KEY, None)
        if info is None:
            raise InvalidArgumentError(f"{folder} is not a TiUE ONNX export (no {TIUE_KEY} in config.json); write one "
                                       "with export_tiue_onnx or `encoder-shrink tiue export`.")
        return cls(Path(folder) / info["file"], config, info["timesteps"], info["batch_size"], providers=providers)

    def to(self, *args, **kwargs) -> OnnxTiUEUNet:
        """ONNX Runtime runs on its own providers; tensors come back on the CPU."""
        return self

    def __call__(self, noise: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        size = self.config["sample_size"]
        if tuple(noise.shape[1:]) != (self.config["in_channels"], size, size):
            raise InvalidArgumentError(
                f"this TiUE graph takes ({self.config['in_channels']}, {size}, {size}) latents, got "
                f"{tuple(noise.shape[1:])}; export the pipeline again at the resolution you sample."
            )
        noise = noise.detach().float().cpu().numpy()
        embeds = encoder_hidden_states.detach().float().cpu().numpy()
        samples = []
        for start in range(0, noise.shape[0], self.batch_size):  # the graph's fixed batch; the last chunk is padded
            rows = slice(start, start + self.batch_size)
            chunk, context = noise[rows], embeds[rows]
            short = self.batch_size - chunk.shape[0]
            if short:
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
                context = np.concatenate([context, np.repeat(context[-1:], short, axis=0)])
            (sample,) = self.session.run(None, {"noise": chunk, "encoder_hidden_states": context})
            samples.append(sample[: self.batch_size - short])
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(samples) if samples else noise))
