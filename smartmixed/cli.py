"""The ``smartmixed`` console app: ``train`` (:mod:`smartmixed_core.cli`), ``sweep``
(:mod:`sweeps.cli`) and ``analyze`` (:mod:`analysis.cli`) under one command.

It sits above the three packages (imports flow ``smartmixed_core`` <- ``sweeps`` <-
``analysis`` <- ``smartmixed``), and imports them when a command runs, not before, so that
``smartmixed train`` never loads Ray or MLflow.

Bad input never prints a traceback: one line ``smartmixed: error: FIELD: ...`` and exit 2.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn

import typer

from smartmixed_core.cli import train
from smartmixed_core.errors import ConfigError

app = typer.Typer(
    name="smartmixed",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="SmartMixed: learned per-neuron activations, sweeps and analysis.",
)
app.command()(train)


@app.callback()
def _root() -> None:
    """SmartMixed: learned per-neuron activations, sweeps and analysis."""


_MOUNTED = False


def _mount() -> None:
    """Add the ``sweep`` group and the ``analyze`` command (once)."""
    global _MOUNTED
    if not _MOUNTED:
        import analysis.cli
        import sweeps.cli

        sweeps.cli.register(app)
        analysis.cli.register(app)
        _MOUNTED = True


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    _mount()
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
    quoted by the message are masked (:func:`sweeps.redact.redact_text`)."""
    from sweeps.redact import redact_text

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
