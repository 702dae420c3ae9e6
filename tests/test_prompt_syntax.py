"""A1111's prompt editing syntax: the schedule parser on A1111's own cases, and the per-step switch on a tiny model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import make_settings
from tests.tiny_models import write_tiny_sdxl_single_file
from webui.errors import InvalidRequest
from webui.models.loader import LoadedModel
from webui.pipelines import conditioning, img2img, txt2img
from webui.pipelines.prompt_switch import PromptSwitch
from webui.prompt_schedule import index_at_step, prompt_schedule, split_and
from webui.server import create_app
from webui.services.container import build_services
from webui.types import CheckpointInfo, Img2ImgRequest, Txt2ImgRequest

# A1111 1.10 modules/prompt_parser.py, get_learned_conditioning_prompt_schedules doctests (10 steps), as data.
A1111_DOCTESTS = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    # The doctest says [[5, 'a  c'], [10, 'a {b|d{ c']] ("not handling this right now"), but A1111's code (with
    # lark 1.1.2, which it pins, and 1.3.1) returns the prompt as literal text: a "|" outside [a|b]. We match the code.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
    ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
]
# The same doctests' hires-pass cases: get_learned_conditioning_prompt_schedules([p], 10, 10).
A1111_HIRES_DOCTESTS = [
    ("a [b:.5] c", [(10, "a b c")]),
    ("a [b:1.5] c", [(5, "a  c"), (10, "a b c")]),
]
# More cases, each checked against A1111's parser (lark 1.1.2): the syntax of the issue, BREAK inside brackets,
# malformed numbers and stray "|" (whole prompt literal).
MORE_CASES = [
    ("a [cat:dog:0.25]", 20, [(5, "a cat"), (20, "a dog")]),
    ("a [cat::0.5]", 20, [(10, "a cat"), (20, "a ")]),
    ("a [:dog:0.25]", 20, [(5, "a "), (20, "a dog")]),
    ("[cat:dog:0.5]", 4, [(2, "cat"), (4, "dog")]),
    ("[cat|dog|] x", 4, [(1, "cat x"), (2, "dog x"), (3, " x"), (4, "cat x")]),
    ("[[a|b]:c:2]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "c")]),
    ("a (b:1.2) [c:(d:1.3):3]", 10, [(3, "a (b:1.2) c"), (10, "a (b:1.2) (d:1.3)")]),
    ("[a BREAK b:c:3]", 10, [(3, "a BREAK b"), (10, "c")]),
    ("a [b:c:1.2.3] d", 10, [(10, "a [b:c:1.2.3] d")]),
    ("(a:1.2.3) [b:3]", 10, [(3, "(a:1.2.3) "), (10, "(a:1.2.3) b")]),
    ("a | b [c:3]", 10, [(10, "a | b [c:3]")]),
    ("[a:b:1e1] [c:d:-1]", 10, [(10, "a d")]),
    ("a [b:3] \\", 10, [(10, "a [b:3] \\")]),  # a lone trailing backslash: A1111's parser fails, all literal
    ("a \\[b:3] [c:2]", 10, [(2, "a \\[b:3] "), (10, "a \\[b:3] c")]),
    ("[a:b:1e999]", 10, [(10, "a")]),  # A1111 crashes on int(inf); the schedule never switches here
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_DOCTESTS)
def test_schedules_match_a1111_doctests(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


@pytest.mark.parametrize(("prompt", "expected"), A1111_HIRES_DOCTESTS)
def test_hires_schedules_match_a1111_doctests(prompt, expected):
    assert prompt_schedule(prompt, 10, hires_steps=10) == expected


@pytest.mark.parametrize(("prompt", "steps", "expected"), MORE_CASES)
def test_schedules_match_a1111_on_more_cases(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_step_lookup_is_a1111s_off_by_one():
    # reconstruct_cond_batch: 0-based sampler step s uses the first entry with s <= end_at_step.
    ends = [end for end, _ in prompt_schedule("[cat:dog:0.5]", 4)]
    assert [index_at_step(ends, step) for step in range(4)] == [0, 0, 0, 1]
    assert index_at_step(ends, 9) == 0  # past the end: the first entry, as A1111


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a :1.2 AND b", [("a", 1.2), (" b", 1.0)]),
    ("a cat AND a dog:0.5", [("a cat", 1.0), (" a dog", 0.5)]),
    ("ANDROID AND", [("ANDROID", 1.0), ("", 1.0)]),
    ("cat:1", [("cat", 1.0)]),
    ("cat :-0.5", [("cat", -0.5)]),
    ("a\nb : 2. ", [("a\nb", 2.0)]),
    ("x:1.2.3", [("x:1.2.3", 1.0)]),
    ("black and white", [("black and white", 1.0)]),
])
def test_and_splits_like_a1111(prompt, expected):
    assert split_and(prompt) == expected


# --- per-step switching on the tiny model ---------------------------------------------------------------------

class Listener:
    def on_step(self, step, steps, preview):
        pass

    def should_stop(self):
        return False


@pytest.fixture(scope="module")
def tiny(model_files, tiny_loader) -> LoadedModel:
    path = model_files["single"]
    info = CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors", short_hash=None,
                          sha256=None)
    return tiny_loader(info, torch.float32)


@pytest.fixture(scope="module")
def inpaint_model(model_files, tiny_loader) -> LoadedModel:
    path = model_files["inpaint"]
    info = CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors", short_hash=None,
                          sha256=None)
    return tiny_loader(info, torch.float32)


class UNetInputs:
    """Records the text embeddings the UNet receives at each evaluation (a forward pre-hook, removed after)."""

    def __init__(self, unet):
        self.unet, self.seen, self.pooled = unet, [], []

    def __enter__(self):
        def hook(_module, args, kwargs):
            self.seen.append(kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None).clone())
            added = kwargs.get("added_cond_kwargs") or {}
            if "text_embeds" in added:
                self.pooled.append(added["text_embeds"].clone())
        self._handle = self.unet.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def encoded(model: LoadedModel, text: str, chunks: int = 1) -> conditioning.Conditioning:
    pipe = model.pipe
    parts = conditioning.chunk_prompt(pipe.tokenizer, text)
    parts += [conditioning.Chunk() for _ in range(chunks - len(parts))]
    return conditioning.encode(pipe, parts, 1, torch.device("cpu"))


def embeds(model: LoadedModel, text: str, chunks: int = 1) -> torch.Tensor:
    return encoded(model, text, chunks).embeds


def run_txt2img(model: LoadedModel, prompt: str, negative: str = "", steps: int = 4, seeds=(7,),
                sampler: str = "Euler") -> tuple[list[torch.Tensor], list]:
    request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, width=64, height=64, steps=steps, seed=7,
                             sampler_name=sampler, cfg_scale=5)
    with UNetInputs(model.pipe.unet) as inputs:
        out = txt2img.run_batch(model, request, list(seeds), Listener(), preview_every=0)
    return inputs.seen, out.images


def assert_halves(seen: torch.Tensor, uncond: torch.Tensor, cond: torch.Tensor, images: int = 1) -> None:
    """diffusers' guided batch: [uncond x images, cond x images]."""
    assert seen.shape[0] == 2 * images
    for k in range(images):
        torch.testing.assert_close(seen[k], uncond[0])
        torch.testing.assert_close(seen[images + k], cond[0])


def test_scheduled_prompt_switches_conditioning_at_a1111s_step(tiny):
    seen, _ = run_txt2img(tiny, "a [cat:dog:0.5]", negative="blurry", steps=4)
    cat, dog, uncond = embeds(tiny, "a cat"), embeds(tiny, "a dog"), embeds(tiny, "blurry")
    assert len(seen) == 4
    # [(2, "a cat"), (4, "a dog")]: steps 0, 1, 2 use "a cat", step 3 "a dog" (A1111's s <= end_at_step).
    for step, expected in enumerate([cat, cat, cat, dog]):
        assert_halves(seen[step], uncond, expected)


def test_alternation_changes_prompt_every_step_for_every_image(tiny):
    seen, _ = run_txt2img(tiny, "a [cat|dog]", steps=4, seeds=(7, 8))
    cat, dog, uncond = embeds(tiny, "a cat"), embeds(tiny, "a dog"), embeds(tiny, "")
    for step, expected in enumerate([cat, cat, dog, cat]):
        assert_halves(seen[step], uncond, expected, images=2)


def test_negative_prompt_follows_its_own_schedule(tiny):
    seen, _ = run_txt2img(tiny, "a cat", negative="[ugly:blurry:1]", steps=3)
    cat, ugly, blurry = embeds(tiny, "a cat"), embeds(tiny, "ugly"), embeds(tiny, "blurry")
    for step, expected in enumerate([ugly, ugly, blurry]):
        assert_halves(seen[step], expected, cat)


def test_schedules_of_different_lengths_are_padded_to_the_same_chunks(tiny):
    long = " ".join(["tree"] * 80)  # two chunks
    seen, _ = run_txt2img(tiny, f"[{long}:a cat:1]", steps=3)
    assert {s.shape[1] for s in seen} == {154}
    assert_halves(seen[2], embeds(tiny, "", chunks=2), embeds(tiny, "a cat", chunks=2))


def test_scheduled_image_differs_from_either_prompt(tiny):
    _, [scheduled] = run_txt2img(tiny, "a [cat:dog:0.5]", steps=3)
    _, [cat] = run_txt2img(tiny, "a cat", steps=3)
    _, [dog] = run_txt2img(tiny, "a dog", steps=3)
    assert scheduled.tobytes() != cat.tobytes() and scheduled.tobytes() != dog.tobytes()


def test_malformed_prompt_is_encoded_as_literal_text(tiny):
    seen, _ = run_txt2img(tiny, "a | b [c:2]", steps=3)
    literal = embeds(tiny, "a | b [c:2]")
    for step in range(3):
        assert_halves(seen[step], embeds(tiny, ""), literal)


def test_img2img_counts_schedule_steps_from_where_sampling_starts(tiny):
    # A1111 schedules over the full 6 steps and counts from 0 where the strength-0.5 run starts (t_enc + 1 = 4
    # evaluations): [(1, "cat"), (6, "dog")] gives cat, cat, dog, dog.
    init = Image.new("RGB", (64, 64), "gray")
    request = Img2ImgRequest(prompt="[cat:dog:1]", init_images=[init], width=64, height=64, steps=6,
                             denoising_strength=0.5, seed=3, sampler_name="Euler", cfg_scale=5)
    prepared = img2img.prepare(request, init, "img2img")
    with UNetInputs(tiny.pipe.unet) as inputs:
        img2img.run_batch(tiny, request, prepared, "img2img", [3], Listener(), preview_every=0)
    cat, dog, uncond = embeds(tiny, "cat"), embeds(tiny, "dog"), embeds(tiny, "")
    assert len(inputs.seen) == 4
    for step, expected in enumerate([cat, cat, dog, dog]):
        assert_halves(inputs.seen[step], uncond, expected)


def test_sdxl_switches_pooled_embeddings_with_the_text(tmp_path_factory, tiny_loader):
    path = write_tiny_sdxl_single_file(tmp_path_factory.mktemp("xl") / "tiny-xl.safetensors", dtype=torch.float32)
    info = CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors", short_hash=None,
                          sha256=None)
    model = tiny_loader(info, torch.float32)
    assert model.family == "sdxl"
    request = Txt2ImgRequest(prompt="[cat:dog:1]", width=64, height=64, steps=3, seed=1, sampler_name="Euler",
                             cfg_scale=5)
    with UNetInputs(model.pipe.unet) as inputs:
        txt2img.run_batch(model, request, [1], Listener(), preview_every=0)
    cat, dog, uncond = encoded(model, "cat"), encoded(model, "dog"), encoded(model, "")
    for step, expected in enumerate([cat, cat, dog]):
        assert_halves(inputs.seen[step], uncond.embeds, expected.embeds)
        assert_halves(inputs.pooled[step], uncond.pooled, expected.pooled)


def test_instruct_pix2pix_refuses_schedules_instead_of_dropping_them(tiny):
    pair = conditioning.encode_scheduled_pair(tiny.pipe, "[cat:dog:1]", "", 1, torch.device("cpu"), 4)
    switch = PromptSwitch(pair, "sd1", 1)
    with pytest.raises(InvalidRequest) as refused:
        switch.refuse_switching("with InstructPix2Pix checkpoints")
    assert refused.value.field == "prompt"
    plain = PromptSwitch(conditioning.encode_scheduled_pair(tiny.pipe, "cat", "", 1, torch.device("cpu"), 4),
                                "sd1", 1)
    plain.refuse_switching("with InstructPix2Pix checkpoints")  # nothing to switch: accepted


# --- the API refuses what is not implemented, before queueing -------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    services = build_services(make_settings(tmp_path_factory.mktemp("prompt-syntax")))
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
            yield test_client
    finally:
        services.queue.shutdown()


def test_api_refuses_more_sub_prompts_than_chunks_with_422(client):
    # Composable AND is supported (tests/test_composable.py); each sub-prompt costs a UNet evaluation, so the
    # count is bounded like the chunks are.
    prompt = " AND ".join(["a red fox"] * 200)
    response = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "width": 64, "height": 64, "steps": 2})
    assert response.status_code == 422
    assert response.json()["error"].startswith("prompt: 200 sub-prompts")


def test_api_counts_the_longest_scheduled_text_against_the_token_limit(client):
    long = ", ".join(["a red fox in the snow"] * 300)  # 2,099 tokens, over the default limit of 1,500
    response = client.post("/sdapi/v1/txt2img", json={"prompt": f"[a cat:{long}:5]", "width": 64, "height": 64,
                                                      "steps": 10})
    assert response.status_code == 422 and response.json()["error"].startswith("prompt: ")
    assert "tokens" in response.json()["error"]
