"""A1111's prompt editing syntax: which prompt text applies at which sampling step, and composable ``AND``.

Same behaviour as AUTOMATIC1111 1.10's ``modules/prompt_parser.py`` (``get_learned_conditioning_prompt_schedules``
and ``get_multicond_prompt_list``), written as a small hand parser instead of its lark grammar:

* ``[to:when]`` adds ``to`` after step ``when``; ``[from::when]`` removes ``from`` after it; ``[from:to:when]``
  swaps. ``when`` with a ``.`` is a fraction of the steps (``0.25`` -> step 5 of 20, ``1.5`` -> never switches
  within the base pass), without one it is a step number (``1e1`` is step 10). Schedules nest.
* ``[a|b|c]`` cycles through its options, one per step; an empty option (``[fe|]male``) is the empty text.
* ``(text)``, ``(text:1.2)`` and ``[text]`` are left as they are (emphasis is applied later, by
  :mod:`webui.prompts`), and so are stray brackets and colons outside any bracket.
* A ``|`` that is not inside a complete ``[a|b]``, or a lone backslash at the end, makes the whole prompt
  literal text with a single schedule entry, exactly as A1111 falls back when its parser fails.
* A prompt splits on the word ``AND`` into sub-prompts; each may end with ``:weight`` (``a cat :1.2 AND a dog``).

A schedule is a list of ``(end_at_step, text)``. A1111 picks, at 0-based sampler step ``s``, the first entry with
``s <= end_at_step`` (and the first entry when none matches); :func:`index_at_step` does the same.

Pure Python, no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


__all__ = ["index_at_step", "prompt_schedule", "split_and"]

_SPECIAL = "\\[]():|"
# lark's SIGNED_NUMBER, then the optional whitespace and the closing bracket of a scheduled prompt.
_NUMBER_CLOSE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*\]")
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


class _NoParse(Exception):
    """The text is not valid at this position under A1111's grammar."""


@dataclass(frozen=True)
class _Seq:
    parts: tuple  # of str, _Seq, _Scheduled, _Alternate


@dataclass(frozen=True)
class _Scheduled:
    before: _Seq | None
    after: _Seq
    number: str  # kept as written: a "." decides between a fraction and a step number


@dataclass(frozen=True)
class _Alternate:
    options: tuple[_Seq, ...]


class _Parser:
    """Recursive descent over A1111's grammar; brackets that do not parse stay literal at the top level only."""

    def __init__(self, text: str):
        self.text = text

    def _at(self, pos: int) -> str | None:
        return self.text[pos] if pos < len(self.text) else None

    def _plain(self, pos: int) -> int:
        """End of a run of ordinary characters (backslash escapes any character but a newline)."""
        text, end = self.text, pos
        while end < len(text) and text[end] not in _SPECIAL[1:]:
            if text[end] == "\\":
                if end + 1 >= len(text) or text[end + 1] == "\n":
                    raise _NoParse
                end += 2
            else:
                end += 1
        return end

    def top(self) -> _Seq:
        parts: list = []
        pos = 0
        while pos < len(self.text):
            char = self.text[pos]
            if char == "|":
                raise _NoParse  # only an alternation may hold a "|"
            if char in "[(":
                try:
                    node, pos = self._element(pos)
                    parts.append(node)
                except _NoParse:
                    parts.append(char)  # an unmatched bracket is text here
                    pos += 1
            elif char in ")]:":
                parts.append(char)
                pos += 1
            else:
                end = self._plain(pos)
                parts.append(self.text[pos:end])
                pos = end
        return _Seq(tuple(parts))

    def _prompt(self, pos: int) -> tuple[_Seq, int]:
        """Text inside brackets: stops before ``) ] : |`` without consuming them."""
        parts: list = []
        while (char := self._at(pos)) is not None and char not in ")]:|":
            if char in "[(":
                node, pos = self._element(pos)
                parts.append(node)
            else:
                end = self._plain(pos)
                parts.append(self.text[pos:end])
                pos = end
        return _Seq(tuple(parts)), pos

    def _element(self, pos: int):
        if self.text[pos] == "(":
            first, pos = self._prompt(pos + 1)
            if self._at(pos) == ")":
                return _Seq(("(", first, ")")), pos + 1
            if self._at(pos) == ":":
                second, pos = self._prompt(pos + 1)
                if self._at(pos) == ")":
                    return _Seq(("(", first, ":", second, ")")), pos + 1
            raise _NoParse
        first, pos = self._prompt(pos + 1)
        char = self._at(pos)
        if char == "]":
            return _Seq(("[", first, "]")), pos + 1
        if char == "|":
            options = [first]
            while self._at(pos) == "|":
                option, pos = self._prompt(pos + 1)
                options.append(option)
            if self._at(pos) == "]":
                return _Alternate(tuple(options)), pos + 1
            raise _NoParse
        if char == ":":
            number = _NUMBER_CLOSE.match(self.text, pos + 1)
            if number:
                return _Scheduled(None, first, number.group(1)), number.end()
            second, pos = self._prompt(pos + 1)
            if self._at(pos) == ":":
                number = _NUMBER_CLOSE.match(self.text, pos + 1)
                if number:
                    return _Scheduled(first, second, number.group(1)), number.end()
        raise _NoParse


@dataclass(frozen=True)
class _Steps:
    steps: int        # the steps the schedule counts in
    int_offset: int   # subtracted from a step number (the base steps, for a hires pass)
    float_offset: float

    def when(self, number: str) -> int:
        value = float(number)
        value = (value - self.float_offset) * self.steps if "." in number else value - self.int_offset
        if not math.isfinite(value):  # "1e999": A1111 crashes on int(inf); clamp instead
            return self.steps if value > 0 else -1
        return min(self.steps, int(value))


def _collect(node, steps: _Steps, found: set[int]) -> None:
    if isinstance(node, str):
        return
    if isinstance(node, _Seq):
        for part in node.parts:
            _collect(part, steps, found)
    elif isinstance(node, _Scheduled):
        when = steps.when(node.number)
        if when >= 1:
            found.add(when)
        if node.before is not None:
            _collect(node.before, steps, found)
        _collect(node.after, steps, found)
    else:
        found.update(range(1, steps.steps + 1))
        for option in node.options:
            _collect(option, steps, found)


def _text(node, step: int, steps: _Steps) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, _Seq):
        return "".join(_text(part, step, steps) for part in node.parts)
    if isinstance(node, _Scheduled):
        if step <= steps.when(node.number):
            return "" if node.before is None else _text(node.before, step, steps)
        return _text(node.after, step, steps)
    return _text(node.options[(step - 1) % len(node.options)], step, steps)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """``[(end_at_step, text), ...]`` for one prompt, as A1111 computes it (``steps`` >= 1).

    With ``hires_steps`` the schedule is for the hires pass: step numbers continue after the base ``steps`` and
    fractions above 1 reach into it (A1111's default, not its "old scheduling" option).
    """
    counting = _Steps(steps, 0, 0.0) if hires_steps is None else _Steps(hires_steps, steps, 1.0)
    try:
        tree = _Parser(prompt).top()
        found = {counting.steps}
        _collect(tree, counting, found)
        return [(step, _text(tree, step, counting)) for step in sorted(found)]
    except (_NoParse, RecursionError):  # too deeply nested for Python's stack: literal too, never a crash
        return [(counting.steps, prompt)]


def index_at_step(ends: list[int], step: int) -> int:
    """The entry a schedule uses at 0-based sampler step ``step`` (A1111's ``reconstruct_cond_batch`` rule)."""
    for index, end in enumerate(ends):
        if step <= end:
            return index
    return 0


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable sub-prompts with their weights: ``"a :1.2 AND b"`` -> ``[("a", 1.2), ("b", 1.0)]``."""
    result = []
    for part in _AND.split(prompt):
        text, weight = _WEIGHT.search(part).groups()
        result.append((text, float(weight) if weight is not None else 1.0))
    return result
