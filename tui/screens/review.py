"""The review queue: one sample at a time, decided with one key, logged at once.

The screen never holds the truth. It reads the records through an index
(``pipeline.engines.review_queue``) and writes each decision to the append-only log
before it moves on, so a kill, a dropped SSH session or a crash loses at most
the keystroke in flight; reopening lands on the first undecided sample.

Slow work (indexing, search, a slot filter, bulk decisions, near-twins, a
tokenizer) runs in thread workers; the screen stays responsive and says what
is running in the status line, and what failed: a worker that raises never
takes the app down (exit_on_error=False; ``on_worker_state_changed``).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.records import RecordError, body_kind, editable_text
from pipeline.core.text import as_line, as_text, clean
from pipeline.engines.review_queue import DroppedIndex, Filter, ReviewQueue, Sample, approx_tokens
from tui.widgets.review_dialogs import ConfirmDialog, EditDialog, FilterDialog, PromptDialog, TagSuggester
from tui.widgets.review_footer import ReviewFooter
from tui.widgets.review_panels import sample_text, side_text, status_text, team_text

SAMPLE_LIMIT = 20_000  # characters drawn per field; the rest is counted, not drawn
RATE_WINDOW_S = 300.0  # samples per minute over the last five minutes


class ReviewCommands(Provider):
    """Every review action in the command palette (ctrl+p), with its key."""

    def _commands(self):
        screen = self.screen
        if not isinstance(screen, ReviewScreen):
            return []
        out = []
        for binding in screen.BINDINGS:
            if not isinstance(binding, Binding) or _other_q(screen, binding):
                continue
            title = binding.tooltip or binding.description
            key = binding.key_display or binding.key.split(",")[0]
            out.append((f"{title} ({key})", binding.action))
        return out

    async def discover(self) -> Hits:
        for title, action in self._commands():
            yield DiscoveryHit(title, self._runner(action), help="review")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), self._runner(action), help="review")

    def _runner(self, action: str):
        screen = self.screen

        async def run() -> None:
            await screen.run_action(action)

        return run


class ReviewScreen(Screen):
    """Review the samples of one records file, writing decisions to one log."""

    CSS_PATH = str(Path(__file__).resolve().parent.parent / "review.tcss")
    # the file also styles the dialogs this screen pushes (every selector is rv-/class-named)
    SCOPED_CSS = False
    COMMANDS = {ReviewCommands}
    # Short descriptions: the footer is a 9-column grid of two rows, so every
    # key fits at 80 columns; the help screen and palette use the tooltips.
    BINDINGS = [
        Binding("a", "accept", "Accept", tooltip="Accept the sample and go to the next"),
        Binding("x", "reject", "Reject", tooltip="Reject the sample and go to the next"),
        Binding("e", "edit", "Edit", tooltip="Edit the sample (ctrl+s saves, escape cancels)"),
        Binding("t", "tag", "Tag", tooltip="Tag the sample (comma-separated; tab completes known tags)"),
        Binding("u", "undo", "Undo", tooltip="Undo the latest decision (repeat for more)"),
        Binding("space", "skip", "Skip", key_display="␣", tooltip="Skip to the next sample without deciding"),
        Binding("j,down", "next", "Next", key_display="j", tooltip="Next sample (j or ↓)"),
        Binding("k,up", "prev", "Prev", key_display="k", tooltip="Previous sample (k or ↑)"),
        Binding("g", "goto", "Go to", tooltip="Go to a position in the queue"),
        Binding("slash", "search", "Search", key_display="/", tooltip="Search: text (any case), or /regex/"),
        Binding("n", "search_next", "Hit→", tooltip="Next search hit"),
        Binding("N", "search_prev", "Hit←", key_display="N", tooltip="Previous search hit"),
        Binding("f", "filter", "Filter", tooltip="Filter: pending, accepted, rejected, edited, tag:NAME, KEY=VALUE"),
        Binding("A", "bulk('accept')", "All ✓", key_display="A",
                tooltip="Accept every sample the filter shows (asks first)"),
        Binding("X", "bulk('reject')", "All ✗", key_display="X",
                tooltip="Reject every sample the filter shows (asks first)"),
        Binding("s", "sort", "Sort", tooltip="Sort by the judge's prescore: best first, most uncertain first, file order"),
        Binding("S", "stats", "Stats", key_display="S",
                tooltip="Team agreement: Cohen's kappa per pair, Krippendorff's alpha, per tag"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="All keys"),
        # One key, two meanings: pushed inside the app q goes back to the screen below (the
        # app's own q quits); as `tenny review` it quits. check_action shows the one that applies.
        Binding("q", "back", "Back", tooltip="Back to the app (every decision is already saved)"),
        Binding("q", "quit_review", "Quit", tooltip="Quit (every decision is already saved)"),
        Binding("pagedown", "scroll_sample(1)", "Page↓", show=False, tooltip="Scroll a long sample down"),
        Binding("pageup", "scroll_sample(-1)", "Page↑", show=False, tooltip="Scroll a long sample up"),
    ]

    def __init__(self, records: str | Path = paths.DEDUPED, decisions: str | Path = paths.DECISIONS, *,
                 dropped: str | Path | None = None, base_dir: str | Path | None = None,
                 by: str | None = None, name: str | None = None, overlap: int | None = None,
                 adjudicators: list[str] | None = None, team_dir: str | Path | None = None) -> None:
        super().__init__(name=name)
        self.records_path = Path(records)
        self.decisions_path = Path(decisions)
        # Team review: the other logs in data/reviews/ (a folder named reviews) are the team's.
        self.team_dir = Path(team_dir) if team_dir is not None else (
            self.decisions_path.parent if self.decisions_path.parent.name == "reviews" else None)
        if overlap is None or adjudicators is None:
            review = _review_params(self.decisions_path)
            overlap = review.overlap if overlap is None else overlap
            adjudicators = review.adjudicators if adjudicators is None else adjudicators
        self.overlap, self.adjudicators = overlap, list(adjudicators)
        self.dropped_path = Path(dropped) if dropped is not None else paths.DEDUPE_DROPPED
        self.base_dir = Path(base_dir) if base_dir is not None else paths.BASE_DIR
        self.by = by
        self.queue: ReviewQueue | None = None
        self.error: str | None = None  # a file the screen cannot open: nothing else works
        self.pos: int | None = None
        self.current: Sample | None = None
        self.current_error: str | None = None
        self.note = ""
        self.busy = ""  # a running slow task, shown in the status line
        self.search_query: str | None = None
        self.dropped: DroppedIndex | None = None
        self.twins_error: str | None = None  # the near-twins report could not be read: why
        self.tokenizer = None
        self.rates: deque[float] = deque()
        self.slot_hints: list[str] = []
        self.ready = False  # the whole file is indexed
        self.shown = 0  # samples drawn: tests and the benchmark wait on it
        self.updates = 0  # status line redraws (every key makes one)
        self.scores = None  # the judge's prescores (prescore_file.Scores) of the current judge, when there are
        self.score_of = None  # per position: the score, 0 where none
        self.scores_note = ""  # why there are none: no file, or a stale one
        self._team_seen = False  # the team's logs were folded and routing took them in

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="rv-title")
        with Horizontal(id="rv-body"):
            with VerticalScroll(id="rv-sample-scroll", can_focus=False):
                yield Static(Text("opening…", style="dim"), id="rv-sample")
            with VerticalScroll(id="rv-side-scroll", can_focus=False):
                yield Static(id="rv-side")
        yield Static(id="rv-status")
        yield ReviewFooter(compact=True, show_command_palette=False, id="rv-footer")

    def on_mount(self) -> None:
        self._title()
        self._open()
        # another session on the same log, or a teammate on theirs: their decisions show up here
        # within a second (each tick only stats the logs' sizes unless one grew)
        self.set_interval(1.0, self.sync_now)

    def on_unmount(self) -> None:
        # A thread worker cannot be stopped, only asked; one still reading keeps
        # the file open (the process exit closes it) rather than read a closed fd.
        self.workers.cancel_node(self)
        busy = any(w.node is self and not w.is_finished for w in self.app.workers)
        if self.queue is not None and not busy:
            self.queue.close()

    # ------------------------------------------------------------ opening

    @work(thread=True, exclusive=True, group="open", exit_on_error=False)
    def _open(self) -> None:
        """Fold the log and index the records (together); show the resume point as soon as it is known."""
        worker = get_current_worker()
        try:
            queue = ReviewQueue(self.records_path, self.decisions_path, by=self.by, overlap=self.overlap,
                                adjudicators=self.adjudicators, team_dir=self.team_dir)
        except (UserError, OSError) as err:
            self.app.call_from_thread(self._fail, _error_text(err, self.records_path, self.decisions_path))
            return
        shown = False
        last_report = 0.0
        try:
            for resume in queue.opening():
                if worker.is_cancelled:
                    return
                if not shown and resume is not None:
                    shown = True
                    self.queue = queue
                    self._note_set_aside(queue)
                    self.app.call_from_thread(self._show, resume)
                now = time.monotonic()
                if now - last_report > 0.2:
                    last_report = now
                    self.busy = f"indexing {100 * queue.index.scanned / max(1, queue.index.size):.0f}%"
                    self.app.call_from_thread(self._status if shown else self._opening)
        except (UserError, OSError) as err:
            self.app.call_from_thread(self._fail, _error_text(err, self.records_path, self.decisions_path))
            return
        self.queue = queue
        if not shown:
            self._note_set_aside(queue)
        self.app.call_from_thread(self._indexed, shown)

    def _note_set_aside(self, queue: ReviewQueue) -> None:
        if queue.log.set_aside is not None:
            self.note = f"the log's last line was cut by a crash; set aside in {queue.log.set_aside}"

    def _opening(self) -> None:
        if self.current is None and self.error is None:
            self.query_one("#rv-sample", Static).update(Text(f"opening… {self.busy}", style="dim"))

    def _indexed(self, shown: bool) -> None:
        assert self.queue is not None
        self.queue.finish_index()
        self.ready = True
        self.busy = ""
        if not len(self.queue):
            self._fail(f"{self.records_path}: no samples in this file. Run `tenny synthesize` and `tenny dedupe`, "
                       "or pass another RECORDS file.")
            return
        if not shown:
            # every sample is decided: open on the last one, say so
            self.note = self.note or "every sample has a decision; f filters, / searches"
            self._show(len(self.queue) - 1)
        else:
            self._status()
        self._slot_hints()
        if self.dropped_path.exists():
            self._load_dropped()
        tok = self.base_dir / "tokenizer.json"
        if tok.exists():
            self._load_tokenizer(tok)
        self._load_scores()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that raised (they all run with exit_on_error=False): say what failed
        in the status line and keep the screen up. Textual delivers this on the UI thread."""
        if event.state != WorkerState.ERROR:
            return
        err = event.worker.error
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        self.busy = ""
        group = event.worker.group
        if group == "open":
            self._fail(f"{message}\n\nThe review could not open {self.records_path}; fix the file and run "
                       "`tenny review` again.")
            return
        if group == "dropped":
            self.twins_error = f"unavailable: {message}"
            self._side()
        what = {"dropped": "near-twins", "tokenizer": "token count"}.get(group, group)
        self.say(f"{what} failed: {message}")

    def _fail(self, message: str) -> None:
        """A file that cannot be read: say which and what to do; only quit works."""
        self.error = message
        self.busy = ""
        self.query_one("#rv-sample", Static).update(as_text(message, multiline=True, style="bold red"))
        self.query_one("#rv-side", Static).update(Text("q quits", style="dim"))
        self.query_one("#rv-status", Static).update(Text("cannot open the review", style="bold red"))
        self.add_class("-failed")
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="dropped", exit_on_error=False)
    def _load_dropped(self) -> None:
        index = DroppedIndex(self.dropped_path)
        worker = get_current_worker()
        index.scan(cancelled=lambda: worker.is_cancelled)
        if not worker.is_cancelled:
            self.app.call_from_thread(self._dropped_loaded, index)

    def _dropped_loaded(self, index: DroppedIndex) -> None:
        self.dropped = index
        self._side()

    @work(thread=True, exclusive=True, group="tokenizer", exit_on_error=False)
    def _load_tokenizer(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception:  # an unreadable tokenizer only costs the exact count
            return
        self.app.call_from_thread(self._side)

    @work(thread=True, exclusive=True, group="prescore", exit_on_error=False)
    def _load_scores(self) -> None:
        """The judge's scores (data/reviews/prescore.jsonl) of the judge params.yaml names; another's are stale."""
        from pipeline.core.decisions import PRESCORE_NAME
        from pipeline.engines.prescore_file import read_scores

        path = (self.team_dir or self.decisions_path.parent) / f"{PRESCORE_NAME}.jsonl"
        if not path.exists():
            self.scores_note = "none (review.prescore: true scores the samples)"
            return
        current = _current_judge(self.decisions_path)
        scores = read_scores(path, current)
        note = ""
        if not len(scores) and scores.stale:
            note = (f"stale: {sum(scores.stale.values()):,} scores from another judge model or prompt, not shown; "
                    "run `tenny review --prescore` to score with this one")
        queue = self.queue
        score_of = scores.lookup(queue.keys) if queue is not None and len(scores) else None
        self.app.call_from_thread(self._scores_loaded, scores if len(scores) else None, score_of, note)

    def _scores_loaded(self, scores, score_of, note: str) -> None:
        self.scores, self.score_of, self.scores_note = scores, score_of, note
        self._side()

    def _judge_text(self) -> Text:
        out = Text()
        out.append("\nJUDGE PRESCORE\n", style="bold")
        if self.scores is None or self.current is None:
            out.append(self.scores_note or "loading…", style="dim")
            return out
        row = self.scores.row(self.current.id)
        if row is None:
            out.append("not scored", style="dim")
            return out
        out.append(f"{row['score']}/10", style="bold")
        out.append(" ")
        out.append_text(as_line(row.get("model") or "", 40))
        out.append("\n")
        out.append_text(as_text(str(row.get("reason", "")), multiline=False))
        return out

    def action_sort(self) -> None:
        if self.queue is None or not self.ready:
            self.say("still indexing; sorting waits for the whole file")
            return
        if self.score_of is None:
            self.say(f"no judge scores to sort by: {self.scores_note or 'loading'}")
            return
        now = self.queue.sort_label
        how = {"file order": "score", "judge score": "uncertain"}.get(now, "file")
        self.queue.sort_by_scores(self.score_of, how)
        self.note = f"sorted: {self.queue.sort_label}"
        first = self.queue.first_pending() if how != "file" else None
        self._show(first if first is not None else self.pos)

    def _slot_hints(self) -> None:
        """Filter suggestions: slot values seen in the first few hundred samples."""
        assert self.queue is not None
        seen: dict[str, None] = {}
        for pos in range(min(300, len(self.queue))):
            try:
                meta = self.queue.sample(pos).record.get("meta")
            except (UserError, ValueError):
                continue
            if not isinstance(meta, dict):
                continue
            for holder in [meta] + [v for k, v in meta.items() if k in ("slots", "slot_values", "vars", "variables")]:
                if not isinstance(holder, dict):
                    continue
                for key, value in holder.items():
                    if isinstance(value, str) and 0 < len(value) <= 40 and key not in ("id", "source", "created"):
                        seen.setdefault(f"{key}={value}", None)
            if len(seen) > 60:
                break
        self.slot_hints = list(seen)

    # ------------------------------------------------------------ drawing

    def _show(self, pos: int | None) -> None:
        """Make ``pos`` the shown sample and redraw."""
        if self.queue is None:
            return
        self.pos = pos
        self.current = None
        self.current_error = None
        if pos is not None:
            try:
                self.current = self.queue.sample(pos)
            except (RecordError, UserError) as err:
                self.current_error = f"{err}\nFix or remove that line; j/k move on to other samples."
        self._draw()

    def _draw(self) -> None:
        sample_view = self.query_one("#rv-sample", Static)
        if self.current is not None:
            state = self.queue.state(self.current.id) if self.queue else None
            shown = sample_text(self.current.record, state, SAMPLE_LIMIT)
            team = self.queue.team_decisions(self.current.id) if self.queue and self.queue.others else {}
            if team:
                shown = shown.copy()
                shown.append_text(team_text(team, editable_text(self.current.record)))
            sample_view.update(shown)
        elif self.current_error is not None:
            sample_view.update(as_text(self.current_error, multiline=True, style="bold red"))
        else:
            sample_view.update(Text("nothing to show with this filter — f changes it", style="dim"))
        self.query_one("#rv-sample-scroll", VerticalScroll).scroll_home(animate=False)
        self._side()
        self._status()
        self._title()
        self.shown += 1

    def _side(self) -> None:
        side = self.query_one("#rv-side", Static)
        if self.current is None or self.queue is None:
            side.update(Text(""))
            return
        record = self.current.record
        state = self.queue.state(self.current.id)
        whole = "\n".join(_strings(record, state))
        tokens, exact = None, False
        if self.tokenizer is not None and len(whole) < 200_000:
            try:
                tokens, exact = len(self.tokenizer.encode(whole).ids), True
            except Exception:
                tokens = None
        if tokens is None:
            tokens = approx_tokens(whole)
        twins, count, note = None, 0, ""
        if self.twins_error is not None:
            note = self.twins_error
        elif self.dropped is None:
            note = "indexing…" if self.dropped_path.exists() else f"none ({self.dropped_path} not found)"
        else:
            try:
                twins, count = self.dropped.twins(self.current.id, limit=8)
            except (UserError, OSError) as err:  # a bad row, or the file gone: the panel says so, the sample still shows
                note = f"unavailable: {err}"
        text = side_text(record=record, line=self.current.line, state=state, chars=len(whole),
                         tokens=tokens, tokens_exact=exact, twins=twins, twin_count=count, twins_note=note)
        if self.scores is not None or self.scores_note.startswith("stale"):
            text = text.copy()
            text.append_text(self._judge_text())
        side.update(text)

    def _status(self) -> None:
        if self.error is not None or self.queue is None:
            return
        q = self.queue
        now = time.monotonic()
        while self.rates and now - self.rates[0] > RATE_WINDOW_S:
            self.rates.popleft()
        rate = None
        if len(self.rates) >= 2:
            span = max(now - self.rates[0], 1.0)
            rate = 60.0 * len(self.rates) / span
        shown = q.visible_count() if self.ready or q.mask is None else 0
        rank = q.visible_rank(self.pos) if self.pos is not None and q.visible(self.pos) else None
        note = " · ".join(x for x in (self.busy, self.note) if x)
        self.query_one("#rv-status", Static).update(
            status_text(counts=q.counts(), rate=rate, rank=rank, shown=shown, filter_label=q.filter.label, note=note))
        self.updates += 1

    def _title(self) -> None:
        title = Text()
        title.append(" tenny review ", style="bold reverse")
        title.append(" ")
        title.append_text(as_line(self.records_path, 200))
        title.append(" → ", style="dim")
        title.append_text(as_line(self.decisions_path, 200))
        if self.pos is not None and self.queue is not None:
            title.append(f"   #{self.pos + 1:,} of {len(self.queue):,}", style="bold")
        self.query_one("#rv-title", Static).update(title)

    def say(self, message: str) -> None:
        self.note = message
        self._status()

    # ------------------------------------------------------------ bindings

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "back":
            return self._pushed()
        if action == "quit_review":
            return not self._pushed()
        if self.error is not None:
            return action == "help"
        return True

    def _can_decide(self) -> bool:
        if self.current is None or self.queue is None:
            self.say("no sample to decide on here")
            return False
        if self.busy.startswith("bulk"):
            self.say("a bulk decision is being written; wait a moment")
            return False
        return True

    def _decide(self, action: str, **kw) -> None:
        assert self.queue is not None and self.current is not None
        try:
            self.queue.decide(self.current, action, **kw)
        except (UserError, OSError) as err:
            # the decision is not saved; do not move, say why
            self.say(f"NOT SAVED: {err}")
            return
        self.rates.append(time.monotonic())
        self.note = ""

    def _advance(self) -> None:
        """After a decision: the next sample in my queue the filter shows, else the next shown, else stay."""
        assert self.queue is not None and self.pos is not None
        nxt = None
        if self.queue.filter.kind in ("all", "pending"):
            # the queue: skip what I decided and what the team has done (review.overlap)
            nxt = self.queue.first_pending(self.pos)
        nxt = nxt if nxt is not None else self.queue.next_visible(self.pos)
        if nxt is None and not self.queue.visible(self.pos):
            nxt = self.queue.next_visible(self.pos, -1)
            self.note = "end of the queue"
        elif nxt is None:
            self.note = "end of the queue"
            nxt = self.pos
        self._show(nxt)

    def action_accept(self) -> None:
        if self._can_decide():
            self._decide("accept")
            self._advance()

    def action_reject(self) -> None:
        if self._can_decide():
            self._decide("reject")
            self._advance()

    def action_skip(self) -> None:
        self.action_next()

    def action_next(self) -> None:
        self._move(1)

    def action_prev(self) -> None:
        self._move(-1)

    def _move(self, step: int) -> None:
        if self.queue is None or self.pos is None:
            return
        nxt = self.queue.next_visible(self.pos, step)
        if nxt is None:
            self.say("end of the queue" if step > 0 else "start of the queue")
            if not self.ready and step > 0:
                self.say("still indexing; more samples in a moment")
            return
        self.note = ""
        self._show(nxt)

    def action_scroll_sample(self, direction: int) -> None:
        scroll = self.query_one("#rv-sample-scroll", VerticalScroll)
        if direction > 0:
            scroll.scroll_page_down(animate=False)
        else:
            scroll.scroll_page_up(animate=False)

    def action_edit(self) -> None:
        if not self._can_decide():
            return
        assert self.queue is not None and self.current is not None
        record = self.current.record
        state = self.queue.state(self.current.id)
        original = editable_text(record)
        text = state.text if state is not None and state.text is not None else original
        what = {"text": "text", "pair": "completion", "chat": "last assistant turn"}[body_kind(record)]
        sample = self.current

        def saved(new: str | None) -> None:
            if new is None:
                self.say("edit cancelled")
                return
            if new == text:
                self.say("no change; nothing saved")
                return
            if self.current is not sample:
                self._show(sample.pos)
            self._decide("edit", text=new)
            self._advance()

        self.app.push_screen(EditDialog(text, what), saved)

    def action_tag(self) -> None:
        if not self._can_decide():
            return
        assert self.queue is not None and self.current is not None
        state = self.queue.state(self.current.id)
        # tags come from the log, which anyone can write: shown with placeholders, like samples
        current = clean(", ".join(state.tags)) if state is not None else ""
        sample = self.current

        def saved(value: str | None) -> None:
            if value is None:
                return
            tags = list(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
            if self.current is not sample:
                self._show(sample.pos)
            self._decide("tag", tags=tags)
            self.say(f"tagged: {', '.join(tags)}" if tags else "tags cleared")
            self._draw()  # a tag does not advance: tagging is often followed by a decision

        self.app.push_screen(PromptDialog("Tags (comma-separated; tab or → completes a known tag)", current,
                                          "funny, off-persona", suggester=TagSuggester(self.queue.log.known_tags())),
                             saved)

    def action_undo(self) -> None:
        if self.queue is None or self.error is not None:
            return
        try:
            rid = self.queue.undo_last()
        except (UserError, OSError) as err:
            self.say(f"NOT SAVED: {err}")
            return
        if rid is None:
            self.say("nothing to undo")
            return
        pos = self.queue.position_of(rid)
        state = self.queue.state(rid)
        self.note = f"undone; now {state.status if state else 'pending'}"
        if pos is None:
            self.say(f"undone a decision on {rid}, which is not in this file")
            return
        if not self.queue.visible(pos):
            self.queue.set_filter(Filter())
            self.note += " (filter cleared to show it)"
        self._show(pos)

    def action_goto(self) -> None:
        if self.queue is None:
            return

        def go(value: str | None) -> None:
            if not value:
                return
            try:
                n = int(value.replace(",", "").replace("_", ""))
            except ValueError:
                self.say(f"not a position: {value!r}")
                return
            if not 1 <= n <= len(self.queue):
                self.say(f"no sample #{n:,}; positions go from 1 to {len(self.queue):,}")
                return
            if not self.queue.visible(n - 1):
                self.queue.set_filter(Filter())
                self.note = "filter cleared to show it"
            self._show(n - 1)

        self.app.push_screen(PromptDialog(f"Go to position (1–{len(self.queue):,})", "", "e.g. 1200",
                                          input_type="integer"), go)

    def action_search(self) -> None:
        if self.queue is None:
            return

        def go(value: str | None) -> None:
            if not value:
                return
            self.search_query = value
            self._search(value, 1)

        self.app.push_screen(PromptDialog("Search (text, any case; /regex/ for a regular expression)",
                                          self.search_query or "", "airport   or   /\\bgym\\b/"), go)

    def action_search_next(self) -> None:
        self._search_again(1)

    def action_search_prev(self) -> None:
        self._search_again(-1)

    def _search_again(self, step: int) -> None:
        if self.search_query:
            self._search(self.search_query, step)
        else:
            self.say("no search yet: / searches")

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def _search(self, query: str, step: int) -> None:
        worker = get_current_worker()
        queue = self.queue
        if queue is None or not self._wait_ready(worker):
            return
        start = self.pos if self.pos is not None else -1
        self.busy = "searching…"
        self.app.call_from_thread(self._status)

        def progress(done: int, total: int) -> None:
            self.busy = f"searching {100 * done / max(1, total):.0f}%"
            self.app.call_from_thread(self._status)

        try:
            hit = queue.search(query, start, step, cancelled=lambda: worker.is_cancelled, progress=progress)
        except Exception as err:  # a bad regex: say so
            self.busy = ""
            self.app.call_from_thread(self.say, f"bad search: {err}")
            return
        if worker.is_cancelled:
            return
        self.busy = ""
        if hit is None:
            self.app.call_from_thread(self.say, f"no match for {query!r} in {queue.filter.label}")
        elif hit == self.pos:
            self.app.call_from_thread(self.say, f"only this sample matches {query!r}")
        else:
            self.note = f"match for {query!r}"
            self.app.call_from_thread(self._show, hit)

    def _wait_ready(self, worker) -> bool:
        """Block a worker until the index is complete (it takes about a second per million)."""
        while not self.ready:
            if worker.is_cancelled or self.error is not None:
                return False
            time.sleep(0.02)
        return True

    def action_filter(self) -> None:
        if self.queue is None:
            return

        def chosen(spec: str | None) -> None:
            if spec is None:
                return
            try:
                flt = Filter.parse(spec)
            except ValueError as err:
                self.say(str(err))
                return
            self._apply_filter(flt)

        self.app.push_screen(FilterDialog(self.queue.filter.label, self.queue.log.known_tags(), self.slot_hints), chosen)

    @work(thread=True, exclusive=True, group="filter", exit_on_error=False)
    def _apply_filter(self, flt: Filter) -> None:
        worker = get_current_worker()
        queue = self.queue
        if queue is None or not self._wait_ready(worker):
            return
        mask = None
        if flt.kind == "slot":
            self.busy = f"filtering {flt.label}…"
            self.app.call_from_thread(self._status)
            mask = queue.slot_mask(flt.name, flt.value, cancelled=lambda: worker.is_cancelled)
            if mask is None:
                return
        self.app.call_from_thread(self._set_filter, flt, mask)

    def _set_filter(self, flt: Filter, mask) -> None:
        assert self.queue is not None
        self.busy = ""
        self.queue.set_filter(flt, mask)
        count = self.queue.visible_count()
        self.note = f"filter {flt.label}: {count:,} samples"
        self._show(self.queue.first_visible(self.pos or 0))

    def action_bulk(self, action: str) -> None:
        if self.queue is None or not self.ready:
            self.say("still indexing; bulk decisions wait for the whole file")
            return
        count = self.queue.visible_count()
        if not count:
            self.say("nothing shown to decide on")
            return
        verb = "Accept" if action == "accept" else "Reject"
        question = (f"{verb} all {count:,} samples shown by the filter '{self.queue.filter.label}'? "
                    f"Each gets its own line in the log; u undoes them one at a time.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._bulk(action, count)
            else:
                self.say("bulk decision cancelled")

        self.app.push_screen(ConfirmDialog(question), answered)

    @work(thread=True, exclusive=True, group="bulk", exit_on_error=False)
    def _bulk(self, action: str, count: int) -> None:
        queue = self.queue
        assert queue is not None
        self.busy = f"bulk {action}: writing {count:,} decisions…"
        self.app.call_from_thread(self._status)
        try:
            positions = queue.visible_positions()
            n = queue.bulk(action, positions)
        except (UserError, OSError) as err:
            self.busy = ""
            self.app.call_from_thread(self.say, f"bulk {action} stopped: {err}")
            return
        self.busy = ""
        self.note = f"{action}ed {n:,} samples"
        self.app.call_from_thread(self._show, queue.first_visible(self.pos or 0))

    def _team_arrived(self) -> None:
        """The other reviewers' logs are folded (after the first sample showed): route by them from now on."""
        q = self.queue
        if q.team_error is not None:
            self.say(f"the team's logs could not be read ({q.team_error}); your own review goes on")
            return
        if not q.others or self.pos is None:
            return
        if q.filter.kind in ("all", "pending") and not q.for_me(self.pos, self.pos + 1)[0] \
                and (q.status[self.pos] & 3) == 0:
            nxt = q.first_pending(self.pos)
            if nxt is not None:
                self.note = "the team has done that one; on to your next"
                self._show(nxt)
                return
        self._draw()

    def action_stats(self) -> None:
        if self.error is not None:
            return
        from tui.widgets.review_stats import ReviewStats

        folder = self.team_dir if self.team_dir is not None else self.decisions_path.parent
        extra = [] if self.team_dir is not None else [self.decisions_path]
        self.app.push_screen(ReviewStats(folder, self.adjudicators, self.overlap, extra=extra,
                                         only=None if self.team_dir is not None else [self.decisions_path.stem]))

    def action_help(self) -> None:
        from tui.screens.review_help import ReviewHelp

        self.app.push_screen(ReviewHelp([b for b in self.BINDINGS if not _other_q(self, b)]))

    def _pushed(self) -> bool:
        """On top of another screen (the app's review, key 6 / v), not the bottom of `tenny review`."""
        stack = self.app.screen_stack
        return len(stack) > 1 and self in stack[1:]

    def action_back(self) -> None:
        # Decisions are on disk already; leaving needs no save.
        if self.app.screen is self:
            self.app.pop_screen()

    def action_quit_review(self) -> None:
        if self._pushed():  # from the command palette, pushed: still only back
            self.action_back()
        else:
            self.app.exit()

    def sync_now(self) -> None:
        """Fold in decisions another session or reviewer appended (called on a timer)."""
        if self.queue is None or not self.ready or self.error is not None:
            return
        if not self._team_seen and self.queue.team_ready:
            self._team_seen = True
            self._team_arrived()  # then fold this log too: a decision appended meanwhile must not wait a tick
        try:
            changed = self.queue.sync()
            team = self.queue.sync_team()
        except (UserError, OSError) as err:
            self.say(str(err))
            return
        if team and self.current is not None:
            self._draw()
            return
        if changed and self.current is not None and self.current.id in changed:
            self._draw()
        elif changed:
            self._status()


def _current_judge(decisions: Path) -> str | None:
    """The fingerprint of the judge params.yaml names (None: none set, or it cannot be read)."""
    from pipeline.core.params import load_params
    from pipeline.engines.prescore import fingerprint_of

    for root in (decisions.parent.parent.parent, Path(".")):
        if (root / paths.PARAMS).is_file():
            try:
                return fingerprint_of(load_params(root / paths.PARAMS).eval.judge)
            except (UserError, OSError):
                return None
    return None


def _review_params(decisions: Path):
    """review.* from the project's params.yaml (the one above data/reviews/), defaults when there is none."""
    from pipeline.core.params import ReviewParams, load_params

    for root in (decisions.parent.parent.parent, Path(".")):
        if (root / paths.PARAMS).is_file():
            try:
                return load_params(root / paths.PARAMS).review
            except UserError:
                break  # a bad params.yaml is build's to report; the review goes on with defaults
    return ReviewParams()


def _other_q(screen: ReviewScreen, binding) -> bool:
    """The q binding that does not apply where the screen is (back when pushed, quit when alone)."""
    return isinstance(binding, Binding) and binding.action in ("back", "quit_review") \
        and not screen.check_action(binding.action, ())


def _strings(record: dict, state) -> list[str]:
    kind = body_kind(record)
    edited = state.text if state is not None else None
    if kind == "pair":
        return [record["prompt"], edited if edited is not None else record["completion"]]
    if kind == "chat":
        return [m["content"] for m in record["messages"]]
    return [edited if edited is not None else record["text"]]


def _error_text(err: Exception, records: Path, decisions: Path) -> str:
    """The one-screen explanation for a file that cannot be opened."""
    text = str(err)
    if isinstance(err, RecordError) and Path(err.path) == decisions:
        return (f"{text}\n\nThe review log is hand-fixable: open it in an editor, fix or delete that line "
                f"(every other line is one decision), then run `tenny review` again.")
    if isinstance(err, RecordError):
        return (f"{text}\n\nFix that line of the records file (or re-run `tenny dedupe` to rewrite it), "
                f"then run `tenny review` again.")
    if isinstance(err, OSError):
        return f"{getattr(err, 'filename', '') or records}: {err.strerror or err}\n\nCheck the path and permissions."
    return text
