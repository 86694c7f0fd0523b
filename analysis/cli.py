"""``smartmixed analyze``: the report of an experiment's seed runs.

    smartmixed analyze --experiment smartmixed-quick --out reports/quick

Attached to the ``smartmixed`` app by ``smartmixed.cli`` via :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sweeps.schema import DEFAULT_TRACKING_URI


def analyze(
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")],
    out: Annotated[Path, typer.Option(help="Report folder (index.html, CSVs, PNGs).")],
    sweep: Annotated[Optional[str], typer.Option(help="Only this sweep's runs.")] = None,
    tracking_uri: Annotated[str, typer.Option(help="MLflow tracking URI.")] =
        DEFAULT_TRACKING_URI,
    weights: Annotated[bool, typer.Option(
        help="Read checkpoints for the weight heatmap.")] = True,
    log: Annotated[bool, typer.Option(
        help="Log the report as artifacts of the sweep parent run(s).")] = True,
    control: Annotated[Optional[str], typer.Option(
        help="Control method of the Holm comparisons (default: smartmixed, when present).")
    ] = None,
) -> None:
    """Compare the methods of tracked runs; write a report to OUT.

    Aggregates seeds, ranks methods, tests significance and selection consistency, writes
    OUT/index.html and the CSV/PNG files and logs them to the sweep's MLflow parent run."""
    from analysis.report import build_report, log_report, write_report
    from smartmixed_core.errors import check_output_dir
    from sweeps.redact import redact_uri, use_credentials

    # Every input is checked before any analysis: the output folder (a file on the way,
    # /proc, no permission) here, then the store (load_runs checks it first: a dead server
    # answers within seconds, not minutes; a SQLite file must exist).
    check_output_dir("out", out)
    # http(s) user/password go to MLFLOW_TRACKING_USERNAME/PASSWORD; the report (HTML, also
    # logged to MLflow) shows the URI with its password masked.
    rep = build_report(experiment, sweep, use_credentials(tracking_uri), weights=weights,
                       control=control)
    real, rep.tracking_uri = rep.tracking_uri, redact_uri(rep.tracking_uri)
    write_report(rep, out)
    rep.tracking_uri = real
    _print_headline(rep.tables["headline"], rep.summary + rep.notes)
    logged = log_report(rep, out) if log else []
    where = (f"; logged to sweep run(s) {', '.join(r[:8] for r in logged)}" if logged
             else "; no sweep parent run to log to" if log else "")
    typer.echo(f"report: {out / 'index.html'}{where}")


def _cell(column: str, value) -> str:
    """Counts as integers (``2``, not ``2.0000``; a tie-split count keeps its fraction),
    scores with 4 decimals."""
    if not isinstance(value, float):
        return str(value)
    if value != value:
        return "-"
    return f"{value:g}" if column.startswith("n_") or column == "first" else f"{value:.4f}"


def _print_headline(table, notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Methods over architectures (test accuracy)")
    cells = [[_cell(c, v) for c, v in zip(table.columns, row, strict=True)]
             for row in table.itertuples(index=False)]
    for i, col in enumerate(table.columns):
        # no_wrap + min_width: a header is never cut to `mean_test_accu…`
        t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True,
                     min_width=max([len(col), *(len(r[i]) for r in cells)]))
    for row in cells:
        t.add_row(*row)
    console = Console()
    need = sum(c.min_width + 3 for c in t.columns) + 1
    if console.width < need:  # a pipe or a narrow terminal: widen rather than truncate
        console = Console(width=need)
    console.print(t)
    for n in notes:
        console.print(n, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``analyze`` command to the ``smartmixed`` app."""
    app.command("analyze")(analyze)
