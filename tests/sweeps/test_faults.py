"""Slow, multi-process tests: a two-node Ray cluster, a killed trial worker (resumed from its
checkpoint, or closed FAILED with no retries left), an interrupted (SIGINT) and a killed
(SIGKILL) driver resumed with ``sweep resume``, an MLflow server outage, and a NaN trial end
to end.  Each runs the real CLI in a subprocess, with bounded waits."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from smartmixed_core.config import RunConfig
from smartmixed_core.runner import load_data, train_seeds
from sweeps import schema
from sweeps.checkpoints import CHECKPOINT_ENV
from sweeps.searcher import RAY_TRIAL_ATTR
from tests.sweeps.sweep_helpers import (
    assert_run_tree,
    finish_sweep,
    free_port,
    log_tail,
    optuna_trials,
    runs_by_kind,
    smartmixed_cmd,
    start_mlflow_server,
    sweep_process,
    wait_until,
    write_spec,
)

VAL_CURVE = schema.epoch_metric("val_accuracy")
LOSS_CURVE = schema.epoch_metric("train_loss")

pytestmark = pytest.mark.slow


def _ray_pids(temp_dir: Path) -> list[int]:
    """Processes of the Ray cluster started with ``--temp-dir temp_dir`` (and nothing else)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(temp_dir) in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def two_node_cluster(tmp_path):
    """``ray start --head`` + ``ray start --address``: two nodes of one CPU on this machine."""
    temp_dir = Path("/tmp") / f"rt{os.getpid()}"  # short: Ray's socket paths have a length cap
    port = free_port()
    # Token auth (on by default since Ray 2.59) is orthogonal to what is tested here.
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "disabled"}
    head = ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
            f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    subprocess.run(head, check=True, env=env, capture_output=True, timeout=120)
    try:
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True,
                       timeout=120)
        yield f"127.0.0.1:{port}", env
    finally:
        for pid in _ray_pids(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sweep_through_address_on_a_two_node_cluster(tmp_path, two_node_cluster):
    spec = write_spec(tmp_path)
    address, env = two_node_cluster
    out = subprocess.run([*smartmixed_cmd(), "sweep", "run", str(spec), "--address", address],
                         capture_output=True, text=True, timeout=400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = assert_run_tree(f"sqlite:///{tmp_path / 'mlflow.db'}", "t-exp", "t-sweep", 2,
                           [0, 1], 3)
    workers = {r.data.tags[schema.TAG_WORKER] for r in runs[schema.KIND_TRIAL]}
    assert len(workers) == 2  # two trial processes, one CPU each: one per node


def _trial_after(uri: str, c: MlflowClient, epochs: int):
    """A :func:`wait_until` predicate: the sweep's only trial run once it logged ``epochs``."""
    def predicate():
        trials = runs_by_kind(uri, "t-exp")[schema.KIND_TRIAL]
        if trials and len(c.get_metric_history(trials[0].info.run_id, VAL_CURVE)) >= epochs:
            return trials[0]
        return None

    return predicate


def _worker_pid(trial) -> int:
    """The pid of the process that runs (or last ran) ``trial`` (tag ``host:pid``)."""
    return int(trial.data.tags[schema.TAG_WORKER].split(":")[1])


def _standalone(fixed: dict, method: str, seeds: list[int]) -> dict[int, dict]:
    """``smartmixed train --seeds ...`` in this process (the spec's ``fixed`` + method), which
    batches the seeds as the trial does; per seed its summary."""
    values = {k: v for k, v in fixed.items() if k != "architecture"}
    cfg = RunConfig(**values, arch=fixed["architecture"], method=method, dataset="digits")
    doc, _ = train_seeds(cfg, seeds, data=load_data(cfg))
    return {s["seed"]: s for s in doc["seeds"]}


def test_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, monkeypatch):
    """SIGKILL of the trial's worker process in phase 2: Ray retries the trial, which continues
    both seeds from the latest checkpoint in their own seed runs (nothing superseded, no epoch
    trained twice) and ends with the numbers of an uninterrupted run."""
    monkeypatch.setenv("SMARTMIXED_REPORT_SECONDS", "0")  # every epoch reaches Ray's log
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fixed = {"epochs": 40, "transition_epoch": 5, "architecture": "64", "device": "cpu"}
    spec = write_spec(tmp_path, fixed=fixed,
                      search={"algorithm": "grid", "space": {"method": {"choice": ["smartmixed"]}}})
    c = MlflowClient(uri)
    with sweep_process(tmp_path, "run", str(spec)) as (proc, log):
        trial = wait_until(_trial_after(uri, c, 8), 300, "8 epochs", proc)
        pid = _worker_pid(trial)
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        assert finish_sweep(proc, log, 400) == 0, log_tail(log)
        print(f"killed worker {pid}; sweep finished {time.time() - t_kill:.0f} s later")
    runs = assert_run_tree(uri, "t-exp", "t-sweep", 1, [0, 1], 40)
    (trial,) = runs[schema.KIND_TRIAL]
    assert _worker_pid(trial) != pid  # a new attempt
    seeds = runs[schema.KIND_SEED]
    assert len(seeds) == 2  # the same two seed runs were continued: none superseded
    # 8 epochs logged = the round-6 report (with its checkpoint) had returned
    resumed = int(trial.data.tags[schema.TAG_RESUMED])
    assert 6 <= resumed < 39
    assert all(r.data.tags[schema.TAG_RESUMED] == str(resumed) for r in seeds)
    # Ray's log of the trial's reports: epoch 0 once, i.e. the retry did not start over
    (results,) = (tmp_path / "ray_results" / "t-sweep").glob("*/result.json")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in rows if not r.get("final")]
    assert epochs.count(0) == 1 and sorted(set(epochs)) == list(range(40))
    assert len(epochs) <= 41, epochs  # at most the round in flight at the kill, twice
    print(f"resumed after epoch {resumed}; {len(epochs)} per-epoch reports")
    uninterrupted = _standalone(fixed, "smartmixed", [0, 1])
    for r in seeds:  # continued bit for bit: the numbers of an uninterrupted run
        alone = uninterrupted[int(r.data.tags[schema.TAG_SEED])]
        assert r.data.metrics["test_accuracy"] == alone["test_accuracy"]
        assert r.data.metrics["val_accuracy"] == alone["val_accuracy"]
        losses = c.get_metric_history(r.info.run_id, LOSS_CURVE)
        assert [m.value for m in sorted(losses, key=lambda m: m.step)] == \
            [h["train_loss"] for h in alone["history"]]


def test_trial_whose_retries_are_spent_ends_failed_with_the_reason(tmp_path, monkeypatch):
    """``max_failures: 0`` and the trial's worker SIGKILLed: nothing in the trial closes its
    runs, so the sweep closes the trial run and its unfinished seed runs as FAILED with the
    reason, and the sweep itself finishes."""
    monkeypatch.setenv("SMARTMIXED_REPORT_SECONDS", "0")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, max_failures=0,
                      fixed={"epochs": 60, "transition_epoch": 5, "architecture": "64",
                             "device": "cpu"},
                      search={"algorithm": "grid", "space": {"method": {"choice": ["smartmixed"]}}})
    c = MlflowClient(uri)
    with sweep_process(tmp_path, "run", str(spec)) as (proc, log):
        trial = wait_until(_trial_after(uri, c, 3), 300, "3 epochs", proc)
        os.kill(_worker_pid(trial), signal.SIGKILL)
        assert finish_sweep(proc, log, 300) == 0, log_tail(log)  # the sweep itself completed
    runs = runs_by_kind(uri, "t-exp")
    (sweep,), (trial,) = runs[schema.KIND_SWEEP], runs[schema.KIND_TRIAL]
    assert sweep.info.status == "FINISHED"
    assert trial.info.status == "FAILED"
    reason = "crashed: the trial failed 1 times"
    assert trial.data.tags[schema.TAG_STATUS_REASON] == reason
    seeds = runs[schema.KIND_SEED]
    assert len(seeds) == 2 and all(r.info.status == "FAILED" for r in seeds)
    assert all(r.data.tags[schema.TAG_STATUS_REASON] == reason for r in seeds)


def test_interrupted_driver_resumes_with_one_finished_seed_run_each(tmp_path):
    """SIGINT while the second of three trials trains: exit 130, runs KILLED; ``sweep resume``
    finishes the sweep, the interrupted trial's seeds continuing from its checkpoint in their
    own seed runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Long enough that the interrupted trial is still training when the SIGINT lands (a
    # short trial can finish its last epochs while Ray handles the signal; 40 epochs once did).
    spec = write_spec(tmp_path, seeds=[0, 1], max_concurrent=1,
                      fixed={"epochs": 80, "transition_epoch": 5, "architecture": "256-256",
                             "device": "cpu"},
                      search={"algorithm": "grid", "space": {"method": {
                          "choice": ["smartmixed", "fixed:relu", "fixed:elu"]}}})
    c = MlflowClient(uri)
    with sweep_process(tmp_path, "run", str(spec)) as (proc, log):
        def seed_done_and_trial_two_epochs_in():
            # The busy trial must be another than the one whose seeds finished: a trial's run
            # stays RUNNING for a moment after its own seed runs are FINISHED (once, the first
            # trial was caught in that moment, and the interrupt found nothing to resume).
            runs = runs_by_kind(uri, "t-exp")
            done = {r.data.tags[schema.TAG_TRIAL] for r in runs[schema.KIND_SEED]
                    if r.info.status == "FINISHED"}
            busy = [t for t in runs[schema.KIND_TRIAL] if t.info.status == "RUNNING"
                    and t.data.tags[schema.TAG_TRIAL] not in done
                    and len(c.get_metric_history(t.info.run_id, VAL_CURVE)) >= 2]
            return busy[0] if done and busy else None

        busy = wait_until(seed_done_and_trial_two_epochs_in, 300,
                     "a finished seed and a trial 2 epochs in", proc)
        proc.send_signal(signal.SIGINT)
        assert finish_sweep(proc, log, 300) == 130, log_tail(log)
    before = runs_by_kind(uri, "t-exp")
    assert before[schema.KIND_SWEEP][0].info.status == "KILLED"
    assert not any(r.info.status == "RUNNING" for r in before[schema.KIND_SEED])
    with sweep_process(tmp_path, "resume", str(tmp_path / "ray_results" / "t-sweep"),
                       log="resume.log") as (proc, log):
        assert finish_sweep(proc, log, 500) == 0, log_tail(log)
    runs = assert_run_tree(uri, "t-exp", "t-sweep", 3, [0, 1], 80)
    trial = busy.data.tags[schema.TAG_TRIAL]
    mine = [r for r in runs[schema.KIND_SEED] if r.data.tags[schema.TAG_TRIAL] == trial]
    print(f"{len(runs[schema.KIND_SEED])} seed runs; interrupted trial resumed after epoch "
          f"{mine[0].data.tags.get(schema.TAG_RESUMED)}")
    assert len(mine) == 2  # its two seed runs, KILLED by the interrupt, were continued
    for r in mine:
        assert r.info.status == "FINISHED" and int(r.data.tags[schema.TAG_RESUMED]) >= 0
        assert schema.TAG_STATUS_REASON not in r.data.tags  # the interrupt's reason is gone


def test_killed_driver_resumes_without_lost_or_repeated_runs_or_trial_numbers(tmp_path):
    """SIGKILL of the driver (no handler runs; its local Ray dies with it) as soon as its first
    trial has finished and the second started, with Ray's experiment snapshots made rare so
    that the snapshot ``sweep resume`` restores is behind the MLflow runs and the Optuna
    study.  The resumed sweep completes: one FINISHED seed run per (trial, seed), nothing left
    RUNNING, a finished trial is not trained again, trials Ray lost are closed as ``lost``
    (and replaced), and the Optuna study goes on numbering trials and keeps none RUNNING."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "ray_results" / "t-sweep"
    spec = write_spec(tmp_path, seeds=[0, 1], max_concurrent=1,
                      fixed={"epochs": 12, "transition_epoch": 3, "architecture": "16",
                             "device": "cpu"},
                      search={"algorithm": "optuna", "num_samples": 4, "seed": 3,
                              "metric": "val_accuracy", "mode": "max",
                              "space": {"method": {"choice": ["fixed:relu", "fixed:tanh"]},
                                        "lr": {"loguniform": [1e-3, 1e-2]}}})
    rare = {"TUNE_GLOBAL_CHECKPOINT_S": "3600", CHECKPOINT_ENV: "3600"}
    with sweep_process(tmp_path, "run", str(spec), **rare) as (proc, log):
        def second_started():
            trials = runs_by_kind(uri, "t-exp")[schema.KIND_TRIAL]
            return len(trials) >= 2 and any(t.info.status == "FINISHED" for t in trials)

        wait_until(second_started, 300, "a finished trial and a second one", proc)
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait(timeout=60)
    before = runs_by_kind(uri, "t-exp")
    assert before[schema.KIND_SWEEP][0].info.status == "RUNNING"
    # Usually one; a tiny trial can also finish between the poll and the kill.
    done = [r for r in before[schema.KIND_TRIAL] if r.info.status == "FINISHED"]
    assert done
    numbers_before = {t.number: t.state.name for t in optuna_trials(folder, "t-sweep")}
    print("before resume:", {k: sorted(r.info.status for r in v) for k, v in before.items()},
          numbers_before)
    with sweep_process(tmp_path, "resume", str(folder), log="resume.log") as (proc, log):
        t0 = time.time()
        assert finish_sweep(proc, log, 500) == 0, log_tail(log)
        print(f"resume took {time.time() - t0:.0f} s")
    after = runs_by_kind(uri, "t-exp")
    lost = {r.data.tags[schema.TAG_TRIAL] for r in after[schema.KIND_TRIAL]
            if r.data.tags.get(schema.TAG_STATUS_REASON, "").startswith("lost")}
    kept = len(after[schema.KIND_TRIAL]) - len(lost)
    assert kept >= 4  # Ray's 4, plus the finished first trial if Ray had lost it
    runs = assert_run_tree(uri, "t-exp", "t-sweep", kept, [0, 1], 12, skip_trials=lost)
    for r in after[schema.KIND_TRIAL] + after[schema.KIND_SEED]:
        if r.data.tags[schema.TAG_TRIAL] in lost:
            assert r.info.status in ("KILLED", "FAILED")  # never counted as results
    c = MlflowClient(uri)
    finished = {r.data.tags[schema.TAG_TRIAL] for r in done}
    for seed in [r for r in runs[schema.KIND_SEED] if r.data.tags[schema.TAG_TRIAL] in finished]:
        assert c.get_run(seed.info.run_id).info.end_time < t0 * 1000  # not trained again
    trials = optuna_trials(folder, "t-sweep")
    print(f"lost trials: {sorted(lost)}; after resume:",
          {t.number: (t.state.name, t.value) for t in trials})
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == max(numbers) + 1  # 0..n-1, none repeated
    added = [t.number for t in trials if t.number not in numbers_before]
    assert added and min(added) > max(numbers_before)  # the resumed sweep went on numbering
    # A trial Optuna suggested just before the kill may have died before it opened its
    # MLflow trial run: the study closes it FAIL, and MLflow has nothing to mark lost.
    tracked = {r.data.tags[schema.TAG_TRIAL] for r in after[schema.KIND_TRIAL]}
    unrun = [t for t in trials if t.user_attrs.get(RAY_TRIAL_ATTR) not in tracked]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in unrun)
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == kept
    assert states.count(optuna.trial.TrialState.FAIL) == len(lost) + len(unrun)
    assert len(states) == kept + len(lost) + len(unrun)  # none left RUNNING
    best = max(r.data.metrics["val_accuracy_mean"] for r in runs[schema.KIND_TRIAL])
    assert max(t.value for t in trials if t.value is not None) == pytest.approx(best)


def test_mlflow_server_outage_is_ridden_out(tmp_path):
    """The tracking server stops while trials train and comes back ~10 s later on the same
    port and store: the trials wait at their next MLflow write and carry on, the sweep exits
    0 and the run tree is complete, with every per-epoch value logged once."""
    port = free_port()
    db, artifacts = tmp_path / "server.db", tmp_path / "server-artifacts"
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(port, db, artifacts)
    try:
        spec = write_spec(tmp_path, uri=uri, max_concurrent=2,
                          fixed={"epochs": 20, "transition_epoch": 5, "architecture": "32",
                                 "device": "cpu"})
        c = MlflowClient(uri)
        with sweep_process(tmp_path, "run", str(spec)) as (proc, log):
            def two_epochs():
                trials = runs_by_kind(uri, "t-exp")[schema.KIND_TRIAL]
                return [t for t in trials if t.info.status == "RUNNING" and len(
                    c.get_metric_history(t.info.run_id, VAL_CURVE)) >= 2]

            wait_until(two_epochs, 300, "a trial 2 epochs in", proc)
            server.terminate()
            server.wait(timeout=60)
            down = time.time()
            time.sleep(10)
            assert proc.poll() is None, log_tail(log)  # the sweep waits for the server
            server = start_mlflow_server(port, db, artifacts)
            outage = time.time() - down
            assert finish_sweep(proc, log, 500) == 0, log_tail(log)
            print(f"server down {outage:.0f} s; sweep finished {time.time() - down:.0f} s "
                  "after the server stopped")
        text = log.read_text()
        assert "unreachable" in text and "reachable again" in text  # the outage was hit
        assert_run_tree(uri, "t-exp", "t-sweep", 2, [0, 1], 20)
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_nan_trial_fails_with_its_reason_and_optuna_never_sees_nan(tmp_path):
    """AdamW with lr 1 and weight decay 9 multiplies the weights by -8 every step: the loss is
    NaN within two epochs.  That trial ends FAILED with the reason on its runs and in
    ``sweep status``, Optuna records it FAIL (no value), and the other trials complete."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "ray_results" / "t-sweep"
    spec = write_spec(tmp_path, max_concurrent=2, max_failures=1,
                      fixed={"epochs": 3, "transition_epoch": 1, "architecture": "16",
                             "device": "cpu", "optimizer": "adamw", "weight_decay": 9.0},
                      search={"algorithm": "optuna", "num_samples": 3, "seed": 0,
                              "metric": "val_accuracy", "mode": "max",
                              "space": {"method": {"choice": ["fixed:relu"]},
                                        "lr": {"choice": [0.001, 1.0]}}})
    with sweep_process(tmp_path, "run", str(spec)) as (proc, log):
        assert finish_sweep(proc, log, 400) == 0, log_tail(log)
    runs = runs_by_kind(uri, "t-exp")
    failed = [r for r in runs[schema.KIND_TRIAL] if r.info.status == "FAILED"]
    finished = [r for r in runs[schema.KIND_TRIAL] if r.info.status == "FINISHED"]
    assert failed and finished and len(failed) + len(finished) == 3
    for r in failed:
        assert r.data.params["lr"] == "1.0"
        reason = r.data.tags[schema.TAG_STATUS_REASON]
        assert reason.startswith("non-finite loss: non-finite training loss (nan) at epoch ")
        seeds = [s for s in runs[schema.KIND_SEED]
                 if s.data.tags[schema.TAG_TRIAL] == r.data.tags[schema.TAG_TRIAL]]
        assert not [s for s in seeds if s.info.status != "FAILED"]
        assert any(s.data.tags[schema.TAG_STATUS_REASON].startswith("non-finite")
                   for s in seeds)
    status = subprocess.run([*smartmixed_cmd(), "sweep", "status", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    print(status.stdout)
    rows = [line for line in status.stdout.splitlines() if "FAILED" in line]
    assert len(rows) == len(failed) and all("(non-finite loss" in row for row in rows)
    assert f"{len(failed)} failed" in status.stdout
    trials = optuna_trials(folder, "t-sweep")
    fail = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(fail) == len(failed) and len(complete) == len(finished)
    assert all(t.params["lr"] == 1.0 and t.value is None for t in fail)
    assert all(math.isfinite(t.value) for t in complete)
    assert all(math.isfinite(v) for t in trials for v in t.intermediate_values.values())
