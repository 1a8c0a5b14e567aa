"""Which project files a module runs: its import closure inside ``pipeline/`` and ``tui/``.

One reading of the code serves two checks: dvc.yaml's code deps for each stage
(tests/test_dvc_deps.py) and the train stage's run identity (the code that made
an adapter is part of what it is). Every import counts, also those inside
functions, and a dotted module name in a string (an importlib dispatch table).
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

PROJECT = ("pipeline", "tui")
# UserError's wording cannot change an output; every stage imports it.
WORDING_ONLY = {"pipeline/core/errors.py"}
DOTTED = re.compile(r"(pipeline|tui)(\.\w+)+")
# The folder that holds the running `pipeline` package (an editable install: the project itself).
CODE_ROOT = Path(__file__).resolve().parent.parent.parent


def module_file(name: str, root: Path = CODE_ROOT) -> Path | None:
    base = root / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value):
            found.add(node.value)  # a dispatch table for importlib ("pipeline.engines...providers.transcripts")
    return {m for m in found if m.split(".")[0] in PROJECT}


def closure(entry: Path, root: Path = CODE_ROOT) -> set[str]:
    """Project files ``entry`` imports, directly or not, as paths relative to ``root`` (itself included)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            # `pipeline.core.paths` is a package's module; `pipeline.core` its (empty) package.
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                f = module_file(".".join(parts[:i]), root)
                if f is not None and f not in seen:
                    todo.append(f)
    rel = {p.relative_to(root).as_posix() for p in seen}
    return {f for f in rel if f not in WORDING_ONLY and not (f.endswith("__init__.py") and not (root / f).read_text().strip())}


def code_digests(module: str, root: Path = CODE_ROOT) -> dict[str, str]:
    """sha256 of each file in ``module``'s closure (``pipeline.stages.train``), by relative path."""
    entry = module_file(module, root)
    if entry is None:
        raise ValueError(f"{module}: no such module under {root}")
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in sorted(closure(entry, root))}
