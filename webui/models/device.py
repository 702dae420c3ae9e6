"""The owner of one device's memory: everything with weights on the device is placed, kept and evicted here.

Checkpoints (through ``ModelManager``), GAN generators, the safety checker, and the upscalers, VAEs, LoRA and
training weights that come next are all *residents* of one ``DeviceOwner``: built on the CPU by their caller,
placed on the device by the owner, kept in one LRU, and evicted by one rule when a count limit or the device's
free memory says so. Nothing else moves weights onto a device (tests/test_architecture.py checks).

Two locks, so that reading state never waits on work: ``work()`` is held by the one job running on this device
for its whole duration; the state lock only guards the table of residents and is held for microseconds.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable, Iterator

import torch

log = logging.getLogger(__name__)

Placer = Callable[[Any, torch.device], None]
# Called with a resident's value and size when room is made for another one (not on explicit unloads): the
# checkpoint RAM cache (webui/models/ram_cache.py) keeps it instead of dropping it. Must not raise.
EvictionHandler = Callable[[Any, int], None]

# accelerate's init_empty_weights (used by the checkpoint loader, and by transformers' from_pretrained) patches
# torch.nn.Module for the whole process while a model is built: a model built at the same time on another device's
# worker would get its parameters on the meta device. So builds are serialized across devices; placing weights and
# running jobs are not.
_BUILD_LOCK = threading.Lock()


def modules_of(obj: Any) -> list[torch.nn.Module]:
    """The modules an object holds: itself, a diffusers pipeline's components, or one level into a plain wrapper
    (a LoadedModel's ``pipe``, the safety checker's model)."""
    modules: list[torch.nn.Module] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.nn.Module):
            modules.append(item)
        elif isinstance(getattr(item, "components", None), dict):
            stack.extend(item.components.values())
        elif item is obj and hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return list({id(m): m for m in modules}.values())


def module_bytes(obj: Any) -> int:
    """Bytes of the tensors an object would put on the device (its modules' parameters and buffers)."""
    return sum(t.numel() * t.element_size() for module in modules_of(obj)
               for t in (*module.parameters(), *module.buffers()))


def release_to_host(obj: Any, *, pin: bool = False) -> bool:
    """Move an evicted resident's weights from its device into CPU memory (page-locked when ``pin``, which makes
    the next copy to the GPU faster), so it can be kept in RAM. Offload hooks are removed first (they restore the
    weights they hold; the memory plan adds them again when it is placed). False, with nothing kept, when some
    weights exist only as meta tensors."""
    for item in [obj, getattr(obj, "pipe", None)]:
        remove_hooks = getattr(item, "remove_all_hooks", None)
        if callable(remove_hooks):
            remove_hooks()
    tensors = [t for module in modules_of(obj) for t in (*module.parameters(), *module.buffers())]
    if any(t.is_meta for t in tensors):
        return False
    with torch.no_grad():
        for tensor in tensors:
            if tensor.device.type == "cpu" and (not pin or tensor.is_pinned()):
                continue
            host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            host.copy_(tensor.data)
            tensor.data = host  # in place, as Module.to does: references to the parameter stay valid
    return True


def default_placer(dtype: torch.dtype | None = None) -> Placer:
    """Move every module of the object to the device (and to ``dtype`` when given)."""
    def place(obj: Any, device: torch.device) -> None:
        for module in modules_of(obj):
            module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    return place


@dataclass
class Resident:
    name: str                # e.g. "checkpoint:v1-5.safetensors [abc]", "style-generator", "safety-checker"
    kind: str                # "checkpoint", "gan", "safety-checker" ...: count limits apply per kind
    version: Hashable        # a new version under the same name replaces the old one (an edited file)
    value: Any
    size: int                # bytes on the device (estimated from parameters and buffers)
    pins: int = 0            # > 0 while a job uses it: never evicted then
    extra: dict = field(default_factory=dict)


class DeviceOwner:
    """One device's residents and its work lock. ``name`` is how users and the job list see the device."""

    def __init__(self, device: torch.device | str = "cpu", *, reserve_bytes: int = 512 * 1024 ** 2,
                 budget_bytes: int | None = None):
        """``budget_bytes``: the most the residents may take together (None: on CUDA, what the device has free,
        less ``reserve_bytes`` for activations; on the CPU, no limit)."""
        self.device = torch.device(device)
        self._budget = budget_bytes
        self.name = str(self.device) if self.device.index is not None or self.device.type != "cpu" else "cpu"
        self._reserve = reserve_bytes  # left free on a CUDA device for activations
        self._work = threading.RLock()
        self._state = threading.Lock()
        self._residents: OrderedDict[str, Resident] = OrderedDict()  # most recently used last

    # ---------------------------------------------------------------- work on the device (one job at a time)

    @contextmanager
    def work(self) -> Iterator[None]:
        """Held by the job running on this device. Re-entrant: a job may take it again (nested leases)."""
        with self._work:
            yield

    # -------------------------------------------------------------------------------- reads (never wait)

    def names(self, kind: str | None = None) -> list[str]:
        with self._state:
            return [r.name for r in self._residents.values() if kind is None or r.kind == kind]

    def has(self, name: str) -> bool:
        with self._state:
            return name in self._residents

    def used_bytes(self) -> int:
        with self._state:
            return sum(r.size for r in self._residents.values())

    def report(self) -> dict[str, Any]:
        with self._state:
            residents = [{"name": r.name, "kind": r.kind, "bytes": r.size, "in_use": r.pins > 0}
                         for r in self._residents.values()]
        report: dict[str, Any] = {"device": str(self.device), "residents": residents}
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            report["cuda"] = {"free": free, "total": total, "allocated": torch.cuda.memory_allocated(self.device),
                              "peak": torch.cuda.max_memory_allocated(self.device),
                              "stats": dict(torch.cuda.memory_stats(self.device))}
        return report

    # ------------------------------------------------------------------------------------- residents

    def resident(self, name: str, build: Callable[[], Any], *, kind: str, version: Hashable = None,
                 place: Placer | None = None, max_of_kind: int | None = None,
                 on_evict: EvictionHandler | None = None) -> Any:
        """The resident ``name`` at ``version``, building and placing it when it is not here yet.

        Load first, evict after: ``build()`` runs (on the CPU) before anything is evicted, so a file that does
        not load costs nothing. Then room is made (``max_of_kind`` residents of this kind at most, and on CUDA the
        free memory it needs), and ``place(value, device)`` puts it on the device (default: ``.to(device)``). If
        placing fails, what was evicted for it is rebuilt. ``on_evict(value, size)`` is called when this resident
        is later evicted to make room for another (count limit or memory), instead of just dropping it. Call it
        while holding ``work()``.
        """
        with self._work:
            with self._state:
                found = self._residents.get(name)
                if found is not None and found.version == version:
                    self._residents.move_to_end(name)
                    return found.value
            with _BUILD_LOCK:
                value = build()  # may raise: nothing was evicted yet
            size = module_bytes(value)
            evicted = self._make_room(kind, size, max_of_kind, replacing=name)
            try:
                (place or default_placer())(value, self.device)
            except torch.cuda.OutOfMemoryError:
                del value
                self.free_cache()
                self._rebuild(evicted)
                raise
            with self._state:
                self._residents[name] = Resident(name, kind, version, value, size,
                                                 extra={"build": build, "place": place, "max_of_kind": max_of_kind,
                                                        "on_evict": on_evict})
            return value

    @contextmanager
    def pinned(self, name: str) -> Iterator[None]:
        """Mark a resident in use (never evicted) for the duration of a block."""
        with self._state:
            resident = self._residents[name]
            resident.pins += 1
        try:
            yield
        finally:
            with self._state:
                resident.pins -= 1

    def evict(self, name: str) -> bool:
        with self._work:
            with self._state:
                removed = self._residents.pop(name, None)
            found = removed is not None
            if found:
                log.info("Unloading %s from %s", name, self.name)
                del removed  # the last reference: free_cache can then release its memory
                self.free_cache()
            return found

    def evict_all(self, kind: str | None = None) -> None:
        with self._work:
            with self._state:
                for name in [n for n, r in self._residents.items() if kind is None or r.kind == kind]:
                    del self._residents[name]
            self.free_cache()

    def _make_room(self, kind: str, size: int, max_of_kind: int | None, replacing: str) -> list[Resident]:
        """Evict least recently used residents (never pinned ones) until the new one may be placed."""
        evicted: list[Resident] = []
        popped: list[tuple[Resident, Any]] = []
        with self._state:
            if replacing in self._residents:  # an older version of the same name goes first, and for good
                evicted.append(self._pop(replacing)[0])
            if max_of_kind is not None:
                same = [r.name for r in self._residents.values() if r.kind == kind and not r.pins]
                while same and len(same) + 1 > max(1, max_of_kind):
                    popped.append(self._pop(same.pop(0)))
        evicted.extend(self._retire(popped))
        while self._budget is not None and self.used_bytes() + size > self._budget:
            with self._state:
                victim = next((r.name for r in self._residents.values() if not r.pins), None)
                if victim is None:
                    break
                popped = [self._pop(victim)]
            evicted.extend(self._retire(popped))
        if self.device.type == "cuda":
            self.free_cache()
            while torch.cuda.mem_get_info(self.device)[0] < size + self._reserve:
                with self._state:
                    victim = next((r.name for r in self._residents.values() if not r.pins), None)
                    if victim is None:
                        break
                    popped = [self._pop(victim)]
                evicted.extend(self._retire(popped))
                self.free_cache()
        for resident in evicted:
            log.info("Unloading %s from %s to make room", resident.name, self.name)
        return evicted

    def _pop(self, name: str) -> tuple[Resident, Any]:
        """Remove a resident (state lock held): its record, which keeps how to rebuild it but not its weights,
        and its value."""
        resident = self._residents.pop(name)
        return replace(resident, value=None), resident.value

    def _retire(self, popped: list[tuple[Resident, Any]]) -> list[Resident]:
        """Hand evicted values to their eviction handler (outside the state lock: it may copy gigabytes), then
        drop them: ``popped`` is emptied, so that free_cache can release what nothing else keeps."""
        records = [resident for resident, _ in popped]
        while popped:
            resident, value = popped.pop(0)
            handler = resident.extra.get("on_evict")
            if handler is not None:
                try:
                    handler(value, resident.size)
                except Exception as exc:  # noqa: BLE001 - keeping a copy is optional; the eviction goes on
                    log.warning("Could not keep %s in RAM: %s", resident.name, exc)
            del value
        return records

    def _rebuild(self, evicted: list[Resident]) -> None:
        """Best effort after a failed placement: bring back what was evicted for it (newest first)."""
        for resident in reversed(evicted):
            try:
                self.resident(resident.name, resident.extra["build"], kind=resident.kind, version=resident.version,
                              place=resident.extra["place"], max_of_kind=resident.extra["max_of_kind"],
                              on_evict=resident.extra.get("on_evict"))
            except Exception as exc:  # noqa: BLE001 - the original failure is what the caller reports
                log.warning("Could not restore %s after a failed load: %s", resident.name, exc)

    def free_cache(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
