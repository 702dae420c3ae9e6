"""Building a training request dataclass from an API body or form values, one rule for both (torch-free).

A request class declares its fields with plain annotations (``int``, ``float``, ``bool``, ``str`` or a
``Literal`` of strings) and validates its own bounds in ``__post_init__``; this module only refuses unknown keys
and values of the wrong type, each with an ``InvalidRequest`` naming the field, so the API answers 422 and the UI
shows the same sentence.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, Mapping, TypeVar

from webui.errors import InvalidRequest

T = TypeVar("T")


def from_mapping(request_type: type[T], body: Mapping[str, Any]) -> T:
    """``request_type(**body)`` with each value checked against its annotation; unknown keys are refused."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("body", "expected a JSON object of training settings")
    hints = typing.get_type_hints(request_type)
    names = [f.name for f in dataclasses.fields(request_type)]  # type: ignore[arg-type]
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise InvalidRequest(str(unknown[0]), f"unknown field (this method takes: {', '.join(names)})")
    values = {name: coerce(name, hints[name], value) for name, value in body.items()}
    try:
        return request_type(**values)
    except TypeError as exc:  # a required field is missing
        missing = [f.name for f in dataclasses.fields(request_type)  # type: ignore[arg-type]
                   if f.name not in values and f.default is dataclasses.MISSING]
        raise InvalidRequest(missing[0] if missing else "body", "is required") from exc


def coerce(name: str, hint: Any, value: Any) -> Any:
    """One value to its annotated type. Form sliders send 3.0 for 3; a whole float is accepted for an int."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise InvalidRequest(name, f"must be one of {', '.join(map(str, choices))} (got {value!r})")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(name, f"must be true or false (got {value!r})")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(name, f"must be a whole number (got {value!r})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequest(name, f"must be a finite number (got {value!r})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidRequest(name, f"must be text (got {value!r})")
        return value
    raise TypeError(f"unsupported field type {hint!r} for {name}")  # a programming error, not a user's


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low:g} and {high:g}" if low is not None and high is not None
                  else f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise InvalidRequest(name, f"must be {bounds} (got {value:g})")


_BAD_NAME_CHARS = set('/\\:*?"<>|\0')


def check_output_name(name: str, field: str = "name") -> None:
    """A file or folder name of our own: no path separators, nothing Windows refuses, not hidden, not empty."""
    if not name or name != name.strip():
        raise InvalidRequest(field, "enter a name without leading or trailing spaces")
    if len(name) > 120 or name in (".", "..") or name.startswith(".") or _BAD_NAME_CHARS & set(name) \
            or any(ord(c) < 32 for c in name):
        raise InvalidRequest(field, f"'{name}' is not a valid file name (no / \\ : * ? \" < > |, not starting "
                             "with a dot, at most 120 characters)")
