"""Loading seed runs: FINISHED only, newest duplicate wins, sweep filter, clear errors."""

from __future__ import annotations

import pytest
from conftest import ACC, EXP, Store

from analysis import load_runs
from smartmixed_core.errors import ConfigError


def test_one_row_per_configuration_and_seed(runs):
    assert len(runs) == sum(len(v) for v in ACC.values()) == 23
    assert not runs.duplicated(["architecture", "method", "seed"]).any()
    assert set(runs["status"]) == {"FINISHED"}
    for (arch, method), by_seed in ACC.items():
        got = runs[(runs["architecture"] == arch) & (runs["method"] == method)]
        assert dict(zip(got["seed"], got["test_accuracy"], strict=True)) == pytest.approx(by_seed)


def test_duplicates_and_unfinished_are_counted(runs):
    # 23 kept + an older FINISHED duplicate + a FAILED retry + a RUNNING run
    assert runs.attrs["n_seed_runs"] == 26
    assert runs.attrs["n_not_finished"] == 2
    assert runs.attrs["n_duplicates"] == 1
    seed0 = runs[(runs["architecture"] == "64-32") & (runs["method"] == "smartmixed")
                 & (runs["seed"] == 0)]
    assert seed0["test_accuracy"].item() == 0.90  # not 0.50 (older) nor 0.10 (FAILED)
    assert seed0["selection/layer_1/relu"].item() == 0.5


def test_method_absent_on_one_architecture(runs):
    assert set(runs.loc[runs["architecture"] == "32", "method"]) == {"smartmixed", "fixed:relu"}


def test_params_and_config_ids(runs):
    assert runs["config_id"].nunique() == 8
    assert runs.groupby("config_id")[["architecture", "method"]].nunique().max().max() == 1
    assert set(runs.loc[runs["method"] == "smartmixed", "temperature"]) == {"0.3"}
    assert set(runs.loc[runs["method"] != "smartmixed", "temperature"]) == {""}
    assert runs["seed"].dtype.kind == "i"


def test_trial_runs_and_other_sweeps_are_excluded(store, runs):
    assert set(runs["sweep"]) == {"s1"}
    everything = load_runs(EXP, tracking_uri=store.uri)
    assert len(everything) == 24
    assert everything.loc[everything["sweep"] == "s2", "method"].tolist() == ["fixed:tanh"]


def test_unknown_experiment(store):
    with pytest.raises(ConfigError, match="no experiment named 'nope'") as err:
        load_runs("nope", tracking_uri=store.uri)
    assert err.value.field == "experiment" and "exp" in err.value.message


def test_unknown_sweep_lists_the_sweeps(store):
    with pytest.raises(ConfigError, match="no sweep named 'nope'") as err:
        load_runs(EXP, sweep="nope", tracking_uri=store.uri)
    assert err.value.field == "sweep" and err.value.message.endswith("found: s1, s2")


def test_no_finished_runs(tmp_path):
    st = Store(tmp_path)
    st.run("seed", "s", params={"architecture": "8", "method": "smartmixed"},
           tags={"smartmixed.seed": "0"}, status="FAILED")
    with pytest.raises(ConfigError, match="no FINISHED seed runs") as err:
        load_runs("exp", tracking_uri=st.uri)
    assert err.value.field == "experiment"


@pytest.mark.parametrize("uri", ["sqlite:////nonexistent/dir/mlflow.db", "ftp://host/x",
                                 "./mlruns"])
def test_unreadable_uri(uri, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_runs(EXP, tracking_uri=uri)
    assert err.value.field == "tracking_uri"


def test_missing_sqlite_file_is_not_created(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(ConfigError, match="no SQLite tracking store"):
        load_runs(EXP, tracking_uri=f"sqlite:///{path}")
    assert not path.exists()


def test_corrupt_sqlite_file(tmp_path):
    path = tmp_path / "bad.db"
    path.write_text("not a database")
    with pytest.raises(ConfigError, match="cannot read") as err:
        load_runs(EXP, tracking_uri=f"sqlite:///{path}")
    assert err.value.field == "tracking_uri"


def test_a_report_checks_the_store_once(store, monkeypatch):
    """build_report reads runs, trials and histories through one checked client: the store is
    probed once (on a server, one /health request), not once per read."""
    from analysis import build_report
    from sweeps import store as store_module

    probes = []
    real = store_module.check_tracking
    monkeypatch.setattr(store_module, "check_tracking",
                        lambda uri, **kw: probes.append(uri) or real(uri, **kw))
    rep = build_report(EXP, "s1", store.uri, weights=False)
    assert probes == [store.uri] and len(rep.tables["runs"]) == 23
