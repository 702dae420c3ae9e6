"""The X/Y/Z plot's values: one model per tab (A1111's axis lists, and so its axis indices, differ per tab)."""

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .axes import labels_for, label_of
from .values import to_csv

# A1111's script_args order (scripts/xyz_grid.py ``run``); the *_values_dropdown and csv_mode entries are folded
# into the values text (a dropdown's picks become a CSV line), so they are no fields of their own.
A1111_ARGS = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type",
              "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
              "no_fixed_seeds", "margin_size", "csv_mode", "raw_mode")
VALUES_HELP = "Comma-separated (quotes allowed); numbers also as ranges: 1-5, 1-5 (+2), 1-10 [5]"


class XyzBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tab: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _a1111_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        data.pop("csv_mode", None)  # A1111's switch between its text box and dropdown: both are read here
        for axis in "xyz":
            key = f"{axis}_values"
            if data.get(key) is None:
                data.pop(key, None)
            picks = data.pop(f"{key}_dropdown", None)
            if picks and not str(data.get(key, "")).strip():
                if not isinstance(picks, list) or not all(isinstance(p, str) for p in picks):
                    raise PydanticCustomError("values_dropdown", f"{key}_dropdown must be a list of strings")
                data[key] = to_csv(picks)
        return data

    @field_validator("x_type", "y_type", "z_type", mode="before", check_fields=False)
    @classmethod
    def _axis_label(cls, value: Any) -> Any:
        try:
            return label_of(cls.tab, value)
        except ValueError as exc:  # a custom error: its message is shown as it is (no "Value error, " prefix)
            raise PydanticCustomError("axis_type", str(exc)) from None


def params_model(tab: str) -> type[XyzBase]:
    """The values model of the script in ``tab``; the UI builds its widgets from it."""
    axis_type = Literal[labels_for(tab)]  # type: ignore[valid-type]

    class XyzValues(XyzBase):
        x_type: axis_type = Field("Seed", title="X type")  # type: ignore[valid-type]
        x_values: str = Field("", title="X values", description=VALUES_HELP)
        y_type: axis_type = Field("Nothing", title="Y type")  # type: ignore[valid-type]
        y_values: str = Field("", title="Y values")
        z_type: axis_type = Field("Nothing", title="Z type")  # type: ignore[valid-type]
        z_values: str = Field("", title="Z values")
        draw_legend: bool = Field(True, title="Draw legend")
        include_lone_images: bool = Field(False, title="Include Sub Images")
        include_sub_grids: bool = Field(False, title="Include Sub Grids")
        no_fixed_seeds: bool = Field(False, title="Keep -1 for seeds",
                                     description="Each cell draws its own random seed")
        margin_size: int = Field(0, ge=0, le=500, title="Grid margins (px)")
        raw_mode: bool = Field(False, title="Use raw text lines",
                               description="Values one per line, as written (no CSV)")

    XyzValues.tab = tab
    XyzValues.__name__ = XyzValues.__qualname__ = f"XyzValues_{tab}"
    return XyzValues
