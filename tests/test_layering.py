"""No upward arrows: ``pipeline/`` never imports ``tui/``, and each floor of ``pipeline/`` only the floors below.

The floors are core → engines → stages / commands → the CLI → the app. A
screen command is reached through ``tui/commands/``, named only by
``pipeline/cli.py``'s ``COMMANDS`` table (by string: the one seam). The reader
parses every module with ast, so an import inside a function counts as much as
one at the top, and so does a module named in a string (an importlib table).
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEAM = "pipeline/cli.py"
DOTTED = re.compile(r"(pipeline|tui)(\.\w+)+")  # a module named in a string; a bare folder name is just a word
# What each floor of pipeline/ may import from the project (its own floor included).
MAY_IMPORT = {
    "core": {"core"},
    "engines": {"core", "engines"},
    "stages": {"core", "engines", "stages"},  # one stage importing another: tests/test_dvc_deps.py says no
    "commands": {"core", "engines", "commands"},
}


def _imports_by_call(node: ast.AST) -> bool:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")`` with a literal name."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))


def project_imports(source: str, *, strings: bool = True) -> list[tuple[int, str]]:
    """(line, module) for each project module ``source`` reaches: import statements anywhere,
    importlib calls, and (``strings``) any string naming a module, as a dispatch table does."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pipeline import cli` imports pipeline.cli: the names count, not only the package
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif _imports_by_call(node) and isinstance(node.args[0].value, str):
            found.append((node.lineno, node.args[0].value))
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value):
            found.append((node.lineno, node.value))
    return sorted({(line, name) for line, name in found if name.split(".")[0] in ("pipeline", "tui")})


def floor_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "tui":
        return "tui"
    return "cli" if parts[1:2] == ["cli"] else (parts[1] if len(parts) > 1 else "pipeline")


def pipeline_files() -> list[tuple[str, str]]:
    return [(p.relative_to(REPO).as_posix(), p.read_text(encoding="utf-8")) for p in sorted((REPO / "pipeline").rglob("*.py"))]


def test_no_module_under_pipeline_imports_tui():
    bad = [f"{rel}:{line}: {name}" for rel, source in pipeline_files() for line, name in project_imports(source)
           if floor_of(name) == "tui" and not (rel == SEAM and not _is_import_statement(source, line))]
    assert not bad, ("pipeline/ must not import tui/ (a screen opens through tui/commands/, "
                     "named in pipeline/cli.py's COMMANDS):\n" + "\n".join(bad))


def _is_import_statement(source: str, line: int) -> bool:
    return any(isinstance(n, (ast.Import, ast.ImportFrom)) and n.lineno == line for n in ast.walk(ast.parse(source)))


def test_each_floor_imports_only_the_floors_below():
    bad = []
    for rel, source in pipeline_files():
        floor = rel.split("/")[1] if rel.count("/") > 1 else None
        if floor not in MAY_IMPORT:
            continue  # pipeline/cli.py stands on top; pipeline/__init__.py imports nothing
        # Here a string only counts when it is imported: naming a module to hash its code
        # (engines/run_identity.py names the train stage) does not run it.
        for line, name in project_imports(source, strings=False):
            if floor_of(name) not in MAY_IMPORT[floor] and floor_of(name) != "pipeline":
                bad.append(f"{rel}:{line}: {name} ({floor} may import {', '.join(sorted(MAY_IMPORT[floor]))})")
    assert not bad, "upward imports (move the shared code down a floor):\n" + "\n".join(bad)


def test_the_reader_sees_every_way_up():
    # The check is only as good as its reader: a lazy import, an aliased one and an importlib
    # string must all count; a sentence or a bare folder name must not.
    source = (
        "import os\n"
        "def f():\n"
        "    from tui.app import TennyApp\n"
        "    import tui.screens.chat as chat\n"
        "    return importlib.import_module('tui.commands.review')\n"
        "HELP = 'tui is the app'\n"
        "PROJECT = ('pipeline', 'tui')\n"
        "from pipeline.stages import train\n"
        "from pipeline import cli\n"
    )
    assert project_imports(source) == [(3, "tui.app.TennyApp"), (4, "tui.screens.chat"), (5, "tui.commands.review"),
                                       (8, "pipeline.stages.train"), (9, "pipeline.cli")]
    assert [floor_of(m) for _, m in project_imports(source)] == ["tui", "tui", "tui", "stages", "cli"]
    named = "TRAIN = 'pipeline.stages.train'\nimport_module('pipeline.stages.eval')\n"
    assert project_imports(named, strings=False) == [(2, "pipeline.stages.eval")]
    assert project_imports(named) == [(1, "pipeline.stages.train"), (2, "pipeline.stages.eval")]


def test_the_seam_names_only_entries_with_the_command_interface():
    from pipeline.cli import APP, COMMANDS

    screens = {name: module for name, (module, _) in COMMANDS.items() if floor_of(module) == "tui"}
    assert set(screens) == {"review", "train-watch", "chat"}
    for name, module in screens.items():
        entry = importlib.import_module(module)
        assert callable(entry.add_arguments) and callable(entry.run), f"{module} ({name}) needs add_arguments and run"
    assert callable(importlib.import_module(APP).run_app)


def test_cli_startup_imports_no_textual():
    # The seam's modules are imported to build `tenny --help`: the app stays unloaded until a screen opens.
    code = "import sys; from pipeline.cli import build_parser; build_parser(); print('textual' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_screen_command_in_a_pipe_says_what_to_do(tmp_path):
    # The seam's entry runs its pipeline/ half's checks first: without a terminal it fails with the
    # next step, before drawing (pytest's stdin and stdout are no terminal).
    import argparse

    from pipeline.core.errors import UserError
    from tui.commands import review

    parser = argparse.ArgumentParser()
    review.add_arguments(parser)
    records = tmp_path / "r.jsonl"
    records.write_text("")
    with pytest.raises(UserError, match="needs a terminal"):
        review.run(None, parser.parse_args([str(records), "--decisions", str(tmp_path / "d.jsonl")]))
