"""Shared fixtures: tiny models and the embedded digits data."""

from __future__ import annotations

import pytest
import torch

from smartmixed_core.data import load_dataset


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
