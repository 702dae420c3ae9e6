"""The prompt boxes' token counter, counted as A1111's ``update_token_counter`` counts.

Extra-network tags (``<lora:name:0.8>``) are removed, a positive prompt is split on ``AND``, every text a prompt
schedule produces (``[a:b:N]``, ``[a|b]``) is counted, and the longest wins. The count is CLIP tokens after
emphasis parsing (brackets and weights cost nothing, ``BREAK`` starts a chunk); the target is the 75-token chunks
those tokens fill, so 80 tokens read ``80/150``. Every checkpoint family this server loads (SD 1.x, 2.x, SDXL)
tokenizes with the same CLIP BPE vocabulary, so one tokenizer counts for all. An embedding's name counts as its
vector count, as in A1111.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from webui.config import Limits
from webui.models.embeddings import EmbeddingSet, JobEmbeddings
from webui.pipelines.conditioning import CHUNK_TOKENS
from webui.prompt_schedule import prompt_schedule, split_and
from webui.services.prompt_budget import PromptBudget

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra_networks.re_extra_net


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    target: int  # tokens the chunks hold: a multiple of 75
    too_long: bool = False  # over the server's character cap: not tokenized at all

    def text(self) -> str:
        return "too long" if self.too_long else f"{self.tokens}/{self.target}"


class TokenCounter:
    def __init__(self, limits: Limits, embeddings: Callable[[], EmbeddingSet | None] = lambda: None):
        """``embeddings``: the textual-inversion embeddings usable now; a name among them counts as its vectors."""
        self._budget = PromptBudget(limits)
        self._max_chars = limits.max_prompt_chars
        self._embeddings = embeddings

    def count(self, text: str, steps: int = 20, positive: bool = True) -> TokenCount:
        if len(text) > self._max_chars:
            return TokenCount(0, CHUNK_TOKENS, too_long=True)
        text = _EXTRA_NETWORK.sub("", text)
        parts = [part for part, _ in split_and(text)] if positive else [text]
        variants = dict.fromkeys(variant for part in parts for _, variant in prompt_schedule(part, max(1, steps)))
        available = self._embeddings()
        found = JobEmbeddings(available) if available is not None else None
        tokens = max(self._budget.count(variant, found)[0] for variant in variants)
        return TokenCount(tokens, -(-max(tokens, 1) // CHUNK_TOKENS) * CHUNK_TOKENS)
