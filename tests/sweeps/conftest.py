"""Fixtures of the sweep tests: a local Ray (2 CPUs) once per session, a real MLflow server."""

from __future__ import annotations

import pytest

from tests.sweeps.sweep_helpers import free_port, start_mlflow_server


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the non-slow sweep tests (the CLI reuses it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts)."""
    port = free_port()
    proc = start_mlflow_server(port, tmp_path / "server.db", tmp_path / "server-artifacts")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
