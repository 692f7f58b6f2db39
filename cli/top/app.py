"""``tagger top``: the live, top-like view (Textual).

Three parts, kept apart (the bpftop/glances shape):

- sampling: a thread calls ``source.next_frame()`` once per interval and hands
  the newest frame to the UI thread; it never waits on a key press, and a slow
  source (a BPF read, a socket) never freezes the keys;
- state: :class:`~.model.TopModel` (rows, sort, filter, selection, history);
- rendering: :mod:`.render` and :mod:`.widgets`, only what is on screen.

Every exit path (q, Ctrl+C, SIGTERM, SIGHUP, an exception) goes through
Textual's shutdown, which restores the terminal; the source is closed (BPF
detached) in :meth:`TopApp.on_unmount`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import click
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Input, Static

from tagger.errors import RulesError, TaggerError
from tagger.rules import RulesLoadError
from tagger.cli.params import duration

from .model import KEYS, Frame, TopModel, thresholds_from_rules, thresholds_from_ruleset
from .render import detail_renderable, header_text, status_text
from .sources import DemoSource, FrameSource, LocalSource, SocketSource, SourceUnavailable
from .widgets import CgroupTable


class Sampled(Message):
    """The sampler thread has a new frame (or an error) in the app's inbox."""


class TopApp(App):
    """The live view over any :class:`~.sources.FrameSource`.

    ``interval=None`` starts no sampler: a test then feeds frames itself with
    :meth:`sample_now` or :meth:`show_frame`."""

    TITLE = "tagger top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #header { height: 1; background: $boost; padding: 0 1; }
    #status { height: 1; background: $boost; padding: 0 1; }
    #detail { height: 55%; border-top: heavy $accent; padding: 0 1; display: none; }
    #detail.open { display: block; }
    #filter { display: none; border: none; height: 1; padding: 0 1; }
    #filter.open { display: block; }
    """
    BINDINGS = [Binding(k.key, k.action, k.description, show=k.show, key_display=k.display)
                for k in KEYS]

    def __init__(self, source: FrameSource, interval: float | None = 1.0,
                 thresholds: dict | None = None):
        super().__init__()
        self.source = source
        self.interval = interval
        self.model = TopModel(thresholds)
        self._inbox: tuple[Frame | None, Exception | None] | None = None
        self._inbox_lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._held: Frame | None = None          # newest frame that arrived while paused
        self.source_error: str = ""
        self.frames_shown = 0
        self._source_closed = False

    # -- layout -----------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield CgroupTable(self.model, id="table")
        with VerticalScroll(id="detail"):
            yield Static(id="detail-body")
        yield Static(id="status")
        yield Input(placeholder="filter by name, path or tag (key=value); Enter keeps, Esc clears",
                    id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#table").focus()
        self.refresh_view()
        if not self.is_headless:
            # Without these, SIGTERM/SIGHUP would kill the process with the
            # terminal still in raw mode and on the alternate screen.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGHUP):
                try:
                    loop.add_signal_handler(sig, self.exit)
                except (NotImplementedError, RuntimeError, AttributeError):
                    pass
        if self.interval is not None:
            self._sampler = threading.Thread(target=self._sample_loop, name="tagger-top-sampler",
                                             daemon=True)
            self._sampler.start()

    def on_unmount(self) -> None:
        self._stop.set()
        if self._sampler is None:
            self._close_source()
            return
        # The sampler closes the source itself once its current tick ends, so a
        # BPF read is never cut off mid-call.  A tick stuck past the timeout is
        # left alone: closing under it could crash, and process exit closes the
        # BPF file descriptors (which detaches the programs) anyway.
        self._sampler.join(timeout=(self.interval or 0) + 5)
        if self._sampler.is_alive():
            self.log.warning("sampler still in a tick at exit; the source closes with the process")

    # -- sampling (runs on its own thread) --------------------------------
    def _sample_loop(self) -> None:
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    frame, error = self.source.next_frame(), None
                except Exception as err:       # shown in the status line; the next tick retries
                    frame, error = None, err
                if frame is not None or error is not None:
                    self._deliver(frame, error)
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay < 0:                  # fell behind (slow source): do not burst
                    next_at, delay = time.monotonic(), 0.0
                self._stop.wait(delay)
        finally:
            self._close_source()

    def _deliver(self, frame: Frame | None, error: Exception | None) -> None:
        """Put the newest result in the inbox; post one message if none is pending.
        A UI that falls behind skips frames but keeps their tag events."""
        with self._inbox_lock:
            pending = self._inbox is not None
            if pending and frame is not None and self._inbox[0] is not None:
                frame.events = self._inbox[0].events + frame.events
            self._inbox = (frame, error)
        if not pending:
            self.post_message(Sampled())

    def on_sampled(self, _message: Sampled) -> None:
        with self._inbox_lock:
            item, self._inbox = self._inbox, None
        if item is None:
            return
        frame, error = item
        if error is not None:
            self.source_error = f"{type(error).__name__}: {error}"
            self.refresh_view()
        if frame is not None:
            self.show_frame(frame)

    def sample_now(self) -> bool:
        """Take one frame from the source on this thread (tests, ``interval=None``)."""
        frame = self.source.next_frame()
        if frame is not None:
            self.show_frame(frame)
        return frame is not None

    def show_frame(self, frame: Frame) -> None:
        self.source_error = ""
        if self.model.state.paused:
            if self._held is not None:
                frame.events = self._held.events + frame.events
            self._held = frame
            return
        self.model.apply_frame(frame)
        self.frames_shown += 1
        self.refresh_view()

    def _close_source(self) -> None:
        with self._inbox_lock:              # the sampler thread and the UI may both get here
            if self._source_closed:
                return
            self._source_closed = True
        try:
            self.source.close()
        except Exception:                     # closing must not stop the terminal being restored
            self.log.error("closing the source failed")

    # -- drawing ----------------------------------------------------------
    def refresh_view(self) -> None:
        model = self.model
        self.query_one("#header", Static).update(header_text(model))
        status = status_text(model)
        if self.source_error:
            status.append(f" │ source: {self.source_error}", "bold red")
        self.query_one("#status", Static).update(status)
        self.query_one(CgroupTable).update_view()
        detail = self.query_one("#detail")
        detail.set_class(model.state.detail, "open")
        if model.state.detail:
            self.query_one("#detail-body", Static).update(
                detail_renderable(model.detail(), model.state.message))

    # -- actions (KEYS in model.py binds them) ----------------------------
    def action_sort(self, key: str) -> None:
        self.model.sort_by(key)
        self.refresh_view()

    def action_tree(self) -> None:
        self.model.toggle_tree()
        self.refresh_view()

    def action_detail(self) -> None:
        self.model.toggle_detail()
        self.refresh_view()

    def action_pause(self) -> None:
        state = self.model.state
        state.paused = not state.paused
        if not state.paused and self._held is not None:
            held, self._held = self._held, None
            self.show_frame(held)
            return
        self.refresh_view()

    def action_move(self, delta: int) -> None:
        self.model.move(delta)
        self.refresh_view()

    def action_page(self, pages: int) -> None:
        self.model.move(pages * self.query_one(CgroupTable).page_rows)
        self.refresh_view()

    def action_move_to(self, position: int) -> None:
        self.model.move_to(position)
        self.refresh_view()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = self.model.state.filter
        box.add_class("open")
        box.focus()

    def action_back(self) -> None:
        """Esc: abandon the filter being typed, else close the detail pane,
        else clear the filter."""
        if self.query_one("#filter", Input).has_class("open"):
            self.model.set_filter("")
            self._close_filter()
            return
        if self.model.state.detail:
            self.model.toggle_detail()
        elif self.model.state.filter:
            self.model.set_filter("")
        self.refresh_view()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.has_class("open"):      # live: the table narrows as you type
            self.model.set_filter(event.value)
            self.refresh_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._close_filter()

    def _close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("open")
        self.query_one(CgroupTable).focus()
        self.refresh_view()


# ---------------------------------------------------------------------------

@click.command()
@click.option("--connect", "socket_path", metavar="SOCKET",
              help="Attach to a running `tagger run` through its API socket "
                   "(e.g. /run/tagger/tagger.sock) instead of measuring here.")
@click.option("--interval", default="1s", show_default=True, callback=duration(at_least=0.05),
              help="Refresh period (10s, 500ms, ...).")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False),
              help="Rules directory for standalone tags and for colour thresholds "
                   "(default: the packaged rules).")
@click.option("--demo", type=int, default=None, metavar="N",
              help="Show a synthetic host of N cgroups (no root, no BPF): try the keys.")
def top(socket_path, interval, rules_dir, demo):
    """The live view: who uses the machine, who suffers, what tagger tagged and did.

    Standalone it loads the BPF programs itself (root); with --connect it
    attaches to a running agent.  Keys are listed in the footer.
    """
    if rules_dir is None:
        from tagger.default_rules import DIRECTORY as rules_dir
    # Open the source before Textual takes the terminal, so "needs root" and
    # rules errors print as plain lines.
    try:
        if demo is not None:
            source = DemoSource(demo, interval=interval)
        elif socket_path:
            source = SocketSource(socket_path)
        else:
            source = LocalSource(rules_dir)
    except RulesError as err:
        problems = err.problems if isinstance(err, RulesLoadError) else [str(err)]
        raise click.ClickException("rules directory has errors:\n" + "\n".join(map(str, problems)))
    except (SourceUnavailable, TaggerError) as err:
        raise click.ClickException(str(err))
    # Standalone, the colours come from the rules the source runs (loaded once).
    thresholds = (thresholds_from_ruleset(source.ruleset) if isinstance(source, LocalSource)
                  else thresholds_from_rules(rules_dir))
    app = TopApp(source, interval=interval, thresholds=thresholds)
    try:
        app.run()
    finally:
        if app._sampler is None:        # never mounted: nobody else will close it
            app._close_source()
    if app.return_code not in (None, 0):
        raise click.exceptions.Exit(app.return_code)
