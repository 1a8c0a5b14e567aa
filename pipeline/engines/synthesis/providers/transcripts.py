"""Provider ``import``: samples pasted from a chat window into data/seed/*.md|*.txt.

One sample per line. The generator's quirks are cleaned and counted: bullets,
numbering, enclosing quotes, markdown emphasis, stray whitespace; chatter lines
("Sure! Here are 20 more:"), speaker labels and separators are dropped. A
markdown heading (``# airports``) sets the topic of the lines under it, kept in
``meta.topic`` (build's chat format asks about it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.core.records import make_record

SUFFIXES = (".md", ".txt")
EMPTY_HINT = (
    "paste samples from a chat window into data/seed/<topic>.md, one per line "
    "(bullets, numbering, quotes and chatter are cleaned for you)"
)

_BULLET = re.compile(r"^(?:[-*•·▪●◦‣–—+]|\u2022)\s+")
_NUMBERING = re.compile(r"^(?:\(\d{1,4}\)|\d{1,4}[.)](?!\d)|#\d{1,4}[.):]?)\s*")
_QUOTES = [('"', '"'), ("“", "”"), ("'", "'"), ("‘", "’"), ("«", "»"), ("„", "“"), ("`", "`")]
_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")
_EMPHASIS = re.compile(r"^(\*\*|__|\*|_)(.+)\1$")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$")
_SEPARATOR = re.compile(r"^(?:[-*_=~]{3,}|`{3}.*)$")
_SPEAKER = re.compile(
    r"^(?:you|user|me|human|chatgpt|assistant|gpt-?\d\w*|claude|gemini|model|ai)(?:\s+said)?\s*:\s*(.*)$",
    re.IGNORECASE,
)
_USER_SPEAKERS = re.compile(r"^(?:you|user|me|human)\b", re.IGNORECASE)
# Chatter: the generator talking about its output rather than producing it.
# Each pattern needs a sign of talk *about* samples (a colon at the end, "here
# are", "let me know if"), so a real sample that opens with "Sure," survives.
_OPENER = r"(?:sure|certainly|of course|absolutely|okay|ok|great|alright|got it|no problem|happy to help|here you go)"
_CHATTER = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r":$",
        rf"^{_OPENER}[!.]*$",
        rf"^{_OPENER}\b[!.,]*\s+(?:here(?:'s| is| are)|i(?:'ll|'ve| will| have| can)|these (?:are|should)|this is|below)\b",
        r"^(?:here(?:'s| is| are)|below (?:is|are)|the following)\b.*\b(?:more|another|batch|list|round|set|one-liners?|takes?|lines|jokes|examples|samples|versions|options|ideas|quips)\b.*[:!]$",
        r"^(?:i hope (?:these|this|that|you (?:enjoy|like|find))|hope (?:this|these|that) (?:help|work|hit|land|fit)"
        r"|let me know (?:if|whether|what|how)|feel free to (?:ask|let me|tell me|reach)"
        r"|want (?:me to|more (?:of|like)|another (?:batch|round|set))|would you like (?:me to|more|another|a )"
        r"|shall i\b|should i (?:make|write|generate|do|give)|need more\??$"
        r"|i can (?:also )?(?:write|generate|make|do|give) (?:more|another|some|a few|them|these)"
        r"|if you(?:'d| would) like(?:,| me| more| another)|enjoy!*$|enjoy (?:these|them)\b)",
        r"^(?:as an ai|i'm an ai|as a language model)\b",
        # Offers of more work, anywhere in the line: "Need more? I can also do a set about ..."
        r"^(?:want|need) more\?|^enjoy[!.]|\b(?:want|would you like) me to\b"
        r"|\bi can (?:also )?(?:do|write|make|generate|give|turn|draft|come up with) (?:a|an|another|more|some|the|these|them|few|set|round|batch)\b"
        r"|^feel free to (?:tweak|edit|adjust|change|use|modify|mix)\b",
    )
]
# Button captions a browser copy picks up along with the chat.
_UI_TEXT = re.compile(r"^(?:copy|copy code|edit|share|regenerate|retry|like|dislike|read aloud|thumbs (?:up|down))$", re.IGNORECASE)
_INLINE_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")


def clean_line(line: str, counts) -> str | None:
    """The sample a pasted line holds, or None for chatter; counts what it cleaned."""
    text = line.strip()
    if not text:
        return None
    if text != line.rstrip("\r\n"):
        counts["cleaned", "whitespace"] += 1
    if _SEPARATOR.match(text):
        counts["dropped", "separator"] += 1
        return None
    m = _SPEAKER.match(text)
    if m:
        if _USER_SPEAKERS.match(text) or not m.group(1).strip():
            counts["dropped", "speaker_turn"] += 1
            return None
        counts["cleaned", "speaker_label"] += 1
        text = m.group(1).strip()
    if _UI_TEXT.match(text):
        counts["dropped", "ui_text"] += 1
        return None
    if any(rx.search(text) for rx in _CHATTER):
        counts["dropped", "chatter"] += 1
        return None
    unbolded = _INLINE_BOLD.sub(lambda m: m.group(1) or m.group(2), text)
    if unbolded != text:
        counts["cleaned", "emphasis"] += 1
        text = unbolded.strip()
    for kind, rx in (("bullet", _BULLET), ("numbering", _NUMBERING), ("bullet", _BULLET)):
        new = rx.sub("", text, count=1)
        if new != text:
            counts["cleaned", kind] += 1
            text = new.strip()
    m = _EMPHASIS.match(text)
    if m:
        counts["cleaned", "emphasis"] += 1
        text = m.group(2).strip()
    unquoted = _strip_quotes(text)
    if unquoted is not None:
        counts["cleaned", "quotes"] += 1
        text = unquoted
    collapsed = " ".join(text.split())
    if collapsed != text:
        counts["cleaned", "whitespace"] += 1
        text = collapsed
    if not text or not any(ch.isalnum() for ch in text):
        counts["dropped", "empty_after_cleaning"] += 1
        return None
    if any(rx.search(text) for rx in _CHATTER):
        counts["dropped", "chatter"] += 1
        return None
    return text


def _strip_quotes(text: str) -> str | None:
    """The inside of a line wholly enclosed in one pair of quotes, else None."""
    for left, right in _QUOTES:
        if len(text) >= 2 and text[0] == left and text[-1] == right:
            inner = text[1:-1]
            if left == "'":
                inner_quotes = _APOSTROPHE.sub("", inner)  # platform's, don't: not quotes
            else:
                inner_quotes = inner
            if left == right and left in inner_quotes:
                continue  # "a" and "b": quoted parts, not an enclosed line
            return inner.strip()
    return None


def transcript_files(seed_dir: Path) -> list[Path]:
    if not seed_dir.is_dir():
        raise UserError(f"{seed_dir}/ does not exist: create it and {EMPTY_HINT}")
    files = sorted(p for p in seed_dir.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise UserError(f"{seed_dir}/ has no .md or .txt transcripts: {EMPTY_HINT}")
    return files


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a pasted transcript may come from an editor that adds a BOM
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid UTF-8 (byte {err.start}); re-save the transcript as UTF-8") from None


class _Counts(dict):
    def __missing__(self, key):
        return 0


def generate(params: Params, report) -> Iterator[dict]:
    seed_dir = Path(params.synthesize.seed_dir)
    for path in transcript_files(seed_dir):
        counts = _Counts()
        topic = path.stem.replace("_", " ").replace("-", " ")
        kept = 0
        in_user_turn = False  # after a bare "You said:" the user's message follows on its own lines
        for lineno, line in read_lines(path):
            stripped = line.strip()
            label = _SPEAKER.match(stripped)
            if label and not label.group(1).strip():
                in_user_turn = bool(_USER_SPEAKERS.match(stripped))
                counts["dropped", "speaker_turn"] += 1
                continue
            if in_user_turn:
                if not stripped:
                    in_user_turn = False
                else:
                    counts["dropped", "user_turn"] += 1
                continue
            heading = _HEADING.match(line.strip())
            if heading:
                counts["cleaned", "heading"] += 1
                topic = heading.group(1).strip().strip("#").strip() or topic
                continue
            text = clean_line(line, counts)
            if text is None:
                continue
            kept += 1
            yield make_record(
                text=text,
                meta={"provider": "import", "source": path.as_posix(), "line": lineno, "topic": topic},
            )
        for (what, kind), n in counts.items():
            (report.cleaned if what == "cleaned" else report.dropped)[kind] += n
        if kept == 0:
            dropped = {k: n for (w, k), n in counts.items() if w == "dropped"}
            print(
                f"synthesize: warning: {path}: nothing usable found "
                f"(every line was chatter, a label or a separator: {dropped or 'the file is empty'})",
                file=sys.stderr,
            )
