"""Prompt chunking and weighting with the shipped CLIP tokenizer (A1111 semantics)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from webui.models.loader import TOKENIZER_DIR
from webui.pipelines.conditioning import CHUNK_TOKENS, Chunk, _apply_weights, chunk_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def test_short_prompt_is_one_chunk_with_weights(tokenizer):
    [chunk] = chunk_prompt(tokenizer, "a (red:1.5) [cat]")
    assert tokenizer.decode(chunk.tokens) == "a red cat"
    assert chunk.weights == pytest.approx([1.0, 1.5, 1 / 1.1])


def test_empty_prompt_is_one_empty_chunk(tokenizer):
    assert chunk_prompt(tokenizer, "") == [Chunk()]


def test_long_prompt_is_split_not_truncated(tokenizer):
    words = " ".join(["tree"] * 200)
    chunks = chunk_prompt(tokenizer, words)
    assert [len(c.tokens) for c in chunks] == [75, 75, 50]


def test_break_starts_a_new_chunk(tokenizer):
    chunks = chunk_prompt(tokenizer, "a red cat BREAK a blue dog")
    assert [tokenizer.decode(c.tokens) for c in chunks] == ["a red cat", "a blue dog"]


def test_overflow_near_a_comma_moves_the_phrase_to_the_next_chunk(tokenizer):
    prompt = " ".join(["tree"] * 70) + ", big red barn with a roof"
    first, second = chunk_prompt(tokenizer, prompt)
    assert len(first.tokens) == 71 and tokenizer.decode(first.tokens[-1:]) == ","
    assert tokenizer.decode(second.tokens) == "big red barn with a roof"
    assert all(len(c.tokens) <= CHUNK_TOKENS for c in (first, second))


def test_weights_scale_tokens_and_keep_the_mean():
    z = torch.arange(1, 13, dtype=torch.float32).reshape(1, 3, 4)
    out = _apply_weights(z, torch.tensor([[1.0, 2.0, 1.0]]))
    assert out.mean().item() == pytest.approx(z.mean().item())
    assert (out[0, 1] / out[0, 0]).mean() > (z[0, 1] / z[0, 0]).mean()
    assert torch.equal(_apply_weights(z, torch.ones(1, 3)), z)
