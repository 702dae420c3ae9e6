"""Textual-inversion embeddings named in prompts (A1111's rules), on tiny SD1/SDXL models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.infotext import parse_infotext
from webui.models.embeddings import EmbeddingLibrary, JobEmbeddings
from webui.pipelines.conditioning import CHUNK_TOKENS, chunk_prompt, encode, encode_pair
from webui.types import Txt2ImgRequest

WIDTH = 32  # the tiny SD1 text encoder's hidden size (tests/tiny_models.py)


def write(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def job(library: EmbeddingLibrary, pipe) -> JobEmbeddings:
    return JobEmbeddings(library.for_pipe(pipe))


def capture_inputs(encoder) -> tuple[list[torch.Tensor], object]:
    """The token embeddings (before positions are added) each call of ``encoder`` feeds its transformer."""
    layer = getattr(encoder, "text_model", encoder).embeddings  # token embeddings + position embeddings
    positions = layer.position_embedding.weight.detach()
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach() - positions[:out.shape[1]]))
    return seen, handle


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "embeddings"


def test_vectors_replace_the_name_at_its_place_in_the_encoder_input(tiny_model, folder):
    vectors = torch.randn(3, WIDTH)
    write(folder, "style/wizard-hat.safetensors", {"emb_params": vectors})  # sub-folder: the name is the stem
    embeddings = job(EmbeddingLibrary(folder), tiny_model.pipe)
    tokenizer, encoder = tiny_model.pipe.tokenizer, tiny_model.pipe.text_encoder
    [chunk] = chunk_prompt(tokenizer, "a wizard-hat on a cat", embeddings)
    assert len(chunk.tokens) == 1 + 3 + 3  # "a", three vectors, "on a cat"
    assert [offset for offset, _ in chunk.fixes] == [1]

    seen, handle = capture_inputs(encoder)
    try:
        encode(tiny_model.pipe, [chunk], 1, torch.device("cpu"), embeddings)
    finally:
        handle.remove()
    # Position 0 is BOS, 1 "a", then the vectors; the words around keep their own embeddings.
    assert torch.allclose(seen[0][0, 2:5], vectors, atol=1e-6)
    words = encoder.get_input_embeddings().weight
    assert torch.allclose(seen[0][0, 5], words[tokenizer.convert_tokens_to_ids("on</w>")], atol=1e-6)
    assert set(embeddings.used) == {"wizard-hat"}


def test_the_embedding_changes_the_conditioning_and_the_words_alone_do_not_use_it(tiny_model, folder):
    write(folder, "wizard-hat.safetensors", {"emb_params": torch.randn(2, WIDTH) * 3})
    embeddings = job(EmbeddingLibrary(folder), tiny_model.pipe)
    device = torch.device("cpu")
    with_emb, _ = encode_pair(tiny_model.pipe, "a wizard-hat", "", 1, device, embeddings)
    plain, _ = encode_pair(tiny_model.pipe, "a wizard-hat", "", 1, device)
    assert not torch.allclose(with_emb.embeds, plain.embeds)
    # "wizard hat" (a space) is other tokens: not the embedding
    other = JobEmbeddings(embeddings.available)
    encode_pair(tiny_model.pipe, "a wizard hat, wizard-hats", "", 1, device, other)
    assert other.used == {}


def test_emphasis_applies_to_the_vectors(tiny_model, folder):
    write(folder, "glow.safetensors", {"emb_params": torch.randn(2, WIDTH)})
    embeddings = job(EmbeddingLibrary(folder), tiny_model.pipe)
    [chunk] = chunk_prompt(tiny_model.pipe.tokenizer, "a (glow:1.5) [cat]", embeddings)
    assert chunk.weights == pytest.approx([1.0, 1.5, 1.5, 1 / 1.1])


def test_vectors_count_in_the_75_token_chunks_and_stay_whole(tiny_model, folder):
    write(folder, "glow.safetensors", {"emb_params": torch.randn(4, WIDTH)})
    embeddings = job(EmbeddingLibrary(folder), tiny_model.pipe)
    tokenizer = tiny_model.pipe.tokenizer
    chunks = chunk_prompt(tokenizer, " ".join(["tree"] * 73) + " glow", embeddings)
    # 73 words + 4 vectors do not fit in 75: the vectors start the next chunk, whole
    assert [len(c.tokens) for c in chunks] == [73, 4]
    assert chunks[1].fixes[0][0] == 0
    chunks = chunk_prompt(tokenizer, " ".join(["tree"] * 71) + " glow", embeddings)
    assert [len(c.tokens) for c in chunks] == [CHUNK_TOKENS]


def test_the_longest_name_wins(tiny_model, folder):
    write(folder, "neg.safetensors", {"emb_params": torch.randn(1, WIDTH)})
    write(folder, "neg-hands.safetensors", {"emb_params": torch.randn(5, WIDTH)})
    embeddings = job(EmbeddingLibrary(folder), tiny_model.pipe)
    [chunk] = chunk_prompt(tiny_model.pipe.tokenizer, "neg-hands, neg", embeddings)
    assert [e.name for _, e in chunk.fixes] == ["neg-hands", "neg"]
    assert len(chunk.tokens) == 5 + 1 + 1  # five vectors, the comma, one vector


def test_formats_and_what_is_skipped_with_the_reason(tiny_model, folder):
    write(folder, "a1111.safetensors", {"emb_params": torch.randn(2, WIDTH)})
    write(folder, "concept.safetensors", {"<concept>": torch.randn(WIDTH)})  # diffusers: one 1-D vector
    write(folder, "too-wide.safetensors", {"emb_params": torch.randn(2, 768)})
    write(folder, "xl.safetensors", {"clip_l": torch.randn(1, WIDTH), "clip_g": torch.randn(1, 64)})
    write(folder, "two-terms.safetensors", {"a": torch.randn(1, WIDTH), "b": torch.randn(1, WIDTH)})
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "garbage.safetensors").write_bytes(b"\xff" * 64)
    torch.save({"string_to_param": {"*": torch.randn(2, WIDTH)}, "step": 500}, folder / "old.pt")
    available = EmbeddingLibrary(folder).for_pipe(tiny_model.pipe)
    assert list(available.loaded) == ["a1111", "concept"]
    assert available.loaded["concept"].count == 1
    reasons = {name: s.reason for name, s in available.skipped.items()}
    assert "768 wide" in reasons["too-wide"] and "32" in reasons["too-wide"]
    assert "SD1.x" in reasons["xl"]
    assert "exactly one" in reasons["two-terms"] or "neither" in reasons["two-terms"]
    assert "not a readable .safetensors" in reasons["garbage"]
    assert "--allow-pickle" in reasons["old"]  # the pickle was never opened
    assert "empty" not in available.loaded

    trusted = EmbeddingLibrary(folder, allow_pickle=True).for_pipe(tiny_model.pipe)
    assert trusted.loaded["old"].step == 500 and trusted.loaded["old"].count == 2


def test_a_pickle_that_runs_code_is_refused_even_with_the_opt_in(tiny_model, folder, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder.mkdir(parents=True)
    torch.save({"string_to_param": {"*": Evil()}}, folder / "evil.pt")
    available = EmbeddingLibrary(folder, allow_pickle=True).for_pipe(tiny_model.pipe)
    assert "weights-only" in available.skipped["evil"].reason
    assert not marker.exists()


def test_sdxl_files_give_each_text_encoder_its_own_vectors(folder):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_models import tiny_sd1_components, tiny_sdxl_components

    sd1 = tiny_sd1_components()
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed=0), tokenizer=sd1["tokenizer"],
                                     tokenizer_2=sd1["tokenizer"], scheduler=sd1["scheduler"])
    clip_l, clip_g = torch.randn(2, 32), torch.randn(2, 64)
    write(folder, "xl-style.safetensors", {"clip_l": clip_l, "clip_g": clip_g})
    write(folder, "sd1-only.safetensors", {"emb_params": torch.randn(2, 32)})
    available = EmbeddingLibrary(folder).for_pipe(pipe)
    assert list(available.loaded) == ["xl-style"] and "sd1-only" in available.skipped
    assert available.loaded["xl-style"].shape == 96  # A1111 reports the sum of both widths

    embeddings = JobEmbeddings(available)
    seen_l, handle_l = capture_inputs(pipe.text_encoder)
    seen_g, handle_g = capture_inputs(pipe.text_encoder_2)
    try:
        cond, _ = encode_pair(pipe, "xl-style cat", "", 1, torch.device("cpu"), embeddings)
    finally:
        handle_l.remove()
        handle_g.remove()
    assert torch.allclose(seen_l[0][0, 1:3], clip_l, atol=1e-6)
    assert torch.allclose(seen_g[0][0, 1:3], clip_g, atol=1e-6)
    assert cond.pooled is not None and torch.isfinite(cond.embeds).all()


def _state_bytes(module: torch.nn.Module) -> dict[str, bytes]:
    # As raw bytes, so any dtype compares exactly (numpy has no bf16).
    return {k: v.detach().cpu().flatten().view(torch.uint8).numpy().tobytes() for k, v in module.state_dict().items()}


def test_a_job_uses_the_embedding_writes_ti_hashes_and_leaves_the_model_as_it_was(services, data_dir):
    folder = data_dir / "embeddings"
    path = write(folder, "wizard-hat.safetensors", {"emb_params": torch.randn(2, WIDTH) * 4})
    write(folder, "unused.safetensors", {"emb_params": torch.randn(1, WIDTH)})
    small = dict(width=64, height=64, steps=2, seed=5, save_images=False)
    with services.manager.lease() as model:
        before = _state_bytes(model.pipe.text_encoder)
        tokenizer_size = len(model.pipe.tokenizer)

    used = services.generation.txt2img(Txt2ImgRequest(prompt="a wizard-hat", negative_prompt="(wizard-hat:0.5)",
                                                      **small))
    short = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    params = parse_infotext(used.infotexts[0]).params
    assert params["TI hashes"] == f"wizard-hat: {short}"
    assert f'TI hashes: "wizard-hat: {short}"' in used.infotexts[0]  # quoted, as A1111 writes it

    with services.manager.lease() as model:
        assert _state_bytes(model.pipe.text_encoder) == before
        assert len(model.pipe.tokenizer) == tokenizer_size
        assert not model.pipe.text_encoder.get_input_embeddings()._forward_hooks
        assert model.embeddings is None  # the shared model never holds a job's embeddings

    plain = services.generation.txt2img(Txt2ImgRequest(prompt="a wizard hat", **small))
    assert "TI hashes" not in parse_infotext(plain.infotexts[0]).params
    assert list(used.images[0].getdata()) != list(plain.images[0].getdata())


def test_the_token_counter_counts_an_embedding_as_its_vectors(services, data_dir):
    write(data_dir / "embeddings", "wizard-hat.safetensors", {"emb_params": torch.randn(5, WIDTH)})
    assert services.tokens.count("a wizard-hat").text() == "6/75"  # "a" + five vectors, as A1111 counts
    assert services.tokens.count("a wizard hat").text() == "3/75"  # other words: not the embedding


def test_an_sdxl_refiner_gets_the_clip_g_vectors_and_use_is_noted_once(folder):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_models import tiny_sd1_components, tiny_sdxl_components

    sd1, xl = tiny_sd1_components(), tiny_sdxl_components(seed=0)
    base = StableDiffusionXLPipeline(**xl, tokenizer=sd1["tokenizer"], tokenizer_2=sd1["tokenizer"],
                                     scheduler=sd1["scheduler"])
    refiner = StableDiffusionXLPipeline(**{**xl, "text_encoder": None}, tokenizer=None,
                                        tokenizer_2=sd1["tokenizer"], scheduler=sd1["scheduler"])
    clip_g = torch.randn(2, 64)
    write(folder, "xl-style.safetensors", {"clip_l": torch.randn(2, 32), "clip_g": clip_g})
    embeddings = JobEmbeddings(EmbeddingLibrary(folder).for_pipe(base))
    for_refiner = embeddings.for_pipe(refiner)
    assert list(for_refiner.available.loaded) == ["xl-style"]
    seen, handle = capture_inputs(refiner.text_encoder_2)
    try:
        encode_pair(refiner, "xl-style cat", "", 1, torch.device("cpu"), for_refiner)
    finally:
        handle.remove()
    assert torch.allclose(seen[0][0, 1:3], clip_g, atol=1e-6)
    assert set(embeddings.used) == {"xl-style"}  # the job's TI hashes include what the refiner used
