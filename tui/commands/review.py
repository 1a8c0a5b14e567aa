"""``tenny review``: the review queue as an app of its own.

Flags and checks: pipeline/commands/review.py. The screen: tui/review_app.py.
"""

from __future__ import annotations

from typing import Any

from pipeline.commands.review import add_arguments, check
from pipeline.core import paths
from pipeline.core.errors import UserError

__all__ = ["add_arguments", "run"]


def run(params: Any, args: Any = None) -> int:
    records, decisions, dropped = check(args)  # a one-line error before the terminal goes full screen

    from tui.review_app import ReviewApp

    app = ReviewApp(records, decisions, dropped=dropped, base_dir=paths.BASE_DIR, by=getattr(args, "by", None),
                    theme=getattr(args, "theme", None))
    app.run()
    screen = app.review
    if screen.error is not None:
        # the app showed the problem; repeat it where it stays readable after the screen closes
        raise UserError(screen.error.split("\n")[0] + " — " + " ".join(screen.error.split("\n")[2:3]))
    return 0
