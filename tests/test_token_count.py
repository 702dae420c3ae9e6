"""The prompt boxes' token counter counts as A1111's update_token_counter: tokens / the 75-token chunks they fill."""

from __future__ import annotations

import pytest

from webui.config import Limits
from webui.services.token_count import TokenCounter


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter(Limits(max_prompt_chars=2000))


@pytest.mark.parametrize("text, positive, expected", [
    ("", True, "0/75"),
    ("cat " * 75, True, "75/75"),
    ("cat " * 80, True, "80/150"),
    ("a (cat:1.3) [dog] \\(literal\\)", True, "6/75"),  # weights cost nothing; an escaped ( is a token
    ("a cat <lora:some_lora:0.8> <hypernet:x:1>", True, "2/75"),  # extra-network tags are removed
    ("cat BREAK dog", True, "2/75"),                          # BREAK starts a chunk, the count is the tokens
    ("cat " * 50 + "AND " + "dog " * 60, True, "60/75"),     # each AND sub-prompt alone: the longest
    ("cat " * 50 + "AND " + "dog " * 60, False, "111/150"),  # the negative prompt is not split
    ("[" + "cat " * 70 + ":" + "dog " * 10 + ":5]", True, "70/75"),  # every scheduled text; the longest
])
def test_counts_as_a1111(counter, text, positive, expected):
    assert counter.count(text, steps=20, positive=positive).text() == expected


def test_a_prompt_over_the_character_cap_is_not_tokenized(counter):
    assert counter.count("x" * 2001).text() == "too long"
