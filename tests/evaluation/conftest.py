"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest

from encoder_shrink.evaluation import METRICS


@pytest.fixture
def scratch_registry(monkeypatch):
    """Metrics registered in a test are dropped after it."""
    monkeypatch.setattr(METRICS, "_items", dict(METRICS._items))
    monkeypatch.setattr(METRICS, "_by_config", dict(METRICS._by_config))
