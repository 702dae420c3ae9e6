"""Parsing an axis's values as A1111's X/Y/Z plot reads them: a CSV line (quotes allowed), ranges for numbers."""

from __future__ import annotations

import csv
import io
import itertools
import re
from typing import Any

INT, FLOAT, TEXT, PERMUTATIONS, BOOL = "int", "float", "text", "permutations", "bool"
MAX_VALUES = 1000  # per axis: a typo like "1-100000000" is refused instead of filling memory

_NUM_I = r"[+-]?\s*\d+"
_NUM_F = r"[+-]?\s*\d+(?:\.\d*)?"
RANGE_INT = re.compile(rf"\s*({_NUM_I})\s*-\s*({_NUM_I})(?:\s*\(([+-]\d+)\s*\))?\s*")
COUNT_INT = re.compile(rf"\s*({_NUM_I})\s*-\s*({_NUM_I})(?:\s*\[(\d+)\s*])?\s*")
RANGE_FLOAT = re.compile(rf"\s*({_NUM_F})\s*-\s*({_NUM_F})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
COUNT_FLOAT = re.compile(rf"\s*({_NUM_F})\s*-\s*({_NUM_F})(?:\s*\[(\d+)\s*])?\s*")


class ValuesError(ValueError):
    """The values text is wrong; the message says how (the caller adds which axis)."""


def split_values(text: str, raw_lines: bool = False) -> list[str]:
    """The items of a values box: one per line when ``raw_lines`` and the text has several lines (A1111's "Use raw
    text lines"), else a CSV line, each item stripped."""
    text = text.strip()
    if raw_lines and "\n" in text:
        return [line.strip() for line in text.split("\n")]
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [item.strip() for item in itertools.chain.from_iterable(rows)]


def to_csv(items: list[str]) -> str:
    """A list as one CSV line (A1111's ``list_to_csv_string``): how dropdown choices become values text."""
    with io.StringIO() as out:
        csv.writer(out).writerow(items)
        return out.getvalue().strip()


def _number(text: str, kind: str) -> int | float:
    cleaned = text.replace(" ", "")
    try:
        return int(cleaned) if kind == INT else float(cleaned)
    except ValueError:
        what = "a whole number" if kind == INT else "a number"
        raise ValuesError(f"'{text}' is not {what}") from None


def _checked_count(count: int, item: str) -> int:
    if count > MAX_VALUES:
        raise ValuesError(f"'{item}' gives {count} values; at most {MAX_VALUES}")
    return count


def _int_item(item: str) -> list[int]:
    if (m := RANGE_INT.fullmatch(item)) is not None:
        start, end = int(m[1].replace(" ", "")), int(m[2].replace(" ", ""))
        step = int(m[3]) if m[3] is not None else 1
        if step == 0:
            raise ValuesError(f"'{item}': the step must not be 0")
        _checked_count(max(0, (end - start) // step + 1), item)
        return list(range(start, end + (1 if step > 0 else -1), step))
    if (m := COUNT_INT.fullmatch(item)) is not None:
        start, end, count = int(m[1].replace(" ", "")), int(m[2].replace(" ", "")), int(m[3])
        return [int(v) for v in _linspace(start, end, _checked_count(count, item))]
    return [int(_number(item, INT))]


def _float_item(item: str) -> list[float]:
    if (m := RANGE_FLOAT.fullmatch(item)) is not None:
        start, end = float(m[1].replace(" ", "")), float(m[2].replace(" ", ""))
        step = float(m[3]) if m[3] is not None else 1.0
        if step == 0:
            raise ValuesError(f"'{item}': the step must not be 0")
        # counted, not accumulated: 0.1 steps must not gain or lose an end value to rounding
        count = _checked_count(max(0, int((end - start) / step + 1e-9) + 1), item)
        return [round(start + i * step, 8) for i in range(count)]
    if (m := COUNT_FLOAT.fullmatch(item)) is not None:
        start, end, count = float(m[1].replace(" ", "")), float(m[2].replace(" ", "")), int(m[3])
        return [round(v, 8) for v in _linspace(start, end, _checked_count(count, item))]
    return [float(_number(item, FLOAT))]


def _linspace(start: float, end: float, count: int) -> list[float]:
    if count <= 1:
        return [start] if count == 1 else []
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def parse_values(items: list[str], kind: str) -> list[Any]:
    """Items typed as the axis takes them: numbers with ranges expanded (``1-5``, ``1-5 (+2)``, ``1-10 [5]``),
    booleans, permutations of the items (Prompt order), or the text as it is. ValuesError naming the bad item."""
    items = [item for item in items if item != ""] if kind != TEXT else items
    if kind == INT:
        values: list[Any] = [v for item in items for v in _int_item(item)]
    elif kind == FLOAT:
        values = [v for item in items for v in _float_item(item)]
    elif kind == BOOL:
        values = []
        for item in items:
            if item.lower() not in ("true", "false"):
                raise ValuesError(f"'{item}' is not True or False")
            values.append(item.lower() == "true")
    elif kind == PERMUTATIONS:
        if len(items) > 6:
            raise ValuesError(f"{len(items)} items have too many orders; at most 6 items")
        values = list(itertools.permutations(items))
    else:
        values = list(items)
    if not values:
        raise ValuesError("no values")
    if len(values) > MAX_VALUES:
        raise ValuesError(f"{len(values)} values; at most {MAX_VALUES}")
    return values
