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
