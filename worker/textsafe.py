"""Text from outside (the API, tracker files, the database) made safe for a terminal and a log line.

An organization name, a label, a model id or a server message can hold ESC sequences (`ESC [2J`
clears the screen; OSC sequences set the window title, write hyperlinks or, on some terminals, the
clipboard) or line breaks that forge extra lines in a table or a text log. `printable` writes every
control character as a visible escape (`\\x1b`, `\\x0a`, `\\u202e`): C0 controls, DEL, C1 controls,
the Unicode line and paragraph separators, and the bidi embeddings, overrides and isolates (which
make a line read differently from what it holds). The text is otherwise unchanged, so nothing is
lost and a user can still recognize it.

`has_control` is the check that refuses such characters in what a user types (`--label`), and
`clean` is what replaces them in text that is stored from the API (a default label built from the
organization's name): whole escape sequences are dropped and each other run of control characters
becomes one space.

JSON output needs none of this: `json.dumps` escapes every control character itself.
"""

from __future__ import annotations

import re

__all__ = ["clean", "has_control", "printable"]

_CONTROLS = "\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"  # tab apart
_ANY = re.compile(f"[\t{_CONTROLS}]")
_BUT_TAB = re.compile(f"[{_CONTROLS}]")
# Whole escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ST`, two-byte `ESC x`), then any other run.
_SEQUENCES = re.compile(
    "(?:\x1b\\[|\x9b)[0-?]*[ -/]*[@-~]"
    "|(?:\x1b\\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\\\|\x9c)?"
    "|\x1b[@-_]"
    f"|[\\t{_CONTROLS}]+"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str, *, keep_tabs: bool = False) -> str:
    """`text` with every control character written as a visible escape; tabs kept with `keep_tabs`.

    Backslashes are left as they are: the result is for reading, not for parsing back.
    """
    pattern = _BUT_TAB if keep_tabs else _ANY
    if pattern.search(text) is None:  # the common case: nothing to do, no copy
        return text
    return pattern.sub(_escape, text)


def has_control(text: str) -> bool:
    """Whether `text` holds a control character (tab included): what `printable` would change."""
    return _ANY.search(text) is not None


def clean(text: str) -> str:
    """`text` without escape sequences, each other run of control characters one space, stripped."""
    if _ANY.search(text) is None:
        return text.strip()
    return " ".join(_SEQUENCES.sub(" ", text).split())
