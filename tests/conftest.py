"""Shared fixtures. Each test module owns its own data; these are the few helpers many need."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside an empty project folder (stages use relative paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
