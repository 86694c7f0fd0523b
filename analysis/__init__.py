"""Analysis of SmartMixed sweeps read back from MLflow (never imports Ray).

One module per stage; every function returns pandas DataFrames or matplotlib Figures, so the
package works from a notebook as well as through ``smartmixed analyze``::

    from analysis import load_runs, aggregate_seeds, rank_methods, mean_reciprocal_rank
    runs = load_runs("smartmixed-quick", tracking_uri="sqlite:///mlflow.db")
    rankings = rank_methods(aggregate_seeds(runs))
    mean_reciprocal_rank(rankings)

Importing it has no side effects (MLflow, torch and scikit-posthocs load on first use where
possible).
"""

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
from analysis.selection import (
    depth_trend,
    selection_consistency,
    selection_long,
    selection_summary,
    switching_dynamics,
)
from analysis.significance import (
    ASSUMPTIONS,
    average_ranks,
    friedman_test,
    nemenyi_test,
    wilcoxon_holm,
)
from analysis.weights import group_weight_sums, weight_groups

__all__ = [
    "ACTIVATION_COLORS",
    "ASSUMPTIONS",
    "CONFIG_PARAMS",
    "DEFAULT_TRACKING_URI",
    "Report",
    "aggregate_seeds",
    "average_ranks",
    "build_report",
    "depth_trend",
    "first_rank_counts",
    "friedman_test",
    "group_weight_sums",
    "headline",
    "load_runs",
    "log_report",
    "mean_reciprocal_rank",
    "method_scores",
    "metric_histories",
    "nemenyi_test",
    "plot_accuracy",
    "plot_cd_diagram",
    "plot_depth_trend",
    "plot_mrr",
    "plot_rank_distribution",
    "plot_selection",
    "plot_switching",
    "plot_weight_heatmap",
    "rank_distribution",
    "rank_methods",
    "selection_consistency",
    "selection_long",
    "selection_summary",
    "switching_dynamics",
    "top_k_table",
    "weight_groups",
    "wilcoxon_holm",
    "write_report",
]
