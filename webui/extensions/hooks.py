"""Calling extensions' hooks: in host order (built-ins first, then by name; each extension's hooks in the order it
registered them), each call's errors isolated.

A hook that raises is logged with its traceback, skipped for that call, and named in the job's warnings
("Extension hook failed: <ext>.<hook>: <Error: msg>"); the job goes on. ``ExtensionError`` from ``on_before_job``
refuses the job instead (InvalidRequest naming ``extensions.<name>``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

from webui.errors import InvalidRequest
from webui.extensions.api import (IMG2IMG, TXT2IMG, AppStart, Extension, ExtensionError, ImageResult, JobStart,
                                  ModelInfo, SavedImage, StepState)
from webui.extensions.host import FAILED, ExtensionHost
from webui.extensions.policies import PolicyGuard

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI
    from PIL import Image

log = logging.getLogger(__name__)

StepHook = Callable[[int, int, "torch.Tensor", float], "tuple[torch.Tensor, float, bool]"]
"""``(step, steps, latents, guidance) -> (latents, guidance, cancel)``: what the pipelines' step callback calls."""

# sys.exit() in a hook would end the queue's worker thread (every later job would wait forever): caught like any
# error. KeyboardInterrupt only reaches the main thread, where the web server stops on it as it should.
_HOOK_ERRORS = (Exception, SystemExit)

HOOK_NAMES = {"before_job": "on_before_job", "step": "on_step", "image": "on_image",
              "image_saved": "on_image_saved", "model_loaded": "on_model_loaded", "app_started": "on_app_started"}


def model_info(info: Any, family: str | None = None) -> ModelInfo:
    """A registry ``CheckpointInfo`` as extensions see it."""
    return ModelInfo(title=info.title, name=info.model_name, hash=info.short_hash, family=family)


def kind_of(request: Any) -> str:
    return IMG2IMG if hasattr(request, "init_images") else TXT2IMG


class Hooks:
    """The hook dispatcher over the loaded extensions. ``host`` may be a function returning the host: the
    services exist before the extensions load (their contexts need them)."""

    def __init__(self, host: ExtensionHost | Callable[[], ExtensionHost | None], *,
                 guard: PolicyGuard | None = None):
        """``guard``: the core's pickle policy as captured before any extension ran; checked after every hook
        call (a few attribute reads), so extension code run in a job cannot weaken it either."""
        self._host = host if callable(host) else (lambda: host)
        self._guard = guard

    @classmethod
    def none(cls) -> "Hooks":
        return cls(ExtensionHost())

    @property
    def host(self) -> ExtensionHost:
        return self._host() or ExtensionHost()

    def _with(self, kind: str) -> list[tuple[Extension, Callable[..., Any]]]:
        return [(ext, fn) for ext in self.host.loaded() for fn in ext.hooks[kind]]

    def _call(self, ext: Extension, kind: str, fn: Callable[..., Any], arg: Any, warnings: list[str] | None) -> bool:
        """One hook call; False (logged, and a warning added) when it raised."""
        self._restore_unattributed()
        try:
            fn(arg)
        except _HOOK_ERRORS as exc:  # an extension's bug must not cost the job (or the worker thread)
            self._report(ext, kind, exc, warnings)
            return False
        finally:
            self._police(ext, warnings)
        return True

    def _restore_unattributed(self) -> None:
        """Changes made outside any hook (a hung extension's import thread runs on) are undone before the next
        hook runs, so they are not blamed on it."""
        changes = self._guard.restore() if self._guard is not None else []
        if changes:
            log.critical("The core's pickle policy was changed outside any hook and was restored: %s",
                         "; ".join(changes))

    def _police(self, ext: Extension, warnings: list[str] | None) -> None:
        """Undo any change to the pickle policy an extension's hook made, and turn that extension off."""
        changes = self._guard.restore() if self._guard is not None else []
        if not changes:
            return
        error = "weakened the core's pickle policy, which was restored: " + "; ".join(changes)
        record = self.host.record(ext.name)
        if record is not None:
            record.status, record.error, record.extension = FAILED, error, None
        log.critical("Extension %s %s; it is turned off", ext.name, error)
        if warnings is not None:
            warnings.append(f"Extension {ext.name} was turned off: it {error}")

    # ---- values

    def values(self, request: Any) -> dict[str, BaseModel]:
        """The request's per-extension values, checked (InvalidRequest naming ``extensions.<name>.<field>``)."""
        return self.host.validate_values(request.extensions, kind_of(request)) if request.extensions else {}

    def infotext(self, values: dict[str, BaseModel]) -> dict[str, str]:
        """The infotext fields the extensions that got values declared (``Params.infotext``)."""
        fields: dict[str, str] = {}
        for panel in self.host.panels(TXT2IMG) + self.host.panels(IMG2IMG):
            model = values.get(panel.owner)
            if model is None:
                continue
            for name, key in panel.params.infotext.items():
                value = getattr(model, name, None)
                if value is not None:
                    fields[key] = str(value.value if hasattr(value, "value") else value)
        return fields

    def values_from_infotext(self, params: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Infotext parameters back into ``{extension: {field: value}}`` (PNG Info's paste): the fields each
        extension declared in ``Params.infotext``, as text; the extension's model converts them when checked."""
        found: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for panel in self.host.panels(TXT2IMG) + self.host.panels(IMG2IMG):
            if panel.owner in seen:
                continue
            seen.add(panel.owner)
            picked = {name: params[key] for name, key in panel.params.infotext.items() if key in params}
            if picked:
                found[panel.owner] = picked
        return found

    # ---- jobs

    def before_job(self, request: Any, values: dict[str, BaseModel], warnings: list[str]) -> Any:
        """Each ``on_before_job`` in order; each sees the request the previous one left. Returns the request."""
        kind = kind_of(request)
        for ext, fn in self._with("before_job"):
            start = JobStart(kind=kind, request=request, values=values.get(ext.name))
            self._restore_unattributed()
            try:
                fn(start)
            except ExtensionError as exc:
                raise InvalidRequest(f"extensions.{ext.name}", str(exc)) from None
            except _HOOK_ERRORS as exc:  # reported and skipped
                self._report(ext, "before_job", exc, warnings)
                continue
            finally:
                self._police(ext, warnings)
            if not isinstance(start.request, type(request)):
                self._report(ext, "before_job", TypeError(
                    f"request must stay a {type(request).__name__}, got {type(start.request).__name__}"), warnings)
                continue
            request = start.request
        return request

    def _report(self, ext: Extension, kind: str, exc: BaseException, warnings: list[str] | None) -> None:
        where = f"{ext.name}.{HOOK_NAMES[kind]}"
        log.error("Extension hook failed: %s: %s", where, exc, exc_info=exc)
        message = f"Extension hook failed: {where}: {type(exc).__name__}: {exc}"
        if warnings is not None and message not in warnings:
            warnings.append(message)

    def step_hook(self, kind: str, values: dict[str, BaseModel], warnings: list[str]) -> StepHook | None:
        """One function composing every ``on_step`` (None when no extension has one): each sees the latents and
        guidance the previous one left; a replaced tensor of another shape is refused (reported, not used)."""
        hooks = self._with("step")
        if not hooks:
            return None

        def run(step: int, steps: int, latents, guidance: float):
            cancel = False
            for ext, fn in hooks:
                state = StepState(kind=kind, step=step, steps=steps, latents=latents, guidance_scale=guidance,
                                  values=values.get(ext.name))
                if not self._call(ext, "step", fn, state, warnings):
                    continue
                if getattr(state.latents, "shape", None) != latents.shape:
                    self._report(ext, "step", ValueError(
                        f"latents must keep the shape {tuple(latents.shape)}"), warnings)
                    continue
                latents = state.latents.to(device=latents.device, dtype=latents.dtype)
                guidance = float(state.guidance_scale)
                cancel = cancel or state.cancel_requested
            return latents, guidance, cancel

        return run

    def on_image(self, request: Any, image: "Image.Image", index: int, seed: int, values: dict[str, BaseModel],
                 warnings: list[str]) -> tuple["Image.Image", dict[str, str]]:
        """Each ``on_image`` in order: the (maybe replaced) image and the infotext fields hooks added."""
        added: dict[str, str] = {}
        for ext, fn in self._with("image"):
            result = ImageResult(kind=kind_of(request), request=request, image=image, index=index, seed=seed,
                                 infotext=dict(added), values=values.get(ext.name))
            if not self._call(ext, "image", fn, result, warnings):
                continue
            if not hasattr(result.image, "size") or not hasattr(result.image, "convert"):
                self._report(ext, "image", TypeError("image must stay a PIL image"), warnings)
                continue
            image = result.image
            added.update({str(k): str(v) for k, v in result.infotext.items()})
        return image, added

    def image_saved(self, kind: str, path, infotext: str, request: Any, warnings: list[str] | None) -> None:
        for ext, fn in self._with("image_saved"):
            self._call(ext, "image_saved", fn, SavedImage(kind=kind, path=path, infotext=infotext, request=request),
                       warnings)

    def model_loaded(self, info: ModelInfo) -> None:
        for ext, fn in self._with("model_loaded"):
            self._call(ext, "model_loaded", fn, info, None)

    def app_started(self, app: "FastAPI", make_router: Callable[[], Any]) -> list[str]:
        """Each extension's ``on_app_started`` gets its own router, mounted at ``/ext/<name>/``; returns the
        problems (also logged). Call before the Gradio mount at "/", which would catch these paths. An extension
        whose hook weakened the pickle policy (see policies.py) is failed: its change undone, no routes, no hooks."""
        problems: list[str] = []
        guard = PolicyGuard.capture()
        for ext in self.host.loaded():
            if not ext.hooks["app_started"]:
                continue
            router = make_router()
            ok = True
            for fn in ext.hooks["app_started"]:
                ok = self._call(ext, "app_started", fn, AppStart(router=router), problems) and ok
            changes = guard.restore()
            record = self.host.record(ext.name)
            if changes and record is not None:
                record.status, record.extension = FAILED, None
                record.error = "weakened the core's pickle policy, which was restored: " + "; ".join(changes)
                log.critical("Extension %s %s", ext.name, record.error)
                problems.append(f"{ext.name}: {record.error}")
                continue
            if ok:  # a failing hook may have added half its routes: none are served
                app.include_router(router, prefix=f"/ext/{ext.name}")
        return problems
