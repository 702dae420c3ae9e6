"""The checkpoint merger's typed request (torch-free, so the UI and the API build it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from webui.errors import InvalidRequest

WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION = "Weighted sum", "Add difference", "No interpolation"
METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION)  # A1111's names, as its radio shows them
NO_VAE = "None"
MAX_LORAS = 32


@dataclass(frozen=True)
class MergeRequest:
    """A1111's Checkpoint Merger fields (``run_modelmerger``), plus LoRAs to bake and ``overwrite``.

    Models are checkpoint titles, names or hashes (as ``/sdapi/v1/sd-models`` lists them); ``output_name`` empty
    means A1111's generated name (``0.7(a) + 0.3(b)``); ``bake_vae`` is a file of ``models/VAE`` or "None";
    ``discard_weights`` a regular expression of keys to leave out; ``loras`` (name, weight) pairs baked in after
    the merge.
    """

    primary: str
    secondary: str = ""
    tertiary: str = ""
    method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    output_name: str = ""
    bake_vae: str = NO_VAE
    discard_weights: str = ""
    loras: tuple[tuple[str, float], ...] = ()
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidRequest("interp_method", f"unknown interpolation '{self.method}'; use one of {', '.join(METHODS)}")
        m = self.multiplier
        # A1111's slider is 0..1 for both methods ("set to 0 to get model A").
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not 0 <= m <= 1:
            raise InvalidRequest("multiplier", f"must be a number from 0 to 1, not {m!r}")
        if not self.primary.strip():
            raise InvalidRequest("primary_model", "choose the primary model (A)")
        if self.method != NO_INTERPOLATION and not self.secondary.strip():
            raise InvalidRequest("secondary_model", f"{self.method} needs a secondary model (B)")
        if self.method == ADD_DIFFERENCE and not self.tertiary.strip():
            raise InvalidRequest("tertiary_model", "Add difference needs a tertiary model (C)")
        if len(self.loras) > MAX_LORAS:
            raise InvalidRequest("loras", f"at most {MAX_LORAS} LoRAs at once")
        for name, weight in self.loras:
            if not name.strip():
                raise InvalidRequest("loras", "a LoRA without a name")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or abs(weight) > 10:
                raise InvalidRequest("loras", f"weight of {name} must be a number from -10 to 10, not {weight!r}")
        if len(self.discard_weights) > 1000:
            raise InvalidRequest("discard_weights", "at most 1000 characters")


def parse_loras(text: str) -> tuple[tuple[str, float], ...]:
    """``name:0.8, other:0.5`` (a name alone means weight 1) -> pairs; InvalidRequest naming ``loras``."""
    pairs = []
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        name, sep, weight = item.rpartition(":")
        if not sep:
            name, weight = item, "1"
        try:
            value = float(weight)
        except ValueError:
            raise InvalidRequest("loras", f"'{item}': write name:weight, e.g. {name or item}:0.8") from None
        pairs.append((name.strip(), value))
    return tuple(pairs)
