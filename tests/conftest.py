"""Shared fixtures: tiny models and the embedded digits data."""

from __future__ import annotations

import pytest
import torch

from smartmixed_core.data import load_dataset


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Exact equality of seeds trained together and alone holds per thread count: with
    several threads a batched matmul or reduction may split its sums differently from a
    single one (see docs/contracts.md, --batch-seeds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
