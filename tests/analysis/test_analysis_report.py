"""Report pieces at scale and by hand: labels, importances, heatmap scale, page size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.params import config_labels, param_importances, param_table
from analysis.rank import architecture_order
from analysis.report import MAX_HTML_ROWS, Report, readable_times, render_html


def _runs(n_lr: int = 4, n_bs: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Configurations of two methods where lr decides val accuracy and batch size does not."""
    rows, configs = [], []
    for cid, (m, lr, bs) in enumerate((m, lr, bs) for m in ("fixed:relu", "smartmixed")
                                      for lr in range(n_lr) for bs in range(n_bs)):
        params = {"architecture": "64-32", "method": m, "lr": str(10.0 ** -(lr + 1)),
                  "batch_size": str(32 * 2 ** bs),
                  "temperature": "0.3" if m == "smartmixed" else ""}
        rows.append({"config_id": cid, **params})
        configs.append({"config_id": cid, "method": m, "val_accuracy_mean": 0.5 + 0.1 * lr})
    return pd.DataFrame(rows), pd.DataFrame(configs)


def test_config_labels_carry_parameters():
    runs, _ = _runs(2, 1)
    labels = config_labels(runs)
    assert labels[0] == "fixed:relu · 64-32 · lr=0.1"
    assert labels[3] == "smartmixed · 64-32 · lr=0.01"  # temperature constant: not a label
    runs.loc[runs["config_id"] == 0, "lr"] = "0.0007836881129881295"
    assert config_labels(runs)[0] == "fixed:relu · 64-32 · lr=0.0007837"  # 4 digits


def test_importances_find_the_parameter_that_matters():
    runs, configs = _runs()
    table = param_table(configs, runs)
    assert list(table.columns) == ["method", "config_id", "lr", "batch_size",
                                   "val_accuracy_mean"]
    imp = param_importances(configs, runs).set_index(["method", "param"])["importance"]
    for m in ("fixed:relu", "smartmixed"):
        assert imp[(m, "lr")] > 0.9 and imp[(m, "lr")] + imp[(m, "batch_size")] == \
            pytest.approx(1.0)
    fig = plots_params_figures(table, imp.reset_index())
    assert all(f.axes for f in fig)


def plots_params_figures(table, imp):
    from analysis.plots_params import plot_parallel_coordinates, plot_param_importances

    return plot_param_importances(imp.assign(n_configs=12)), plot_parallel_coordinates(table)


def test_architectures_sorted_as_numbers():
    assert architecture_order(["128-64", "64-32", "32", "512", "64-32-16"]) == \
        ["32", "512", "64-32", "128-64", "64-32-16"]


def test_weight_heatmap_scale_ignores_sparse_cells():
    """A cell from 6 connections among thousands is grey, shows n and does not set the colour
    limits; every other cell shows its n."""
    g = pd.DataFrame({"source": ["relu", "relu", "elu", "elu"],
                      "target": ["relu", "elu", "relu", "elu"],
                      "mean_weight": [0.1, -0.2, 5.0, 0.05],
                      "mean_abs_weight": [0.1, 0.2, 5.0, 0.05],
                      "n_connections": [4000, 3000, 6, 2000], "n_runs": [2] * 4})
    fig = plots.plot_weight_heatmap(g)
    im = fig.axes[0].images[0]
    assert im.get_clim() == pytest.approx((-0.2, 0.2))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "5\nn=6\n(too few)" in texts and "0.1\nn=4,000" in texts
    assert np.ma.getmaskarray(im.get_array()).sum() == 1


def test_rank_distribution_ticks_are_whole_blocks():
    dist = pd.DataFrame({1: [1.5, 0.5], 2: [0.5, 1.5]}, index=["a", "b"])
    from matplotlib.colors import to_rgba

    from smartmixed_core.activations import ACTIVATIONS

    ax = plots.plot_rank_distribution(dist).axes[0]
    assert all(float(t).is_integer() for t in ax.get_yticks())
    rank_colours = {tuple(p.get_facecolor()) for p in ax.patches}
    method_colours = {to_rgba(plots.method_color(m))
                      for m in ("smartmixed", *(f"fixed:{a}" for a in ACTIVATIONS))}
    assert len(rank_colours) == 2 and not rank_colours & method_colours
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= ax.bbox.x1  # outside the axes, not on bars


def test_page_caps_long_tables_and_links_the_csv():
    rep = Report("exp", None, "sqlite:///x.db")
    big = pd.DataFrame({"run_id": [f"r{i}" for i in range(10_080)],
                        "start_time": np.full(10_080, 1_765_000_000_000)})
    rep.tables = {"runs": readable_times(big), "best_configs": readable_times(big.head(126))}
    page = render_html(rep, {})
    assert page.count("<tr>") == MAX_HTML_ROWS + 126  # body rows (header rows carry a style)
    assert "First 50 of 10,080 rows; all in <a href='runs.csv'>runs.csv</a>" in page
    assert "2025-12-06 05:46:40 UTC" in page and "1765000000000" not in page


def test_page_leaves_out_sections_of_methods_the_sweep_did_not_run():
    rep = Report("exp", None, "sqlite:///x.db")
    rep.tables = {"perlayer": pd.DataFrame(columns=["architecture", "layer_1"]),
                  "shapes": pd.DataFrame({"layer": [1], "param": ["beta"], "mean": [1.2]}),
                  "rankings": pd.DataFrame(columns=["architecture"])}
    page = render_html(rep, {})
    assert "id='perlayer'" not in page  # no perlayer runs: no "empty" section about them
    assert "id='shapes'" in page and "beta" in page
    assert "id='rankings'" in page  # an empty general table still says so
    assert page.count("<em>empty</em>") == 1


def test_importance_panels_show_only_the_params_each_method_searched():
    from analysis.plots_params import plot_param_importances

    imp = pd.DataFrame({"method": ["fixed:relu", "smartmixed", "smartmixed"],
                        "param": ["lr", "lr", "temperature"], "importance": [1.0, 0.7, 0.3],
                        "n_configs": [4, 4, 4]})
    fig = plot_param_importances(imp)
    labels = {ax.get_title(): [t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes
              if ax.get_title()}
    assert labels == {"fixed:relu (4 configs)": ["lr"],
                      "smartmixed (4 configs)": ["lr", "temperature"]}
