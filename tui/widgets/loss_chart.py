"""Train and eval loss against step, drawn with plotext."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from pipeline.core import run_status as rs

SERIES = ((rs.TRAIN_LOSS, "train loss"), (rs.EVAL_LOSS, "eval loss"))


class LossChart(PlotextPlot):
    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 10; border: round $panel; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._shown: tuple = ()

    def on_mount(self) -> None:
        self.border_title = "loss"
        self._draw({})

    def show(self, series: dict[str, list[tuple[int, float]]]) -> None:
        # Redraw only when a series grew: plotext redraws the whole canvas.
        key = tuple((name, len(points), tuple(points[-1:])) for name, _ in SERIES for points in [series.get(name) or []])
        if key == self._shown:
            return
        self._shown = key
        self._draw(series)

    def _draw(self, series: dict) -> None:
        plt = self.plt
        plt.clear_data()
        plt.xlabel("step")
        drawn = False
        for name, label in SERIES:
            points = series.get(name) or []
            if points:
                plt.plot([p[0] for p in points], [p[1] for p in points], label=label, marker="braille")
                drawn = True
        plt.title("" if drawn else "no loss logged yet")
        self.refresh()
