"""A footer that wraps onto as many rows as it needs, so every review key shows at 80 columns."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer


class ReviewFooter(Footer):
    """Textual's Footer laid out as a grid of fixed-width cells (it sets one column per key itself)."""

    CELL = 10  # "a Accept" plus a gap; wider when a label needs it ("4 Experiments" in the app)

    # Here, not only in review.tcss: the footer must wrap the same way whichever app shows it
    # (standalone `tenny review` lost the stylesheet's grid to Footer's own horizontal layout).
    DEFAULT_CSS = """
    ReviewFooter FooterKey { width: 100%; margin: 0; }
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._items = 0
        self._cell = self.CELL

    def compose(self) -> ComposeResult:
        widgets = list(super().compose())
        self._items = len(widgets)
        # One width for every cell keeps the grid aligned; the longest label sets it, so none is cut.
        self._cell = max([self.CELL] + [len(w.key_display) + len(w.description) + 3 for w in widgets
                                        if hasattr(w, "key_display")])
        self._fit(self.size.width or 80)
        yield from widgets

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        if not self._items:
            return
        columns = max(1, min(self._items, width // self._cell))
        self.styles.layout = "grid"
        self.styles.grid_gutter_horizontal = 0
        self.styles.grid_gutter_vertical = 0
        self.styles.grid_size_columns = columns
        self.styles.height = -(-self._items // columns)
