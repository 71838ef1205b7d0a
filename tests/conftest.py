"""Shared test set-up: nothing may wait on the network, and the synthetic catalog is generated once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SMALL_ITEMS_PER_CATEGORY = 40


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory) -> Path:
    """A small synthetic catalog (5 categories x 40 items), generated once for the whole test session."""
    from sdfn.data.synth import generate_catalog

    root = tmp_path_factory.mktemp("catalog") / "synthetic"
    generate_catalog(root, seed=0, items_per_category=SMALL_ITEMS_PER_CATEGORY, workers=1, progress=False)
    return root
