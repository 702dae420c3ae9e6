"""Refuse over-long prompts before they are queued, measured in CLIP tokens as the text encoder sees them.

A prompt is first capped in characters, so that tokenizing it is itself cheap, then tokenized with the shipped
CLIP tokenizer and split into 75-token chunks exactly as conditioning does (emphasis, ``BREAK``, comma
backtracking). Every chunk is one more text-encoder pass and 77 more cross-attention keys in every UNet step.
Emphasis brackets and ``BREAK`` keywords are counted first, with plain string scans: parsing emphasis costs about
brackets x pieces, and the job parses its prompts again for every batch.
"""

from __future__ import annotations

import re
import threading

from transformers import CLIPTokenizer

from webui.config import Limits
from webui.errors import InvalidRequest
from webui.extra_networks import strip_tags
from webui.models.embeddings import JobEmbeddings
from webui.models.loader import TOKENIZER_DIR
from webui.pipelines.conditioning import CHUNK_TOKENS, COMMA_BACKTRACK, chunk_prompt
from webui.prompt_schedule import prompt_schedule, split_and

_BREAK = re.compile(r"\bBREAK\b")  # the keyword as webui.prompts splits on it


class PromptBudget:
    """Checks prompt lengths against the server's limits. The tokenizer is loaded on first use."""

    def __init__(self, limits: Limits):
        self._max_chars = limits.max_prompt_chars
        self._max_tokens = limits.max_prompt_tokens
        # Comma backtracking can close a chunk up to 20 tokens early, so a prompt within the token limit may need
        # more chunks than tokens / 75; only BREAK spam (chunks with almost no tokens) goes past this.
        self._max_chunks = -(-self._max_tokens // (CHUNK_TOKENS - COMMA_BACKTRACK))
        self._tokenizer: CLIPTokenizer | None = None
        self._lock = threading.Lock()

    def _get_tokenizer(self) -> CLIPTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
            return self._tokenizer

    def count(self, text: str, embeddings: JobEmbeddings | None = None) -> tuple[int, int]:
        """(tokens, 75-token chunks) of ``text``; call only on text within the character cap. ``embeddings``: the
        textual-inversion names to count as their vectors (A1111's counter does)."""
        chunks = chunk_prompt(self._get_tokenizer(), text, embeddings)
        return sum(len(chunk.tokens) for chunk in chunks), len(chunks)

    def check(self, field: str, text: str, steps: int = 1, composable: bool = False) -> None:
        """Raise InvalidRequest naming ``field`` and the count when ``text`` is over a limit.

        A scheduled prompt (``[a:b:N]``, ``[a|b]``) is measured by its longest text over ``steps`` steps, since
        each text is encoded on its own; ``composable`` (the positive prompt) splits on ``AND`` as conditioning does,
        each sub-prompt measured alone, and at most as many sub-prompts as chunks (each costs a UNet evaluation).
        """
        if len(text) > self._max_chars:
            raise InvalidRequest(field, f"{len(text)} characters is over this server's limit of "
                                        f"{self._max_chars} characters")
        text = strip_tags(text)  # <lora:...> tags select weights and are never encoded
        if not text:
            return
        # Each opening bracket can weight at most one token: more brackets than allowed tokens is never a prompt.
        brackets = text.count("(") + text.count("[")
        if brackets > self._max_tokens:
            raise InvalidRequest(field, f"{brackets} emphasis brackets (\"(\" and \"[\") is over this server's limit "
                                        f"of {self._max_tokens}")
        breaks = len(_BREAK.findall(text))
        if breaks >= self._max_chunks:
            raise InvalidRequest(field, f"{breaks} BREAK keywords is over this server's limit of "
                                        f"{self._max_chunks - 1} (each starts a chunk of {CHUNK_TOKENS} tokens)")
        parts = [part for part, _ in split_and(text)] if composable else [text]  # AND: each sub-prompt is encoded
        if len(parts) > self._max_chunks:
            raise InvalidRequest(field, f"{len(parts)} sub-prompts joined with AND is over this server's limit of "
                                        f"{self._max_chunks}")
        texts = dict.fromkeys(variant for part in parts for _, variant in prompt_schedule(part, steps))
        counts = [self.count(variant) for variant in texts]
        tokens, chunks = max(t for t, _ in counts), max(c for _, c in counts)
        if tokens > self._max_tokens:
            raise InvalidRequest(field, f"{tokens} tokens is over this server's limit of {self._max_tokens} "
                                        f"tokens ({self._max_tokens // CHUNK_TOKENS} chunks of {CHUNK_TOKENS})")
        if chunks > self._max_chunks:
            raise InvalidRequest(field, f"splits into {chunks} chunks of {CHUNK_TOKENS} tokens (each BREAK starts "
                                        f"one), over this server's limit of {self._max_chunks}")
