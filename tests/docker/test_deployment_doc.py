"""The ``smartmixed`` commands quoted in docs/deployment.md exist, with the options they use,
and a sweep sent to a cluster names a tracking URI that the cluster's nodes can reach."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DEPLOYMENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"

def doc_commands() -> list[list[str]]:
    """The `smartmixed ...` commands in the doc's code blocks, as argument lists."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", DEPLOYMENT_DOC.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if "smartmixed" in tokens:
                commands.append(tokens[tokens.index("smartmixed") + 1:])
    return commands


def cli_command(args: list[str]):
    """The click command that ``smartmixed ARGS`` reaches, and the rest of ARGS."""
    import typer
    import typer.main

    from analysis.cli import register as register_analysis
    from sweeps.cli import register as register_sweeps

    app = typer.Typer()
    app.command("_noop")(lambda: None)  # keep the app a group, like smartmixed's
    register_sweeps(app)
    register_analysis(app)
    cmd = typer.main.get_command(app)
    rest = list(args)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    assert not hasattr(cmd, "commands"), f"smartmixed {' '.join(args)}: no such command"
    return cmd, rest


def test_deployment_doc_smartmixed_commands_exist():
    from sweeps.specfile import load_spec, preset_names

    commands = doc_commands()
    assert len(commands) >= 5, commands
    for args in commands:
        cmd, rest = cli_command(args)
        takes_value = {o: not p.is_flag for p in cmd.params if p.param_type_name == "option"
                       for o in (*p.opts, *p.secondary_opts)}
        positional, options = [], []
        tokens = iter(rest)
        for tok in tokens:
            if not tok.startswith("--"):
                positional.append(tok)
                continue
            name, eq, value = tok.partition("=")
            assert name in takes_value, f"smartmixed {' '.join(args)}: unknown option {name}"
            if takes_value[name] and not eq:
                value = next(tokens)
            options.append((name, value))
        if args[:2] == ["sweep", "run"]:
            opts = dict(options)
            if "--address" in opts:  # trials run on other nodes: the URI must reach them
                assert "--tracking-uri" in opts, args
                assert not re.search(r"//(127\.0\.0\.1|localhost)\b", opts["--tracking-uri"])
            if positional[0] in preset_names():  # every --set names a field with a valid value
                load_spec(positional[0], [v for k, v in options if k == "--set"])

