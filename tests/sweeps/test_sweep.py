"""Real smoke-size sweeps on a local Ray (2 CPUs): SQLite store, a real MLflow server, bad
input reported before anything starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from smartmixed_core.config import RunConfig
from smartmixed_core.runner import load_checkpoint, load_data
from smartmixed_core.training import predict
from sweeps import schema
from sweeps.launch import JOURNAL_FILE
from sweeps.saved import STATE_FILE
from tests.sweeps.sweep_helpers import (
    assert_run_tree,
    cli,
    free_port,
    runs_by_kind,
    smartmixed_cmd,
    write_spec,
)


def test_grid_sweep_on_sqlite_writes_the_run_tree(tmp_path, ray_local, capsys):
    spec = write_spec(tmp_path)
    assert cli("sweep", "run", str(spec)) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = assert_run_tree(uri, "t-exp", "t-sweep", n_trials=2, seeds=[0, 1], epochs=3)
    out = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri " + uri in out and "2 finished" in out
    from smartmixed.cli import main

    assert main(["sweep", "dashboard", str(tmp_path / "ray_results" / "t-sweep")]) == 2
    assert "no Optuna journal" in capsys.readouterr().err
    # The checkpoint artifact rebuilds the network that scored the logged test accuracy.
    c = MlflowClient(uri)
    seed_run = next(r for r in runs[schema.KIND_SEED] if r.data.params["method"] == "smartmixed")
    path = c.download_artifacts(seed_run.info.run_id, schema.ARTIFACT_CHECKPOINT, str(tmp_path))
    data = load_data(RunConfig(dataset="digits", device="cpu"))
    _, model = load_checkpoint(path, data.input_shape, data.num_classes)
    acc = float((predict(model, data.x_test)[0].argmax(1) == data.y_test).float().mean())
    assert acc == pytest.approx(seed_run.data.metrics["test_accuracy"])
    path = c.download_artifacts(seed_run.info.run_id, schema.ARTIFACT_CHOICES, str(tmp_path))
    choices = json.loads(Path(path).read_text())
    assert len(choices["layer_1"]) == 16  # architecture "16": one name per unit
    for act in set(choices["layer_1"]):
        share = seed_run.data.metrics[f"selection/layer_1/{act}"]
        assert share == pytest.approx(choices["layer_1"].count(act) / 16)
    # status reads MLflow only.
    assert cli("sweep", "status", str(tmp_path / "ray_results" / "t-sweep")) == 0
    assert "t-sweep: 2 trials 2 finished" in capsys.readouterr().out


def test_optuna_sweep_against_a_real_mlflow_server(tmp_path, ray_local, mlflow_server):
    spec = write_spec(tmp_path, uri=mlflow_server, search={
        "algorithm": "optuna", "num_samples": 2, "metric": "val_accuracy", "mode": "max",
        "space": {"method": {"choice": ["smartmixed", "fixed:tanh"]},
                  "temperature": {"loguniform": [0.1, 1.0]}, "lr": {"loguniform": [1e-3, 1e-2]}}})
    assert cli("sweep", "run", str(spec), "--set", "seeds=[3]") == 0
    runs = assert_run_tree(mlflow_server, "t-exp", "t-sweep", n_trials=2, seeds=[3], epochs=3)
    for trial in runs[schema.KIND_TRIAL]:  # conditional: temperature only for smartmixed
        sampled = {k for k in trial.data.params if k.startswith(schema.SAMPLED_PREFIX)}
        assert ("sampled.temperature" in sampled) == (trial.data.params["method"] == "smartmixed")
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = tmp_path / "ray_results" / "t-sweep"
    storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
    study = optuna.load_study(study_name="t-sweep", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    best = max(r.data.metrics["val_accuracy_mean"] for r in runs[schema.KIND_TRIAL])
    assert study.best_value == pytest.approx(best)
    assert json.loads((folder / STATE_FILE).read_text())["tracking_uri"] == mlflow_server
    check_dashboard(folder)


def check_dashboard(folder: Path) -> None:
    """`sweep dashboard` serves the sweep's studies on 127.0.0.1; a taken port is refused."""
    import socket
    import subprocess
    import time
    import urllib.request

    from smartmixed.cli import main

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        assert main(["sweep", "dashboard", str(folder), "--port", str(port)]) == 2
    proc = subprocess.Popen([*smartmixed_cmd(), "sweep", "dashboard", str(folder), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, body = time.monotonic() + 60, None
        while body is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read().decode() if proc.poll() is not None else ""
        assert [s["study_name"] for s in body["study_summaries"]] == ["t-sweep"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(("args", "words"), [
    (["--set", "search.algorithm=bayes"], "search.algorithm"),
    (["--set", "fixed.pool=nope"], "fixed.pool"),
    (["--set", "search.space.lr={uniform: [0.1, 0.2]}"], "grid needs choice"),
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking server"),
])
def test_bad_input_exits_2_before_anything_is_created(tmp_path, capsys, args, words):
    spec = write_spec(tmp_path)
    assert cli("sweep", "run", str(spec), *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("smartmixed: error: ") and words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ray_results").exists()
    assert runs_by_kind(f"sqlite:///{tmp_path / 'mlflow.db'}", "t-exp")[schema.KIND_SWEEP] == []


def test_a_second_sweep_with_the_same_name_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path)
    (tmp_path / "ray_results" / "t-sweep").mkdir(parents=True)
    assert cli("sweep", "run", str(spec)) == 2
    assert "sweep resume" in capsys.readouterr().err


def test_status_finds_a_sweep_by_name_through_the_tracking_store(tmp_path, monkeypatch, capsys):
    from smartmixed_core.errors import ConfigError
    from sweeps.launch import prepare
    from sweeps.saved import locate
    from sweeps.specfile import load_spec

    _, path, ctx = prepare(load_spec(write_spec(
        tmp_path, storage_path=str(tmp_path / "ray_results"))))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert MlflowClient(uri).get_run(ctx.sweep_run_id).data.tags[schema.TAG_FOLDER] == str(path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither ./ray_results/t-sweep nor ./mlflow.db here
    assert locate("t-sweep", uri) == path
    assert cli("sweep", "status", "t-sweep", "--tracking-uri", uri) == 0
    assert "t-sweep" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"sweeps in .*: t-sweep\)") as err:
        locate("nope", uri)
    assert err.value.field == "sweep"
    with pytest.raises(ConfigError, match=re.escape("no tracking store at sqlite:///mlflow.db")):
        locate("t-sweep")


@pytest.mark.slow
def test_two_sweep_runs_racing_for_one_new_name(tmp_path):
    """In an empty folder: one creates the store and the sweep; the other waits its turn,
    finds the sweep and says so in one line (exit 2) without starting Ray."""
    import subprocess

    from tests.sweeps.sweep_helpers import smartmixed_cmd

    spec = write_spec(tmp_path, max_concurrent=1, seeds=[0],
                      search={"algorithm": "grid", "space": {"method": {"choice": ["fixed:relu"]}}})
    procs = [subprocess.Popen([*smartmixed_cmd(), "sweep", "run", str(spec)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    _, out, err = next(r for r in results if r[0] == 2)
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("smartmixed: error: name: a sweep named 't-sweep' already exists")
    runs = runs_by_kind(f"sqlite:///{tmp_path / 'mlflow.db'}", "t-exp")
    assert len(runs[schema.KIND_SWEEP]) == 1 and len(runs[schema.KIND_TRIAL]) == 1
