"""Analysis of SmartMixed sweeps read back from MLflow (never imports Ray).

One module per stage; every function returns pandas DataFrames or matplotlib Figures, so the
package works from a notebook as well as through ``smartmixed analyze``::

    from analysis import load_runs, aggregate_seeds, rank_methods, mean_reciprocal_rank
    runs = load_runs("smartmixed-quick", tracking_uri="sqlite:///mlflow.db")
    rankings = rank_methods(aggregate_seeds(runs))
    mean_reciprocal_rank(rankings)

Importing it has no side effects and costs nothing: the names below load their module (and
pandas, SciPy, matplotlib, MLflow) on first use, so ``smartmixed`` commands that do not
analyse never pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.aggregate import aggregate_seeds
    from analysis.load import CONFIG_PARAMS, DEFAULT_TRACKING_URI, load_runs, metric_histories
    from analysis.plots import (
        ACTIVATION_COLORS,
        plot_accuracy,
        plot_cd_diagram,
        plot_depth_trend,
        plot_mrr,
        plot_rank_distribution,
        plot_selection,
        plot_switching,
        plot_weight_heatmap,
    )
    from analysis.rank import (
        first_rank_counts,
        mean_reciprocal_rank,
        method_scores,
        rank_distribution,
        rank_methods,
        top_k_table,
    )
    from analysis.report import Report, build_report, headline, log_report, write_report
    from analysis.robust import (
        interval_estimates,
        performance_profile,
        probability_of_improvement,
        seed_scores,
    )
    from analysis.selection import (
        depth_trend,
        run_slopes,
        selection_consistency,
        selection_long,
        selection_summary,
        switching_dynamics,
    )
    from analysis.significance import (
        ASSUMPTIONS,
        average_ranks,
        control_holm,
        critical_difference,
        friedman_test,
        nemenyi_test,
        wilcoxon_holm,
    )
    from analysis.weights import group_weight_sums, weight_groups

_EXPORTS = {
    "analysis.aggregate": ("aggregate_seeds",),
    "analysis.load": ("CONFIG_PARAMS", "DEFAULT_TRACKING_URI", "load_runs", "metric_histories"),
    "analysis.plots": ("ACTIVATION_COLORS", "plot_accuracy", "plot_cd_diagram",
                       "plot_depth_trend", "plot_mrr", "plot_rank_distribution",
                       "plot_selection", "plot_switching", "plot_weight_heatmap"),
    "analysis.rank": ("first_rank_counts", "mean_reciprocal_rank", "method_scores",
                      "rank_distribution", "rank_methods", "top_k_table"),
    "analysis.report": ("Report", "build_report", "headline", "log_report", "write_report"),
    "analysis.robust": ("interval_estimates", "performance_profile",
                        "probability_of_improvement", "seed_scores"),
    "analysis.selection": ("depth_trend", "run_slopes", "selection_consistency",
                           "selection_long", "selection_summary", "switching_dynamics"),
    "analysis.significance": ("ASSUMPTIONS", "average_ranks", "control_holm",
                              "critical_difference", "friedman_test", "nemenyi_test",
                              "wilcoxon_holm"),
    "analysis.weights": ("group_weight_sums", "weight_groups"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
"""Public name -> the module that defines it (loaded on first access)."""

__all__ = [
    "ACTIVATION_COLORS", "ASSUMPTIONS", "CONFIG_PARAMS", "DEFAULT_TRACKING_URI", "Report",
    "aggregate_seeds", "average_ranks", "build_report", "control_holm", "critical_difference",
    "depth_trend", "first_rank_counts", "friedman_test", "group_weight_sums", "headline",
    "interval_estimates", "load_runs", "log_report", "mean_reciprocal_rank", "method_scores",
    "metric_histories", "nemenyi_test", "performance_profile", "plot_accuracy",
    "plot_cd_diagram", "plot_depth_trend", "plot_mrr", "plot_rank_distribution",
    "plot_selection", "plot_switching", "plot_weight_heatmap", "probability_of_improvement",
    "rank_distribution", "rank_methods", "run_slopes", "seed_scores", "selection_consistency",
    "selection_long", "selection_summary", "switching_dynamics", "top_k_table",
    "weight_groups", "wilcoxon_holm", "write_report",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
