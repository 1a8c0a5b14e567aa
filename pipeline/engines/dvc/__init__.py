"""Everything tenny asks of DVC and git, behind small doors, one job per module.

The app never re-implements DVC: stage state comes from ``dvc status --json``
and dvc.lock, runs are ``dvc repro`` / ``dvc exp run`` subprocesses (so a run
from the app is the same run as from a shell), files at a revision come from
``dvc.api.open``. DVC itself is imported lazily: the ``tenny`` command imports
parts of this package at startup and must stay fast. Import the door you need:

    cli          calling the dvc and git command lines; finding the repo; DvcError
    project      dvc.yaml's stages, their state, declared outputs; the one dvc.lock reader
    runs         `dvc repro` / `dvc exp run` as a streamed, cancellable process group
    processes    which dvc commands are working in a repo right now (/proc)
    workspace    snapshot before a run, backup of uncached outputs, settle/restore after it
    recovery     what a crash (kill -9) left behind, and the safe repairs at startup
    remotes      DVC remotes from params, push / pull / cloud status
    experiments  `dvc exp show` parsed into rows
    revisions    files, params and metrics at a git revision or experiment

Checking ``dvc exp run -S`` overrides is params validation: pipeline/core/overrides.py.
Every failure a user can fix becomes a UserError naming what to do.
"""
