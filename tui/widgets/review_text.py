"""Untrusted text made inert: what a model wrote is shown, never obeyed.

Everything a sample holds reaches the screen as ``rich.text.Text`` built from
plain strings (never parsed as markup), and every character that could move
the cursor, restyle the terminal, reorder or hide text is replaced by a
visible placeholder first. Rich and Textual already drop most control codes;
doing it here as well means a reviewer *sees* that a sample carries them,
which is exactly what a reviewer needs to know before accepting it.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 (except \t \n) and C1 controls, DEL; soft hyphen; Arabic letter mark;
# Mongolian vowel separator; zero-width and bidi marks, embeddings, overrides
# and isolates; line/paragraph separators; invisible operators; BOM; interlinear
# annotations; lone surrogates (json.loads lets "\ud800" through); tag characters.
UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]"
)
PLACEHOLDER_STYLE = "reverse"
TRUNCATED_STYLE = "italic dim"
DEFAULT_LIMIT = 20_000  # characters shown of one field; a 100 KB line stays fast to draw


def placeholder(ch: str) -> str:
    """A short visible stand-in for one unsafe character."""
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ … ␟ (control pictures): ESC shows as ␛
    if code == 0x7F:
        return "\u2421"  # ␡
    name = {0x200B: "ZWSP", 0x200C: "ZWNJ", 0x200D: "ZWJ", 0x200E: "LRM", 0x200F: "RLM",
            0x202A: "LRE", 0x202B: "RLE", 0x202C: "PDF", 0x202D: "LRO", 0x202E: "RLO",
            0x2066: "LRI", 0x2067: "RLI", 0x2068: "FSI", 0x2069: "PDI", 0xFEFF: "BOM",
            0x00AD: "SHY", 0x2028: "LS", 0x2029: "PS", 0x2060: "WJ"}.get(code)
    return f"<{name}>" if name else f"<U+{code:04X}>"


def clean(value: str) -> str:
    """``value`` with every unsafe character replaced by its placeholder (plain string)."""
    return UNSAFE.sub(lambda m: placeholder(m.group()), value)


def count_unsafe(value: str) -> int:
    return sum(1 for _ in UNSAFE.finditer(value))


def inert(value: str, limit: int | None = DEFAULT_LIMIT, style: str = "") -> Text:
    """``value`` as Rich Text: never markup, unsafe characters as reverse-video placeholders.

    Beyond ``limit`` characters the rest is cut, saying how much was left out.
    """
    out = Text(style=style, no_wrap=False, overflow="fold")
    if not isinstance(value, str):
        value = repr(value)
    total = len(value)
    shown = value if limit is None or total <= limit else value[:limit]
    at = 0
    for m in UNSAFE.finditer(shown):
        if m.start() > at:
            out.append(shown[at:m.start()])
        out.append(placeholder(m.group()), style=PLACEHOLDER_STYLE)
        at = m.end()
    if at < len(shown):
        out.append(shown[at:])
    if len(shown) < total:
        out.append(f"\n… {total - len(shown):,} more characters not shown", style=TRUNCATED_STYLE)
    return out


def one_line(value, width: int = 60) -> Text:
    """A short single-line preview (newlines shown as ⏎), cut to ``width`` characters."""
    if not isinstance(value, str):
        value = str(value)
    flat = value.replace("\r\n", "\n").replace("\n", "\u23ce ")
    if len(flat) > width:
        flat = flat[: max(1, width - 1)] + "\u2026"
    return inert(flat, limit=None)
