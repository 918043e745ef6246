"""Shared fixtures: tiny pipelines saved once per session, as a user's downloaded model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist each worker gets one core: torch's intra-op threads would otherwise contend with the other
# worker's (tiny models gain nothing from them). Set before torch is imported, so subprocesses inherit it too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from encoder_shrink import tiny  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The published prompt files live beside the repository (../shared/data/distillt5); tests that read them skip
# when that folder is absent.
SHARED_DATA = Path(
    os.environ.get("ENCODER_SHRINK_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "distillt5")
)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_pipeline_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny pipeline folder per family (FLUX dev/schnell, SD3, PixArt alpha/sigma)."""
    root = tmp_path_factory.mktemp("pipelines")
    return {family: tiny.save_tiny_pipeline(family, root / family) for family in tiny.TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiue_dir(tmp_path_factory) -> Path:
    """A TiUEPipeline folder made from a tiny random SD pipeline (K = 4, the paper's timesteps)."""
    from diffusers import StableDiffusionPipeline

    from encoder_shrink.tiue import TiUEPipeline

    root = tmp_path_factory.mktemp("tiue")
    sd = StableDiffusionPipeline.from_pretrained(tiny.save_tiny_pipeline(tiny.STABLE_DIFFUSION, root / "sd"))
    TiUEPipeline.from_sd_pipeline(sd).save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"prompt files not found at {SHARED_DATA} (set ENCODER_SHRINK_DATA)")
    return SHARED_DATA
