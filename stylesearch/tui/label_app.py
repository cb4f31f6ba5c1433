"""Textual app for judging triplets: the anchor and two options shown inline as images.

Keys: A/← left more similar, B/→ right, S too similar, D anchor too different,
Space don't know, U undo, Q quit. Every judgment is appended to triplets.jsonl at once.
The option the current metric would pick is marked; when the session says a retrain is due,
a worker thread refits the metric (labelling.LabelSession.retrain) while you go on judging.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Static

from ..errors import StyleSearchError
from ..learn.judgments import CHOICE_WORDS
from ..learn.labelling import LabelSession


class Pane(Vertical):
    """One image with a title above and a caption below."""

    DEFAULT_CSS = """
    Pane { width: 1fr; height: 1fr; border: round $panel; padding: 0 1; }
    Pane.anchor { border: round $accent; }
    Pane.picked { border: round $success; }
    Pane .title { text-style: bold; width: 100%; content-align: center middle; }
    Pane .caption { width: 100%; height: 2; content-align: center middle; color: $text-muted; }
    Pane .picture { width: 100%; height: 1fr; }
    """

    def __init__(self, title: str, image_widget, **kwargs):
        super().__init__(**kwargs)
        self._title = title
        self._image_widget = image_widget

    def compose(self) -> ComposeResult:
        yield Static(self._title, classes="title")
        yield self._image_widget(None, classes="picture")
        yield Static("", classes="caption")

    def show(self, image_path, caption: str, picked: bool = False) -> None:
        picture = self.query_one(".picture")
        picture.image = letterbox(image_path, picture.size.width, picture.size.height) if image_path else None
        self.query_one(".caption", Static).update(caption)
        self.query_one(".title", Static).update(f"{self._title}  ◆ metric's pick" if picked else self._title)
        self.set_class(picked, "picked")


def letterbox(image_path, cells_wide: int, cells_high: int, background=(18, 18, 18)):
    """The image padded to the pane's shape (terminal cells are about twice as tall as wide),
    so every renderer shows it undistorted."""
    from PIL import Image

    from ..store.images import BadImage, load_rgb

    try:
        img = load_rgb(image_path, draft=512)
    except (BadImage, OSError):
        return None
    target = max(cells_wide, 1) / (2.0 * max(cells_high, 1))
    if img.width / img.height > target:
        size = (img.width, max(1, round(img.width / target)))
    else:
        size = (max(1, round(img.height * target)), img.height)
    canvas = Image.new("RGB", size, background)
    canvas.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    return canvas


PROBLEMS = ("Not recorded", "Not undone", "Retraining failed", "No unseen")


class LabelApp(App):
    """Judge which option is more similar to the anchor."""

    TITLE = "stylesearch label"
    CSS = """
    #panes { height: 1fr; }
    #guess { height: auto; max-height: 2; padding: 0 1; color: $text-muted; }
    #status { height: auto; max-height: 2; padding: 0 1; background: $boost; }
    #message { height: 1; padding: 0 1; color: $success; }
    #message.problem { color: $warning; }
    """
    ENABLE_COMMAND_PALETTE = False  # its footer entry would push the keys out of an 80-column terminal
    BINDINGS = [  # short enough for the footer of an 80-column terminal
        Binding("a,left", "choose('left')", "left", key_display="A/←"),
        Binding("b,right", "choose('right')", "right", key_display="B/→"),
        Binding("s", "choose('too_similar')", "similar", key_display="S"),
        Binding("d", "choose('anchor_different')", "different", key_display="D"),
        Binding("space", "choose('unknown')", "don't know", key_display="Space"),
        Binding("u", "undo", "undo", key_display="U"),
        Binding("q", "quit", "quit", key_display="Q"),
    ]

    def __init__(self, session: LabelSession, image_widget=None, strategy: str = "random"):
        super().__init__()
        if image_widget is None:
            from textual_image.widget import Image as image_widget
        self.session = session
        self.image_widget = image_widget
        self.strategy = strategy
        self.retraining = False
        self.note = ""  # the last confirmation or problem shown
        self.sub_title = f"{session.paths.name} · {session.model_key} · {strategy} triplets"

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="panes"):
            yield Pane("Left (A/←)", self.image_widget, id="left")
            yield Pane("Anchor", self.image_widget, id="anchor", classes="anchor")
            yield Pane("Right (B/→)", self.image_widget, id="right")
        yield Static("", id="message")
        yield Static("", id="guess")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.call_after_refresh(self.refresh_view)
        self.maybe_retrain()

    def on_resize(self) -> None:
        self.call_after_refresh(self.refresh_view)

    def refresh_view(self, message: str | None = None) -> None:
        """Show the current triplet with its marks; `message` replaces the line above the status (None keeps it)."""
        self.note = self.note if message is None else message
        message = self.note
        current = self.session.current
        panes = {name: self.query_one(f"#{name}", Pane) for name in ("anchor", "left", "right")}
        if current is None:
            for pane in panes.values():
                pane.show(None, "")
            message = message or "No unseen triplets left: press Q to quit (or U to undo)."
        else:
            anchor, left, right = current
            marks = self.session.marks()
            scores = dict(zip(("left", "right"), marks.scores))
            pick = marks.guess[0]
            panes["anchor"].show(self.session.image_path(anchor), anchor)
            for side, path in (("left", left), ("right", right)):
                panes[side].show(self.session.image_path(path), f"{path}  score {scores[side]:.3f}", side == pick)
        line = self.query_one("#message", Static)
        line.update(message)
        line.set_class(message.startswith(PROBLEMS), "problem")
        self.query_one("#guess", Static).update(self.guess_line())
        self.query_one("#status", Static).update(self.status_line())

    def guess_line(self) -> str:
        """What the metric would answer, and how often it answered as you did."""
        pick, sure = self.session.guess()
        st = self.session.status()
        parts = [f"metric picks {pick}" + (f" ({sure:.0%} sure)" if sure is not None else "")
                 if pick else "metric has no preference"]
        if st["guesses"]:
            closest = " (it asks about its closest calls)" if self.strategy == "uncertain" else ""
            parts.append(f"it guessed {st['guessed_right']} of your last {st['guesses']} A/B answers{closest}")
        if self.retraining:
            parts.append("retraining…")
        elif st["retrained_at"] is not None:
            parts.append(f"retrained on {st['retrained_at']} judgments")
        return " · ".join(parts)

    def status_line(self) -> str:
        """Counts, and how well the metric predicts answers it was not fitted on, in plain words."""
        st = self.session.status()
        c = st["counts"]
        agree = (f"the metric predicts {st['agreement']:.0%} of the answers it was not fitted on"
                 if st["agreement"] is not None else "no metric fitted yet")
        return (f"{st['session']} judged now, {st['total']} in all (left {c['left']}, right {c['right']}, "
                f"similar {c['too_similar']}, different {c['anchor_different']}, don't know {c['unknown']}) · "
                f"{agree}")

    def action_choose(self, choice: str) -> None:
        try:
            recorded = self.session.judge(choice)
        except StyleSearchError as exc:  # e.g. a full disk: nothing was written, the triplet stays
            self.refresh_view(f"Not recorded: {exc.message}")
            return
        if recorded is not None:
            self.maybe_retrain()
            self.refresh_view(f"Recorded: {CHOICE_WORDS[choice]} (U undoes it).")

    def maybe_retrain(self) -> None:
        """Refit in a worker thread when the session says so (one at a time)."""
        if self.retraining or not self.session.retrain_due():
            return
        self.retraining = True
        self.run_worker(self._retrain, thread=True, exit_on_error=False, group="retrain")

    def _retrain(self) -> None:
        try:
            self.session.retrain()
            note = None
        except Exception as exc:  # noqa: BLE001 - keep labelling with the previous metric
            note = f"Retraining failed ({exc}); keeping the previous metric."
        self.call_from_thread(self._retrained, note)

    def _retrained(self, note: str | None) -> None:
        self.retraining = False
        self.refresh_view(note)
        self.maybe_retrain()

    def action_undo(self) -> None:
        try:
            record = self.session.undo()
        except StyleSearchError as exc:
            self.refresh_view(f"Not undone: {exc.message}")
            return
        self.refresh_view(f"Undone: {CHOICE_WORDS[record['choice']]}; judge this one again."
                          if record else "Nothing to undo in this session.")
