"""Untrusted text made safe to show: the one sanitizer for every human-facing output.

Samples come from models and other people's files, and ids, paths, error
messages and log lines can carry what they wrote. Before any of it reaches a
terminal, every character that could move the cursor, restyle or retitle the
terminal, reorder or hide text is replaced by a visible escape (the six
characters ``\\u202e``, the four ``\\x1b``): the reader *sees* that the text
carries it, which is what a reviewer needs to know before accepting it.

- C0 controls and DEL (ESC starts every CSI/OSC sequence, so none survives),
  except ``\\n`` and ``\\t`` in a multi-line view;
- C1 controls U+0080–U+009F (U+009B is a CSI on many terminals);
- bidi marks, embeddings, overrides and isolates; zero-width and other
  invisible format characters; line/paragraph separators; BOM; tag
  characters; lone surrogates (``json.loads`` lets ``"\\ud800"`` through).

Markup is never interpreted: Textual and Rich get ``rich.text.Text`` objects
built from plain strings (``as_text``, ``as_line``), never a markup string.
Machine output (``--json``) keeps the exact text: ``json_safe`` only writes the
same characters as JSON escapes, so the document decodes to what the files hold.

Rich is imported only by the functions that return Text: the ``tenny``
command imports this module at startup.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

_INVISIBLE = (
    "\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\ud800-\udfff\U000e0000-\U000e007f"
)
UNSAFE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_INVISIBLE}]")
UNSAFE_MULTILINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_INVISIBLE}]")  # \t and \n kept

ESCAPE_STYLE = "reverse"  # in the TUI an escape stands out from text that happens to hold a backslash
TRUNCATED_STYLE = "italic dim"
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(ch: str) -> str:
    """The visible stand-in for one unsafe character, written as Python writes it in a string literal."""
    code = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _pattern(multiline: bool) -> re.Pattern[str]:
    return UNSAFE_MULTILINE if multiline else UNSAFE_LINE


def _prepare(value: object, multiline: bool) -> str:
    value = value if isinstance(value, str) else str(value)
    # A Windows line ending is a line break, not hidden content.
    return value.replace("\r\n", "\n") if multiline else value


def clean(value: object, *, multiline: bool = False) -> str:
    """``value`` as a plain string that is safe to print: every unsafe character escaped.

    One line by default (newlines and tabs escaped too); ``multiline`` keeps
    ``\\n`` and ``\\t`` (and reads ``\\r\\n`` as ``\\n``).
    """
    return _pattern(multiline).sub(lambda m: escape(m.group()), _prepare(value, multiline))


def count_unsafe(value: str, *, multiline: bool = False) -> int:
    """How many characters ``clean`` would escape."""
    return sum(1 for _ in _pattern(multiline).finditer(_prepare(value, multiline)))


def json_safe(document: str) -> str:
    """A JSON document that decodes to exactly the same data, with no unsafe character raw.

    ``json.dumps(..., ensure_ascii=False)`` keeps CJK and emoji readable but
    writes C1 controls, bidi overrides and zero-width characters as they are;
    here they become JSON ``\\u`` escapes. Outside strings JSON is ASCII, and a
    raw newline or tab there is layout, so those two stay.
    """
    def json_escape(m: re.Match[str]) -> str:
        units = m.group().encode("utf-16-be", "surrogatepass")
        return "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2))

    return UNSAFE_MULTILINE.sub(json_escape, document)


def log_line(raw: str) -> str:
    """One line of subprocess output as a terminal would leave it, made safe.

    A carriage return redraws the line (progress bars), so only what follows
    the last one is kept.
    """
    return clean(raw.rstrip("\r\n").split("\r")[-1])


def as_text(value: object, *, multiline: bool = False, limit: int | None = None, style: str = "") -> Text:
    """``value`` as Rich Text: never markup, each unsafe character as a reverse-video escape.

    Beyond ``limit`` characters the rest is cut, saying how much was left out.
    """
    from rich.text import Text

    value = _prepare(value, multiline)
    out = Text(style=style, overflow="fold")
    total = len(value)
    shown = value if limit is None or total <= limit else value[:limit]
    at = 0
    for m in _pattern(multiline).finditer(shown):
        if m.start() > at:
            out.append(shown[at:m.start()])
        out.append(escape(m.group()), style=ESCAPE_STYLE)
        at = m.end()
    if at < len(shown):
        out.append(shown[at:])
    if len(shown) < total:
        out.append(f"\n… {total - len(shown):,} more characters not shown", style=TRUNCATED_STYLE)
    return out


def as_line(value: object, width: int | None = None, style: str = "") -> Text:
    """A one-line ``as_text`` (table cells, previews, ids) of the first ``width`` characters of ``value``."""
    value = value if isinstance(value, str) else str(value)
    if width is not None and len(value) > width:
        out = as_text(value[: max(1, width - 1)], style=style)
        out.append("\u2026")
        return out
    return as_text(value, style=style)
