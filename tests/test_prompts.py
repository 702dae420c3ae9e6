"""Tests for webui.prompts.parse_prompt_attention (A1111 emphasis syntax)."""

from __future__ import annotations

import pytest

from webui.prompts import BREAK_MARKER, parse_prompt_attention

# The doctest examples from A1111's modules/prompt_parser.py, verbatim.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]

MORE_CASES = [
    ("", [("", 1.0)]),
    ("((w))", [("w", 1.21)]),
    ("[w]", [("w", 1 / 1.1)]),
    ("[[w]]", [("w", 1 / 1.21)]),
    ("(w:1.5)", [("w", 1.5)]),
    ("(w: 1.5 )", [("w", 1.5)]),  # A1111 allows spaces around the number
    ("(w:-0.5)", [("w", -0.5)]),
    ("((w:2))", [("w", 2.2)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("a:b", [("a:b", 1.0)]),  # a colon outside brackets is just text
    ("a)b]", [("a)b]", 1.0)]),  # stray closers are text
    ("\\\\", [("\\", 1.0)]),
    ("\\)\\[", [(")[", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped, like A1111
    ("(a)(b)", [("ab", 1.1)]),
    ("(a:1.1)(b)", [("ab", 1.1)]),  # equal weights merge whatever their origin
    ("multi\nline (text)", [("multi\nline ", 1.0), ("text", 1.1)]),
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),  # malformed weight: text, default multiplier
]

BREAK_CASES = [
    ("a BREAK b", [("a", 1.0), BREAK_MARKER, ("b", 1.0)]),
    ("BREAK", [("", 1.0), BREAK_MARKER, ("", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), BREAK_MARKER, (",b", 1.0)]),  # \b boundary, as in A1111
    ("BREAKING news", [("BREAKING news", 1.0)]),
    ("a break b", [("a break b", 1.0)]),  # only the uppercase keyword
    ("(a) BREAK (b)", [("a", 1.1), ("", 1.0), BREAK_MARKER, ("", 1.0), ("b", 1.1)]),
    # Deviation from A1111: the marker inside brackets is not multiplied.
    ("(a BREAK b)", [("a", 1.1), BREAK_MARKER, ("b", 1.1)]),
]


def _assert_pieces(actual: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [text for text, _ in actual] == [text for text, _ in expected]
    assert [weight for _, weight in actual] == pytest.approx([weight for _, weight in expected])


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES)
def test_a1111_reference_examples(text: str, expected: list[tuple[str, float]]) -> None:
    _assert_pieces(parse_prompt_attention(text), expected)


@pytest.mark.parametrize(("text", "expected"), MORE_CASES)
def test_emphasis_rules(text: str, expected: list[tuple[str, float]]) -> None:
    _assert_pieces(parse_prompt_attention(text), expected)


@pytest.mark.parametrize(("text", "expected"), BREAK_CASES)
def test_break_markers(text: str, expected: list[tuple[str, float]]) -> None:
    _assert_pieces(parse_prompt_attention(text), expected)


def test_returns_plain_tuples() -> None:
    result = parse_prompt_attention("a (b) [c]")
    assert all(isinstance(piece, tuple) and len(piece) == 2 for piece in result)
    assert all(isinstance(text, str) and isinstance(weight, float) for text, weight in result)


def test_break_marker_weight_is_minus_one() -> None:
    assert ("BREAK", -1) in parse_prompt_attention("x BREAK y")
