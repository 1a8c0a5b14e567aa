"""dvc.yaml's code deps are exactly each stage's import closure inside the project.

Too few and `dvc repro` calls a stale output up to date; too many and a change to
the app, the diff or a benchmark re-runs training. The closure is read from the
code (every import, also those inside functions) by pipeline/engines/code_closure.py,
the same reading the train stage hashes into its run identity, so a new import
without a new dep fails here, naming the stage and the module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import COMMANDS
from pipeline.engines.code_closure import PROJECT, closure, module_file

REPO = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: str) -> str:
    cmd = STAGES[stage]["cmd"].split()
    assert cmd[:2] == ["tenny", stage], f"dvc.yaml stage {stage}: cmd should be `tenny {stage}`, is {STAGES[stage]['cmd']!r}"
    return COMMANDS[stage][0]


def code_deps(stage: str) -> list[str]:
    return [d.rstrip("/") for d in STAGES[stage].get("deps", []) if d.split("/")[0] in PROJECT]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_cover_the_stage_import_closure(stage):
    entry = module_file(stage_module(stage))
    assert entry is not None, f"stage {stage}: no module {stage_module(stage)}"
    deps = code_deps(stage)
    missing = sorted(f for f in closure(entry) if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports {missing} but does not list them in deps"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_list_no_code_the_stage_does_not_import(stage):
    needed = closure(module_file(stage_module(stage)))
    extra = [d for d in code_deps(stage) if not any(f == d or f.startswith(d + "/") for f in needed)]
    assert not extra, f"dvc.yaml stage {stage!r} lists {extra}, which it never imports: a change there would re-run it"


def test_no_stage_imports_another_stage():
    stage_files = {module_file(stage_module(s)).relative_to(REPO).as_posix(): s for s in STAGES}
    for path, stage in stage_files.items():
        others = {f for f in closure(REPO / path) if f in stage_files and f != path}
        assert not others, f"stage {stage} imports stage module(s) {sorted(others)}: move the shared code to pipeline/engines or pipeline/core"


def test_the_app_the_diff_and_the_benchmarks_are_no_stage_dep():
    for stage in STAGES:
        for dep in code_deps(stage):
            assert not dep.startswith(("tui", "bench", "pipeline/commands")), f"stage {stage} depends on {dep}"
        for f in closure(module_file(stage_module(stage))):
            assert not f.startswith(("tui/", "pipeline/commands/")), f"stage {stage} imports {f}"


def test_the_closure_reader_sees_imports_inside_functions(tmp_path, monkeypatch):
    # The check is only as good as its reader: a lazy import must count.
    probe = REPO / "pipeline/stages/build.py"
    assert "pipeline/engines/modeling.py" in closure(probe)
    assert any("from pipeline.engines.modeling import" in line and line.startswith("    ")
               for line in probe.read_text().splitlines())
