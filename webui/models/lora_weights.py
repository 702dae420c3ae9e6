"""LoRA files of every common format -> weight deltas keyed by OUR pipeline's parameter names.

Formats read (the math follows A1111's ``extensions-builtin/Lora/network_*.py``):
- kohya/A1111 LoRA and LoCon: ``lora_unet_…``/``lora_te_…`` (SD1.x/2.x), ``lora_te1_…``/``lora_te2_…`` (SDXL),
  ``.lora_down.weight``, ``.lora_up.weight``, optional ``.lora_mid.weight`` (CP-decomposed conv) and ``.alpha``.
  UNet module names may be spelled the diffusers way (kohya SD1.x) or the LDM way (``input_blocks_4_1_…``,
  kohya SDXL); both are looked up.
- LyCORIS LoHa (``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, optional ``hada_t1``/``hada_t2``),
  LoKr (``lokr_w1`` or ``lokr_w1_a``/``_b``, ``lokr_w2`` or ``lokr_w2_a``/``_b``, optional ``lokr_t2``) and
  ``diff`` (full weight difference).
- diffusers/peft files: ``unet.<module>.lora_A.weight``/``lora_B.weight``, ``….lora.down/up.weight``,
  ``….processor.to_q_lora.down.weight``, ``text_encoder.…``, ``text_encoder_2.…``, with ``.alpha`` when present.

Which parameter a module name means is read off the loaded model itself (:class:`LoraTargets`): every Linear and
Conv2d of its UNet and text encoders, under each spelling a file may use. Nothing here guesses from strings alone,
so a key for a layer this model lacks (an SDXL LoRA on SD1.x, a different width) is reported, not misapplied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from webui.errors import ModelLoadError
from webui.models.ldm_convert import UNET_PREFIX, unet_to_ldm
from webui.models.loras import parse_metadata
from webui.models.safetensors_file import open_regular, read_header

FAMILY_NAMES = {"sd1": "SD1.x", "sd": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
# Component tags in module keys: te1 is CLIP-L (SD1.x/2.x's only encoder, SDXL's first), te2 SDXL's OpenCLIP-G.
_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te1"))
_DOTTED_PREFIXES = (("unet.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te1"))
_COMPONENT_ATTR = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}
# diffusers/peft spellings of the two halves of a LoRA pair -> kohya's
_DOTTED_SUFFIXES = (
    (re.compile(r"^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$"), None),
    (re.compile(r"^(.+?)\.lora_A(?:\.[^.]+)?\.weight$"), "lora_down.weight"),
    (re.compile(r"^(.+?)\.lora_B(?:\.[^.]+)?\.weight$"), "lora_up.weight"),
    (re.compile(r"^(.+?)\.lora(?:_linear_layer)?\.down\.weight$"), "lora_down.weight"),
    (re.compile(r"^(.+?)\.lora(?:_linear_layer)?\.up\.weight$"), "lora_up.weight"),
    (re.compile(r"^(.+?)\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha)$"), ""),
)


@dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA: per module key ``(component, underscore_path)``, its tensors by kohya suffix."""

    path: Path
    modules: dict[tuple[str, str], dict[str, torch.Tensor]]
    metadata: dict[str, Any] = field(default_factory=dict)
    unknown_keys: tuple[str, ...] = ()  # keys of no format we read (e.g. DoRA scales, biases)
    # "sdxl": a second text encoder or kohya's SDXL prefixes (lora_te1_/lora_te2_); "sd1": kohya's SD1.x
    # text-encoder prefix (lora_te_); None: the file cannot tell (UNet-only)
    family_hint: str | None = None


def _underscore(path: str) -> str:
    return path.replace(".", "_")


def _split_kohya(key: str) -> tuple[tuple[str, str], str] | None:
    module, _, suffix = key.partition(".")
    for prefix, component in _KOHYA_PREFIXES:
        if module.startswith(prefix) and suffix:
            return (component, module[len(prefix):]), suffix
    return None


def _split_dotted(key: str) -> tuple[tuple[str, str], str] | None:
    for prefix, component in _DOTTED_PREFIXES:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for pattern, suffix in _DOTTED_SUFFIXES:
            match = pattern.match(rest)
            if not match:
                continue
            if suffix is None:  # the old attention-processor format
                module = f"{match.group(1)}.{match.group(2)}" + (".0" if match.group(2) == "to_out" else "")
                return (component, _underscore(module)), f"lora_{match.group(3)}.weight"
            return (component, _underscore(match.group(1))), suffix or match.group(2)
        return None
    return None


def _load_tensors(path: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.suffix.lower() != ".safetensors":
        if not allow_pickle:
            raise ModelLoadError(f"LoRA '{path.stem}' is a pickle file ({path.suffix}); start the server with "
                                 "--allow-pickle to load it, or use a .safetensors file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad pickle; the file is what is wrong
            raise ModelLoadError(f"LoRA '{path.stem}' could not be read: {exc}") from exc
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ModelLoadError(f"LoRA '{path.stem}' holds no tensors")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}
    try:
        with open_regular(path) as fh:
            parsed = read_header(fh, path.stat().st_size)
        tensors = load_file(str(path), device="cpu")
    except (OSError, SafetensorError, ValueError) as exc:
        raise ModelLoadError(f"LoRA '{path.stem}' could not be read: {exc}") from exc
    return tensors, parse_metadata(parsed[0]) if parsed else {}


def read_lora(path: Path, *, allow_pickle: bool) -> LoraFile:
    """Parse a LoRA file into modules; ModelLoadError (naming the file) when it cannot be read at all."""
    tensors, metadata = _load_tensors(path, allow_pickle)
    if any(key.endswith("dora_scale") or "lora_magnitude_vector" in key for key in tensors):
        # Without DoRA's weight normalisation the low-rank part alone would give a different image.
        raise ModelLoadError(f"LoRA '{path.stem}' is a DoRA, which this server does not apply yet")
    modules: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    kohya_te = kohya_te1 = False
    for key, tensor in tensors.items():
        split = _split_kohya(key) or _split_dotted(key)
        if split is None:
            unknown.append(key)
            continue
        kohya_te |= key.startswith("lora_te_")
        kohya_te1 |= key.startswith(("lora_te1_", "lora_te2_"))
        module, suffix = split
        modules.setdefault(module, {})[suffix] = tensor
    if not modules:
        raise ModelLoadError(f"LoRA '{path.stem}' has no LoRA/LyCORIS weights this server can read")
    components = {component for component, _ in modules}
    hint = "sdxl" if kohya_te1 or "te2" in components else "sd1" if kohya_te else None
    return LoraFile(path, modules, metadata, tuple(unknown), hint)


class LoraTargets:
    """The loaded model's LoRA-able parameters (Linear and Conv2d weights), under every spelling a file uses."""

    def __init__(self, pipe: Any, family: str):
        self.family = family
        self.params: dict[str, torch.nn.Parameter] = {}  # "unet.down_blocks.0....to_q.weight" -> parameter
        self.by_key: dict[tuple[str, str], str] = {}
        for component, attr in _COMPONENT_ATTR.items():
            module = getattr(pipe, attr, None)
            if module is None:
                continue
            linear: dict[str, str] = {}
            for name, sub in module.named_modules():
                if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)) and name:
                    param = f"{attr}.{name}.weight"
                    self.params[param] = sub.weight
                    linear[name] = param
                    self.by_key[(component, _underscore(name))] = param
                    if component != "unet" and not name.startswith("text_model."):
                        # transformers 5 dropped CLIPTextModel's ``text_model.`` level; files still carry it.
                        self.by_key[(component, "text_model_" + _underscore(name))] = param
            if component == "unet":
                self._add_ldm_names(module, linear)

    def _add_ldm_names(self, unet: Any, linear: dict[str, str]) -> None:
        """kohya's SDXL LoRAs (and some SD1.x ones) name UNet layers the LDM way: input_blocks_4_1_..."""
        try:
            ldm = unet_to_ldm({f"{name}.weight": param for name, param in linear.items()}, unet.config)
        except (KeyError, ValueError):
            return  # a UNet without an LDM layout: only diffusers spellings then
        for ldm_key, param in ldm.items():
            path = ldm_key[len(UNET_PREFIX):].removesuffix(".weight")
            self.by_key.setdefault(("unet", _underscore(path)), param)


@dataclass(frozen=True)
class Resolved:
    """A LoRA's modules matched to the model: parameter -> module tensors, and what matched nothing."""

    matched: dict[str, tuple[str, dict[str, torch.Tensor]]]  # param -> (component, tensors)
    unmatched: tuple[str, ...]


def resolve(lora: LoraFile, targets: LoraTargets) -> Resolved:
    matched: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}
    unmatched: list[str] = []
    for (component, path), tensors in lora.modules.items():
        param = targets.by_key.get((component, path))
        if param is None:
            unmatched.append(f"{component}:{path}")
        else:
            matched[param] = (component, tensors)
    return Resolved(matched, tuple(unmatched))


def _conventional(up: torch.Tensor, down: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return (up.reshape(up.size(0), -1) @ down.reshape(down.size(0), -1)).reshape(shape)


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def _lora_delta(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float | None]:
    up, down = t["lora_up.weight"], t["lora_down.weight"]
    if "lora_mid.weight" in t:  # LoCon with CP decomposition
        mid = t["lora_mid.weight"]
        updown = torch.einsum("n m k l, i n, m j -> i j k l", mid, up.reshape(up.size(0), -1),
                              down.reshape(down.size(0), -1))
        return updown, down.shape[0]
    shape = [up.size(0), down.size(1), *down.shape[2:]]
    return _conventional(up, down, shape), down.shape[0]


def _hada_delta(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float | None]:
    w1a, w1b, w2a, w2b = t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"]
    if "hada_t1" in t:
        shape = [w1a.size(1), w1b.size(1), *t["hada_t1"].shape[2:]]
        first = _cp(t["hada_t1"], w1a, w1b)
    else:
        shape = [w1a.size(0), w1b.size(1), *w1b.shape[2:]]
        first = _conventional(w1a, w1b, shape)
    second = _cp(t["hada_t2"], w2a, w2b) if "hada_t2" in t else _conventional(w2a, w2b, shape)
    return first * second, w1b.shape[0]


def _lokr_delta(t: dict[str, torch.Tensor], target: torch.Size) -> tuple[torch.Tensor, float | None]:
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = _cp(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2a, w2b = t["lokr_w2_a"], t["lokr_w2_b"]
        w2 = _conventional(w2a, w2b, [w2a.size(0), w2b.size(1), *w2b.shape[2:]])
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    dim = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None
    return torch.kron(w1, w2.contiguous()), dim


def module_delta(tensors: Mapping[str, torch.Tensor], target: torch.Size) -> torch.Tensor:
    """One module's weight delta at multiplier 1, fp32, shaped like ``target``; ValueError when the tensors
    are of no known kind or do not fit the target (a LoRA for another architecture)."""
    t = {k: v.float() for k, v in tensors.items()}
    if "lora_up.weight" in t and "lora_down.weight" in t:
        updown, dim = _lora_delta(t)
    elif "hada_w1_a" in t:
        updown, dim = _hada_delta(t)
    elif any(k.startswith("lokr_") for k in t):
        updown, dim = _lokr_delta(t, target)
    elif "diff" in t:
        updown, dim = t["diff"], None
    else:
        raise ValueError(f"no LoRA weights among {sorted(t)}")
    if updown.shape != target:
        if updown.numel() != target.numel():
            raise ValueError(f"a delta of shape {tuple(updown.shape)} does not fit a weight of {tuple(target)}")
        updown = updown.reshape(target)  # e.g. a Linear LoRA stored for a 1x1 conv
    alpha = t.get("alpha")
    scale = float(alpha) / dim if alpha is not None and dim else 1.0  # A1111's calc_scale
    return updown * scale


def lora_deltas(lora: LoraFile, *, te_weight: float, unet_weight: float,
                targets: LoraTargets) -> tuple[dict[str, torch.Tensor], int]:
    """(parameter -> delta at these weights, how many matched modules did not fit their layer's shape)."""
    deltas: dict[str, torch.Tensor] = {}
    misfits = 0
    for param, (component, tensors) in resolve(lora, targets).matched.items():
        try:
            delta = module_delta(tensors, targets.params[param].shape)
        except (ValueError, RuntimeError, KeyError):
            misfits += 1
            continue
        deltas[param] = delta * (unet_weight if component == "unet" else te_weight)
    return deltas, misfits


def module_deltas(lora: LoraFile, *, te_weight: float, unet_weight: float, family: str,
                  targets: LoraTargets) -> dict[str, torch.Tensor]:
    """The deltas to ADD to the model's weights for this LoRA at these weights, keyed by parameter name with its
    component prefix (``unet.…weight``, ``text_encoder.…weight``, ``text_encoder_2.…weight``), fp32.

    ``targets``: the model the LoRA is for (its parameter names and shapes; ``family`` must be its family).
    Modules that match nothing or do not fit are left out; :func:`fit_problem` says how many."""
    if targets.family != family:
        raise ValueError(f"targets are for {targets.family}, not {family}")
    return lora_deltas(lora, te_weight=te_weight, unet_weight=unet_weight, targets=targets)[0]


def family_problem(lora: LoraFile, name: str, family: str) -> str | None:
    """Why the LoRA is for another architecture than ``family`` (from its keys), or None."""
    loaded = FAMILY_NAMES.get(family, family)
    if lora.family_hint == "sdxl" and family != "sdxl":
        return f"LoRA '{name}' is for SDXL; the loaded model is {loaded}"
    if lora.family_hint == "sd1" and family == "sdxl":
        return f"LoRA '{name}' is for SD1.x/SD2.x; the loaded model is SDXL"
    return None


def fit_problem(lora: LoraFile, name: str, targets: LoraTargets, applied: int) -> str | None:
    """A warning naming how many of the LoRA's keys match no layer of the model (or do not fit its shape), given
    how many modules were ``applied``; None when every key applies."""
    loaded = FAMILY_NAMES.get(targets.family, targets.family)
    total = len(lora.modules) + len(lora.unknown_keys)
    bad = total - applied
    if not bad:
        return None
    if not applied:
        return f"LoRA '{name}' does not fit the loaded {loaded} model: none of its {total} modules matched"
    return f"LoRA '{name}': {bad} of its {total} modules matched nothing in the loaded {loaded} model"
