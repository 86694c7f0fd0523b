"""The ``smartmixed`` command.  ``train`` lives here; ``sweep`` and ``analyze`` are attached
from the ``sweeps`` and ``analysis`` packages when they are installed (imported lazily, so
the core never imports Ray or MLflow and ``smartmixed train`` starts fast).

Bad input never prints a traceback: one line ``smartmixed: error: FIELD: ...`` and exit 2.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from smartmixed_core.activations import POOLS
from smartmixed_core.config import METHODS_HELP, RunConfig
from smartmixed_core.data import DATASETS, check_data
from smartmixed_core.errors import ConfigError, check_output_dir

app = typer.Typer(
    name="smartmixed",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="SmartMixed: learned per-neuron activations, sweeps and analysis.",
)


@app.callback()
def _root() -> None:
    """SmartMixed: learned per-neuron activations, sweeps and analysis."""


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


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help=f"One of: {', '.join(DATASETS)}.")] = "digits",
    arch: Annotated[
        Optional[str],
        typer.Option(help="Hidden widths '64,32' or a paper architecture 'paper:784-512-10'."),
    ] = None,
    method: Annotated[str, typer.Option(help=METHODS_HELP)] = "smartmixed",
    layer_activations: Annotated[Optional[str], typer.Option(
        help="perlayer: one activation per hidden layer, e.g. relu,elu,elu.")] = None,
    model: Annotated[str, typer.Option(help="mlp or convnet.")] = "mlp",
    pool: Annotated[
        Optional[str],
        typer.Option(help=f"Pool name ({', '.join(POOLS)}) or comma list of activations."),
    ] = None,
    epochs: int = 40,
    transition_epoch: Annotated[int, typer.Option(help="Phase-1 epochs (smartmixed).")] = 15,
    temperature: float = 0.3,
    temperature_end: Annotated[
        Optional[float], typer.Option(help="Temperature at the end of phase 1 (default: constant).")
    ] = None,
    temperature_schedule: str = "exponential",
    phase2_init: Annotated[str, typer.Option(help="transfer or reinit.")] = "transfer",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    batch_size: int = 64,
    grad_clip: Optional[float] = None,
    patience: Optional[int] = None,
    restore: Annotated[str, typer.Option(
        help="Reported weights: best val_loss epoch, best val_accuracy epoch, or last.")
    ] = "val_loss",
    gate: Annotated[str, typer.Option(help="Mixture gate: layer, neuron or input.")] = "layer",
    gate_temperature: float = 1.0,
    entropy_weight: float = 0.0,
    split_per_seed: Annotated[bool, typer.Option(
        help="Each seed draws its own train/validation split (split seed + seed).")] = False,
    train_size: Annotated[Optional[int], typer.Option(
        help="Train on a stratified subset of this many training examples.")] = None,
    seeds: Annotated[str, typer.Option(help="'0,1,2' or '0-4'.")] = "0",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    compile: Annotated[str, typer.Option(help="torch.compile of the training forward pass: "
                                         "auto (on for CUDA, off on a CPU), on, off.")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with image datasets.")] = None,
    download: bool = False,
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
) -> None:
    """Train one configuration for several seeds; write OUT/result.json."""
    from smartmixed_core.progress import EpochProgress
    from smartmixed_core.runner import load_data, save_checkpoint, train_seeds

    seed_list = parse_seeds(seeds)
    if batch_seeds not in ("auto", "on", "off"):
        raise ConfigError("batch_seeds", f"expected auto, on or off, got {batch_seeds!r}")
    cfg = RunConfig(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        download=download,
        model=model,
        arch=arch,
        method=method,
        layer_activations=layer_activations,
        pool=pool,
        temperature=temperature,
        temperature_end=temperature_end,
        temperature_schedule=temperature_schedule,
        transition_epoch=transition_epoch,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        batch_size=batch_size,
        grad_clip=grad_clip,
        patience=patience,
        restore=restore,
        train_size=train_size,
        split_per_seed=split_per_seed,
        phase2_init=phase2_init,
        gate=gate,
        gate_temperature=gate_temperature,
        entropy_weight=entropy_weight,
        device=device,
        compile=compile,
    )
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


def _attach_plugins() -> None:
    """Add the sweep and analysis command groups when their packages are importable."""
    for module, attr in (("sweeps.cli", "register"), ("analysis.cli", "register")):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        getattr(mod, attr)(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    _attach_plugins()
    try:
        result = app(args=argv, standalone_mode=False)
    except ConfigError as exc:
        return error(str(exc))
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("smartmixed: aborted", err=True)
        return 130
    except typer.TyperException as exc:  # usage errors: bad flag, bad type, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 0
        return error(usage_message(exc))
    return result if isinstance(result, int) else 0


def usage_message(exc: Exception) -> str:
    """A click usage error (bad flag, bad type, missing argument) as ``FIELD: message``, the
    field being the flag (``--epochs``) or argument (``spec``) as the user typed it."""
    ctx, param = getattr(exc, "ctx", None), getattr(exc, "param", None)
    message = str(getattr(exc, "message", "") or "").strip()
    field = getattr(exc, "option_name", None)
    if param is not None:
        opts = [str(o) for o in getattr(param, "opts", None) or [param.name]]
        field = next((o for o in opts if o.startswith("--")), opts[0])
        kind = "option" if field.startswith("-") else "argument"
        if not message:  # MissingParameter
            message = f"required {kind} is missing"
        else:
            message = f"invalid value: {message}"
    elif type(exc).__name__ == "BadOptionUsage" and message.lower().startswith("option '"):
        message = message.split("' ", 1)[-1].rstrip(".")  # "requires an argument"
    elif type(exc).__name__ == "NoSuchOption":
        possible = sorted(getattr(exc, "possibilities", None) or [])
        message = "no such option" + (f"; did you mean {', '.join(possible)}?" if possible else "")
    elif field is None:
        field = "command"
        commands = []
        if ctx is not None and hasattr(ctx.command, "list_commands"):
            commands = ctx.command.list_commands(ctx)
        message = message.rstrip(".") + (f"; allowed: {', '.join(commands)}" if commands else "")
    if field is None:
        return exc.format_message()  # type: ignore[attr-defined]
    message = message[:1].lower() + message[1:]
    return f"{field}: {message}"


def error(message: str) -> int:
    """Print the one-line error for bad input; returns exit status 2.  Passwords in URIs
    quoted by the message are masked (``sweeps.redact``, when the sweeps package is there)."""
    try:
        from sweeps.redact import redact_text
    except ImportError:  # the core alone prints no tracking URIs
        pass
    else:
        message = redact_text(message)
    typer.echo("smartmixed: error: " + " ".join(message.split()), err=True)
    return 2


def console() -> NoReturn:
    """The ``smartmixed`` console script: :func:`main`, then an exit without the interpreter's
    teardown.

    The exit does what the interpreter does first (wait for non-daemon threads, run the
    atexit handlers: MLflow, Ray, logging, temporary folders; flush the standard streams) and
    then ends the process.  The teardown it skips spends about 2 s collecting the millions of
    objects of torch, Ray and MLflow, memory the OS frees anyway, and, with triton 3.9
    installed (a dependency of the CUDA torch), prints nanobind's "leaked function" reports
    after any training (triton-lang/triton#10921).  Not in :func:`main`, which tests call
    in-process."""
    code = main()
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not change the status
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(console())
