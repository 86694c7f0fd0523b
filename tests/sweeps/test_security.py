"""Security basics: credentials in tracking URIs stay out of output, MLflow and files; a
local Ray serves no dashboard beyond 127.0.0.1."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from sweeps import cluster, launch
from sweeps.redact import credentials, redact_text, redact_uri, without_password
from tests.sweeps.sweep_helpers import cli, runs_by_kind, write_spec

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(("uri", "shown", "saved"), [
    ("http://alice:s3cr3t@mlflow:5000", "http://alice:***@mlflow:5000", "http://alice@mlflow:5000"),
    ("https://alice:p%40ss@h/prefix/", "https://alice:***@h/prefix/", "https://alice@h/prefix/"),
    ("postgresql://u:pw@db.example:5432/mlflow", "postgresql://u:***@db.example:5432/mlflow",
     "postgresql://u@db.example:5432/mlflow"),
    ("mysql+pymysql://u:p@ss@h/db", "mysql+pymysql://u:***@h/db", "mysql+pymysql://u@h/db"),
    ("http://h:5000/?token=abc&x=1", "http://h:5000/?token=***&x=1", "http://h:5000/?x=1"),
    ("http://u:pw@h:notaport/", "http://u:***@h:notaport/", "http://u@h:notaport/"),
    # nothing to hide: unchanged, byte for byte
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("sqlite:///rel/mlflow.db", "sqlite:///rel/mlflow.db", "sqlite:///rel/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("http://alice@h:5000", "http://alice@h:5000", "http://alice@h:5000"),
    ("databricks", "databricks", "databricks"),
])
def test_redact_uri(uri, shown, saved):
    assert redact_uri(uri) == shown
    assert without_password(uri) == saved
    assert redact_uri(shown) == shown  # idempotent


def test_credentials_and_redact_text():
    assert credentials("http://alice:p%40ss@h:5000/x") == ("http://h:5000/x", "alice", "p@ss")
    assert credentials("sqlite:////a.db") == ("sqlite:////a.db", None, None)
    text = "API request to http://alice:hunter22@h:5000/api failed (auth hunter22)"
    out = redact_text(text, "http://alice:hunter22@h:5000")
    assert "hunter22" not in out and "http://alice:***@h:5000/api" in out


def test_error_lines_mask_passwords(capsys):
    from smartmixed.cli import error

    assert error("tracking_uri: cannot read 'postgresql://u:hunter22@h/db'") == 2
    assert capsys.readouterr().err == "smartmixed: error: tracking_uri: cannot read " \
                                      "'postgresql://u:***@h/db'\n"


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.init recorded, never run."""
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(cluster, "_ray_owned", False)
    return calls


def test_local_ray_serves_no_dashboard_beyond_localhost(fake_ray):
    assert cluster._init_ray(None) is True
    (kwargs,) = fake_ray
    assert kwargs["include_dashboard"] is False
    assert kwargs["dashboard_host"] == "127.0.0.1"
    assert "address" not in kwargs and kwargs["num_cpus"] >= 1


def test_joining_a_cluster_starts_nothing(fake_ray):
    with socket.socket() as server:  # something listening, as a Ray head would
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert cluster._init_ray(address) is True
    (kwargs,) = fake_ray
    assert kwargs["address"] == address
    assert not {"num_cpus", "include_dashboard", "dashboard_host"} & set(kwargs)


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def _grep(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_prepare_logs_and_saves_the_uri_without_password(tmp_path, mlflow_server, clean_env):
    """The sweep run's params and spec.yaml show the password as ***, sweep.yaml/sweep.json
    keep the URI without it, and the URI handed to MLflow (and to trials) carries none."""
    import os

    from mlflow import MlflowClient

    from sweeps.specfile import load_spec

    host = mlflow_server.removeprefix("http://")
    given = f"http://alice:{SECRET}@{host}"
    spec, path, ctx = launch.prepare(load_spec(write_spec(tmp_path)), given)
    assert ctx.tracking_uri == mlflow_server  # user and password moved to the variables
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert spec.tracking_uri == ctx.spec["tracking_uri"] == f"http://alice@{host}"
    assert json.loads((path / launch.STATE_FILE).read_text())["tracking_uri"] == \
        f"http://alice@{host}"
    assert yaml.safe_load((path / launch.SPEC_FILE).read_text())["tracking_uri"] == \
        f"http://alice@{host}"
    run = MlflowClient(mlflow_server).get_run(ctx.sweep_run_id)
    assert run.data.params["tracking_uri"] == f"http://alice:***@{host}"
    artifact = MlflowClient(mlflow_server).download_artifacts(run.info.run_id, "spec.yaml",
                                                              str(tmp_path))
    assert yaml.safe_load(Path(artifact).read_text())["tracking_uri"] == f"http://alice:***@{host}"
    assert not any(SECRET in v for v in (*run.data.params.values(), *run.data.tags.values()))
    assert _grep(tmp_path, SECRET) == []  # server store, artifacts, results folder


def test_a_sweep_with_a_credentialed_uri_leaks_it_nowhere(tmp_path, ray_local, mlflow_server,
                                                         clean_env, capsys):
    host = mlflow_server.removeprefix("http://")
    given = f"http://alice:{SECRET}@{host}"
    spec = write_spec(tmp_path, seeds=[0], fixed={"epochs": 2, "transition_epoch": 1,
                                                  "architecture": "8", "device": "cpu"},
                      search={"algorithm": "grid",
                              "space": {"method": {"choice": ["fixed:relu"]}}})
    assert cli("sweep", "run", str(spec), "--tracking-uri", given) == 0
    folder = tmp_path / "ray_results" / "t-sweep"
    assert cli("sweep", "status", str(folder), "--tracking-uri", given) == 0
    assert cli("sweep", "status", str(folder)) == 0  # the saved URI needs no password here
    out, err = capsys.readouterr()
    assert "alice:***@" in out or f"http://{host}" in out
    assert SECRET not in out + err
    runs = runs_by_kind(mlflow_server, "t-exp")
    assert [len(runs[k]) for k in ("sweep", "trial", "seed")] == [1, 1, 1]
    for run in (r for rs in runs.values() for r in rs):
        assert not any(SECRET in v for v in (*run.data.params.values(), *run.data.tags.values()))
    assert _grep(tmp_path, SECRET) == []  # MLflow store and artifacts, Ray results, journal
