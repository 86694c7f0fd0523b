"""Imports flow one way: ``smartmixed_core`` <- ``sweeps`` <- ``analysis`` <- ``smartmixed``
(the console app), with no cycle between modules, and the core loads neither Ray nor MLflow.

Module-level imports and imports inside functions count alike (a function that imports a
higher layer is an upward dependency all the same); imports under ``TYPE_CHECKING`` do not
(they never run).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("smartmixed_core", "sweeps", "analysis", "smartmixed")
"""Bottom to top: a package may import only itself and the packages before it."""


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, package: str) -> set[str]:
    """Project modules imported by the module at ``path`` (resolved to module names)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                base = ".".join([package, *([base] if base else [])])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in LAYERS}


def modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
            out[name] = path
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = {m for m in imports(path, package) if m in mods and m != name}
    return edges


def test_no_module_imports_a_higher_layer():
    upward = [(a, b) for a, targets in graph().items() for b in targets
              if LAYERS.index(b.split(".")[0]) > LAYERS.index(a.split(".")[0])]
    assert upward == []


def test_analysis_reads_runs_through_the_run_schema_only():
    """What ``analysis`` takes from ``sweeps``: the run schema (names, tags, parsers) and the
    one tracking-URI parser/health check; never the driver, the trials or Ray."""
    used = {d for name, deps in graph().items() if name.startswith("analysis.")
            for d in deps if d.startswith("sweeps.")}
    assert used <= {"sweeps.schema", "sweeps.redact", "sweeps.store"}, used


def test_no_import_cycle_between_modules():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    # a package's __init__ re-exporting its modules is not a cycle of behaviour
    cycles = [c for c in cycles if not any(m == m.split(".")[0] for m in c[:-1])]
    assert cycles == []


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself: a core module importing sweeps is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sweeps import schema\n")
    ok = tmp_path / "ok.py"
    ok.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sweeps\n")
    assert imports(bad, "smartmixed_core") == {"sweeps", "sweeps.schema"}
    assert imports(ok, "smartmixed_core") == set()


def test_the_core_loads_neither_ray_nor_mlflow():
    names = [m for m in modules() if m.startswith("smartmixed_core")]
    code = ("import importlib, sys\n"
            f"for m in {names!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'mlflow', "
            "'sweeps', 'analysis', 'optuna')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=300, check=True).stdout
    assert out.strip() == "[]"


def test_a_new_run_setting_is_a_flag_a_spec_field_and_a_logged_param(tmp_path):
    """Adding one documented RunConfig field (in a copy of the packages) is all it takes."""
    import shutil

    for package in LAYERS:
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    config = tmp_path / "smartmixed_core" / "config.py"
    text = config.read_text()
    anchor = '    weight_decay: float = 0.0\n'
    assert anchor in text
    config.write_text(text.replace(anchor, '    label_smoothing: float = 0.0\n'
                                   '    """Demo setting added by the test."""\n' + anchor))
    code = (
        "import subprocess, sys\n"
        "from smartmixed_core.config import RunConfig\n"
        "from sweeps.specfile import parse_spec\n"
        "from sweeps.tracking import config_params\n"
        "from analysis.load import CONFIG_PARAMS\n"
        "spec = parse_spec({'name': 's', 'fixed': {'label_smoothing': 0.1, 'epochs': 4},\n"
        "                   'search': {'space': {'method': {'choice': ['fixed:relu']},\n"
        "                                        'label_smoothing': {'choice': [0.0, 0.2]}}}})\n"
        "cfg = spec.run_config({'method': 'fixed:relu', 'label_smoothing': 0.2})\n"
        "print(cfg.label_smoothing, config_params(cfg)['label_smoothing'],\n"
        "      'label_smoothing' in CONFIG_PARAMS)\n"
        "help = subprocess.run([sys.executable, '-m', 'smartmixed', 'train', '--help'],\n"
        "                      capture_output=True, text=True).stdout\n"
        "print('--label-smoothing' in help, 'Demo setting added by the test.' in help)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300, env={**os.environ, "COLUMNS": "200",
                                                         "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0.2", "0.2", "True", "True", "True"]


def test_reading_runs_back_loads_no_torch():
    """``analysis``, the run schema and the console app (until ``train`` runs) import no torch:
    at 10,000 runs that is about 450 MB of the analysis's memory, and ``smartmixed`` starts in
    a fraction of a second.  The weight heatmap imports torch when it reads a checkpoint."""
    names = [m for m in modules() if m.startswith("analysis")]
    code = ("import importlib, sys\n"
            f"for m in {[*names, 'sweeps.schema', 'sweeps.store']!r}: importlib.import_module(m)\n"
            "import smartmixed.cli\n"
            "smartmixed.cli._mount()\n"
            "from smartmixed_core import RunConfig, POOLS\n"
            "RunConfig(method='fixed:relu', arch='paper:784-512-10', pool='paper')\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'torch')[:3])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=300, check=True).stdout
    assert out.strip() == "[]"
