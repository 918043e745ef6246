"""Shared fixtures: tiny pipelines saved once per session, as a user's downloaded model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from encoder_shrink import testing

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
    return {family: testing.save_tiny_pipeline(family, root / family) for family in testing.TINY_FAMILIES}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"prompt files not found at {SHARED_DATA} (set ENCODER_SHRINK_DATA)")
    return SHARED_DATA
