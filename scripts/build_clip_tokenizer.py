#!/usr/bin/env python3
"""Build the offline CLIP BPE tokenizer files shipped in ``webui/models/configs``.

Single-file checkpoints carry no tokenizer, and the product must load them without
network access, so we ship the OpenAI CLIP tokenizer ourselves. It is derived from
the MIT-licensed ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP; also bundled in the
``open_clip_torch`` wheel)::

    pip download --no-deps open_clip_torch -d /tmp/oc
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz -d /tmp/oc
    python scripts/build_clip_tokenizer.py /tmp/oc/bpe_simple_vocab_16e6.txt.gz

It writes two folders loadable with ``transformers.CLIPTokenizer.from_pretrained``:

* ``clip_tokenizer/``          pad token ``<|endoftext|>`` (SD1.x, SDXL tokenizer)
* ``clip_tokenizer_pad_bang/`` pad token ``!`` (SD2.x, SDXL tokenizer_2)

The vocabulary follows OpenAI CLIP's ``SimpleTokenizer``: 256 byte-level symbols,
the same with ``</w>``, one token per merge, then the two special tokens (49,408).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# CLIP only uses the first 49152 - 256 - 2 merges of the file (see OpenAI's simple_tokenizer.py).
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "webui" / "models" / "configs"

MIT_LICENSE = """\
The CLIP BPE vocabulary and merges in this folder (vocab.json, merges.txt) are
derived from bpe_simple_vocab_16e6.txt.gz of OpenAI CLIP
(https://github.com/openai/CLIP), distributed under the MIT License:

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> unicode char table; its order fixes the first 256 token ids.

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255 so every
    byte gets a visible, non-whitespace character.
    """
    byte_values = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    code_points = byte_values[:]
    shifted = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            code_points.append(256 + shifted)
            shifted += 1
    return dict(zip(byte_values, map(chr, code_points), strict=True))


def read_merges(gz_path: Path) -> list[str]:
    """The merges CLIP uses: skip the header line, keep the first NUM_MERGES lines."""
    with gzip.open(gz_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    if len(merges) != NUM_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ValueError(f"{gz_path} does not look like CLIP's bpe_simple_vocab_16e6.txt.gz")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += [m.replace(" ", "") for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, "duplicate tokens in the CLIP vocabulary"
    return vocab


def tokenizer_config(pad_token: str) -> dict:
    """Mirrors openai/clip-vit-large-patch14's tokenizer_config.json (pad token aside)."""
    special = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False, "special": True}
    return {
        "added_tokens_decoder": {
            str(VOCAB_SIZE - 2): {"content": BOS, **special},
            str(VOCAB_SIZE - 1): {"content": EOS, **special},
        },
        "add_prefix_space": False,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,  # transformers 5 warns that cleanup corrupts BPE output
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS,
    }


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer_folder(folder: Path, vocab: dict[str, int], merges: list[str], pad_token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    write_json(folder / "tokenizer_config.json", tokenizer_config(pad_token))
    special_tokens = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    write_json(folder / "special_tokens_map.json", special_tokens)
    (folder / "LICENSE-CLIP-BPE.txt").write_text(MIT_LICENSE, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bpe_gz", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="parent folder of the outputs")
    args = parser.parse_args(argv)

    merges = read_merges(args.bpe_gz)
    vocab = build_vocab(merges)
    for name, pad_token in (("clip_tokenizer", EOS), ("clip_tokenizer_pad_bang", "!")):
        write_tokenizer_folder(args.out_dir / name, vocab, merges, pad_token)
        print(f"wrote {args.out_dir / name}")


if __name__ == "__main__":
    main()
