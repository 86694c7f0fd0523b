"""Slow, multi-process tests: a two-node Ray cluster, a killed trial worker, an interrupted
driver resumed with ``sweep resume``.  Each runs the real CLI in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import schema
from tests.sweeps.sweep_helpers import (
    assert_run_tree,
    free_port,
    runs_by_kind,
    smartmixed_cmd,
    write_spec,
)

pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.5)
    raise TimeoutError(what)


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


def test_killed_trial_worker_is_retried_without_duplicate_seed_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, fixed={"epochs": 40, "transition_epoch": 5,
                                       "architecture": "64", "device": "cpu"},
                      search={"algorithm": "grid", "space": {"method": {"choice": ["smartmixed"]}}})
    proc = subprocess.Popen([*smartmixed_cmd(), "sweep", "run", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    c = MlflowClient(uri)

    def progressed():
        trials = runs_by_kind(uri, "t-exp")[schema.KIND_TRIAL]
        if trials and len(c.get_metric_history(trials[0].info.run_id, "val_accuracy")) >= 3:
            return trials[0]
        return None

    trial = _wait(progressed, 240, "3 epochs", proc)
    pid = int(trial.data.tags[schema.TAG_WORKER].split(":")[1])
    os.kill(pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-3000:]
    runs = assert_run_tree(uri, "t-exp", "t-sweep", 1, [0, 1], 40)
    (trial,) = runs[schema.KIND_TRIAL]
    assert int(trial.data.tags[schema.TAG_WORKER].split(":")[1]) != pid  # a new attempt
    superseded = [r for r in runs[schema.KIND_SEED] if r.info.status == "FAILED"]
    assert len(superseded) == 2  # both lockstep seeds were mid-run when the worker died
    assert all("superseded" in r.data.tags[schema.TAG_STATUS_REASON] for r in superseded)


def test_interrupted_driver_resumes_with_one_finished_seed_run_each(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_spec(tmp_path, seeds=[0, 1], max_concurrent=1,
                      fixed={"epochs": 25, "transition_epoch": 5, "architecture": "32",
                             "device": "cpu"},
                      search={"algorithm": "grid", "space": {"method": {
                          "choice": ["smartmixed", "fixed:relu", "fixed:elu"]}}})
    proc = subprocess.Popen([*smartmixed_cmd(), "sweep", "run", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def one_seed_done():
        seeds = runs_by_kind(uri, "t-exp")[schema.KIND_SEED]
        return [r for r in seeds if r.info.status == "FINISHED"]

    _wait(one_seed_done, 300, "a finished seed", proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-3000:]
    before = runs_by_kind(uri, "t-exp")
    assert before[schema.KIND_SWEEP][0].info.status == "KILLED"
    assert not any(r.info.status == "RUNNING" for r in before[schema.KIND_SEED])
    out = subprocess.run([*smartmixed_cmd(), "sweep", "resume",
                          str(tmp_path / "ray_results" / "t-sweep")],
                         capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_run_tree(uri, "t-exp", "t-sweep", 3, [0, 1], 25)
