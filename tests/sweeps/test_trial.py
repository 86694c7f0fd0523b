"""A trial outside Ray: lockstep seeds equal standalone runs, seed-level resume, NaN handling."""

from __future__ import annotations

import pytest

from smartmixed_core.runner import load_data, train_seed
from smartmixed_core.training import NonFiniteLossError
from sweeps import schema, tracking
from sweeps import trial as trial_mod
from sweeps.spec import parse_spec
from sweeps.trial import SweepContext, TrialFailed, TrialRun, Turns

DOC = {"name": "tr", "seeds": [0, 1, 2],
       "fixed": {"epochs": 3, "transition_epoch": 1, "architecture": "16", "device": "cpu"}}


@pytest.fixture
def ctx(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(c, "e", uri)
    sweep = tracking.create_sweep_run(c, exp, "tr", {"name": "tr"}, "name: tr\n")
    return SweepContext(parse_spec(DOC).model_dump(mode="json"), uri, exp, sweep)


def _seed_runs(ctx, status=None):
    c = tracking.client(ctx.tracking_uri)
    return tracking.find_runs(c, ctx.experiment_id, schema.KIND_SEED, "tr", status=status)


def test_lockstep_seeds_equal_standalone_runs_and_report_means(ctx):
    reports = []
    final = TrialRun(ctx, {}, "t1", reports.append).run()
    assert [r["epoch"] for r in reports[:-1]] == [0, 1, 2] and reports[-1]["final"]
    cfg = parse_spec(DOC).run_config({})
    data = load_data(cfg)
    alone = [train_seed(cfg, s, data).summary for s in (0, 1, 2)]
    assert final["val_accuracy"] == pytest.approx(sum(a["val_accuracy"] for a in alone) / 3)
    for epoch in range(3):  # per-epoch report = mean of the standalone histories
        mean = sum(a["history"][epoch]["val_loss"] for a in alone) / 3
        assert reports[epoch]["val_loss"] == pytest.approx(mean, abs=1e-12)
    assert len(_seed_runs(ctx, "FINISHED")) == 3


def test_finished_seeds_are_not_trained_again(ctx, monkeypatch):
    TrialRun(ctx, {}, "t1", lambda m: None).run()
    calls = []
    real = trial_mod.train_seed
    monkeypatch.setattr(trial_mod, "train_seed", lambda *a, **k: calls.append(a) or real(*a, **k))
    reports = []
    TrialRun(ctx, {}, "t1", reports.append).run()
    assert calls == [] and len(reports) == 1  # only the final report
    assert len(_seed_runs(ctx)) == 3


def test_stale_running_seed_run_is_closed_before_retraining(ctx):
    c = tracking.client(ctx.tracking_uri)
    cfg = parse_spec(DOC).run_config({})
    run_id, _ = tracking.open_trial_run(c, ctx.experiment_id, "tr", ctx.sweep_run_id, "t1",
                                        cfg, {})
    stale = tracking.start_seed_run(c, ctx.experiment_id, "tr", "t1", run_id, 1, cfg)
    TrialRun(ctx, {}, "t1", lambda m: None).run()
    assert c.get_run(stale).info.status == "FAILED"
    assert len(_seed_runs(ctx, "FINISHED")) == 3


def test_nonfinite_loss_fails_the_trial_once_and_retries_stop_early(ctx, monkeypatch):
    real = trial_mod.train_seed

    def explode(cfg, seed, data, callbacks=()):
        if seed == 1:
            raise NonFiniteLossError(0, float("nan"))
        return real(cfg, seed, data, callbacks)

    monkeypatch.setattr(trial_mod, "train_seed", explode)
    reports = []
    with pytest.raises(TrialFailed, match="non-finite"):
        TrialRun(ctx, {}, "t1", reports.append).run()
    assert all(r["val_accuracy"] == r["val_accuracy"] for r in reports)  # never NaN
    assert not any(r.get("final") for r in reports)
    failed = _seed_runs(ctx, "FAILED")
    assert any(r.data.tags[schema.TAG_STATUS_REASON].startswith("non-finite") for r in failed)
    c = tracking.client(ctx.tracking_uri)
    (trial_run,) = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, "tr")
    assert trial_run.info.status == "FAILED"
    assert "non-finite" in trial_run.data.tags[schema.TAG_STATUS_REASON]
    monkeypatch.setattr(trial_mod, "train_seed", lambda *a, **k: pytest.fail("retrained"))
    with pytest.raises(TrialFailed, match="non-finite"):  # the retry fails at once
        TrialRun(ctx, {}, "t1", reports.append).run()


def test_turns_rotate_and_skip_members_that_left():
    turns = Turns(["a", "b", "r"])
    turns.wait("a")
    turns.pass_on("a")
    turns.wait("b")
    turns.leave("b")
    turns.wait("r")
    turns.pass_on("r")
    turns.wait("a")
    assert turns.members() == ["a", "r"]
