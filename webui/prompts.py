"""A1111-style prompt emphasis parsing.

Turns ``"a (red:1.3) [cat]"`` into ``[("a ", 1.0), ("red", 1.3), (" ", 1.0), ("cat", 0.909...)]``
with the same rules as AUTOMATIC1111's ``modules/prompt_parser.py::parse_prompt_attention``:

* ``(text)`` multiplies the weight by 1.1, ``[text]`` divides it by 1.1; nesting compounds.
* ``(text:1.5)`` multiplies by the given number instead of 1.1.
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; a lone backslash is dropped.
* Brackets left open at the end still apply to everything after them.
* Neighbouring pieces with equal weight are merged.
* The word ``BREAK`` (uppercase, at word boundaries) becomes a ``("BREAK", -1.0)`` marker
  that the tokenizer uses to start a new 75-token chunk.
* Empty input gives ``[("", 1.0)]``.

Two deliberate deviations, both for inputs where A1111 misbehaves:

* A ``BREAK`` inside brackets stays a ``("BREAK", -1.0)`` marker; A1111 multiplies the
  marker's -1 by the bracket weight, which silently turns it into weighted text.
* A malformed weight such as ``(a:1.2.3)`` raises ``ValueError`` in A1111; here the
  ``:1.2.3`` is kept as literal text and the ``)`` closes the bracket with the default 1.1.

Pure Python, no torch: token chunking with the CLIP tokenizer lives elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BREAK_MARKER", "parse_prompt_attention"]

BREAK_MARKER: tuple[str, float] = ("BREAK", -1.0)

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1

# Same alternation (and order) as A1111, so the tokenisation matches byte for byte.
_RE_ATTENTION = re.compile(
    r"""
    \\\(|
    \\\)|
    \\\[|
    \\]|
    \\\\|
    \\|
    \(|
    \[|
    :\s*([+-]?[.\d]+)\s*\)|
    \)|
    ]|
    [^\\()\[\]:]+|
    :
    """,
    re.X,
)

_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass
class _Piece:
    """A run of prompt text with its current weight; mutable only while parsing."""

    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(fragment, weight)`` pairs following A1111's emphasis rules."""
    pieces: list[_Piece] = []
    round_open: list[int] = []  # index into `pieces` where each open "(" starts
    square_open: list[int] = []
    # Text appended with no bracket in between always gets the same multipliers, so it is joined at once (the
    # final merge would join it anyway): each bracket then multiplies at most one piece per later bracket, not
    # one per escape or text run, which made long prompts quadratic (seconds for 32k characters).
    since = 0  # len(pieces) at the last bracket

    def add(new: list[_Piece]) -> None:
        for piece in new:
            last = pieces[-1] if len(pieces) > since else None
            if last is not None and not last.is_break and not piece.is_break:
                last.text += piece.text
            else:
                pieces.append(piece)

    for match in _RE_ATTENTION.finditer(text):
        token, weight_text = match.group(0), match.group(1)
        weight = _parse_weight(weight_text)

        if token.startswith("\\"):
            add([_Piece(token[1:])])
            continue
        if token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            _multiply_from(pieces, round_open.pop(), weight)
        elif weight_text is not None and round_open:
            # Malformed number: keep it as text, then close the bracket like a plain ")".
            add([_Piece(token[:-1])])
            _multiply_from(pieces, round_open.pop(), _ROUND_MULTIPLIER)
        elif token == ")" and round_open:
            _multiply_from(pieces, round_open.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            _multiply_from(pieces, square_open.pop(), _SQUARE_MULTIPLIER)
        else:
            add(_split_breaks(token))
            continue
        since = len(pieces)

    # Unbalanced brackets apply up to the end of the prompt.
    for start in round_open:
        _multiply_from(pieces, start, _ROUND_MULTIPLIER)
    for start in square_open:
        _multiply_from(pieces, start, _SQUARE_MULTIPLIER)

    if not pieces:
        return [("", 1.0)]
    return [(p.text, p.weight) for p in _merge_equal_weights(pieces)]


def _parse_weight(weight_text: str | None) -> float | None:
    """The number in ``(text:N)``; None when absent or not a valid float (e.g. ``1.2.3``)."""
    if weight_text is None:
        return None
    try:
        return float(weight_text)
    except ValueError:
        return None


def _multiply_from(pieces: list[_Piece], start: int, multiplier: float) -> None:
    """Apply a bracket's multiplier to every piece it encloses (BREAK markers excepted)."""
    for piece in pieces[start:]:
        if not piece.is_break:
            piece.weight *= multiplier


def _split_breaks(text: str) -> list[_Piece]:
    """Plain text, with a BREAK marker wherever the keyword appears."""
    result: list[_Piece] = []
    for index, part in enumerate(_RE_BREAK.split(text)):
        if index > 0:
            result.append(_Piece(BREAK_MARKER[0], BREAK_MARKER[1], is_break=True))
        result.append(_Piece(part))
    return result


def _merge_equal_weights(pieces: list[_Piece]) -> list[_Piece]:
    """Join neighbours with identical weight so the tokenizer sees fewer, longer runs."""
    merged: list[_Piece] = []
    for piece in pieces:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and not previous.is_break
            and not piece.is_break
            and previous.weight == piece.weight
        ):
            previous.text += piece.text
        else:
            merged.append(_Piece(piece.text, piece.weight, piece.is_break))
    return merged
