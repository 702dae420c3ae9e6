"""Textual-inversion training settings, as A1111's Train tab names them (torch-free, so the UI may import them).

Defaults are A1111's (``modules/ui.py`` Train tab, ``textual_inversion.train_embedding``): learning rate "0.005",
batch size 1, gradient accumulation 1, template ``style_filewords.txt``, 512x512, 100000 steps, save and preview
every 500 steps. The learning rate takes A1111's schedule syntax: ``0.005`` or ``0.005:100, 1e-3:1000, 1e-5``
(each rate until that step; a rate without a step runs to the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from webui.errors import InvalidRequest
from webui.training.request_fields import check_output_name, check_range, from_mapping

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
USER_TEMPLATES = "textual_inversion_templates"  # A1111's folder name, here under the data dir
MAX_STEPS = 10_000_000


def builtin_templates() -> list[str]:
    return sorted(path.name for path in TEMPLATES_DIR.glob("*.txt"))


def parse_learn_rate(text: str, total_steps: int, field: str = "learn_rate") -> list[tuple[float, int]]:
    """A1111's ``LearnScheduleIterator`` syntax: ``rate[:end_step], ...`` -> [(rate, end_step)], the last ending
    at ``total_steps``. Refuses a rate that is not a positive number or end steps that do not increase."""
    pieces = [piece.strip() for piece in (text or "").split(",") if piece.strip()]
    if not pieces:
        raise InvalidRequest(field, "enter a learning rate, e.g. 0.005 or 0.005:100, 1e-3:1000, 1e-5")
    schedule: list[tuple[float, int]] = []
    for number, piece in enumerate(pieces):
        rate_text, _, step_text = piece.partition(":")
        try:
            rate = float(rate_text)
            end = int(step_text) if step_text.strip() else total_steps
        except ValueError:
            raise InvalidRequest(field, f"'{piece}' is not rate or rate:step (e.g. 0.005:100)") from None
        if not rate > 0 or rate > 1 or rate != rate:
            raise InvalidRequest(field, f"rate {rate_text.strip()} must be above 0 and at most 1")
        if schedule and end <= schedule[-1][1]:
            raise InvalidRequest(field, f"steps must increase ('{piece}' ends at or before the previous one)")
        if not step_text.strip() and number != len(pieces) - 1:
            raise InvalidRequest(field, f"only the last rate may leave out its end step ('{piece}')")
        schedule.append((rate, end))
    return schedule


def rate_at(schedule: list[tuple[float, int]], step: int) -> float:
    for rate, end in schedule:
        if step < end:
            return rate
    return schedule[-1][0]


@dataclass(frozen=True)
class TextualInversionRequest:
    """Train an embedding ``name`` on a checkpoint from a folder of images (captions in ``image.txt``, or the
    file name, become ``[filewords]`` in the prompt template)."""

    name: str                           # the word used in prompts; the file embeddings/<name>.safetensors
    checkpoint: str                     # checkpoint title (or name) to train on
    dataset: str                        # folder inside the data dir
    init_text: str = "*"                # vectors start from these tokens' embeddings
    num_vectors: int = 1                # "Number of vectors per token"
    overwrite: bool = False
    template: str = "style_filewords.txt"
    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_accumulation: int = 1
    steps: int = 100_000
    width: int = 512
    height: int = 512
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    seed: int = 0
    save_every: int = 500               # a resume state every N steps (0 = only at the end); the runner writes it
    sample_every: int = 500             # preview image every N steps (0 = never)
    sample_prompt: str = ""             # "" = a prompt from the template, as A1111's preview does

    def __post_init__(self) -> None:
        check_output_name(self.name)
        if not self.checkpoint.strip():
            raise InvalidRequest("checkpoint", "choose the checkpoint to train on")
        if not self.dataset.strip():
            raise InvalidRequest("dataset", "enter the folder of training images")
        if not self.init_text.strip():
            raise InvalidRequest("init_text", "enter initialization text (e.g. a word close to the concept, or *)")
        check_range("num_vectors", self.num_vectors, 1, 75)
        if not self.template.strip() or "/" in self.template or "\\" in self.template \
                or not self.template.endswith(".txt"):
            raise InvalidRequest("template", f"choose a .txt template file name (built in: "
                                 f"{', '.join(builtin_templates())})")
        check_range("steps", self.steps, 1, MAX_STEPS)
        parse_learn_rate(self.learn_rate, self.steps)
        check_range("batch_size", self.batch_size, 1, 64)
        check_range("gradient_accumulation", self.gradient_accumulation, 1, 1024)
        for field in ("width", "height"):
            check_range(field, getattr(self, field), 8, 2048)
            if getattr(self, field) % 8:
                raise InvalidRequest(field, f"must be a multiple of 8 (got {getattr(self, field)})")
        check_range("tag_drop_out", self.tag_drop_out, 0.0, 1.0)
        check_range("seed", self.seed, 0, 2**32 - 1)
        check_range("save_every", self.save_every, 0, MAX_STEPS)
        check_range("sample_every", self.sample_every, 0, MAX_STEPS)


def ti_from_dict(body: Mapping[str, Any]) -> TextualInversionRequest:
    return from_mapping(TextualInversionRequest, body)
