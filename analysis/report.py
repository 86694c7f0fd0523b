"""Assemble every stage into one report: tables, figures, a self-contained index.html.

>>> report = build_report("smartmixed-quick", tracking_uri="sqlite:///mlflow.db")
>>> write_report(report, "reports/quick"); report.tables["mrr"]
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis.aggregate import aggregate_seeds
from analysis.baselines import perlayer_choices, shape_table
from analysis.load import (
    client_for,
    config_columns,
    get_experiment,
    load_runs,
    load_trials,
    metric_histories,
    sweep_runs,
)
from analysis.params import config_labels, param_importances, param_table
from analysis.plots_params import plot_parallel_coordinates, plot_param_importances
from analysis.protocol import (
    attach_val_loss,
    cell_budgets,
    summary,
    trial_budgets,
    validation_resolution,
)
from analysis.rank import (
    first_rank_counts,
    label_blocks,
    mean_reciprocal_rank,
    rank_distribution,
    rank_methods,
    top_k_table,
)
from analysis.robust import (
    interval_estimates,
    performance_profile,
    probability_of_improvement,
    seed_scores,
)
from analysis.selection import (
    depth_trend,
    selection_consistency,
    selection_long,
    selection_summary,
    switch_metric_keys,
    switching_dynamics,
)
from analysis.significance import (
    ASSUMPTIONS,
    average_ranks,
    control_holm,
    default_control,
    friedman_test,
    nemenyi_test,
    wilcoxon_holm,
)
from analysis.transition import transition_table
from analysis.weights import weight_groups
from smartmixed_core.errors import ConfigError
from sweeps import schema

# file stem -> (section title, what it holds); the order is the report's order.
TABLES = {
    "headline": ("Headline", "per method: MRR, mean rank, first places, mean test accuracy, "
                 "tuning budget (trials); descriptive only, the Summary says what is "
                 "significant"),
    "budgets": ("Budgets", "trials per method (each trial = one configuration searched)"),
    "validation": ("Validation resolution", "one validation sample, in accuracy"),
    "best_configs": ("Chosen configurations", "per architecture and method, the "
                     "configuration chosen on validation accuracy, in full: its parameters "
                     "and results"),
    "rankings": ("Rankings", "per architecture, methods ranked by the seed-mean test accuracy "
                 "of the configuration chosen on validation accuracy (tie rule: n_tied, "
                 "decided_by); CI method in ci_method"),
    "mrr": ("Mean reciprocal rank", "tie-aware MRR over architectures"),
    "rank_distribution": ("Rank distribution", "times each method finished at each position"),
    "first_ranks": ("First-rank counts", "expected (ties split), outright and shared"),
    "top3": ("Top 3 per architecture", "the paper's Table II"),
    "friedman": ("Friedman and Iman–Davenport tests",
                 "methods × architectures (complete blocks)"),
    "control": ("Holm against the control method", "z from average ranks (Demšar 2006)"),
    "nemenyi": ("Nemenyi post-hoc p-values", "pairwise, after Friedman"),
    "wilcoxon": ("Pairwise Wilcoxon signed-rank, Holm-corrected",
                 "on differences rounded to 10 decimals; test_method names the p-value"),
    "iqm": ("Interquartile mean", "over all runs of the complete blocks, stratified-bootstrap "
            "95% CI (Agarwal et al. 2021)"),
    "improvement": ("Probability of improvement", "P(a > b): a run of a beats a run of b on "
                    "the same block, stratified-bootstrap 95% CI"),
    "assumptions": ("Test assumptions and minimum sample sizes", ""),
    "configs": ("Configurations", "seed aggregates per configuration"),
    "importances": ("Parameter importances", "per method, optuna's mean-decrease-impurity "
                    "importance of each searched parameter for the seed-mean validation "
                    "accuracy (importances of a method sum to 1)"),
    "parameters": ("Searched parameters", "one row per configuration: its searched "
                   "parameters and seed-mean validation accuracy (the parallel coordinates)"),
    "selection": ("Selection per layer", "fraction of units per activation, across seeds"),
    "selection_consistency": ("Selection consistency across seeds",
                              "Jensen–Shannon distance and chi-square homogeneity"),
    "depth_trend": ("Depth trend", "one slope of share vs relative depth per run, t-test over "
                    "runs, Holm over activations; pooled rho descriptive"),
    "switching": ("Selection dynamics", "fraction of units switching per phase-1 epoch"),
    "transition": ("Phase transition", "validation accuracy across the phase-1 -> phase-2 "
                   "hand-off: the sampled and the argmax network at the end of phase 1, the "
                   "restored start weights, the first phase-2 epoch and the final result; "
                   "mean over blocks of the chosen configurations' seed means, Student-t 95% "
                   "CI"),
    "perlayer": ("Per-layer search: chosen activations", "the activation the per-layer "
                 "search (perlayer) chose for every hidden layer of each block's chosen "
                 "configuration"),
    "shapes": ("Learned activation shapes", "PAU coefficients and Swish beta per layer of "
               "the chosen configurations, seed mean and Student-t 95% CI"),
    "weights": ("Weights by activation", "mean weight between neuron groups"),
    "runs": ("Seed runs", "the deduplicated seed runs analysed"),
}
ONE_METHOD_TABLES = {"selection", "selection_consistency", "depth_trend", "switching",
                     "transition", "perlayer", "shapes", "weights"}
"""Sections about the runs of particular methods: left out of the page when the analysed runs
have none (their CSV is still written)."""
# figure stem -> (alt text, the table section it is shown in)
FIGURES = {
    "mrr": ("Mean reciprocal rank", "headline"),
    "rank_distribution": ("Rank distribution", "headline"),
    "accuracy": ("Accuracy per architecture", "rankings"),
    "cd_diagram": ("Critical difference diagram", "nemenyi"),
    "performance_profile": ("Performance profiles", "improvement"),
    "selection": ("Selection per layer", "selection"),
    "depth_trend": ("Depth trend", "depth_trend"),
    "switching": ("Selection dynamics", "switching"),
    "weight_heatmap": ("Weights by activation", "weights"),
    "importances": ("Parameter importances per method", "importances"),
    "parallel_coordinates": ("Parallel coordinates per method", "parameters"),
}
MAX_HTML_ROWS = 50
"""index.html shows at most this many rows of a table (the chosen configurations always in
full); the linked CSV has them all."""
FULL_TABLES = ("best_configs",)


@dataclass
class Report:
    """Everything the analysis computed; tables are DataFrames, figures matplotlib Figures."""

    experiment: str
    sweep: str | None
    tracking_uri: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def headline(rankings: pd.DataFrame, budgets: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per method: mrr, mean_rank, first (ties split), n_architectures, mean test accuracy
    over architectures and, with ``budgets`` (:func:`analysis.protocol.trial_budgets`),
    n_trials; the table the CLI prints."""
    mrr = mean_reciprocal_rank(rankings)
    first = first_rank_counts(rankings)[["method", "first"]]
    acc = rankings.groupby("method")["mean"].mean().rename("mean_test_accuracy")
    out = mrr.merge(first, on="method").merge(acc, on="method")[
        ["method", "mrr", "mean_rank", "first", "n_architectures", "mean_test_accuracy"]]
    if budgets is not None and len(budgets):
        out = out.merge(budgets[["method", "n_trials"]], on="method", how="left")
    return out


RESTORE_WORDS = {"val_loss": "the epoch with the lowest validation loss",
                 "val_accuracy": "the epoch with the highest validation accuracy",
                 "last": "the last epoch"}


def build_report(experiment: str, sweep: str | None = None, tracking_uri: str | None = None,
                 *, weights: bool = True, control: str | None = None) -> Report:
    """Run every stage on the experiment's seed runs (see the module docstrings).

    ``control`` is the control method of :func:`analysis.significance.control_holm`; by
    default ``smartmixed`` when it ran (otherwise no control comparison).  A named control
    that is not among the methods is a :class:`ConfigError`.
    """
    client = client_for(tracking_uri)  # checked once, for every read below
    runs = load_runs(experiment, sweep, client)
    rep = Report(experiment, sweep, client.tracking_uri)
    a = runs.attrs
    restore = sorted(set(runs.get("restore", pd.Series(dtype=str))) - {""}) or ["val_loss"]
    rep.notes.append("reported weights: those of "
                     + " / ".join(RESTORE_WORDS.get(r, r) for r in restore)
                     + " in each phase (setting restore)")
    rep.notes.append(f"{len(runs)} FINISHED seed runs analysed ({a['n_seed_runs']} seed runs "
                     f"found, {a['n_not_finished']} not FINISHED, {a['n_duplicates']} "
                     "duplicate(s) dropped: newest FINISHED run per configuration and seed)")
    trials = load_trials(experiment, sweep, client)
    configs = attach_val_loss(aggregate_seeds(runs), runs, trials)
    rankings = rank_methods(configs)
    several = "dataset" in runs.columns and runs["dataset"].nunique() > 1
    if len(trials):
        rankings = rankings.merge(cell_budgets(label_blocks(trials, several)),
                                  on=["architecture", "method"], how="left")
    t = rep.tables
    t["budgets"] = trial_budgets(label_blocks(trials, several))  # per block: dataset/arch
    t["validation"] = validation_resolution(runs)
    t["headline"] = headline(rankings, t["budgets"])
    labels = config_labels(runs)
    configs.insert(1, "configuration", configs["config_id"].map(labels))
    t["best_configs"] = best_configs(rankings, runs, labels)
    t["rankings"], t["mrr"] = rankings, mean_reciprocal_rank(rankings)
    dist = rank_distribution(rankings)
    t["rank_distribution"] = dist.reset_index()
    t["first_ranks"], t["top3"] = first_rank_counts(rankings), top_k_table(rankings)
    t["friedman"], t["wilcoxon"] = friedman_test(rankings), wilcoxon_holm(rankings)
    methods = sorted(rankings["method"].unique())
    if control is not None and control not in methods:
        raise ConfigError("control", f"unknown method {control!r}; allowed: "
                          f"{', '.join(methods)}")
    t["control"] = control_holm(rankings, control or default_control(methods))
    scores = seed_scores(runs, rankings)
    t["iqm"], t["improvement"] = interval_estimates(scores), probability_of_improvement(scores)
    t["performance_profile"] = performance_profile(scores)
    nemenyi = nemenyi_test(rankings)
    t["nemenyi"] = nemenyi.rename_axis("method").reset_index()
    t["assumptions"], t["configs"] = ASSUMPTIONS, configs
    sel = selection_summary(runs)
    t["selection"], t["selection_consistency"] = sel, selection_consistency(runs)
    t["depth_trend"] = depth_trend(runs)
    t["transition"] = transition_table(runs, rankings)
    t["perlayer"], t["shapes"] = perlayer_choices(runs, rankings), shape_table(runs, rankings)
    keys = switch_metric_keys(runs)
    hist = (metric_histories(client, list(runs["run_id"]), keys, runs=runs) if keys
            else pd.DataFrame())
    t["switching"] = switching_dynamics(hist, runs)
    selective = list(selection_long(runs)["run_id"].unique()) if weights else []
    t["weights"], note = weight_groups(client, selective)
    if note:
        rep.notes.append("weights: " + note)
    t["importances"] = param_importances(configs, runs)
    t["parameters"] = param_table(configs, runs)
    t["runs"] = readable_times(runs)
    rep.summary = summary(t)
    rep.figures = {
        "mrr": plots.plot_mrr(t["mrr"]), "rank_distribution": plots.plot_rank_distribution(dist),
        "accuracy": plots.plot_accuracy(rankings),
        "cd_diagram": plots.plot_cd_diagram(average_ranks(rankings), nemenyi,
                                            int(t["friedman"]["n_blocks"].iloc[0])),
        "performance_profile": plots.plot_performance_profile(t["performance_profile"]),
        "selection": plots.plot_selection(sel, labels, set(rankings["config_id"])),
        "depth_trend": plots.plot_depth_trend(sel, t["depth_trend"]),
        "switching": plots.plot_switching(t["switching"]),
        "weight_heatmap": plots.plot_weight_heatmap(t["weights"]),
        "importances": plot_param_importances(t["importances"]),
        "parallel_coordinates": plot_parallel_coordinates(t["parameters"]),
    }
    return rep


def best_configs(rankings: pd.DataFrame, runs: pd.DataFrame,
                 labels: dict[int, str]) -> pd.DataFrame:
    """The chosen configuration of each (architecture, method): label, every config param,
    test accuracy (mean, CI), validation accuracy, rank, n_configs and the tie rule used."""
    cols = ["architecture", "method", "configuration", "rank", "mean", "ci_low", "ci_high",
            "val_accuracy", "n_seeds", "n_configs", "decided_by", "config_id"]
    params = [c for c in config_columns(runs) if c not in ("architecture", "method")]
    first = runs.drop_duplicates("config_id").set_index("config_id")[params]
    out = rankings.assign(configuration=rankings["config_id"].map(labels))
    out = out[[c for c in cols if c in out.columns]].join(first, on="config_id")
    return out.rename(columns={"mean": "test_accuracy"}).reset_index(drop=True)


def readable_times(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with start/end times (datetimes, or MLflow's epoch ms) as UTC text
    (``2026-12-06 20:41:40 UTC``)."""
    out = runs.copy()
    for c in ("start_time", "end_time"):
        if c in out.columns:
            unit = "ms" if pd.api.types.is_numeric_dtype(out[c]) else None
            t = pd.to_datetime(out[c], unit=unit, utc=True)
            out[c] = t.dt.strftime("%Y-%m-%d %H:%M:%S UTC").fillna("")
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def render_html(rep: Report, pngs: dict[str, bytes]) -> str:
    """A self-contained page: inline CSS, tables, plots as base64 data URIs, no scripts."""
    title = f"SmartMixed analysis: {rep.experiment}" + (f" / {rep.sweep}" if rep.sweep else "")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<link rel='icon' href='data:,'>", f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0}"
        ".scroll{max-height:420px;overflow:auto}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2 id='summary'>Summary</h2>",
        *(f"<p>{html.escape(line)}</p>" for line in rep.summary),
        f"<p>Tracking URI: <code>{html.escape(rep.tracking_uri)}</code></p>",
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in rep.notes) + "</ul>",
    ]
    for stem, (heading, desc) in TABLES.items():
        df = rep.tables.get(stem)
        if df is None or (df.empty and stem in ONE_METHOD_TABLES):
            continue
        parts.append(f"<h2 id='{stem}'>{html.escape(heading)}</h2>")
        if desc:
            parts.append(f"<p>{html.escape(desc)} (<code>{stem}.csv</code>)</p>")
        for name, (alt, section) in FIGURES.items():
            if section == stem and name in pngs:
                data = base64.b64encode(pngs[name]).decode()
                parts.append(f"<img alt='{alt}' src='data:image/png;base64,{data}'>")
        shown = df if stem in FULL_TABLES else df.head(MAX_HTML_ROWS)
        body = (shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="NaN")
                if not df.empty else "<p><em>empty</em></p>")
        parts.append(f"<div class='scroll'>{body}</div>")
        if len(shown) < len(df):
            parts.append(f"<p class='more'>First {len(shown)} of {len(df):,} rows; all in "
                         f"<a href='{stem}.csv'>{stem}.csv</a>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(rep: Report, out: str | Path) -> list[Path]:
    """Write ``out/index.html``, ``out/<table>.csv`` and ``out/<figure>.png``; returns paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stem, df in rep.tables.items():
        df.to_csv(out / f"{stem}.csv", index=False)
    pngs = {name: _png(fig) for name, fig in rep.figures.items()}
    for name, data in pngs.items():
        (out / f"{name}.png").write_bytes(data)
    (out / "index.html").write_text(render_html(rep, pngs), encoding="utf-8")
    return [*(out / f"{stem}.csv" for stem in rep.tables),
            *(out / f"{name}.png" for name in pngs), out / "index.html"]


def log_report(rep: Report, out: str | Path) -> list[str]:
    """Log the written report folder under ``report/`` of each analysed sweep's parent run
    (the newest parent run per sweep name); returns the run ids logged to."""
    client = client_for(rep.tracking_uri)
    exp = get_experiment(client, rep.experiment)
    names = sorted(set(rep.tables["runs"]["sweep"]) - {""})
    parents = sweep_runs(client, exp.experiment_id, names)
    if parents.empty:
        return []
    ids = list(parents.drop_duplicates("sweep")["run_id"])
    for run_id in ids:
        client.log_artifacts(run_id, str(out), artifact_path=schema.ARTIFACT_REPORT_DIR)
    return ids
