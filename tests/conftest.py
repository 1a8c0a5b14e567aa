"""Shared fixtures. Each test module owns its own data; these are the few helpers many need."""

from __future__ import annotations

import gc
import os
import shutil
import sys
from pathlib import Path

import pytest

# One math thread per test process: the README runs one pytest worker per core, and torch's
# default of one thread per core in each worker (and in every stage subprocess it starts)
# oversubscribes the machine; on 2 cores that made the training tests 30 % slower.
# Set before torch is imported, and inherited by the subprocesses.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The test modules import torch, transformers, peft and Textual: about a million objects that live as
# long as the test process. Python's cyclic GC walked them all again on every full collection (each
# in-process `train.run` ends with accelerate's gc.collect(), 0.4-0.5 s of it) and repeatedly while
# they were imported: collection runs with the GC paused, and what it imported is then frozen (moved
# out of the GC's reach; nothing made by a test is). The training tests take ~30 % less CPU.
@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
    gc.collect()
    gc.freeze()


REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside an empty project folder (stages use relative paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def built_once(tmp_path_factory):
    """``built_once(build, dest)``: a copy at ``dest`` of the repository ``build(path)`` makes
    (git init, dvc init, commits, a repro: seconds of CPU each time), built once per run the
    first time a test asks and copied for each test after, so no test sees another's changes.

    Under xdist the workers share one build: the first to ask builds it under the run's
    temporary root while holding a file lock (pytest-xdist's documented way to run a
    session fixture once), the others wait and copy it.
    """
    from filelock import FileLock

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp()
    shared = (shared.parent if worker else shared) / "built-once"
    shared.mkdir(exist_ok=True)

    def copy(build, dest: Path) -> Path:
        name = f"{build.__module__}.{build.__qualname__}"
        built = shared / name / "r"
        with FileLock(str(shared / f"{name}.lock")):
            if not (shared / name / "done").exists():
                if built.parent.exists():
                    shutil.rmtree(built.parent)  # a build that failed half-way: start over
                built.parent.mkdir()
                build(built)
                (shared / name / "done").touch()
        shutil.copytree(built, dest, symlinks=True)
        return Path(dest)

    return copy


@pytest.fixture(scope="session")
def tenny_bin() -> str:
    """The installed `tenny` command of the interpreter running the tests."""
    exe = BIN / "tenny"
    assert exe.exists(), f"{exe}: install the project first (pip install -e '.[dev]')"
    return str(exe)


def env_with_bin() -> dict:
    """Environment whose PATH finds this venv's tenny and dvc first (DVC runs `tenny <stage>`)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # `dvc exp run` commits to git: give it an identity that does not depend on the machine.
    for var, value in (("GIT_AUTHOR_NAME", "tenny tests"), ("GIT_AUTHOR_EMAIL", "tests@tenny.invalid"),
                       ("GIT_COMMITTER_NAME", "tenny tests"), ("GIT_COMMITTER_EMAIL", "tests@tenny.invalid")):
        env.setdefault(var, value)
    return env
