"""``tenny review`` as an app of its own: the review screen and nothing else.

The main app (tui/app.py) pushes the same ReviewScreen; this one exists so a
review over SSH starts in a fraction of a second with nothing else loaded.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from pipeline.core.errors import UserError
from tui.screens.review import ReviewScreen


class ReviewApp(App):
    TITLE = "tenny review"
    # mouse optional: everything has a key; ENABLE_COMMAND_PALETTE stays on (ctrl+p)

    def __init__(self, records: str | Path, decisions: str | Path, *, dropped: str | Path | None = None,
                 base_dir: str | Path | None = None, by: str | None = None, theme: str | None = None) -> None:
        super().__init__()
        self.review = ReviewScreen(records, decisions, dropped=dropped, base_dir=base_dir, by=by)
        if theme:
            if theme not in self.available_themes:
                names = ", ".join(sorted(self.available_themes))
                raise UserError(f"--theme {theme}: no such theme; choose one of {names}")
            self.theme = theme

    def get_default_screen(self) -> ReviewScreen:
        # the review is the bottom screen, so its q quits the app (pushed elsewhere, q pops it)
        return self.review
