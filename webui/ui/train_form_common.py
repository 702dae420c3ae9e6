"""What a Train-tab form hands the tab: its button, its inputs in order, and how their values become a request.

``FormParts`` is the contract with the Train tab (webui/ui/train.py, which wires ``button.click(inputs)`` to
``service.start(to_request(*values))``); it lives in webui/ui/train_forms.py and is re-exported here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


from webui.errors import InvalidRequest
from webui.ui.train_forms import FormParts

__all__ = ["FormParts", "choices_of", "values_by_field"]


def values_by_field(fields: Sequence[str], values: Sequence[Any], keep: Sequence[str] | None = None) -> dict[str, Any]:
    """Widget values keyed by request field (only those in ``keep`` when given). An emptied number box sends
    None: say which field is empty."""
    if len(fields) != len(values):
        raise InvalidRequest("form", f"expected {len(fields)} values, got {len(values)}")
    body = {field: value for field, value in zip(fields, values) if keep is None or field in keep}
    for field, value in body.items():
        if value is None:
            raise InvalidRequest(field, "enter a value")
    return body


def choices_of(source: Sequence[str] | Callable[[], Sequence[str]]) -> list[str]:
    return list(source() if callable(source) else source)
