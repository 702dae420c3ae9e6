"""Prompt text -> CLIP embeddings with A1111 semantics.

Emphasis weights scale each token's embedding (then the mean is restored, as A1111 does); prompts longer than
75 tokens are split into 75-token chunks that are encoded separately and concatenated, never truncated; ``BREAK``
starts a new chunk. Conditional and unconditional embeddings are padded to the same number of chunks.
Scheduled prompts (``[a:b:N]``, ``[a|b]``) are encoded once per distinct text; :class:`ScheduledPair` says which
embeddings apply at each sampler step. A composable prompt (``a :1.2 AND b``) gives one schedule per sub-prompt,
each with its weight (webui/pipelines/composable.py combines them). A textual-inversion embedding named in a
prompt stands for its vectors there (A1111's rules; see :func:`chunk_prompt` and webui/models/embeddings.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from webui.extra_networks import strip_tags
from webui.prompt_schedule import index_at_step, prompt_schedule, split_and
from webui.models.embeddings import ONE_ENCODER, Embedding, JobEmbeddings
from webui.prompts import parse_prompt_attention

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20  # A1111: a chunk overflowing within 20 tokens of a comma breaks at the comma instead


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    # Textual-inversion embeddings: (index in ``tokens`` where its vectors start, the embedding). Its tokens
    # there are placeholders (id 0, as A1111) whose input embeddings are replaced by the vectors.
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)


@dataclass
class Conditioning:
    embeds: torch.Tensor            # [1, 77 * chunks, dim]
    pooled: torch.Tensor | None     # SDXL only: [1, dim2]


def chunk_prompt(tokenizer, text: str, embeddings: JobEmbeddings | None = None) -> list[Chunk]:
    """Split a prompt into 75-token chunks of (token id, weight), honouring emphasis and BREAK.

    An embedding's name among the tokens (A1111: the longest name first) becomes as many placeholder tokens as it
    has vectors, with the weight of the text around it, kept whole in one chunk (a new chunk starts when they
    would not fit)."""
    parsed = parse_prompt_attention(text)
    pieces = [piece for piece, _ in parsed]
    ids_per_piece = tokenizer(pieces, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current, last_comma = Chunk(), -1

    for ids, (piece, weight) in zip(ids_per_piece, parsed):
        if piece == "BREAK" and weight == -1:
            close()
            continue
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK_TOKENS and last_comma != -1 \
                    and len(current.tokens) - last_comma <= COMMA_BACKTRACK:
                # Move the words after the last comma to the next chunk so a phrase is not cut in half.
                cut = last_comma + 1
                rest_tokens, rest_weights = current.tokens[cut:], current.weights[cut:]
                # An embedding among the moved words moves with them (A1111 leaves it behind, misplaced).
                rest_fixes = [(offset - cut, e) for offset, e in current.fixes if offset >= cut]
                current.fixes = [(offset, e) for offset, e in current.fixes if offset < cut]
                current.tokens, current.weights = current.tokens[:cut], current.weights[:cut]
                close()
                current.tokens, current.weights, current.fixes = rest_tokens, rest_weights, rest_fixes
            if len(current.tokens) == CHUNK_TOKENS:
                close()
            found = embeddings.find(tokenizer, ids, position) if embeddings is not None else None
            if found is None:
                current.tokens.append(token)
                current.weights.append(weight)
                position += 1
                continue
            embedding, name_length = found
            if len(current.tokens) + embedding.count > CHUNK_TOKENS:
                close()
            current.fixes.append((len(current.tokens), embedding))
            current.tokens += [0] * embedding.count
            current.weights += [weight] * embedding.count
            position += name_length
    if current.tokens or not chunks:
        close()
    return chunks


def _chunk_ids(tokenizer, chunk: Chunk, pad_id: int) -> tuple[list[int], list[float]]:
    pad = CHUNK_TOKENS - len(chunk.tokens)
    ids = [tokenizer.bos_token_id] + chunk.tokens + [tokenizer.eos_token_id] + [pad_id] * pad
    weights = [1.0] + chunk.weights + [1.0] + [1.0] * pad
    return ids, weights


def _pad_id(tokenizer) -> int:
    # CLIP-L pads with end-of-text (A1111, diffusers); OpenCLIP tokenizers pad with "!" (id 0).
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _encoder_key(is_xl: bool, encoder_index: int, has_clip_l: bool) -> str:
    """Which of an embedding's vectors an encoder takes: SDXL's CLIP-L "clip_l", OpenCLIP-G "clip_g"."""
    if not is_xl:
        return ONE_ENCODER
    return "clip_l" if has_clip_l and encoder_index == 0 else "clip_g"


@contextmanager
def _spliced(encoder, chunk: Chunk, key: str) -> Iterator[None]:
    """While encoding ``chunk``, the token embeddings at its embeddings' places are their vectors.

    A forward hook on the input embedding layer, removed when the chunk is encoded: the shared encoder's weights
    and tokenizer are never changed (BOS is position 0, hence the +1)."""
    if not chunk.fixes:
        yield
        return

    def replace(_module, _args, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for offset, embedding in chunk.fixes:
            vectors = embedding.vectors[key]
            count = min(output.shape[1] - offset - 1, vectors.shape[0])
            output[:, offset + 1:offset + 1 + count] = vectors[:count].to(output.device, output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _hidden(encoder, ids: torch.Tensor, clip_skip: int, penultimate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out = encoder(ids, output_hidden_states=True)
    if penultimate:
        # SDXL conditions on the penultimate layer, without the final norm; like A1111 (by default) it
        # ignores clip skip, which SDXL was not trained with.
        hidden = out.hidden_states[-2]
    elif clip_skip > 1:
        hidden = encoder.final_layer_norm(out.hidden_states[-clip_skip]) if hasattr(encoder, "final_layer_norm") \
            else encoder.text_model.final_layer_norm(out.hidden_states[-clip_skip])
    else:
        hidden = out.last_hidden_state
    return hidden, out[0] if penultimate else hidden


def _apply_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale token embeddings by their weights, then restore the overall mean as A1111 does."""
    if bool((weights == 1.0).all()):
        return z
    original_mean = z.mean()
    z = z * weights.reshape(weights.shape + (1,)).to(z.dtype)
    new_mean = z.mean()
    # A layer-normed output can have a mean of ~0; dividing by it would turn the prompt into NaNs.
    if new_mean.abs() < 1e-6 or original_mean.abs() < 1e-6:
        return z
    return z * (original_mean / new_mean)


@torch.no_grad()
def encode(pipe, chunks: list[Chunk], clip_skip: int, device: torch.device,
           embeddings: JobEmbeddings | None = None) -> Conditioning:
    """Encode chunks with the pipeline's text encoder(s); SDXL concatenates CLIP-L and OpenCLIP-bigG features.
    Embeddings the chunks name are spliced in and noted as used in ``embeddings``."""
    is_xl = getattr(pipe, "text_encoder_2", None) is not None
    # An SDXL refiner has no CLIP-L: it conditions on OpenCLIP-bigG alone.
    encoders = [(pipe.tokenizer, pipe.text_encoder)] if pipe.text_encoder is not None else []
    if is_xl:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    parts, pooled = [], None
    for chunk_index, chunk in enumerate(chunks):
        features = []
        for enc_index, (tokenizer, encoder) in enumerate(encoders):
            ids, weights = _chunk_ids(tokenizer, chunk, _pad_id(tokenizer))
            key = _encoder_key(is_xl, enc_index, pipe.text_encoder is not None)
            with _spliced(encoder, chunk, key):
                hidden, pool = _hidden(encoder, torch.tensor([ids], device=device), clip_skip, penultimate=is_xl)
            features.append(_apply_weights(hidden, torch.tensor([weights], device=hidden.device)))
            if is_xl and enc_index == len(encoders) - 1 and chunk_index == 0:
                pooled = pool  # A1111 pools the first chunk
        parts.append(torch.cat(features, dim=-1))
        if embeddings is not None:
            for _, embedding in chunk.fixes:
                embeddings.note_used(embedding)
    return Conditioning(embeds=torch.cat(parts, dim=1), pooled=pooled)


def encode_pair(pipe, prompt: str, negative: str, clip_skip: int, device: torch.device,
                embeddings: JobEmbeddings | None = None) -> tuple[Conditioning, Conditioning]:
    """Encode prompt and negative prompt, padded to the same number of chunks (diffusers needs equal shapes)."""
    tokenizer = _chunking_tokenizer(pipe)
    # Extra-network tags (<lora:...>) select weights; they are never text for the encoder.
    pos, neg = (chunk_prompt(tokenizer, strip_tags(prompt), embeddings),
                chunk_prompt(tokenizer, strip_tags(negative), embeddings))
    while len(neg) < len(pos):
        neg.append(Chunk())
    while len(pos) < len(neg):
        pos.append(Chunk())
    return (encode(pipe, pos, clip_skip, device, embeddings), encode(pipe, neg, clip_skip, device, embeddings))


def _chunking_tokenizer(pipe):
    """The tokenizer that splits prompts into chunks: CLIP-L's, or OpenCLIP's (same vocabulary) for a refiner."""
    return pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2


@dataclass
class SubPrompt:
    """A composable prompt's second or later part: its weight and its own schedule."""

    weight: float
    ends: list[int]
    conds: list[Conditioning]

    def at(self, step: int) -> Conditioning:
        return self.conds[index_at_step(self.ends, step)]


@dataclass
class ScheduledPair:
    """Prompt and negative prompt embeddings per schedule entry, all padded to the same number of chunks.

    ``conds`` is the first sub-prompt of a composable prompt (the whole prompt otherwise), ``weight`` its weight;
    ``extra`` the other sub-prompts.
    """

    cond_ends: list[int]
    conds: list[Conditioning]
    uncond_ends: list[int]
    unconds: list[Conditioning]
    weight: float = 1.0
    extra: list[SubPrompt] = field(default_factory=list)

    @property
    def switches(self) -> bool:
        return len(self.conds) > 1 or len(self.unconds) > 1 or any(len(sub.conds) > 1 for sub in self.extra)

    @property
    def composable(self) -> bool:
        """Whether guidance must combine several sub-prompts (or weight the only one), as A1111's AND."""
        return bool(self.extra) or self.weight != 1.0

    def indexes_at(self, step: int) -> tuple[int, int]:
        """Which (cond, uncond) entries apply at 0-based sampler step ``step``."""
        return index_at_step(self.cond_ends, step), index_at_step(self.uncond_ends, step)


def encode_scheduled_pair(pipe, prompt: str, negative: str, clip_skip: int, device: torch.device,
                          steps: int, hires_steps: int | None = None,
                          embeddings: JobEmbeddings | None = None) -> ScheduledPair:
    """Encode every text the prompt and negative prompt schedules use over ``steps`` steps, each text once.

    ``hires_steps``: the schedule of a hires fix's second pass (see :func:`webui.prompt_schedule.prompt_schedule`).
    The prompt splits on ``AND`` as A1111's; the negative prompt does not (an ``AND`` there is text, as in A1111).
    Extra-network tags (``<lora:...>``) are removed from both first, as A1111 removes them before scheduling.
    """
    prompt, negative = strip_tags(prompt), strip_tags(negative)
    parts = [(prompt_schedule(text, steps, hires_steps), weight) for text, weight in split_and(prompt)]
    positive, weight = parts[0]
    negatives = prompt_schedule(negative, steps, hires_steps)
    texts = list(dict.fromkeys(text for schedule, _ in parts for _, text in schedule))
    texts += [text for _, text in negatives if text not in texts]
    chunked = {text: chunk_prompt(_chunking_tokenizer(pipe), text, embeddings) for text in texts}
    # Every entry is padded to the longest: diffusers concatenates cond and uncond, and a switch keeps the shape.
    longest = max(len(chunks) for chunks in chunked.values())
    encoded = {text: encode(pipe, chunks + [Chunk() for _ in range(longest - len(chunks))], clip_skip, device,
                            embeddings)
               for text, chunks in chunked.items()}
    extra = [SubPrompt(w, [end for end, _ in schedule], [encoded[text] for _, text in schedule])
             for schedule, w in parts[1:]]
    return ScheduledPair(cond_ends=[end for end, _ in positive], conds=[encoded[text] for _, text in positive],
                         uncond_ends=[end for end, _ in negatives], unconds=[encoded[text] for _, text in negatives],
                         weight=weight, extra=extra)
