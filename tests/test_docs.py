"""The commands and snippets of README.md and docs/ run as written, shrunk with the documented
smoke options, so a documented command that stops working fails CI.

Each document's ``bash`` blocks (and unlabelled ones) give the ``smartmixed ...`` lines; its
``python`` blocks are run as they are.  They run in a fresh folder per document, in document
order, with tiny MNIST-format files in ``./data`` (the image presets read them) and the
repository's ``sweeps/`` beside them (commands name ``sweeps/presets/quick.yaml``).  Shrinking:
``sweep run`` gets ``--smoke-test``; ``train`` gets ``--epochs 2 --transition-epoch 1``.
Left out, each for a stated reason: commands for a cluster or another machine (``--address``,
placeholders such as ``HOST``), the README's ``make`` targets (CI runs ``make test``; the
main job is ``make demo``) and servers that do not return (``mlflow ui``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.test_data import fake_mnist
from tests.sweeps.sweep_helpers import smartmixed_cmd

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDERS = re.compile(r"\b(HOST|MLFLOW_HOST|HEAD_IP|JOB_ID|HEAD_POD|NAME|URI|REGISTRY)\b"
                          r"|--address|example|\.\.\.")
SUBSTITUTE = {"DIR": "out", "DATA": "data"}
SHARED_MNIST = "../shared/data/mnist"
"""The real MNIST files of the development machines: the tiny files in ./data stand in."""
TIMEOUT = 400


def blocks(doc: Path) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of ``doc``, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(), re.S | re.M)


def commands(text: str) -> list[list[str]]:
    """The ``smartmixed`` commands of a shell block: continuations joined, comments dropped,
    optional ``[--flag value]`` groups kept, placeholders substituted or the line left out."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", line), comments=True)
        if words[:1] != ["smartmixed"] or PLACEHOLDERS.search(line):
            continue
        out.append([SUBSTITUTE.get(w, w).replace(SHARED_MNIST, "data") for w in words])
    return out


def shrink(words: list[str]) -> list[str]:
    if words[1:3] == ["sweep", "run"] and "--smoke-test" not in words:
        return [*words, "--smoke-test"]
    if words[1] == "train":
        return [*words, "--epochs", "2", "--transition-epoch", "1"]
    return words


def _spec_name(words: list[str], cwd: Path) -> str:
    from sweeps.specfile import load_spec

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return load_spec(words[3]).name
    finally:
        os.chdir(old)


def run_document(doc: Path, cwd: Path) -> list[str]:
    """Run ``doc``'s commands and snippets in ``cwd``; returns what ran (for the report)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SMARTMIXED_CHECKPOINT_SECONDS": "600"}
    names: set[str] = set()
    ran = []
    for lang, text in blocks(doc):
        if lang == "python":
            steps = [[sys.executable, "-c", text]]
        elif lang in ("bash", ""):
            steps = []
            for words in map(shrink, commands(text)):
                if words[1:3] == ["sweep", "run"]:
                    name = _spec_name(words, cwd)
                    if name in names:  # a second sweep of one preset in the same folder
                        words = [*words, "--set", f"name={name}-{len(names)}"]
                    names.add(name)
                steps.append([*smartmixed_cmd(), *words[1:]])
        else:
            continue
        for argv in steps:
            proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT)
            shown = " ".join(argv[3:]) if argv[1] == "-c" and lang != "python" else text[:80]
            assert proc.returncode == 0, (
                f"{doc.name}: `{shown}` exited {proc.returncode}\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
            ran.append(shown)
    return ran


def _folder(tmp: Path) -> Path:
    fake_mnist(tmp / "data", n_train=120, n_test=40)
    fake_mnist(tmp / "data", folder="FashionMNIST", n_train=120, n_test=40)
    (tmp / "sweeps").symlink_to(REPO / "sweeps")
    return tmp


def test_commands_are_found_and_shrunk():
    text = ("smartmixed train --out DIR \\\n  --seeds 0,1  # comment\n"
            "smartmixed analyze --experiment e [--sweep s] --out r\n"
            "smartmixed sweep run paper --address auto\nmake demo\n")
    assert commands(text) == [
        ["smartmixed", "train", "--out", "out", "--seeds", "0,1"],
        ["smartmixed", "analyze", "--experiment", "e", "--sweep", "s", "--out", "r"]]
    assert shrink(["smartmixed", "sweep", "run", "quick"])[-1] == "--smoke-test"


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory) -> Path:
    cwd = _folder(tmp_path_factory.mktemp("readme"))
    ran = run_document(REPO / "README.md", cwd)
    assert any("sweep run" in r for r in ran) and any("analyze" in r for r in ran)
    return cwd


@pytest.mark.slow
def test_readme_runs_as_written(readme_folder):
    assert (readme_folder / "mlflow.db").is_file()
    assert not (readme_folder / "mlflow.db-wal").exists()  # folded back when the sweeps ended


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["analysis.md", "mlflow-schema.md"])
def test_docs_snippets_run_on_the_readme_store(readme_folder, doc):
    assert run_document(REPO / "docs" / doc, readme_folder)


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["sweeps.md", "contracts.md", "results.md"])
def test_docs_commands_run_as_written(tmp_path, doc):
    assert run_document(REPO / "docs" / doc, _folder(tmp_path))
