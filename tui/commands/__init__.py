"""The app's screens as ``tenny`` commands: the seam between the CLI and ``tui/``.

``pipeline/`` stands below the app and never imports it (tests/test_layering.py
checks). A command that opens a screen is therefore named here, one module per
command, and ``pipeline/cli.py``'s ``COMMANDS`` table points at it by name. Each
module takes its flags and the checks that run before the screen opens from
its half in ``pipeline/commands/``, and keeps a mode that only prints (``--once``,
``--prompt``) there too. Textual is imported only when a screen opens: the CLI
imports these modules to build its help.
"""
