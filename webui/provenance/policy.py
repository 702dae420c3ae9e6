"""Which provenance marks to apply, decided once per job from the options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Option keys in config.json / ``/sdapi/v1/options``, with their defaults (all on).
AI_MARKER_OPTION = "provenance_ai_marker"
WATERMARK_OPTION = "provenance_watermark"
C2PA_OPTION = "provenance_c2pa"
SAFETY_OPTION = "safety_checker"


@dataclass(frozen=True)
class ProvenancePolicy:
    ai_marker: bool = True
    watermark: bool = True
    c2pa: bool = True
    safety_check: bool = False  # the optional safety checker: off unless turned on (it needs its weights)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "ProvenancePolicy":
        """Only an explicit ``false`` turns a mark off: a garbled value must not silently drop provenance."""
        return cls(ai_marker=options.get(AI_MARKER_OPTION, True) is not False,
                   watermark=options.get(WATERMARK_OPTION, True) is not False,
                   c2pa=options.get(C2PA_OPTION, True) is not False,
                   safety_check=options.get(SAFETY_OPTION, False) is True)


NONE = ProvenancePolicy(ai_marker=False, watermark=False, c2pa=False)
