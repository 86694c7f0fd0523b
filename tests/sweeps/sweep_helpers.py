"""Helpers for the sweep tests: spec files in tmp_path, the CLI, and a check of the MLflow run
tree of docs/mlflow-schema.md."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from smartmixed_core.config import uses
from sweeps import schema
from sweeps.checkpoints import CHECKPOINT_ENV

VAL_CURVE = schema.epoch_metric("val_accuracy")
LOSS_CURVE = schema.epoch_metric("train_loss")

SMOKE = {
    "name": "t-sweep",
    "experiment": "t-exp",
    "dataset": "digits",
    "seeds": [0, 1],
    "fixed": {"epochs": 3, "transition_epoch": 1, "architecture": "16", "device": "cpu"},
    "search": {"algorithm": "grid", "metric": "val_accuracy", "mode": "max",
               "space": {"method": {"choice": ["smartmixed", "fixed:relu"]}}},
    "resources": {"cpu": 1, "gpu": 0},
    "max_concurrent": 2,
}


def write_spec(tmp_path: Path, uri: str | None = None, **changes: Any) -> Path:
    doc = json.loads(json.dumps(SMOKE))
    doc.update(storage_path=str(tmp_path / "ray_results"),
               tracking_uri=uri or f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key, value in changes.items():
        doc[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str) -> int:
    from smartmixed.cli import main

    return main(list(args))


def smartmixed_cmd() -> list[str]:
    return [sys.executable, "-c", "import sys; from smartmixed.cli import main; "
            "sys.exit(main())"]


def tag(run: Any, key: str) -> str | None:
    return run.data.tags.get(key)


def runs_by_kind(uri: str, experiment: str) -> dict[str, list[Any]]:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    out: dict[str, list[Any]] = {schema.KIND_SWEEP: [], schema.KIND_TRIAL: [], schema.KIND_SEED: []}
    if exp is None:
        return out
    for run in c.search_runs([exp.experiment_id], "", max_results=5000):
        out[tag(run, schema.TAG_KIND)].append(run)
    return out


def assert_run_tree(uri: str, experiment: str, name: str, n_trials: int, seeds: list[int],
                    epochs: int, skip_trials: Any = ()) -> dict[str, list[Any]]:
    """The schema of issue 3 item 4, with values checked against each other.  Trial ids in
    ``skip_trials`` (e.g. trials lost with a killed driver) are left out, with their seeds."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    runs = runs_by_kind(uri, experiment)
    if skip_trials:
        runs = {kind: [r for r in rs if tag(r, schema.TAG_TRIAL) not in skip_trials]
                for kind, rs in runs.items()}
    (sweep,) = runs[schema.KIND_SWEEP]
    assert sweep.info.status == "FINISHED" and tag(sweep, schema.TAG_SWEEP) == name
    assert sweep.data.params["name"] == name and "search.algorithm" in sweep.data.params
    assert schema.ARTIFACT_SPEC in {a.path for a in c.list_artifacts(sweep.info.run_id)}
    trials = runs[schema.KIND_TRIAL]
    assert len(trials) == n_trials
    finished = [r for r in runs[schema.KIND_SEED] if r.info.status == "FINISHED"]
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert tag(trial, schema.TAG_PARENT) == sweep.info.run_id
        tid = tag(trial, schema.TAG_TRIAL)
        history = c.get_metric_history(trial.info.run_id, VAL_CURVE)
        assert sorted(m.step for m in history) == list(range(epochs))  # once per epoch
        mine = [r for r in finished if tag(r, schema.TAG_TRIAL) == tid]
        assert sorted(int(tag(r, schema.TAG_SEED)) for r in mine) == sorted(seeds)  # one each
        for seed_run in mine:
            assert tag(seed_run, schema.TAG_PARENT) == trial.info.run_id
            assert tag(seed_run, schema.TAG_SWEEP) == name
            p, m = seed_run.data.params, seed_run.data.metrics
            kind = p["method"].split(":")[0]  # only the settings its method uses
            assert {k for k in schema.CONFIG_PARAMS if uses(kind, k)} <= set(p)
            assert not {k for k in schema.CONFIG_PARAMS if not uses(kind, k)} & set(p)
            assert p["method"] == trial.data.params["method"]
            for key in ("test_accuracy", "val_accuracy", "test_f1_macro"):
                assert 0.0 <= m[key] <= 1.0
            losses = c.get_metric_history(seed_run.info.run_id, LOSS_CURVE)
            assert sorted(x.step for x in losses) == list(range(epochs))
            arts = {a.path for a in c.list_artifacts(seed_run.info.run_id)}
            assert {schema.ARTIFACT_CHOICES, schema.ARTIFACT_CHECKPOINT,
                    schema.ARTIFACT_RESULT} <= arts
            if p["method"] == "smartmixed":
                assert "phase1_test_accuracy" in m and "phase2_start_test_accuracy" in m
                fractions = [v for k, v in m.items() if k.startswith("selection/layer_1/")]
                assert len(fractions) == 6 and abs(sum(fractions) - 1) < 1e-6
        mean = sum(r.data.metrics["val_accuracy"] for r in mine) / len(mine)
        assert abs(trial.data.metrics["val_accuracy_mean"] - mean) < 1e-9
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)




def start_mlflow_server(port: int, db: Path | str, artifacts: Path,
                        log: Path | None = None) -> Any:
    """``mlflow server`` on 127.0.0.1:``port`` (SQLite file ``db``, or a database URI such as
    ``postgresql://...``; proxied ``artifacts``), up and answering /health; its output is
    appended to ``log`` (default: dropped).  The caller terminates the returned Popen."""
    import os
    import subprocess

    store = db if isinstance(db, str) and "://" in db else f"sqlite:///{db}"
    with (log or Path(os.devnull)).open("a") as out:  # the server keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(port), "--backend-store-uri", store, "--artifacts-destination",
             str(artifacts), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (inherited by everything a subprocess
    started with it: the driver, its local Ray's daemons and workers)."""
    import os

    needle = marker.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_marked(marker: str, timeout: float = 60) -> list[int]:
    """SIGKILL every process of :func:`marked_pids` until none is left; returns the pids."""
    import contextlib
    import os
    import signal

    killed: set[int] = set()
    deadline = time.time() + timeout
    while pids := marked_pids(marker):
        if time.time() > deadline:
            raise TimeoutError(f"processes still alive: {pids}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.5)
    return sorted(killed)


def optuna_trials(folder: Path, name: str) -> list[Any]:
    """The trials of the Optuna study that a sweep keeps in ``folder`` (its journal file)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from sweeps.launch import JOURNAL_FILE

    storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
    return optuna.load_study(study_name=name, storage=storage).trials


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.5)
    raise TimeoutError(what)


@contextlib.contextmanager
def sweep_process(tmp_path: Path, *args: str, log: str = "sweep.log", **env: str):
    """``smartmixed sweep ARGS`` in the background (output to ``tmp_path/log``, a checkpoint
    every round).  Whatever it leaves running at the end (its local Ray) is killed: every
    process it starts inherits a unique marker variable."""
    marker = f"SMARTMIXED_TEST_{uuid.uuid4().hex}"
    path = tmp_path / log
    with path.open("w") as out:
        proc = subprocess.Popen([*smartmixed_cmd(), "sweep", *args], stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, marker: "1", CHECKPOINT_ENV: "0", **env})
        try:
            yield proc, path
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
            left = kill_marked(marker)
            if left:
                print(f"killed {len(left)} processes left behind by `sweep {args[0]}`")


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]


def finish_sweep(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"sweep still running after {timeout} s:\n{log_tail(log)}") from None
