"""``smartmixed train``: the command function (typer options) of the core.

The ``smartmixed`` app that mounts ``train``, ``sweep`` and ``analyze`` is
:mod:`smartmixed.cli`, above all three packages: the core imports neither ``sweeps`` nor
``analysis`` (nor Ray or MLflow), so ``smartmixed train`` starts fast.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Optional, get_args, get_type_hints

import typer

from smartmixed_core.config import RunConfig, field_docs
from smartmixed_core.errors import ConfigError, check_output_dir


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or a range ``"0-4"``."""
    try:
        if "-" in text.strip("-") and "," not in text:
            lo, hi = (int(p) for p in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            "seeds", f"expected integers like '0,1,2' or '0-4', got {text!r}"
        ) from None
    if not seeds or any(s < 0 or s > 2**31 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"need distinct integers in [0, 2^31], got {text!r}")
    return seeds


def run_options() -> list[inspect.Parameter]:
    """One ``train`` flag per :class:`RunConfig` field: its default, its type, and its
    docstring as help (:func:`field_docs`), so a new field is a new flag by itself."""
    hints, docs = get_type_hints(RunConfig), field_docs()
    params = []
    for f in fields(RunConfig):
        kind = hints[f.name]
        args = [a for a in get_args(kind) if a is not type(None)]
        if len(args) == 1:  # X | None
            kind = Optional[args[0]]
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
            annotation=Annotated[kind, typer.Option(help=docs.get(f.name, "").replace("``", ""))]))
    return params


def _train_signature(func: Callable[..., None]) -> Callable[..., None]:
    own = [p for p in inspect.signature(func).parameters.values()
           if p.kind is inspect.Parameter.KEYWORD_ONLY]
    func.__signature__ = inspect.Signature([*run_options(), *own])  # type: ignore[attr-defined]
    return func


@_train_signature
def train(
    *,
    seeds: Annotated[str, typer.Option(help="'0,1,2' or '0-4'.")] = "0",
    out: Annotated[
        Path, typer.Option(help="Output folder for result.json and checkpoints.")
    ] = Path("runs/train"),
    checkpoints: Annotated[bool, typer.Option(help="Write one checkpoint per seed.")] = True,
    batch_seeds: Annotated[
        str,
        typer.Option(help="Train the seeds together as one model with a seeds dimension "
                    "(auto, on) or one after another (off: less memory, same numbers)."),
    ] = "auto",
    quiet: bool = False,
    **settings: Any,
) -> None:
    """Train one configuration for several seeds; write OUT/result.json.

    Every RunConfig setting is a flag (docs/contracts.md)."""
    from smartmixed_core.data import check_data
    from smartmixed_core.progress import EpochProgress
    from smartmixed_core.runner import load_data, save_checkpoint, train_seeds

    seed_list = parse_seeds(seeds)
    if batch_seeds not in ("auto", "on", "off"):
        raise ConfigError("batch_seeds", f"expected auto, on or off, got {batch_seeds!r}")
    cfg = RunConfig(**settings)
    check_data(cfg.dataset, cfg.data_dir, cfg.download)  # before anything is trained
    check_output_dir("out", out)
    data = load_data(cfg, seed_list)
    batched = {"auto": None, "on": True, "off": False}[batch_seeds]
    with EpochProgress(cfg.epochs, seed_list, enabled=not quiet) as progress:
        doc, outcomes = train_seeds(
            cfg, seed_list, callbacks=progress.callbacks, data=data, batched=batched
        )
    out.mkdir(parents=True, exist_ok=True)
    if checkpoints:
        (out / "checkpoints").mkdir(exist_ok=True)
        for o in outcomes:
            save_checkpoint(out / "checkpoints" / f"seed_{o.summary['seed']}.pt", cfg, o)
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=True))
    tmp.replace(out / "result.json")
    s = doc["summary"]
    typer.echo(
        f"{cfg.method} on {cfg.dataset} [{cfg.arch}], {s['n_seeds']} seed(s): "
        f"test accuracy {s['test_accuracy_mean']:.4f} ± {s['test_accuracy_std']:.4f}, "
        f"macro F1 {s['test_f1_macro_mean']:.4f}  ->  {out / 'result.json'}"
    )
