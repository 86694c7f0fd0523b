"""A trial outside Ray (its seeds trained together, as ``smartmixed train`` trains them):
seeds equal standalone runs, seed-level resume, mid-run checkpoints, NaN handling, and
tracking calls that ride out a server outage."""

from __future__ import annotations

import io

import pytest
import requests
import torch
from mlflow.exceptions import MlflowException

from smartmixed_core.config import RunConfig
from smartmixed_core.runner import RunState, load_data, train_seeds, train_together
from smartmixed_core.training import NonFiniteLossError
from sweeps import checkpoints, rounds, schema, store, tracking
from sweeps import trial as trial_mod
from sweeps.spec import spec_doc
from sweeps.specfile import parse_spec
from sweeps.trial import SweepContext, TrialFailed, TrialRun

VAL_CURVE = schema.epoch_metric("val_accuracy")
LOSS_CURVE = schema.epoch_metric("train_loss")

DOC = {"name": "tr", "seeds": [0, 1, 2],
       "fixed": {"epochs": 3, "transition_epoch": 1, "architecture": "16", "device": "cpu"},
       "search": {"algorithm": "grid", "space": {"method": {"choice": ["smartmixed"]}}}}


@pytest.fixture(autouse=True)
def every_epoch(monkeypatch):
    """Report every epoch (the default waits 2 s between reports); tests that check the
    throttle set their own value."""
    monkeypatch.setenv(rounds.REPORT_ENV, "0")


@pytest.fixture(params=["auto", "off"], ids=["batch-seeds-auto", "batch-seeds-off"])
def ctx(tmp_path, request):
    """``batch_seeds`` is kept for older specs and changes nothing: both values run here."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = store.client(uri)
    exp = store.ensure_experiment(c, "e", uri)
    sweep = tracking.create_sweep_run(c, exp, "tr", {"name": "tr"}, "name: tr\n")
    return SweepContext(spec_doc(parse_spec({**DOC, "batch_seeds": request.param})), uri, exp,
                        sweep)


def standalone(ctx, batched=False):
    """The three seeds trained outside the sweep, one at a time (``smartmixed train
    --batch-seeds off``) or together."""
    cfg = parse_spec(DOC).run_config({})
    _, outcomes = train_seeds(cfg, [0, 1, 2], data=load_data(cfg), batched=batched)
    return [o.summary for o in outcomes]


def count_training(ctx, monkeypatch, fail=False):
    """Record (or refuse) every training call of the trial: per call, the round it
    continues after, -1 for a fresh start."""
    calls = []
    real = trial_mod.train_together

    def spy(*a, **k):
        if fail:
            pytest.fail("retrained")
        calls.append(k["state"].round)
        return real(*a, **k)

    monkeypatch.setattr(trial_mod, "train_together", spy)
    return calls


def test_reports_are_throttled_but_every_epoch_reaches_mlflow(ctx, monkeypatch):
    monkeypatch.setenv(rounds.REPORT_ENV, "3600")
    reports = Reports()
    final = TrialRun(ctx, {}, "t1", reports).run()
    assert reports == [final]  # within the interval: only the final report goes to Ray
    c = store.client(ctx.tracking_uri)
    (trial,) = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, "tr")
    for key in schema.EPOCH_METRICS:  # the buffered per-epoch metrics were all written
        assert sorted(m.step for m in c.get_metric_history(trial.info.run_id,
                                                          schema.epoch_metric(key))) == [0, 1, 2]


class Reports(list):
    """A ``report(metrics, checkpoint)`` that records both."""

    def __init__(self, crash_after_checkpoint_at: int | None = None):
        super().__init__()
        self.checkpoints: list[dict] = []
        self.crash_at = crash_after_checkpoint_at

    def __call__(self, metrics, checkpoint=None):
        self.append(metrics)
        if checkpoint is not None:  # what Ray does: persist it (a copy, as torch.save would)
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            buf.seek(0)
            self.checkpoints.append(torch.load(buf, weights_only=True))
            if checkpoint["epoch"] == self.crash_at:
                raise _Crash


class _Crash(Exception):
    """Stands in for the trial's process dying right after a checkpoint."""


def test_trial_runs_carry_mlflow_system_metrics(ctx, monkeypatch):
    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "0.05")  # a trial here takes ~1 s
    TrialRun(ctx, {}, "t-sys", Reports()).run()
    c = store.client(ctx.tracking_uri)
    (run,) = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, "tr", trial="t-sys")
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} \
        <= system
    history = c.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and all(m.value >= 0 for m in history)


def test_the_system_monitor_starts_one_interval_into_the_trial(monkeypatch):
    """A trial shorter than the sampling interval (no sample either way) never starts
    MLflow's monitor; a longer one starts it, and it is stopped when the trial ends."""
    import time

    from mlflow.system_metrics import system_metrics_monitor as smm

    events = []

    class Spy:
        def __init__(self, run_id, **kwargs):
            events.append(("new", kwargs["sampling_interval"], kwargs["resume_logging"]))

        def start(self):
            events.append("start")

        def finish(self):
            events.append("finish")

    monkeypatch.setattr(smm, "SystemMetricsMonitor", Spy)
    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "0.5")
    with tracking.system_metrics("r", "sqlite:///x.db", resume=False):
        time.sleep(0.05)
    assert events == []
    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "0.02")
    with tracking.system_metrics("r", "sqlite:///x.db", resume=False):
        time.sleep(0.3)
    assert events == [("new", 0.02, False), "start", "finish"]


def _seed_runs(ctx, status=None):
    c = store.client(ctx.tracking_uri)
    return tracking.find_runs(c, ctx.experiment_id, schema.KIND_SEED, "tr", status=status)


def test_trial_seeds_equal_standalone_runs_and_report_means(ctx):
    reports = Reports()
    final = TrialRun(ctx, {}, "t1", reports).run()
    assert [r["epoch"] for r in reports[:-1]] == [0, 1, 2] and reports[-1]["final"]
    alone = standalone(ctx, batched=True)
    assert final["val_accuracy"] == pytest.approx(sum(a["val_accuracy"] for a in alone) / 3)
    for epoch in range(3):  # per-epoch report = mean of the standalone histories
        mean = sum(a["history"][epoch]["val_loss"] for a in alone) / 3
        assert reports[epoch]["val_loss"] == pytest.approx(mean, abs=1e-12)
    assert len(_seed_runs(ctx, "FINISHED")) == 3
    one_by_one = standalone(ctx)  # float32 and two threads: equal to rounding
    for r in _seed_runs(ctx, "FINISHED"):
        mine = one_by_one[int(r.data.tags[schema.TAG_SEED])]
        assert r.data.metrics["val_accuracy"] == pytest.approx(mine["val_accuracy"], abs=0.01)


def test_finished_seeds_are_not_trained_again(ctx, monkeypatch):
    TrialRun(ctx, {}, "t1", Reports()).run()
    calls = count_training(ctx, monkeypatch)
    reports = Reports()
    TrialRun(ctx, {}, "t1", reports).run()
    assert calls == [] and len(reports) == 1  # only the final report
    assert len(_seed_runs(ctx)) == 3


def test_stale_running_seed_run_is_closed_before_retraining(ctx):
    c = store.client(ctx.tracking_uri)
    cfg = parse_spec(DOC).run_config({})
    run_id, _, first = tracking.open_trial_run(c, ctx.experiment_id, "tr", ctx.sweep_run_id, "t1",
                                        cfg, {})
    assert first
    stale = tracking.start_seed_run(c, ctx.experiment_id, "tr", "t1", run_id, 1, cfg)
    TrialRun(ctx, {}, "t1", Reports()).run()
    assert c.get_run(stale).info.status == "FAILED"
    assert len(_seed_runs(ctx, "FINISHED")) == 3


def test_nonfinite_loss_fails_the_trial_once_and_retries_stop_early(ctx, monkeypatch):
    real = trial_mod.train_together

    def explode(cfg, seeds, data, callbacks=(), state=None, on_round=None):
        def on_round_then_nan(r):
            on_round(r)
            raise NonFiniteLossError(r + 1, float("nan"), seed=1)
        return real(cfg, seeds, data, callbacks, state, on_round_then_nan)

    monkeypatch.setattr(trial_mod, "train_together", explode)
    reports = Reports()
    with pytest.raises(TrialFailed, match="non-finite"):
        TrialRun(ctx, {}, "t1", reports).run()
    assert [r["epoch"] for r in reports] == [0]  # epoch 0 was reported before the NaN
    assert not any(r.get("final") for r in reports)
    failed = _seed_runs(ctx, "FAILED")
    assert any(r.data.tags[schema.TAG_STATUS_REASON].startswith("non-finite") for r in failed)
    c = store.client(ctx.tracking_uri)
    (trial_run,) = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, "tr")
    assert trial_run.info.status == "FAILED"
    assert "non-finite" in trial_run.data.tags[schema.TAG_STATUS_REASON]
    count_training(ctx, monkeypatch, fail=True)
    with pytest.raises(TrialFailed, match="non-finite"):  # the retry fails at once
        TrialRun(ctx, {}, "t1", reports).run()


def test_a_crashing_seed_fails_the_trial_and_its_runs(ctx, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(trial_mod, "train_together", crash)
    with pytest.raises(TrialFailed, match="boom"):  # Ray retries it (max_failures)
        TrialRun(ctx, {}, "t1", Reports()).run()
    c = store.client(ctx.tracking_uri)
    (trial_run,) = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, "tr")
    assert trial_run.info.status == "FAILED"
    assert "boom" in trial_run.data.tags[schema.TAG_STATUS_REASON]
    seeds = _seed_runs(ctx)
    assert seeds and all(r.info.status == "FAILED" for r in seeds)
    assert any("RuntimeError: boom" in r.data.tags[schema.TAG_STATUS_REASON] for r in seeds)


def _strip_times(summary):
    out = {k: v for k, v in summary.items() if k != "train_seconds"}
    out["history"] = [{k: v for k, v in r.items() if k != "seconds"} for r in summary["history"]]
    return out


@pytest.mark.parametrize(("method", "at"), [
    ("smartmixed", 1),  # phase 1
    ("smartmixed", 3),  # last phase-1 epoch: the resumed run freezes, then phase 2
    ("smartmixed", 4),  # phase 2
    ("gated", 2),
])
def test_a_seed_continues_bit_for_bit_from_a_snapshot(method, at):
    cfg = RunConfig(dataset="digits", arch="16", method=method, epochs=6, transition_epoch=4,
                    device="cpu")
    data = load_data(cfg)
    (alone,) = (o.summary for o in train_together(cfg, [5], data))
    state, snaps = RunState(), []

    def snap(r):
        if r == at:
            snaps.append(state.snapshot())

    (tracked,) = (o.summary for o in train_together(cfg, [5], data, state=state, on_round=snap))
    buf = io.BytesIO()
    torch.save(snaps[0], buf)  # what a checkpoint holds: plain data, tensors
    buf.seek(0)
    restored = RunState.restore(torch.load(buf, weights_only=True))
    assert restored.round == at
    seen = []

    class Epochs:
        def on_epoch_end(self, epoch, record, model):
            seen.append(epoch)

    (resumed,) = (o.summary for o in train_together(cfg, [5], data, [[Epochs()]],
                                                     state=restored))
    assert seen == list(range(at + 1, 6))  # only the epochs after the snapshot were trained
    assert _strip_times(tracked) == _strip_times(alone)
    assert _strip_times(resumed) == _strip_times(alone)


def test_trial_continues_from_its_checkpoint_after_a_crash(ctx, monkeypatch):
    """A trial that dies after reporting its epoch-1 checkpoint, retried with that checkpoint:
    the seeds continue at epoch 2 in their own seed runs, and every number equals an
    uninterrupted trial's."""
    monkeypatch.setenv(checkpoints.CHECKPOINT_ENV, "0")  # a checkpoint every round
    first = Reports(crash_after_checkpoint_at=1)
    with pytest.raises(_Crash):
        TrialRun(ctx, {}, "t1", first).run()
    assert [r["epoch"] for r in first] == [0, 1] and first.checkpoints[-1]["epoch"] == 1
    running = _seed_runs(ctx, "RUNNING")
    assert len(running) == 3  # what a dead worker leaves behind
    calls = count_training(ctx, monkeypatch)
    second = Reports()
    final = TrialRun(ctx, {}, "t1", second, resume=first.checkpoints[-1]).run()
    assert calls == [1]  # the seeds continued together after epoch 1
    assert [r["epoch"] for r in second[:-1]] == [2] and second[-1]["final"]
    seeds = _seed_runs(ctx)
    assert {r.info.run_id for r in seeds} == {r.info.run_id for r in running}  # same runs
    assert all(r.info.status == "FINISHED" for r in seeds)
    assert all(r.data.tags[schema.TAG_RESUMED] == "1" for r in seeds)
    c = store.client(ctx.tracking_uri)
    for r in seeds:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, LOSS_CURVE)]
        assert sorted(steps) == [0, 1, 2]
    (trial_run,) = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, "tr")
    assert trial_run.data.tags[schema.TAG_RESUMED] == "1"
    steps = [m.step for m in c.get_metric_history(trial_run.info.run_id, VAL_CURVE)]
    assert sorted(steps) == [0, 1, 2]  # per-epoch seed means logged once each
    alone = standalone(ctx, batched=True)
    assert final["val_accuracy"] == pytest.approx(sum(a["val_accuracy"] for a in alone) / 3,
                                                  abs=1e-12)
    for r in seeds:
        mine = alone[int(r.data.tags[schema.TAG_SEED])]
        assert r.data.metrics["test_accuracy"] == mine["test_accuracy"]


def test_a_checkpoint_without_every_unfinished_seed_is_not_used(ctx, monkeypatch):
    monkeypatch.setenv(checkpoints.CHECKPOINT_ENV, "0")
    first = Reports(crash_after_checkpoint_at=0)
    with pytest.raises(_Crash):
        TrialRun(ctx, {}, "t1", first).run()
    ckpt = first.checkpoints[-1]
    del ckpt["seeds"][2]
    second = Reports()
    TrialRun(ctx, {}, "t1", second, resume=ckpt).run()
    assert [r["epoch"] for r in second[:-1]] == [0, 1, 2]  # trained again from epoch 0
    assert len(_seed_runs(ctx, "FINISHED")) == 3
    assert all(schema.TAG_RESUMED not in r.data.tags for r in _seed_runs(ctx, "FINISHED"))
    assert len(_seed_runs(ctx, "FAILED")) == 3  # the crashed attempt's runs: superseded


class _Flaky:
    """Stands in for an MlflowClient whose server is down for the first ``down`` calls."""

    def __init__(self, down: int, error: Exception | None = None):
        self.down, self.calls, self.error = down, 0, error

    def get_run(self, run_id):
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.down:
            try:
                raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
            except requests.exceptions.ConnectionError as exc:
                raise MlflowException("API request failed: Max retries exceeded") from exc
        return run_id


def test_tracking_calls_ride_out_a_server_outage(monkeypatch, capsys):
    sleeps = []
    monkeypatch.setattr(tracking.time, "sleep", sleeps.append)
    flaky = _Flaky(down=5)
    c = store.RetryingClient(flaky, "http://mlflow:5000", patience=600)
    assert c.get_run("r1") == "r1" and flaky.calls == 6
    assert sleeps == [1, 2, 4, 8, store.MAX_RETRY_WAIT]
    err = capsys.readouterr().err
    assert "unreachable" in err and "reachable again" in err and store.OUTAGE_ENV in err
    # other errors are not retried
    bad = _Flaky(0, MlflowException("RESOURCE_DOES_NOT_EXIST: run r2"))
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        store.RetryingClient(bad, "http://mlflow:5000", patience=600).get_run("r2")
    assert bad.calls == 1


def test_tracking_calls_give_up_after_the_outage_limit(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(tracking.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(tracking.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    flaky = _Flaky(down=10**6)
    with pytest.raises(MlflowException, match="Max retries"):
        store.RetryingClient(flaky, "http://mlflow:5000", patience=60).get_run("r1")
    assert clock[0] == 60  # waited exactly the limit: 1+2+4+8+15+15+15 (cut to 60)


def test_client_for_a_server_retries_and_respects_the_settings(monkeypatch):
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.setenv(key, "")  # recorded, so what client() sets is undone afterwards
        monkeypatch.delenv(key)
    monkeypatch.setenv(store.OUTAGE_ENV, "90")
    c = store.client("http://127.0.0.1:5000")
    assert isinstance(c, store.RetryingClient) and c._patience == 90
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    monkeypatch.setenv(store.OUTAGE_ENV, "0")
    assert not isinstance(store.client("http://127.0.0.1:5000"), store.RetryingClient)
    assert not isinstance(store.client("sqlite:////tmp/x.db"), store.RetryingClient)
