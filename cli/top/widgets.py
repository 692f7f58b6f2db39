"""Textual widgets of the live view.  They draw the model; they hold no state
of their own beyond a cache of the lines on screen."""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.events import Click, MouseScrollDown, MouseScrollUp
from textual.strip import Strip
from textual.widget import Widget

from .model import TopModel
from .render import screen_lines

STYLE_EMPTY = Style(dim=True, italic=True)


class CgroupTable(Widget):
    """A virtual table: the model keeps all rows sorted; this draws only the
    ``height - 1`` rows on screen (Textual's line API), so the cost of a tick
    does not grow with the number of cgroups.  Textual's DataTable would hold
    and re-populate every row each tick (see benchmarks/bench_top.py)."""

    DEFAULT_CSS = """
    CgroupTable { height: 1fr; }
    """
    can_focus = True

    def __init__(self, model: TopModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self._key = None
        self._strips: list[Strip] = []

    @property
    def page_rows(self) -> int:
        return max(1, self.size.height - 1)

    def update_view(self) -> None:
        """The model changed: redraw on the next frame."""
        self._key = None
        self.refresh()

    def _build(self, width: int, height: int) -> None:
        lines = screen_lines(self.model, width, height)
        self._strips = [Strip(segs).adjust_cell_length(width) for segs in lines]
        reason = self.model.empty_reason()
        if reason is not None:
            text = reason.center(width)[:width]
            self._strips += [Strip.blank(width), Strip([Segment(text, STYLE_EMPTY)]).adjust_cell_length(width)]
        self._key = (self.model.generation, width, height)

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        if self._key != (self.model.generation, width, height):
            self._build(width, height)
        return self._strips[y] if y < len(self._strips) else Strip.blank(width)

    # Mouse: click selects, the wheel moves the selection.
    def on_click(self, event: Click) -> None:
        if event.y >= 1:
            self.model.move_to(self.model.state.top + event.y - 1)
            self.app.refresh_view()

    def on_mouse_scroll_down(self, event: MouseScrollDown) -> None:
        self.model.move(3)
        self.app.refresh_view()

    def on_mouse_scroll_up(self, event: MouseScrollUp) -> None:
        self.model.move(-3)
        self.app.refresh_view()
