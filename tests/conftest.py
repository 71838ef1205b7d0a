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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init sdfn-tiny checkpoint with a small fusion head, saved once for the session (never the shipped
    sdfn/assets/sdfn-tiny, which may not exist yet and would tie tests to one training run)."""
    import torch

    from sdfn.fusion import FusionConfig
    from sdfn.model import ComposedRetrievalModel, ModelConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-checkpoint") / "sdfn"
    ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16))).save(folder)
    return folder


@pytest.fixture(scope="module")
def served_demo(small_catalog, tiny_checkpoint, tmp_path_factory):
    """The Gradio demo on a copy of the small catalog with the tiny checkpoint, served in this process on a free
    port, once per test module: yields (service, url)."""
    import shutil

    from helpers import free_port

    from sdfn.demo_app import build_demo, launch
    from sdfn.demo_service import DemoService

    folder = tmp_path_factory.mktemp("demo")
    shutil.copytree(small_catalog, folder / "catalog")
    service = DemoService(tiny_checkpoint, folder / "catalog", threads=1, progress=False, runs=folder / "runs").load()
    port = free_port()
    demo = build_demo(service)
    _, url, _ = launch(demo, service, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield service, url
    demo.close()
