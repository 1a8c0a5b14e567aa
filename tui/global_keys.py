"""The app's global keys lead every footer, so 80 columns never cut `? Help` and `q Quit`.

Textual's footer lists the focused widget's keys, then the screen's, then the
app's: on a screen with many keys of its own the two that explain and leave
the app were the ones cut off. `?` then lists everything else, on any screen.
"""

from __future__ import annotations

LEADING_KEYS = ("question_mark", "q")


class GlobalKeysFirst:
    """Mixin for the app's screens: the footer (and anything else reading active_bindings) sees ? and q first."""

    @property
    def active_bindings(self):
        found = super().active_bindings
        lead = {key: found[key] for key in LEADING_KEYS if key in found}
        return {**lead, **{key: value for key, value in found.items() if key not in lead}}


class ModalAware:
    """Mixin for screens that re-read slow state (`dvc status`, `dvc exp show`) on every visit:
    closing the keys help or the command palette over the screen is no visit, nothing it shows
    changed under the overlay, so ``back_from_modal()`` lets it skip the second of CPU."""

    _under_modal = False

    def on_screen_suspend(self) -> None:
        from textual.screen import ModalScreen

        self._under_modal = isinstance(self.app.screen, ModalScreen)

    def back_from_modal(self) -> bool:
        """Whether the screen resumes from a modal that covered it (answered once per resume)."""
        was, self._under_modal = self._under_modal, False
        return was
