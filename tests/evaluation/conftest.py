"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest

from encoder_shrink.evaluation import METRICS
from encoder_shrink.evaluation import metrics as metrics_module


@pytest.fixture
def scratch_registry(monkeypatch):
    """Metrics registered in a test are dropped after it."""
    monkeypatch.setattr(METRICS, "_items", dict(METRICS._items))
    monkeypatch.setattr(metrics_module, "_BY_CONFIG", dict(metrics_module._BY_CONFIG))
