"""Selection consistency, depth trend, switching dynamics and the weight heatmap table."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import POOL, SELECTION, weight_value
from scipy.stats import chi2 as chi2_dist

from analysis import (
    depth_trend,
    group_weight_sums,
    metric_histories,
    run_slopes,
    selection_consistency,
    selection_summary,
    switching_dynamics,
    weight_groups,
)
from analysis.load import client_for
from analysis.weights import skip_note


def js_distance(p, q):
    """Hand formula: sqrt of the base-2 Jensen-Shannon divergence."""
    p, q = np.asarray(p), np.asarray(q)
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return np.sqrt((kl(p, m) + kl(q, m)) / 2)


def test_selection_summary(runs):
    s = selection_summary(runs)
    smart = s[s["architecture"] == "64-32"].set_index(["layer", "activation"])
    assert smart.loc[(1, "relu"), "mean"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert smart.loc[(1, "relu"), "std"] == pytest.approx(np.std([0.5, 0.5, 0.75], ddof=1))
    # 3 seeds: Student-t interval, mean ± t(0.975, 2) · s / √3 (t quantile 4.302653)
    half = 4.302652729911275 * np.std([0.5, 0.5, 0.75], ddof=1) / np.sqrt(3)
    assert (smart.loc[(1, "relu"), "ci_low"], smart.loc[(1, "relu"), "ci_high"]) == \
        pytest.approx((1.75 / 3 - half, 1.75 / 3 + half))
    assert (smart["ci_method"] == "student-t").all()
    assert smart.loc[(2, "selu"), "mean"] == 0.5 and "constant" in smart.loc[(2, "selu"), "note"]
    assert (smart["n_seeds"] == 3).all() and smart.loc[(2, "relu"), "relative_depth"] == 1.0
    one = s[s["architecture"] == "128-64"]
    assert (one["n_seeds"] == 1).all() and one["ci_low"].isna().all()
    assert set(s["method"]) == {"smartmixed"}  # fixed runs log no selection
    assert list(s.loc[s["layer"] == 1, "activation"].unique()) == list(POOL)  # registry order


def test_selection_consistency(runs):
    c = selection_consistency(runs).set_index(["architecture", "layer"])
    l1 = c.loc[("64-32", 1)]
    dists = [js_distance(p, q) for p, q in itertools.combinations(
        [SELECTION[("64-32", s)][0] for s in range(3)], 2)]
    assert l1["jsd_mean"] == pytest.approx(np.mean(dists))
    assert l1["jsd_max"] == pytest.approx(max(dists))
    # counts (32,16,16) (32,32,0) (48,16,0); expected 37.33/21.33/5.33 per seed
    assert l1["chi2"] == pytest.approx(4.5714286 + 8.0 + 32.0, rel=1e-6)
    assert l1["dof"] == 4 and l1["min_expected"] == pytest.approx(16 / 3)
    assert l1["p_value"] == pytest.approx(chi2_dist.sf(l1["chi2"], 4))
    l2 = c.loc[("64-32", 2)]  # counts (8,8,16) (8,8,16) (0,16,16)
    assert l2["chi2"] == pytest.approx(12.0) and l2["dof"] == 4
    assert l2["note"] == ""
    # Holm over the two tested layers (by hand: sorted p times 2, then 1, running max)
    p = sorted([l1["p_value"], l2["p_value"]])
    holm = [min(2 * p[0], 1), min(max(2 * p[0], p[1]), 1)]
    assert sorted([l1["p_holm"], l2["p_holm"]]) == pytest.approx(holm)
    assert np.isnan(c.loc[("128-64", 1), "p_holm"]) and not c.loc[("128-64", 1), "reject"]
    assert c.loc[("128-64", 1), "note"] == "one seed: nothing to compare"
    assert np.isnan(c.loc[("128-64", 1), "jsd_mean"])


def test_single_activation_layer_is_not_tested(runs):
    r = runs[(runs["architecture"] == "64-32") & (runs["method"] == "smartmixed")].copy()
    for a in POOL:
        r[f"selection/layer_1/{a}"] = 1.0 if a == "relu" else 0.0
    c = selection_consistency(r).set_index("layer")
    assert c.loc[1, "jsd_mean"] == 0 and np.isnan(c.loc[1, "chi2"])
    assert "single activation" in c.loc[1, "note"]


# run-level slopes by hand, (last - first) / (1 - 1/2) for two-layer nets, runs in the order
# 64-32 seeds 0, 1, 2 and 128-64 seed 0 (see SELECTION)
SLOPES = {"relu": [-0.5, -0.5, -1.5, -1.0], "elu": [0.0, -0.5, 0.5, 0.0],
          "selu": [0.5, 1.0, 1.0, 1.0]}


def test_run_slopes(runs):
    s = run_slopes(runs)
    assert len(s) == 4 * 3 and set(s["n_layers"]) == {2}
    for act, expected in SLOPES.items():
        got = s[s["activation"] == act].sort_values(["architecture", "seed"],
                                                    ascending=[False, True])
        assert got["slope"].tolist() == pytest.approx(expected)


def test_depth_trend_at_run_level(runs):
    import statsmodels.api as sm

    t = depth_trend(runs, n_resamples=500).set_index("activation")
    # reference: the intercept-only OLS of the run slopes (statsmodels) is the t-test
    p = {}
    for act, slopes in SLOPES.items():
        fit = sm.OLS(np.asarray(slopes), np.ones(4)).fit()
        assert t.loc[act, "mean_slope"] == pytest.approx(np.mean(slopes))
        assert t.loc[act, "t"] == pytest.approx(fit.tvalues[0])
        assert t.loc[act, "p_value"] == pytest.approx(fit.pvalues[0])
        low, high = fit.conf_int(0.05)[0]
        assert (t.loc[act, "slope_ci_low"], t.loc[act, "slope_ci_high"]) == pytest.approx(
            (low, high))
        p[act] = fit.pvalues[0]
    # Holm by hand over the three activations
    order = sorted(p, key=p.get)
    adj = np.minimum(np.maximum.accumulate([p[a] * (3 - i) for i, a in enumerate(order)]), 1)
    assert [t.loc[a, "p_holm"] for a in order] == pytest.approx(list(adj))
    assert t.loc["selu", "t"] == pytest.approx(7.0)  # mean 0.875, sd 0.25, n 4
    assert (t["n_runs"] == 4).all() and (t["n_one_layer_runs"] == 0).all()
    # descriptive pooled rho, as before: ranks by hand give 32 / sqrt(32 * 35)
    assert t.loc["selu", "rho"] == pytest.approx(32 / np.sqrt(32 * 35))
    assert t.loc["selu", "rho_ci_low"] <= t.loc["selu", "rho"] <= t.loc["selu", "rho_ci_high"]
    assert t.loc["selu", "mean_first_layer"] == pytest.approx(0.0625)
    assert t.loc["selu", "mean_last_layer"] == pytest.approx(0.5)


def test_one_layer_net_is_not_first_and_last(runs):
    """A one-hidden-layer net has no depth: it is left out of slopes and layer means."""
    one = runs[(runs["architecture"] == "128-64")].copy()
    one["architecture"], one["run_id"] = "16", "one-layer-run"
    one = one.drop(columns=[c for c in one.columns if c.startswith("selection/layer_2")])
    one["selection/layer_1/selu"] = 1.0
    both = pd.concat([runs, one], ignore_index=True)
    t = depth_trend(both, n_resamples=200).set_index("activation")
    base = depth_trend(runs, n_resamples=200).set_index("activation")
    assert (t["n_one_layer_runs"] == 1).all() and (t["n_runs"] == 4).all()
    for col in ("mean_slope", "p_value", "mean_first_layer", "mean_last_layer", "rho"):
        assert t[col].tolist() == pytest.approx(base[col].tolist())


def test_depth_trend_degenerate(runs):
    one_layer = runs[runs["architecture"] == "64-32"].drop(
        columns=[c for c in runs.columns if c.startswith("selection/layer_2")])
    t = depth_trend(one_layer)
    assert t["mean_slope"].isna().all() and t["p_value"].isna().all()
    assert (t["note"] == "no run with >= 2 selective layers").all()
    assert (t["n_one_layer_runs"] == 3).all()


def test_switching_dynamics(store, runs):
    keys = ["switched/layer_1", "switched/layer_2"]
    hist = metric_histories(client_for(store.uri), list(runs["run_id"]), keys)
    d = switching_dynamics(hist, runs).set_index(["layer", "epoch"])
    assert d.loc[1, "mean"].tolist() == pytest.approx([0.5, 0.2, 0.0])
    assert d.loc[1, "std"].tolist() == pytest.approx([0.1, 0.1, 0.0])
    assert d.loc[2, "mean"].tolist() == pytest.approx([0.2, 0.0, 0.0])
    assert (d["n_seeds"] == 3).all() and set(d["architecture"]) == {"64-32"}
    mixed = metric_histories(client_for(store.uri), list(runs["run_id"]),
                             [*keys, "test_accuracy"])
    assert "test_accuracy" in set(mixed["key"])  # other keys are left out, not an error
    pd.testing.assert_frame_equal(switching_dynamics(mixed, runs), switching_dynamics(hist, runs))
    empty = metric_histories(client_for(store.uri), list(runs["run_id"]), [])
    assert switching_dynamics(empty, runs).empty  # no histories at all (a fixed-only sweep)


def test_metric_histories_fetch_only_what_runs_have(store, runs):
    """The SQL path, the bulk store call and the run-by-run path (a tracking server) give the
    same frame;
    with ``runs`` a run is asked only for the keys it logged (3 of the 8 runs have switched/*;
    every call the fallback makes is for a key its run has)."""
    keys = ["switched/layer_1", "switched/layer_2"]
    client = client_for(store.uri)
    bulk = metric_histories(client, list(runs["run_id"]), keys)
    assert len(bulk) == 2 * 3 * 3  # 2 layers x 3 seeds x 3 epochs
    assert metric_histories(client, list(runs["run_id"]), keys, runs=runs).equals(bulk)

    class PerRun:  # what a client of a tracking server offers: no bulk store call
        def __init__(self):
            self.calls = []

        def get_metric_history(self, run_id, key):
            self.calls.append((run_id, key))
            return client.get_metric_history(run_id, key)

    slow = PerRun()
    got = metric_histories(slow, list(runs["run_id"]), keys, runs=runs)
    pd.testing.assert_frame_equal(got, bulk)
    assert len(slow.calls) == 6 and {r for r, _ in slow.calls} == set(bulk["run_id"])

    class BulkOnly:  # a store with MLflow's bulk call but no SQL engine to select from
        def __init__(self):
            self.get_metric_history_bulk = client._tracking_client.store.get_metric_history_bulk

    class Client:
        _tracking_client = type("T", (), {"store": BulkOnly()})()

    got = metric_histories(Client(), list(runs["run_id"]), keys, runs=runs)
    pd.testing.assert_frame_equal(got, bulk)


@pytest.mark.parametrize("seeds_dim", [False, True], ids=["format-1", "format-2"])
def test_group_weight_sums_by_hand(seeds_dim):
    """Checkpoints of format 2 carry a leading seeds dimension of size 1; format 1 none."""
    import torch

    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # rows = targets, columns = sources
    sd = {"linears.0.weight": torch.zeros(2, 5), "linears.1.weight": w}
    if seeds_dim:
        sd = {k: v[None] for k, v in sd.items()}
    got = group_weight_sums(sd, {"layer_1": ["relu", "elu"], "layer_2": ["elu", "relu"]})
    got = got.set_index(["source", "target"])["sum"].to_dict()
    assert got == {("relu", "elu"): 1, ("elu", "elu"): 2, ("relu", "relu"): 3,
                   ("elu", "relu"): 4}


def test_skip_note_names_every_reason_with_a_few_ids():
    skipped = [("fewer than two selective hidden layers", f"{i:08d}abcdef") for i in range(7)]
    skipped.append(("no checkpoint.pt artifact", "ffffffff0000"))  # after the first five
    assert skip_note(skipped) == (
        "8 run(s) skipped: fewer than two selective hidden layers (7: 00000000, 00000001, "
        "00000002, ...); no checkpoint.pt artifact (1: ffffffff)")
    assert skip_note([]) == ""


def test_weight_groups_from_checkpoints(store, runs):
    ids = list(runs.loc[runs[[c for c in runs if c.startswith("selection/")]].notna().any(
        axis=1), "run_id"])
    table, note = weight_groups(client_for(store.uri), ids)
    assert note.startswith("2 run(s) skipped: no checkpoint.pt artifact (2: ")  # seed 2, 128-64
    t = table.set_index(["source", "target"])
    l1 = {0: dict(relu=32, elu=16, selu=16), 1: dict(relu=32, elu=32, selu=0)}
    l2 = dict(relu=8, elu=8, selu=16)
    for src, tgt in itertools.product(POOL, POOL):
        n = sum(l1[s][src] * l2[tgt] for s in (0, 1))
        assert t.loc[(src, tgt), "n_connections"] == n
        assert t.loc[(src, tgt), "mean_weight"] == pytest.approx(weight_value(src, tgt))
        assert t.loc[(src, tgt), "mean_abs_weight"] == pytest.approx(weight_value(src, tgt))
    assert t.loc[("selu", "relu"), "n_runs"] == 1 and t.loc[("relu", "relu"), "n_runs"] == 2


def test_cluster_bootstrap_matches_concatenated_copies():
    """The weighted-rank bootstrap gives spearmanr's rho of the concatenated resample (ties in
    depth and in fraction included), resample by resample: the same CI as the slow way."""
    from scipy import stats

    from analysis.selection import _cluster_bootstrap

    rng = np.random.default_rng(3)
    rows = []
    for r in range(12):
        n_layers = int(rng.integers(2, 5))
        for layer in range(1, n_layers + 1):
            rows.append({"run_id": f"r{r:02d}", "relative_depth": layer / n_layers,
                         "fraction": float(rng.choice([0.0, 0.25, 0.5, rng.random()]))})
    g = pd.DataFrame(rows)
    groups = [(d["relative_depth"].to_numpy(), d["fraction"].to_numpy())
              for _, d in g.groupby("run_id")]
    ref_rng, rhos = np.random.default_rng(7), []
    for _ in range(200):
        pick = ref_rng.integers(len(groups), size=len(groups))
        x = np.concatenate([groups[i][0] for i in pick])
        y = np.concatenate([groups[i][1] for i in pick])
        if np.ptp(x) and np.ptp(y):
            rhos.append(stats.spearmanr(x, y).statistic)
    expected = (np.percentile(rhos, 2.5), np.percentile(rhos, 97.5))
    got = _cluster_bootstrap(g, 200, np.random.default_rng(7))
    assert got == pytest.approx(expected, abs=1e-12)
