"""The MLflow helpers of :mod:`sweeps.tracking` against a real SQLite store: batched writes
within MLflow's limits, a trial's first attempt told from a retry, write-ahead logging."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow.exceptions import MlflowException

from sweeps import schema, tracking
from sweeps import store as sweeps_store
from sweeps.specfile import parse_spec


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = sweeps_store.client(uri)
    return uri, c, sweeps_store.ensure_experiment(c, "e", uri)


def test_params_and_metrics_go_in_as_few_batches_as_mlflow_allows(store, monkeypatch):
    _, c, exp = store
    run = c.create_run(exp).info.run_id
    calls = []
    real = c.log_batch

    def spy(run_id, metrics=(), params=(), tags=()):
        calls.append((len(params), len(metrics)))
        return real(run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(c, "log_batch", spy)
    params = {f"p{i}": i for i in range(150)}
    metrics = [("m", float(s), s) for s in range(1200)] + [("nan", float("nan"), 0)]
    tracking.log_params(c, run, params, lookup=False, metrics=metrics)
    assert calls == [(100, 900), (50, 300)]
    data = c.get_run(run).data
    assert data.params == {k: str(v) for k, v in params.items()}
    assert len(c.get_metric_history(run, "m")) == 1200 and "nan" not in data.metrics
    calls.clear()
    tracking.log_params(c, run, {"p0": 0, "new": "x"})  # lookup: only the missing one
    assert calls == [(1, 0)]
    tracking.log_params(c, run, {"p1": 1}, lookup=False)  # same value again: accepted
    with pytest.raises(MlflowException):
        tracking.log_params(c, run, {"p1": 2}, lookup=False)


def test_open_trial_run_tells_a_first_attempt_from_a_retry(store):
    _, c, exp = store
    cfg = parse_spec({"name": "s", "search": {"algorithm": "grid", "space": {
        "method": {"choice": ["fixed:relu"]}}}}).run_config({})
    first = tracking.open_trial_run(c, exp, "s", "parent", "t1", cfg, {"lr": 0.01})
    assert first.new and first.last_step == -1
    run = c.get_run(first.run_id)
    assert run.data.tags[schema.TAG_WORKER] and run.data.params["sampled.lr"] == "0.01"
    c.log_metric(first.run_id, schema.epoch_metric("val_accuracy"), 0.5, step=3)  # the curve
    c.set_terminated(first.run_id, "FAILED")
    retry = tracking.open_trial_run(c, exp, "s", "parent", "t1", cfg, {"lr": 0.01})
    assert retry == (first.run_id, 3, False)
    assert c.get_run(first.run_id).info.status == "RUNNING"


def test_wal_is_folded_back_and_its_files_removed(store, tmp_path):
    uri, c, exp = store
    assert sweeps_store.use_wal(uri)
    runs = [c.create_run(exp).info.run_id for _ in range(3)]
    assert (tmp_path / "mlflow.db-wal").exists()
    assert sweeps_store.fold_wal(uri)  # the client's own pooled connections are closed too
    assert not (tmp_path / "mlflow.db-wal").exists()
    assert not (tmp_path / "mlflow.db-shm").exists()
    assert c.get_run(runs[0]).info.run_id == runs[0]  # the client reconnects as needed
    assert not (tmp_path / "mlflow.db-wal").exists()
    copy = tmp_path / "copy" / "mlflow.db"  # the database file alone holds every run
    copy.parent.mkdir()
    shutil.copy(tmp_path / "mlflow.db", copy)
    with sqlite3.connect(copy) as con:
        ids = {r[0] for r in con.execute("select run_uuid from runs")}
    assert set(runs) <= ids
    for uri in ("http://127.0.0.1:5000", f"sqlite:///{tmp_path / 'absent.db'}"):
        assert not sweeps_store.use_wal(uri) and not sweeps_store.fold_wal(uri)


def test_check_tracking_probes_a_server_given_with_credentials(mlflow_server):
    from smartmixed_core.errors import ConfigError
    from tests.sweeps.sweep_helpers import free_port

    host = mlflow_server.removeprefix("http://")
    sweeps_store.check_tracking(f"http://alice:s3cret@{host}")  # answers: no error
    with pytest.raises(ConfigError, match="cannot reach") as err:
        sweeps_store.check_tracking(f"http://alice:s3cret@127.0.0.1:{free_port()}")
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)


def test_finished_trial_results_are_the_seed_means_of_finished_trial_runs(store):
    _, c, exp = store

    def trial(name, status, sweep="sw", **metrics):
        run = c.create_run(exp, tags={schema.TAG_KIND: schema.KIND_TRIAL,
                                      schema.TAG_SWEEP: sweep, schema.TAG_TRIAL: name}).info
        for k, v in metrics.items():
            c.log_metric(run.run_id, k, v, step=0)
        if status != "RUNNING":
            c.set_terminated(run.run_id, status)

    trial("a", "FINISHED", val_accuracy_mean=0.75, val_loss_mean=0.5)
    trial("b", "RUNNING", val_accuracy_mean=0.5)
    trial("c", "KILLED", val_accuracy_mean=0.5)
    trial("d", "FINISHED")  # no result logged
    trial("e", "FINISHED", sweep="other", val_accuracy_mean=0.25)
    assert tracking.finished_trial_results(c, exp, "sw", "val_accuracy") == {"a": 0.75}
    assert tracking.finished_trial_results(c, exp, "sw", "val_loss") == {"a": 0.5}


def test_sqlite_paths_are_read_as_sqlalchemy_reads_them(tmp_path, monkeypatch):
    assert sweeps_store.sqlite_path("sqlite:////data/a%20b.db") == Path("/data/a b.db")
    assert sweeps_store.sqlite_path("sqlite:///rel/m.db") == Path("rel/m.db")
    assert sweeps_store.sqlite_path("sqlite:///:memory:") is None
    assert sweeps_store.sqlite_path("http://host:5000") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my runs").mkdir()
    uri = sweeps_store.normalize_uri("sqlite:///my%20runs/m.db")
    assert uri == f"sqlite:///{quote(str(tmp_path))}/my%20runs/m.db"
    assert sweeps_store.normalize_uri(uri) == uri
    # MLflow opens that very file
    sweeps_store.ensure_experiment(sweeps_store.client(uri), "e", uri)
    assert (tmp_path / "my runs" / "m.db").is_file()
    assert sweeps_store.sqlite_path(uri) == tmp_path / "my runs" / "m.db"


def test_runs_log_only_the_settings_their_method_uses():
    from smartmixed_core.config import RunConfig

    fixed = tracking.config_params(RunConfig(method="fixed:relu"))
    assert not {"temperature", "temperature_end", "transition_epoch", "phase2_init",
                "gate", "entropy_weight"} & set(fixed)
    assert fixed["lr"] == "0.001" and fixed["architecture"] == "64-32"
    smart = tracking.config_params(RunConfig(method="smartmixed"))
    assert smart["temperature"] == "0.3" and smart["transition_epoch"] == "15"
    assert "gate" not in smart
    gated = tracking.config_params(RunConfig(method="gated"))
    assert gated["gate_temperature"] == "1.0" and "temperature" not in gated


def test_runs_have_names_and_descriptions_a_reader_understands(tmp_path):
    from smartmixed_core.config import RunConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = sweeps_store.client(uri)
    exp = sweeps_store.ensure_experiment(c, "e", uri)
    assert c.get_experiment(exp).tags[schema.TAG_EXPERIMENT_KIND] == "custom_model_development"
    sweep = tracking.create_sweep_run(c, exp, "s", {"experiment": "e", "tracking_uri": uri},
                                      "name: s\n", tmp_path / "s")
    note = c.get_run(sweep).data.tags[schema.TAG_NOTE]
    assert f"smartmixed analyze --experiment e --sweep s --tracking-uri {uri}" in note
    link = f"#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey={sweep}"
    assert f"({link})" in note  # the runs table, on the sweep's shared view of its trials
    view = json.loads(c.get_experiment(exp).tags[f"mlflow.sharedViewState.{sweep}"])
    assert view["searchFilter"] == ("tags.`smartmixed.sweep` = 's' AND "
                                    "tags.`smartmixed.kind` = 'trial'")
    assert view["orderByKey"] == "metrics.`val_accuracy_mean`" and view["orderByAsc"] is False
    assert "metrics.`test_accuracy_mean`" in view["selectedColumns"]
    assert len(c.search_runs([exp], view["searchFilter"])) == 0  # MLflow accepts the filter
    cfg = RunConfig(method="smartmixed", arch="64-32")
    trial = tracking.open_trial_run(c, exp, "s", sweep, "ab12", cfg,
                                    {"lr": 0.0012345, "architecture": "64-32"})
    run = c.get_run(trial.run_id)
    assert run.info.run_name == "smartmixed · digits · 64-32 · lr=0.00123 · ab12"
    assert "Sampled by the search: `lr`, `architecture`" in run.data.tags[schema.TAG_NOTE]
    seed = tracking.start_seed_run(c, exp, "s", "ab12", trial.run_id, 3, cfg, first_attempt=True)
    assert c.get_run(seed).info.run_name == "seed 3"
    other = sweeps_store.ensure_experiment(c, "old", uri)  # an experiment made elsewhere gets it
    c.delete_experiment_tag(other, schema.TAG_EXPERIMENT_KIND)
    sweeps_store.ensure_experiment(c, "old", uri)
    assert c.get_experiment(other).tags[schema.TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_seed_metrics_keep_curves_apart_from_final_values():
    """Per-epoch values are ``epoch/*`` curves, one point per epoch; a final value is one
    point after the last epoch, so no curve ends in the restored weights' value; selection
    fractions are a curve over phase 1 ending at the frozen network's choices."""
    from smartmixed_core.config import RunConfig
    from smartmixed_core.runner import load_data, train_seeds

    cfg = RunConfig(dataset="digits", arch="12-8", method="smartmixed", epochs=5,
                    transition_epoch=3, device="cpu")
    _, (outcome,) = train_seeds(cfg, [0], data=load_data(cfg))
    triples = tracking.seed_metrics(cfg, outcome.summary, outcome.choices)
    steps: dict[str, list[int]] = {}
    for key, _, step in triples:
        steps.setdefault(key, []).append(step)
    epochs = len(outcome.summary["history"])
    for name in schema.EPOCH_METRICS:
        assert steps[schema.epoch_metric(name)] == list(range(epochs))
    assert steps[schema.epoch_metric("tau")] == [0, 1, 2]
    finals = [k for k in schema.FINAL_METRICS if k in steps]
    assert {"val_accuracy", "test_accuracy", "phase1_test_accuracy"} <= set(finals)
    assert all(steps[k] == [epochs] for k in finals)
    values = {(k, s): v for k, v, s in triples}
    for layer, names in outcome.choices.items():
        idx = int(layer.split("_")[1])
        for act in cfg.pool_names:
            key = schema.selection_metric(idx, act)
            assert steps[key] == [0, 1, 2, 3]  # phase-1 epochs, then the frozen choices
            assert values[key, 3] == names.count(act) / len(names)
            counts = outcome.summary["history"][2]["selection"][layer]
            assert values[key, 2] == counts[act] / sum(counts.values())

