"""The sweep's own progress view (Ray's callback API driven by hand, output to a file)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from sweeps.progress import SweepProgress, describe, trial_params


def _trial(tid: str, method: str, value: float | None, **params: object) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"method": method, **params},
                           last_result={} if value is None else {"val_accuracy": value})


def test_progress_lines_best_per_method_and_eta(capsys):
    p = SweepProgress("s", total=4, metric="val_accuracy", mode="max", concurrency=2)
    p.setup(num_samples=4)  # not a terminal here: lines, no live table
    a = _trial("a", "smartmixed", 0.91, architecture="64-32", lr=0.00123456)
    b = _trial("b", "fixed:relu", 0.93, architecture="64-32", lr=0.01)
    c = _trial("c", "smartmixed", 0.95, architecture="128-64", lr=0.002)
    for t in (a, b, c):
        p.on_trial_start(0, [], t)
    p.on_trial_complete(1, [], a)
    p.on_trial_complete(2, [], b)
    p.on_trial_error(3, [], c)
    assert (p.done, p.failed, p.running) == (2, 1, set())
    assert p.best == {"smartmixed": (0.91, "64-32, lr=0.00123"),
                      "fixed:relu": (0.93, "64-32, lr=0.01")}  # a failed trial has no result
    eta = p.eta()
    assert eta is not None and 0 <= eta < 1  # one trial left, trials took milliseconds
    p.on_experiment_end([])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "trial 1/4 done: smartmixed (64-32, lr=0.00123) val_accuracy 0.9100"
    assert err[2].startswith("trial 3/4 failed: smartmixed")
    assert err[-1].startswith("sweep s: 2/4 done, 0 running, 1 failed;")
    again = pickle.loads(pickle.dumps(p))  # Ray saves it with the experiment
    assert (again.done, again.best, again.total) == (0, {}, 4)


def test_min_mode_and_grid_configs():
    p = SweepProgress("s", total=2, metric="val_loss", mode="min", concurrency=1)
    for tid, loss in (("a", 0.5), ("b", 0.3)):
        t = SimpleNamespace(trial_id=tid, config={"trial": {"method": "gated", "gate": "input"}},
                            last_result={"val_loss": loss})
        p.on_trial_start(0, [], t)
        p.on_trial_complete(0, [], t)
    assert p.best == {"gated": (0.3, "gate=input")}
    assert trial_params({"trial": {"a": 1}}) == {"a": 1} and describe({"method": "x"}) == ""


def test_best_results_are_kept_per_dataset_when_the_dataset_is_searched():
    p = SweepProgress("s", total=3, metric="val_accuracy", mode="max", concurrency=1)
    p.setup(num_samples=3)
    for t in (_trial("a", "fixed:relu", 1.0, dataset="breast_cancer"),
              _trial("b", "fixed:relu", 0.97, dataset="digits"),
              _trial("c", "fixed:relu", 0.99, dataset="digits")):
        p.on_trial_start(0, [], t)
        p.on_trial_complete(1, [], t)
    assert p.best == {"fixed:relu · breast_cancer": (1.0, "breast_cancer"),
                      "fixed:relu · digits": (0.99, "digits")}


def test_final_summary_shows_the_best_trial_of_each_method_on_each_dataset(monkeypatch, capsys):
    from sweeps import cli, saved
    from sweeps.specfile import parse_spec

    spec = parse_spec({"name": "s", "seeds": [0], "search": {"algorithm": "optuna", "space": {
        "method": {"choice": ["fixed:relu", "smartmixed"]},
        "dataset": {"choice": ["digits", "breast_cancer"]}}}})
    def row(trial, method, dataset, metric):
        return {"trial": trial, "status": "FINISHED", "method": method, "dataset": dataset,
                "architecture": "32", "params": {"method": method, "dataset": dataset},
                "metric": metric, "val_accuracy_std": 0.0, "test_accuracy": metric,
                "seeds_finished": 1, "reason": ""}
    rows = [row("t1", "fixed:relu", "breast_cancer", 1.0), row("t2", "smartmixed", "digits", 0.98),
            row("t3", "fixed:relu", "digits", 0.97), row("t4", "smartmixed", "digits", 0.9)]
    monkeypatch.setattr(saved, "trial_rows", lambda ctx, spec: rows)
    ctx = SimpleNamespace(tracking_uri="sqlite:///x.db", experiment_id="1", sweep_run_id="r")
    cli._print_summary(spec, ctx, "folder", best_per_method=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " t" in line and "FINISHED" in line]
    assert [line.split()[1] for line in lines] == ["t1", "t3", "t2"]  # by dataset, then method
    assert "smartmixed (2 trials)" in out and "fixed:relu (1 trials)" in out
    assert "#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=r" in out


def test_without_verbose_mlflow_notices_stay_out_of_the_console(monkeypatch):
    """The driver has loaded MLflow before ``_quiet`` runs, so the environment variable alone
    came too late ("Creating initial MLflow database tables..." reached the demo's console)."""
    import logging
    import os

    import mlflow  # noqa: F401  (loaded, as in the driver)

    from sweeps import cli

    monkeypatch.setattr(os, "environ", dict(os.environ))  # what _quiet sets stays here
    logger = logging.getLogger("mlflow")
    monkeypatch.setattr(logger, "level", logging.INFO)
    cli._quiet(verbose=False)
    assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
