"""Checkpoint merging over single-file state dicts, streamed key by key (A1111's Checkpoint Merger maths).

Rules follow A1111's ``modules/extras.py`` ``run_modelmerger``: only keys with "model" in the name are merged
(``alphas_cumprod`` and the like are A's), keys only in A are kept from A, keys only in B are dropped, ``Add
difference`` treats a key missing from C as a zero difference, and an inpainting (9-channel) or InstructPix2Pix
(8-channel) A merged with a 4-channel B merges the first 4 input channels and keeps the rest from A. Maths is
fp32, cast back to the key's output dtype; "Save as float16" halves only fp32 tensors, as A1111's ``to_half``.

Why not sd-mecha (installed, and made for this): its model configs list the keys of full-size architectures, and
on a pruned or reduced checkpoint (our tiny test files, measured) it warned and silently left 42 of 370 keys out
of the output. A merge must never drop weights, so this streams with ``safetensors.safe_open`` instead: one
tensor per input in memory at a time, and the output is written tensor by tensor after a precomputed header.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from webui.atomic import atomic_writer
from webui.errors import InvalidRequest, ModelLoadError
from webui.models import detect

WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION = "Weighted sum", "Add difference", "No interpolation"
METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION)
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})  # A1111's list

_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_DTYPE_NAMES = {name: dtype for dtype, name in _DTYPES.items()}


class TensorSource:
    """One input checkpoint, read a tensor at a time: a safetensors file through ``safe_open`` (nothing loaded
    up front), or a weights-only pickle loaded whole (only with ``--allow-pickle``)."""

    def __init__(self, path: Path, label: str, *, allow_pickle: bool = False):
        self.path, self.label = path, label
        self._tensors: dict[str, torch.Tensor] | None = None
        self._file = None
        if path.is_dir():
            raise InvalidRequest(label, f"{path.name} is a diffusers folder; merging works on single-file "
                                        "checkpoints (.safetensors)")
        if path.suffix.lower() in (".ckpt", ".pt"):
            if not allow_pickle:
                raise InvalidRequest(label, f"{path.name} is a pickle (.ckpt/.pt), which can run code when loaded; "
                                            "use a .safetensors file, or start with --allow-pickle")
            from webui.models.loader import _load_pickle  # weights_only=True; whole file (pickles cannot stream)

            try:
                self._tensors = _load_pickle(path)
            except ModelLoadError as exc:
                raise InvalidRequest(label, str(exc)) from None
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            self.dtypes = {k: v.dtype for k, v in self._tensors.items()}
            self.metadata: dict[str, str] = {}
            return
        try:
            self.shapes = detect.read_safetensors_header(path)  # refuses truncated and pickle-in-disguise files
            self._file = safe_open(str(path), framework="pt")
            self.metadata = dict(self._file.metadata() or {})
            self.dtypes = {k: _DTYPE_NAMES.get(self._file.get_slice(k).get_dtype(), torch.float32)
                           for k in self._file.keys()}
        except ModelLoadError as exc:
            raise InvalidRequest(label, str(exc)) from None
        except (SafetensorError, OSError) as exc:
            raise InvalidRequest(label, f"{path.name} could not be read: {exc}") from None

    def keys(self) -> list[str]:
        return list(self.shapes)

    def close(self) -> None:
        self._tensors, self._file = None, None  # safe_open's mapping goes with its last reference

    def get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        return self._file.get_tensor(key)

    def spec(self) -> detect.ModelSpec:
        try:
            return detect.detect(self.shapes, self.path.name)
        except ModelLoadError as exc:
            raise InvalidRequest(self.label, str(exc)) from None

    @property
    def data_bytes(self) -> int:
        return sum(_numel(s) * _itemsize(self.dtypes[k]) for k, s in self.shapes.items())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def legacy_hash(path: Path) -> str:
    """A1111's old 8-hex "model hash": sha256 of 64 KiB at offset 1 MiB (``sd_merge_models``' legacy_hash)."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


@dataclass
class MergePlan:
    """What will be written: every output key with its shape and dtype, decided before a byte is written."""

    a: TensorSource
    b: TensorSource | None
    c: TensorSource | None
    method: str
    multiplier: float
    fp16: bool
    vae: Mapping[str, torch.Tensor] = field(default_factory=dict)  # LDM keys (first_stage_model.*) to bake in
    deltas: Mapping[str, torch.Tensor] = field(default_factory=dict)  # LDM key -> fp32 delta to add (LoRAs)
    keys: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    is_inpainting: bool = False
    is_instruct_pix2pix: bool = False

    def release(self) -> None:
        """Drop what the plan holds in RAM (a baked VAE, LoRA deltas, pickled inputs) once it has been written:
        finished jobs stay in the queue's memory a while with their request."""
        self.vae, self.deltas = {}, {}
        for source in (self.a, self.b, self.c):
            if source is not None:
                source.close()

    def __repr__(self) -> str:  # what the job history records; never the tensors
        names = [s.path.name for s in (self.a, self.b, self.c) if s is not None]
        return f"MergePlan({self.method}, M={self.multiplier}, {names}, {len(self.keys)} keys)"

    @property
    def output_bytes(self) -> int:
        return sum(_numel(self.shapes[k]) * _itemsize(self.dtypes[k]) for k in self.keys)

    @property
    def largest_tensor_bytes(self) -> int:
        return max((_numel(s) * 4 for s in self.shapes.values()), default=0)


def _merged(key: str) -> bool:
    return "model" in key and key not in SKIP_ON_MERGE


def _half(dtype: torch.dtype, fp16: bool) -> torch.dtype:
    return torch.float16 if fp16 and dtype == torch.float32 else dtype


def plan_merge(a: TensorSource, b: TensorSource | None, c: TensorSource | None, *, method: str,
               multiplier: float, fp16: bool, vae: Mapping[str, torch.Tensor] | None = None,
               vae_label: str = "bake_vae", discard: str | None = None,
               deltas: Mapping[str, torch.Tensor] | None = None) -> MergePlan:
    """Check the inputs fit together and decide the output's keys, shapes and dtypes; InvalidRequest naming the
    field (and for shapes the key and both models) when they do not."""
    plan = MergePlan(a, b, c, method, multiplier, fp16, dict(vae or {}), dict(deltas or {}))
    interpolating = method != NO_INTERPOLATION
    for key in a.keys():
        a_shape, dtype = a.shapes[key], a.dtypes[key]
        if interpolating and b is not None and _merged(key) and key in b.shapes and dtype.is_floating_point:
            _check_pair(plan, key, a, b, c)
            if a_shape == b.shapes[key]:
                others = [b.dtypes[key]] + ([c.dtypes[key]] if c is not None and key in c.shapes else [])
                for other in others:
                    dtype = torch.promote_types(dtype, other)  # as torch's arithmetic in A1111
        if key in plan.vae:
            if tuple(plan.vae[key].shape) != a_shape:
                raise InvalidRequest(vae_label, f"the VAE does not fit {a.path.name}: {key} is "
                                                f"{list(plan.vae[key].shape)} in the VAE, {list(a_shape)} in the "
                                                "checkpoint")
            dtype = plan.vae[key].dtype
        plan.shapes[key] = a_shape
        plan.dtypes[key] = _half(dtype, fp16) if _merged(key) or key in plan.vae else dtype
    if plan.vae and not any(k in a.shapes for k in plan.vae):
        raise InvalidRequest(vae_label, f"the VAE has no weights that {a.path.name} has (first_stage_model.*)")
    if fp16 and not interpolating:
        plan.dtypes = {k: _half(d, True) for k, d in plan.dtypes.items()}  # A1111: halve everything then
    keys = list(a.keys())
    if discard:
        try:
            pattern = re.compile(discard)
        except re.error as exc:
            raise InvalidRequest("discard_weights", f"not a valid regular expression: {exc}") from None
        keys = [k for k in keys if not pattern.search(k)]
        if not any(k.startswith(detect.UNET) for k in keys):
            raise InvalidRequest("discard_weights", f"'{discard}' discards every UNet weight; the result would "
                                                    "not be a checkpoint")
    for key, delta in plan.deltas.items():
        if key not in a.shapes:
            raise InvalidRequest("loras", f"a LoRA changes {key}, which {a.path.name} does not have")
        if tuple(delta.shape) != a.shapes[key]:
            raise InvalidRequest("loras", f"a LoRA's change to {key} is {list(delta.shape)}, the checkpoint's "
                                          f"weight {list(a.shapes[key])}: the LoRA is for another architecture")
    plan.keys = keys
    return plan


def _check_pair(plan: MergePlan, key: str, a: TensorSource, b: TensorSource, c: TensorSource | None) -> None:
    a_shape, b_shape = a.shapes[key], b.shapes[key]
    if c is not None and key in c.shapes and c.shapes[key] != b_shape:
        raise InvalidRequest("tertiary_model", f"{key} is {list(b_shape)} in {b.path.name} but {list(c.shapes[key])} "
                                               f"in {c.path.name}: these checkpoints are of different architectures")
    if a_shape == b_shape:
        return
    same_but_inputs = len(a_shape) == len(b_shape) == 4 and a_shape[0:1] + a_shape[2:] == b_shape[0:1] + b_shape[2:]
    if same_but_inputs and a_shape[1] == 4 and b_shape[1] in (8, 9):
        kind = "an inpainting" if b_shape[1] == 9 else "an InstructPix2Pix"
        raise InvalidRequest("secondary_model", f"when merging {kind} model with a normal one, the {kind[3:]} model "
                                                f"must be the primary model (A); {b.path.name} is {kind} model")
    if same_but_inputs and a_shape[1] in (8, 9) and b_shape[1] == 4:
        plan.is_inpainting |= a_shape[1] == 9
        plan.is_instruct_pix2pix |= a_shape[1] == 8
        return
    raise InvalidRequest("secondary_model", f"{key} is {list(a_shape)} in {a.path.name} but {list(b_shape)} in "
                                            f"{b.path.name}: these checkpoints are of different architectures")


def merge_key(plan: MergePlan, key: str) -> torch.Tensor:
    """The output tensor for ``key``: merged in fp32, VAE baked, LoRA delta added, cast to its output dtype."""
    a = plan.a.get(key)
    out_dtype = plan.dtypes[key]
    value = a
    b = plan.b
    if plan.method != NO_INTERPOLATION and b is not None and _merged(key) and key in b.shapes \
            and a.is_floating_point():
        m = plan.multiplier
        other = b.get(key).float()
        if plan.method == ADD_DIFFERENCE:
            c = plan.c
            assert c is not None
            # A1111: B - C, or zeros when C lacks the key (A is then kept as it is).
            other = other - c.get(key).float() if key in c.shapes else torch.zeros_like(other)
        value = a.float().clone()
        channels = value[:, 0:4] if value.shape != other.shape else value  # 9/8-channel A: its first 4 inputs
        if plan.method == WEIGHTED_SUM:
            channels.copy_((1 - m) * channels + m * other)
        else:
            channels.add_(m * other)
    if key in plan.vae:
        value = plan.vae[key]
    delta = plan.deltas.get(key)
    if delta is not None:
        value = value.float() + delta.float()
    return value.to(out_dtype)


def _header(plan: MergePlan, metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key in plan.keys:
        size = _numel(plan.shapes[key]) * _itemsize(plan.dtypes[key])
        header[key] = {"dtype": _DTYPES[plan.dtypes[key]], "shape": list(plan.shapes[key]),
                       "data_offsets": [offset, offset + size]}
        offset += size
    data = json.dumps(header, separators=(",", ":")).encode("utf-8")
    data += b" " * (-len(data) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(data)) + data


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes without a copy (the view keeps the tensor alive while written)."""
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def write_merged(plan: MergePlan, path: Path, metadata: Mapping[str, str], *,
                 on_key: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Write the merge to ``path`` atomically: a temp file beside it (``.<name>.<random>.tmp``, which
    ``atomic.remove_stale_temp_files`` sweeps after a kill), fsynced, then renamed over. ``on_key(done, total)``
    is called before each key and may raise (a cancel) to stop: the temp file goes and ``path`` is untouched."""
    with atomic_writer(path) as fh:
        fh.write(_header(plan, metadata))
        for key, tensor in _stream(plan, on_key):
            data = _tensor_bytes(tensor)
            expected = _numel(plan.shapes[key]) * _itemsize(plan.dtypes[key])
            if data.nbytes != expected:  # the header promised this size; never write a file that lies
                raise RuntimeError(f"{key}: {data.nbytes} bytes, header says {expected}")
            fh.write(data)
        on_key(len(plan.keys), len(plan.keys))


def _stream(plan: MergePlan, on_key: Callable[[int, int], None]) -> Iterator[tuple[str, torch.Tensor]]:
    total = len(plan.keys)
    for done, key in enumerate(plan.keys):
        on_key(done, total)
        yield key, merge_key(plan, key)
